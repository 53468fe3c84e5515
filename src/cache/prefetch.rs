//! Read-ahead in the background: threads that fetch the ranges readers will want next
//! into the memory tier, from the disk tier where it has them and otherwise from the
//! origin in as few large reads as possible.

use std::io;
use std::ops::Range;
use std::sync::Arc;

use super::block::{BlockKey, page_aligned};
use super::stats::bump;
use super::{Cache, CachedFile, Claim, Fill, ORIGIN_READ_MAX, Piece, ReadState};

/// Ranges of one file to fetch ahead of its reader.
#[derive(Debug)]
pub(super) struct Job {
    /// The file, open.
    pub(super) file: Arc<CachedFile>,
    /// Its epoch when the job was made.
    pub(super) epoch: u64,
    /// Its generation when the job was made, before its dirtiness was asked: a change
    /// since voids the job.
    pub(super) generation: u64,
    /// What to fetch.
    pub(super) ranges: Vec<Range<u64>>,
}

impl Cache {
    /// A read-ahead thread's life.
    pub(super) fn prefetch_worker(&self) {
        while let Some(job) = self.jobs.pop(false) {
            if let Err(error) = self.prefetch(&job) {
                // The reader will meet the same error on its own read, and report it.
                tracing::debug!(%error, "read-ahead failed");
            }
        }
    }

    fn prefetch(&self, job: &Job) -> io::Result<()> {
        let seen = ReadState {
            epoch: job.epoch,
            generation: job.generation,
            size: 0,
        };
        for range in &job.ranges {
            let range = page_aligned(range.clone());
            let mut position = range.start;
            while position < range.end {
                let Some(claim) = self.claim(job, &mut position, range.end) else {
                    return Ok(());
                };
                let mut from_origin: Vec<(BlockKey, Range<u64>)> = Vec::new();
                for (key, piece) in claim.keys.iter().zip(self.pieces(&claim.keys, &range)) {
                    let block_start = key.index * self.block_size;
                    let within =
                        (piece.start - block_start) as u32..(piece.end - block_start) as u32;
                    match self.read_disk(*key, within, seen, true, true) {
                        Some(_) => bump(&self.counters.prefetched_bytes, piece.end - piece.start),
                        None => from_origin.push((*key, piece)),
                    }
                }
                if !self.prefetch_from_origin(job, seen, &from_origin)? {
                    return Ok(());
                }
                drop(claim);
            }
        }
        Ok(())
    }

    /// Reads `pieces` from the origin, one request per contiguous run; false once the
    /// end of the file was reached.
    fn prefetch_from_origin(
        &self,
        job: &Job,
        seen: ReadState,
        pieces: &[(BlockKey, Range<u64>)],
    ) -> io::Result<bool> {
        let mut at = 0;
        while at < pieces.len() {
            let mut until = at + 1;
            while until < pieces.len() && pieces[until].1.start == pieces[until - 1].1.end {
                until += 1;
            }
            let span = pieces[at].1.start..pieces[until - 1].1.end;
            let data = self.read_origin(&job.file.origin, span.clone())?;
            bump(&self.counters.prefetched_bytes, data.len() as u64);
            let read_end = span.start + data.len() as u64;
            let mut state = self.lock();
            for (key, piece) in &pieces[at..until] {
                let stop = piece.end.min(read_end);
                if stop <= piece.start && piece.start != span.start {
                    break;
                }
                let bytes = data[(piece.start - span.start) as usize
                    ..(stop.max(piece.start) - span.start) as usize]
                    .to_vec();
                let start = (piece.start % self.block_size) as u32;
                let end = (stop < piece.end).then_some(start + bytes.len() as u32);
                let fill = Fill {
                    prefetched: true,
                    from_disk: false,
                    generation: seen.generation,
                    keep: true,
                };
                let piece = Piece {
                    start,
                    data: bytes,
                    end,
                };
                self.keep(&mut state, *key, piece, fill);
            }
            if read_end < span.end {
                return Ok(false);
            }
            at = until;
        }
        Ok(true)
    }

    /// The byte ranges of `range` that the claimed blocks `keys` stand for.
    fn pieces(&self, keys: &[BlockKey], range: &Range<u64>) -> Vec<Range<u64>> {
        keys.iter()
            .map(|key| {
                let block_start = key.index * self.block_size;
                range.start.max(block_start)..range.end.min(block_start + self.block_size)
            })
            .collect()
    }

    /// Claims the blocks from `position` on that neither the memory tier nor another fill
    /// has, as one contiguous run of at most [`ORIGIN_READ_MAX`] bytes; skips the ones
    /// already there. `None` when the job is void (the file changed since it was made).
    fn claim(&self, job: &Job, position: &mut u64, end: u64) -> Option<Claim<'_>> {
        let mut state = self.lock();
        let file = state.files.get(&job.file.key)?;
        if file.epoch != job.epoch || file.generation != job.generation {
            return None;
        }
        let mut claim = Claim {
            cache: self,
            keys: Vec::new(),
        };
        let mut bytes = 0;
        while *position < end && bytes < ORIGIN_READ_MAX {
            let index = *position / self.block_size;
            let block_start = index * self.block_size;
            let piece = *position..end.min(block_start + self.block_size);
            let key = BlockKey {
                file: job.file.key,
                epoch: job.epoch,
                index,
            };
            let within = (piece.start - block_start) as u32..(piece.end - block_start) as u32;
            let held = state
                .memory
                .peek(&key)
                .is_some_and(|block| block.covers(within));
            if held || state.inflight.contains(&key) {
                if !claim.keys.is_empty() {
                    break;
                }
                *position = piece.end;
                continue;
            }
            state.inflight.insert(key);
            bytes += piece.end - piece.start;
            *position = piece.end;
            claim.keys.push(key);
        }
        drop(state);
        Some(claim)
    }
}
