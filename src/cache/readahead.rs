//! Read-ahead by spatial locality: which bytes of an open file will be read next.
//!
//! Like ZFS's zfetch, an open file tracks up to [`STREAMS_MAX`] streams, each sequential or
//! strided, so interleaved readers of one file (a database scanning two tables, a video
//! player reading audio and video) are each followed. Like Linux's on-demand read-ahead, a
//! stream's window starts at `min` and doubles only when the reader reaches the second
//! half of what was fetched ahead of it, that is, only while fetched data is being
//! consumed, up to `max`. A read that belongs to no stream starts none: it is remembered,
//! and only a second read adjacent to it (or a third at the same stride) makes a stream.
//! So a random reader never causes a byte of read-ahead.
//!
//! This is pure logic; `Cache` turns the advice into background fetches.

use std::collections::VecDeque;
use std::ops::Range;

use super::block::PAGE;

/// Streams followed per open file (zfetch's default).
pub const STREAMS_MAX: usize = 8;

/// Reads remembered that belong to no stream yet.
const RECENT_MAX: usize = 8;

/// A read this far from where a stream expects the next one still belongs to it, in
/// multiples of the read's length: the kernel issues read-ahead requests concurrently, and
/// worker threads answer them in any order.
const REORDER_READS: u64 = 4;

/// What to do about one read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Advice {
    /// The read continues a stream: read-ahead may be filling its block right now.
    pub streaming: bool,
    /// Byte ranges to fetch in the background now.
    pub prefetch: Vec<Range<u64>>,
}

/// One followed stream.
#[derive(Clone, Debug)]
struct Stream {
    /// Where the next read is expected to start (sequential: the highest end seen).
    next: u64,
    /// Distance between the starts of successive reads; 0 for a sequential stream.
    stride: u64,
    /// Bytes per read, for a strided stream.
    len: u64,
    /// Bytes fetched ahead per round.
    window: u64,
    /// Everything before this has been asked for (sequential: a byte offset; strided: the
    /// start of the first read not yet asked for).
    ahead: u64,
    /// Logical time of the last read that matched, for replacing the stalest.
    touched: u64,
}

/// Per open file: its streams and its recent unmatched reads.
#[derive(Debug)]
pub struct Readahead {
    min: u64,
    max: u64,
    streams: Vec<Stream>,
    recent: VecDeque<Range<u64>>,
    clock: u64,
}

impl Readahead {
    /// Windows start at `min` bytes and grow to `max`.
    pub fn new(min: u64, max: u64) -> Readahead {
        Readahead {
            min,
            max: max.max(min),
            streams: Vec::new(),
            recent: VecDeque::new(),
            clock: 0,
        }
    }

    /// Streams followed now.
    #[cfg(test)]
    pub fn streams(&self) -> usize {
        self.streams.len()
    }

    /// Takes note of a read of `len` bytes at `offset` and says what to fetch.
    pub fn observe(&mut self, offset: u64, len: u64) -> Advice {
        self.clock += 1;
        let len = len.max(1);
        let clock = self.clock;
        let min = self.min;
        let max = self.max;
        if let Some(stream) = self.streams.iter_mut().find(|s| s.matches(offset, len)) {
            stream.touched = clock;
            let prefetch = stream.advance(offset, len, max);
            return Advice {
                streaming: true,
                prefetch,
            };
        }
        if let Some(stream) = self.new_stream(offset, len) {
            let stream = self.add(stream);
            let prefetch = stream.start(min);
            return Advice {
                streaming: true,
                prefetch,
            };
        }
        if self.recent.len() == RECENT_MAX {
            self.recent.pop_front();
        }
        self.recent.push_back(offset..offset + len);
        Advice::default()
    }

    /// A stream that this read and remembered ones make, if any; the reads it uses are
    /// forgotten.
    fn new_stream(&mut self, offset: u64, len: u64) -> Option<Stream> {
        let end = offset + len;
        let adjacent = |read: &Range<u64>| {
            read.end.abs_diff(offset) <= PAGE || end.abs_diff(read.start) <= PAGE
        };
        if let Some(at) = self.recent.iter().position(adjacent) {
            let earlier = self.recent.remove(at).expect("found");
            let next = end.max(earlier.end);
            return Some(Stream {
                next,
                stride: 0,
                len,
                window: self.min,
                ahead: next,
                touched: self.clock,
            });
        }
        // Strided: two remembered reads of this length at equal steps, this one the third.
        let starts: Vec<(usize, u64)> = self
            .recent
            .iter()
            .enumerate()
            .filter(|(_, read)| read.end - read.start == len && read.start < offset)
            .map(|(at, read)| (at, read.start))
            .collect();
        for &(second_at, second) in &starts {
            let stride = offset - second;
            // A stride beyond read-ahead's reach could not be fetched ahead anyway, and
            // far-apart reads at equal steps are more likely chance than a pattern.
            if stride <= len || stride > self.max {
                continue;
            }
            let Some(first) = second.checked_sub(stride) else {
                continue;
            };
            if let Some(&(first_at, _)) = starts.iter().find(|(_, start)| *start == first) {
                for at in [first_at.max(second_at), first_at.min(second_at)] {
                    self.recent.remove(at);
                }
                return Some(Stream {
                    next: offset + stride,
                    stride,
                    len,
                    window: self.min.max(len),
                    ahead: offset + stride,
                    touched: self.clock,
                });
            }
        }
        None
    }

    /// Adds `stream`, replacing the stalest when all slots are taken.
    fn add(&mut self, stream: Stream) -> &mut Stream {
        if self.streams.len() < STREAMS_MAX {
            self.streams.push(stream);
            return self.streams.last_mut().expect("just pushed");
        }
        let stalest = self
            .streams
            .iter_mut()
            .min_by_key(|s| s.touched)
            .expect("STREAMS_MAX > 0");
        *stalest = stream;
        stalest
    }
}

impl Stream {
    fn matches(&self, offset: u64, len: u64) -> bool {
        let slack = if self.stride == 0 {
            (REORDER_READS * len).max(PAGE)
        } else {
            // A strided reader must hit its step; a little reordering is one step late.
            self.len.max(PAGE)
        };
        let expected = if self.stride == 0 {
            self.next
        } else {
            self.next - self.stride
        };
        if self.stride == 0 {
            offset + slack >= expected && offset <= expected + slack
        } else {
            offset.abs_diff(self.next) <= slack || offset.abs_diff(expected) <= slack
        }
    }

    /// The first fetch for a new stream: one window ahead of the reader.
    fn start(&mut self, min: u64) -> Vec<Range<u64>> {
        self.window = min.max(if self.stride == 0 { 0 } else { self.len });
        self.fetch_ahead()
    }

    /// A read matched: move along, and fetch more if the reader has reached the second half
    /// of what was fetched ahead, doubling the window.
    fn advance(&mut self, offset: u64, len: u64, max: u64) -> Vec<Range<u64>> {
        if self.stride == 0 {
            self.next = self.next.max(offset + len);
        } else if offset + self.stride > self.next {
            self.next = offset + self.stride;
        }
        let marker = self.ahead.saturating_sub(self.span() / 2);
        if self.next < marker {
            return Vec::new();
        }
        self.window = (self.window * 2).min(max).max(self.window);
        self.fetch_ahead()
    }

    /// Bytes of the file the current window covers.
    fn span(&self) -> u64 {
        if self.stride == 0 {
            self.window
        } else {
            self.window / self.len.max(1) * self.stride
        }
    }

    /// Asks for everything from what was already asked for up to one window ahead of the
    /// reader.
    fn fetch_ahead(&mut self) -> Vec<Range<u64>> {
        let from = self.ahead.max(self.next);
        if self.stride == 0 {
            let to = self.next + self.window;
            self.ahead = to.max(self.ahead);
            return if from < to {
                std::iter::once(from..to).collect()
            } else {
                Vec::new()
            };
        }
        let reads = (self.window / self.len).max(1);
        let to = self.next + reads * self.stride;
        let mut ranges = Vec::new();
        let mut start = from;
        while start < to {
            ranges.push(start..start + self.len);
            start += self.stride;
        }
        self.ahead = start.max(self.ahead);
        ranges
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * KIB;

    fn fetched(advice: &Advice) -> u64 {
        advice.prefetch.iter().map(|r| r.end - r.start).sum()
    }

    #[test]
    fn random_reads_fetch_nothing_ahead() {
        let mut readahead = Readahead::new(128 * KIB, 32 * MIB);
        // A fixed pseudo-random walk over 10 GiB, 4 KiB reads.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut total = 0;
        for _ in 0..10_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let offset = (state % (10 << 30)) / PAGE * PAGE;
            let advice = readahead.observe(offset, 4 * KIB);
            total += fetched(&advice);
        }
        assert_eq!(total, 0, "random reads caused read-ahead");
        assert_eq!(readahead.streams(), 0);
    }

    #[test]
    fn a_sequential_reader_grows_the_window_to_the_maximum() {
        let mut readahead = Readahead::new(128 * KIB, 4 * MIB);
        let first = readahead.observe(0, 128 * KIB);
        assert!(
            !first.streaming && first.prefetch.is_empty(),
            "one read is no stream"
        );
        let second = readahead.observe(128 * KIB, 128 * KIB);
        assert!(second.streaming);
        assert_eq!(second.prefetch, vec![256 * KIB..384 * KIB]);
        let mut asked_to = 384 * KIB;
        let mut largest = 0;
        for read in 2..200u64 {
            let advice = readahead.observe(read * 128 * KIB, 128 * KIB);
            for range in &advice.prefetch {
                assert_eq!(
                    range.start, asked_to,
                    "fetches continue without gaps or overlap"
                );
                asked_to = range.end;
                largest = largest.max(range.end - range.start);
            }
            assert!(
                asked_to <= (read + 1) * 128 * KIB + 4 * MIB,
                "never more than a window ahead"
            );
            assert!(
                asked_to > (read + 1) * 128 * KIB,
                "always ahead of the reader"
            );
        }
        assert_eq!(readahead.streams[0].window, 4 * MIB);
        assert!(largest >= 2 * MIB);
    }

    #[test]
    fn reordered_requests_stay_in_their_stream() {
        let mut readahead = Readahead::new(128 * KIB, 8 * MIB);
        readahead.observe(0, 128 * KIB);
        readahead.observe(128 * KIB, 128 * KIB);
        // The kernel's concurrent requests answered out of order.
        for base in (2..100u64).step_by(2) {
            let late = readahead.observe((base + 1) * 128 * KIB, 128 * KIB);
            let early = readahead.observe(base * 128 * KIB, 128 * KIB);
            assert!(late.streaming && early.streaming, "at {base}");
        }
        assert_eq!(readahead.streams(), 1);
    }

    #[test]
    fn a_stream_abandoned_for_random_reads_stops_fetching() {
        let mut readahead = Readahead::new(128 * KIB, 8 * MIB);
        for read in 0..50u64 {
            readahead.observe(read * 128 * KIB, 128 * KIB);
        }
        let mut total = 0;
        for read in 0..1000u64 {
            let advice = readahead.observe((read * 7919 % 5000) * MIB + 64 * MIB, 4 * KIB);
            total += fetched(&advice);
        }
        assert_eq!(total, 0);
    }

    #[test]
    fn interleaved_streams_are_followed_up_to_the_limit() {
        let mut readahead = Readahead::new(64 * KIB, MIB);
        let bases: Vec<u64> = (0..STREAMS_MAX as u64).map(|s| s * 1024 * MIB).collect();
        for step in 0..20u64 {
            for base in &bases {
                let advice = readahead.observe(base + step * 64 * KIB, 64 * KIB);
                assert_eq!(advice.streaming, step > 0, "base {base} step {step}");
            }
        }
        assert_eq!(readahead.streams(), STREAMS_MAX);
        // One more stream takes the stalest slot; the others keep theirs.
        readahead.observe(100 * 1024 * MIB, 64 * KIB);
        readahead.observe(100 * 1024 * MIB + 64 * KIB, 64 * KIB);
        assert_eq!(readahead.streams(), STREAMS_MAX);
    }

    #[test]
    fn a_strided_reader_gets_its_next_records_only() {
        let mut readahead = Readahead::new(16 * KIB, MIB);
        let stride = 100 * KIB;
        assert!(!readahead.observe(0, 8 * KIB).streaming);
        assert!(!readahead.observe(stride, 8 * KIB).streaming);
        let third = readahead.observe(2 * stride, 8 * KIB);
        assert!(third.streaming);
        assert!(!third.prefetch.is_empty());
        for range in &third.prefetch {
            assert_eq!(
                range.end - range.start,
                8 * KIB,
                "only the records, not the gaps"
            );
            assert_eq!(range.start % stride, 0);
            assert!(range.start > 2 * stride);
        }
        let mut asked_to = third.prefetch.last().unwrap().start;
        for step in 3..100u64 {
            let advice = readahead.observe(step * stride, 8 * KIB);
            assert!(advice.streaming, "step {step}");
            for range in &advice.prefetch {
                assert!(range.start > asked_to, "no record asked for twice");
                asked_to = range.start;
            }
        }
        assert!(asked_to > 100 * stride);
    }
}
