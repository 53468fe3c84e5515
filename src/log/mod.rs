//! The change log: every mutation of a volume as one record at a gapless offset, in
//! segment files under `state_dir/log/`. It is write-behind's journal, what replicas are
//! sent, and what recovery replays; it knows records and bytes, not files or paths.
//!
//! Appending writes a record into the active segment (the page cache: it survives the
//! death of the process); [`Log::sync_to`] makes it survive the machine, fsyncing once for
//! every record appended so far, so concurrent callers share one fsync (group commit).
//! Recovery cuts a torn tail (a crash mid-append) and refuses damage anywhere else.

mod epochs;
mod frame;
mod record;
mod segment;
mod times;

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

pub use epochs::{EpochStart, Epochs, EpochsError, FENCE_FILE, Fence};
pub use frame::{Decoded, FrameError, decode as decode_frame, encode as encode_frame};
pub use record::{LogPath, Op, PathError, Record};
pub use segment::{FORMAT_VERSION, ScanError, header as segment_header};
pub use times::{FILE_NAME as TIMES_FILE, Times, utc};

use crate::durable;
use segment::{FrameReader, Segment, Tail};

/// What went wrong in the log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A file of the log could not be read or written.
    #[error("log file {path}: {source}")]
    Io {
        /// Which file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A record before the tail is damaged; nothing from it on is used.
    #[error("log segment {path}: bad record at offset {offset} (byte {position}): {error}")]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// The offset the bad record has or should have.
        offset: u64,
        /// Its byte position in the segment.
        position: u64,
        /// What is wrong.
        error: ScanError,
    },
    /// Segment files that do not continue one another.
    #[error("log segment {path} starts at offset {first}, but the one before ends at {expected}")]
    Gap {
        /// The later segment.
        path: PathBuf,
        /// Its first offset.
        first: u64,
        /// Where the one before it ends.
        expected: u64,
    },
    /// A record that cannot be framed (too large).
    #[error("record at offset {offset} cannot be written: {error}")]
    Encode {
        /// The offset it would have had.
        offset: u64,
        /// Why not.
        error: FrameError,
    },
    /// A record appended out of order.
    #[error("record {offset} appended where record {next} belongs")]
    OutOfOrder {
        /// The record's offset.
        offset: u64,
        /// The log's next offset.
        next: u64,
    },
    /// The epoch history cannot be read, kept, or moved as asked.
    #[error("epoch history: {0}")]
    Epochs(#[from] EpochsError),
    /// A record of an epoch older than one the log has accepted: from a deposed primary.
    #[error("record {offset} is of epoch {epoch}, older than epoch {latest} already accepted")]
    StaleEpoch {
        /// The record's offset.
        offset: u64,
        /// Its epoch.
        epoch: u32,
        /// The latest epoch the log holds.
        latest: u32,
    },
    /// The log is fenced: a newer primary was promoted, and this one takes no record.
    #[error("the volume is {0}: it takes no change; rejoin it as a replica of the new primary")]
    Fenced(Fence),
    /// Records asked for that retention already deleted.
    #[error("offset {offset} is no longer in the log, which starts at {first}")]
    Deleted {
        /// Asked for.
        offset: u64,
        /// The oldest offset kept.
        first: u64,
    },
}

/// Result of a log operation.
pub type Result<T> = std::result::Result<T, LogError>;

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// How a log is written.
#[derive(Clone, Copy, Debug)]
pub struct LogOptions {
    /// A segment is sealed and a new one started once it would grow past this.
    pub segment_bytes: u64,
    /// The leader epoch a log with no epoch history begins in (0 for a replica's log,
    /// whose epochs are its records'). New records are stamped with the history's latest.
    pub epoch: u32,
}

/// Sizes and positions of a log, for operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LogStats {
    /// Oldest offset kept.
    pub first_offset: u64,
    /// The offset the next record gets.
    pub next_offset: u64,
    /// Segment files.
    pub segments: usize,
    /// Bytes in segment files.
    pub bytes: u64,
}

/// Where an appended record lies.
#[derive(Clone, Debug)]
pub struct Appended {
    /// Its offset.
    pub offset: u64,
    /// The segment file holding it, open for reading (it is never rewritten, and stays
    /// readable through this handle even once retention deletes it).
    pub file: Arc<File>,
    /// The byte position just past its frame. A write's bytes are the frame's last bytes
    /// (the record ends with the operation, a write with its data, encoded as raw bytes).
    pub end: u64,
}

impl Appended {
    /// Starts writing the last `len` bytes of the record to disk without waiting, so that
    /// a later fsync finds them already on their way (sync_file_range; advisory: errors
    /// are left for the fsync to report).
    pub fn start_writeback(&self, len: u64) {
        let start = self.end.saturating_sub(len);
        // SAFETY: a valid fd and a byte range of it; the call only schedules writeback.
        unsafe {
            libc::sync_file_range(
                std::os::fd::AsRawFd::as_raw_fd(&*self.file),
                start as libc::off64_t,
                len as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
    }
}

/// An open, writable change log. One per volume, held by the mount daemon.
pub struct Log {
    dir: PathBuf,
    options: LogOptions,
    appender: Mutex<Appender>,
    /// Every record below this offset is on stable storage.
    durable: AtomicU64,
    /// Held while fsyncing, so waiters queue behind one fsync instead of issuing their own.
    syncing: Mutex<()>,
    torn_bytes: u64,
    /// Set once a newer primary was promoted: no record is appended from then on.
    fence: Mutex<Option<Fence>>,
    /// Whether `fence` is set, read by every append without taking its lock.
    fenced: AtomicBool,
    /// Records from this offset on are kept whatever `delete_before` is asked (replicas
    /// that still need them).
    retained_from: AtomicU64,
}

struct Appender {
    /// Oldest first; the last is the active segment, the only one written.
    segments: Vec<Segment>,
    /// Where each epoch begins; the latest stamps new records.
    epochs: Epochs,
    active: Arc<File>,
    buf: Vec<u8>,
    /// The length of each frame in `buf`, the last one with the append's tail.
    lens: Vec<u64>,
    /// When appends happened, for `mirrorfs log` (see `times.rs`).
    stamper: times::Stamper,
}

impl Appender {
    fn active(&mut self) -> &mut Segment {
        self.segments
            .last_mut()
            .expect("a log always has an active segment")
    }
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log").field("dir", &self.dir).finish()
    }
}

impl Log {
    /// Opens the log in `dir` (made if missing), recovering it: a torn tail is cut off
    /// (logged with its size); damage anywhere else is an error.
    pub fn open(dir: &Path, options: LogOptions) -> Result<Log> {
        Log::open_at(dir, options, 0)
    }

    /// [`Log::open`], with `first` as the first offset of a log that is new (a replica's
    /// log begins where the snapshot it started from ends).
    pub fn open_at(dir: &Path, options: LogOptions, first: u64) -> Result<Log> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_error(dir))?;
        let (mut segments, tail) = load(dir)?;
        let mut torn_bytes = 0;
        if segments.is_empty() {
            segments.push(create_segment(dir, first)?);
        } else if let Tail::Torn { bytes } = tail {
            let active = segments.last_mut().expect("not empty");
            cut_torn_tail(active, bytes)?;
            torn_bytes = bytes;
        }
        let active = segments.last().expect("not empty");
        // Readable too: write-behind reads unflushed bytes back from the log.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&active.path)
            .map_err(io_error(&active.path))?;
        // What a killed process left in the page cache is not yet on disk.
        file.sync_data().map_err(io_error(&active.path))?;
        let next = active.next;
        let stored = Epochs::load(dir)?;
        let fence = Fence::load(dir)?;
        let log = Log {
            dir: dir.to_path_buf(),
            options,
            appender: Mutex::new(Appender {
                segments,
                epochs: stored.clone().unwrap_or_default(),
                active: Arc::new(file),
                buf: Vec::new(),
                lens: Vec::new(),
                stamper: times::Stamper::open(dir),
            }),
            durable: AtomicU64::new(next),
            syncing: Mutex::new(()),
            torn_bytes,
            fenced: AtomicBool::new(fence.is_some()),
            fence: Mutex::new(fence),
            retained_from: AtomicU64::new(u64::MAX),
        };
        log.settle_epochs(stored)?;
        Ok(log)
    }

    /// Makes the epoch history fit the log as opened, and keeps it if that changed it:
    /// one is begun for a log that has none (from its first record's epoch, or the epoch
    /// options give a new log), and an epoch the log lost the start of (a torn tail cut
    /// back past it) begins at the log's end instead.
    fn settle_epochs(&self, stored: Option<Epochs>) -> Result<()> {
        let next = self.next_offset();
        let first_record = match stored {
            Some(_) => None,
            None => {
                let view = self.view();
                let first = view.stats().first_offset;
                view.records(first)?.next().transpose()?
            }
        };
        let mut appender = self.appender();
        let epochs = &mut appender.epochs;
        let before = epochs.clone();
        if let Some(record) = first_record {
            epochs.begin(record.epoch, record.offset)?;
        }
        if epochs.latest().is_some_and(|latest| latest.start > next) {
            epochs.cut_at(next);
        }
        if epochs.latest().is_none() && self.options.epoch > 0 {
            epochs.begin(self.options.epoch, next)?;
        }
        if *epochs != before || !self.dir.join(epochs::FILE_NAME).exists() {
            epochs.store(&self.dir)?;
        }
        Ok(())
    }

    /// The epoch history: where each epoch's records begin.
    pub fn epochs(&self) -> Epochs {
        self.appender().epochs.clone()
    }

    /// What fenced the log, if it is fenced.
    pub fn fence(&self) -> Option<Fence> {
        self.fence
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Whether the log is fenced (without taking a lock: asked by every change).
    pub fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::SeqCst)
    }

    /// Fences the log, durably: `fence` says a newer primary exists, so no record is
    /// appended from now on, by this process or the next to open the log.
    pub fn fence_by(&self, fence: Fence) -> Result<()> {
        // Under the appender's lock: no append is half done while the fence goes up.
        let _appender = self.appender();
        let mut held = self
            .fence
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if held.as_ref().is_some_and(|held| held.epoch >= fence.epoch) {
            return Ok(());
        }
        // Fenced in memory even if the disk refuses to keep it.
        *held = Some(fence.clone());
        self.fenced.store(true, Ordering::SeqCst);
        Ok(fence.store(&self.dir)?)
    }

    /// The latest epoch the log has accepted (0 for a replica's log that has none yet).
    pub fn epoch(&self) -> u32 {
        self.appender()
            .epochs
            .latest()
            .map_or(0, |latest| latest.epoch)
    }

    /// Begins `epoch` at the log's end, durably, so new records are stamped with it and
    /// records of older epochs are refused ([`Log::append_record`]). An epoch already the
    /// latest changes nothing; an older one is refused.
    pub fn begin_epoch(&self, epoch: u32) -> Result<()> {
        let mut appender = self.appender();
        let next = appender.active().next;
        if appender.epochs.begin(epoch, next)? {
            appender.epochs.store(&self.dir)?;
        }
        Ok(())
    }

    /// Bytes of a torn tail cut off when this log was opened.
    pub fn torn_bytes(&self) -> u64 {
        self.torn_bytes
    }

    fn appender(&self) -> MutexGuard<'_, Appender> {
        // Every method leaves the appender consistent before anything can panic.
        self.appender
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends `op` as the next record and returns its offset. The record survives the
    /// process dying once this returns, and the machine dying once [`Log::sync_to`] says so.
    pub fn append(&self, op: &Op) -> Result<u64> {
        self.append_with(&[], |offset, epoch, buf| {
            frame::encode_parts(offset, epoch, op, buf)
        })
        .map(|appended| appended.offset)
    }

    /// Appends `ops` as the next records, in order, in one write; returns the offset of the
    /// first (the next offset if `ops` is empty). The records survive as [`Log::append`]'s.
    pub fn append_all(&self, ops: &[Op]) -> Result<u64> {
        self.append_frames(&[], |first, epoch, buf, lens| {
            for (offset, op) in (first..).zip(ops) {
                let len = frame::encode_parts(offset, epoch, op, buf)
                    .map_err(|error| LogError::Encode { offset, error })?;
                lens.push(len as u64);
            }
            Ok(())
        })
        .map(|appended| appended.offset)
    }

    /// Appends a record made elsewhere (a replica copying its primary's log), keeping its
    /// offset and epoch. It must be the next offset: a log has no gaps. One writer at a time.
    pub fn append_record(&self, record: &Record) -> Result<u64> {
        let next = self.next_offset();
        if record.offset != next {
            return Err(LogError::OutOfOrder {
                offset: record.offset,
                next,
            });
        }
        let latest = self.epoch();
        if record.epoch < latest {
            return Err(LogError::StaleEpoch {
                offset: record.offset,
                epoch: record.epoch,
                latest,
            });
        }
        if record.epoch > latest {
            // Kept before the record: a history never lacks the epoch of a record held.
            self.begin_epoch(record.epoch)?;
        }
        self.append_with(&[], |_, _, buf| frame::encode(record, buf))
            .map(|appended| appended.offset)
    }

    /// Appends a write of `data` at `file_offset` of `path`. The bytes go from `data` to
    /// the segment file without another copy, and then lie at `end - data.len()..end`.
    pub fn append_write(&self, path: &LogPath, file_offset: u64, data: &[u8]) -> Result<Appended> {
        self.append_with(data, |offset, epoch, buf| {
            frame::encode_write_head(offset, epoch, path, file_offset, data, buf)
        })
    }

    /// Appends the frame whose first bytes `encode` puts in the buffer and whose last
    /// bytes are `tail`.
    fn append_with(
        &self,
        tail: &[u8],
        encode: impl FnOnce(u64, u32, &mut Vec<u8>) -> std::result::Result<usize, FrameError>,
    ) -> Result<Appended> {
        self.append_frames(tail, |offset, epoch, buf, lens| {
            let len =
                encode(offset, epoch, buf).map_err(|error| LogError::Encode { offset, error })?;
            lens.push(len as u64);
            Ok(())
        })
    }

    /// Appends the frames `encode` puts in the buffer, numbered from the next offset and
    /// followed by `tail` (the last frame's last bytes), in one write. `encode` pushes
    /// each frame's whole length. The returned offset is the first frame's.
    fn append_frames(
        &self,
        tail: &[u8],
        encode: impl FnOnce(u64, u32, &mut Vec<u8>, &mut Vec<u64>) -> Result<()>,
    ) -> Result<Appended> {
        let mut appender = self.appender();
        if self.is_fenced()
            && let Some(fence) = self.fence()
        {
            return Err(LogError::Fenced(fence));
        }
        let appender = &mut *appender;
        let first = appender.active().next;
        appender.buf.clear();
        appender.lens.clear();
        let epoch = appender.epochs.latest().map_or(0, |latest| latest.epoch);
        encode(first, epoch, &mut appender.buf, &mut appender.lens)?;
        let total: u64 = appender.lens.iter().sum();
        let active = appender.active();
        if active.len + total > self.options.segment_bytes && active.next > active.first {
            self.roll(appender)?;
        }
        let position = appender.active().len;
        let written = write_both_at(&appender.active, &appender.buf, tail, position);
        if let Err(source) = written {
            // Leave no partial frame for the next append to land after.
            let _ = appender.active.set_len(position);
            return Err(LogError::Io {
                path: appender.active().path.clone(),
                source,
            });
        }
        for (offset, index) in (first..).zip(0..appender.lens.len()) {
            let len = appender.lens[index];
            appender.active().note_appended(offset, len);
        }
        appender.stamper.appended(first);
        Ok(Appended {
            offset: first,
            file: Arc::clone(&appender.active),
            end: position + total,
        })
    }

    /// Seals the active segment (fsynced, indexed) and starts the next one.
    fn roll(&self, appender: &mut Appender) -> Result<()> {
        let sealed = appender.active().clone();
        appender
            .active
            .sync_data()
            .map_err(io_error(&sealed.path))?;
        segment::write_index(&sealed).map_err(io_error(&sealed.path))?;
        let next = create_segment(&self.dir, sealed.next)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&next.path)
            .map_err(io_error(&next.path))?;
        appender.active = Arc::new(file);
        appender.segments.push(next);
        self.durable.fetch_max(sealed.next, Ordering::AcqRel);
        Ok(())
    }

    /// [`LogView::first_within`] of the log as it is now, without copying its segments
    /// (asked on every acknowledgement from a replica).
    pub fn first_within(&self, bytes: u64) -> u64 {
        first_within(&self.appender().segments, bytes)
    }

    /// The oldest record later `delete_before` calls keep (see [`Log::retain_from`]).
    pub fn retained_from(&self) -> u64 {
        self.retained_from.load(Ordering::Acquire)
    }

    /// Keeps every record from `offset` on, whatever later `delete_before` calls ask: the
    /// oldest record a replica still needs. `u64::MAX` keeps nothing back.
    pub fn retain_from(&self, offset: u64) {
        self.retained_from.store(offset, Ordering::Release);
    }

    /// Returns once every record up to and including `offset` is on stable storage. One
    /// fsync covers all records appended before it starts, for every waiting caller.
    pub fn sync_to(&self, offset: u64) -> Result<()> {
        if self.durable.load(Ordering::Acquire) > offset {
            return Ok(());
        }
        let _turn = self
            .syncing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if self.durable.load(Ordering::Acquire) > offset {
            return Ok(());
        }
        let (file, end, path) = {
            let mut appender = self.appender();
            let active = appender.active();
            let (end, path) = (active.next, active.path.clone());
            (Arc::clone(&appender.active), end, path)
        };
        file.sync_data().map_err(io_error(&path))?;
        self.durable.fetch_max(end, Ordering::AcqRel);
        Ok(())
    }

    /// The offset the next record will get.
    pub fn next_offset(&self) -> u64 {
        self.appender().active().next
    }

    /// Every record below this offset is on stable storage.
    pub fn durable_offset(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    /// Deletes sealed segments whose records are all below `offset` (every consumer has
    /// them). Returns how many were deleted.
    pub fn delete_before(&self, offset: u64) -> Result<usize> {
        let offset = offset.min(self.retained_from.load(Ordering::Acquire));
        let mut appender = self.appender();
        let sealed = appender.segments.len() - 1;
        let doomed = appender.segments[..sealed]
            .iter()
            .take_while(|segment| segment.next <= offset)
            .count();
        for segment in appender.segments.drain(..doomed) {
            // The index first: a segment without an index is rescanned, never the reverse.
            let index = segment.index_path();
            match std::fs::remove_file(&index) {
                Err(error) if error.kind() != io::ErrorKind::NotFound => {
                    return Err(io_error(&index)(error));
                }
                _ => {}
            }
            std::fs::remove_file(&segment.path).map_err(io_error(&segment.path))?;
        }
        if doomed > 0 {
            let first = appender.segments[0].first;
            appender.stamper.trim(first);
        }
        Ok(doomed)
    }

    /// Cuts the log back so that its next record gets offset `to`: every record from `to`
    /// on is removed, durably, and epochs that began there are forgotten (the latest
    /// still refused below it). What a replica does when it holds records a new primary
    /// never had (Kafka's truncation at the divergence point). Returns how many records
    /// went. A log cannot be cut below its oldest kept record.
    pub fn truncate_to(&self, to: u64) -> Result<u64> {
        let mut appender = self.appender();
        let appender = &mut *appender;
        let next = appender.active().next;
        if to >= next {
            return Ok(0);
        }
        let first = appender.segments[0].first;
        if to < first {
            return Err(LogError::Deleted { offset: to, first });
        }
        // The segment that keeps `to`'s place; those after it go whole, newest first, so a
        // crash midway leaves a log that ends earlier, never one with a gap.
        let keep = appender
            .segments
            .iter()
            .rposition(|segment| segment.first <= to)
            .expect("the first segment starts at or before `to`");
        while appender.segments.len() > keep + 1 {
            let doomed = appender.segments.pop().expect("more than one");
            remove_segment(&doomed)?;
        }
        let segment = appender.active();
        let start = segment.start_for(to);
        let mut reader =
            FrameReader::open(&segment.path, start.position).map_err(io_error(&segment.path))?;
        let mut offset = start.offset;
        while offset < to {
            match reader.next_frame().map_err(io_error(&segment.path))? {
                Some(Decoded::Record(..)) => offset += 1,
                _ => {
                    return Err(LogError::Corrupt {
                        path: segment.path.clone(),
                        offset,
                        position: reader.position,
                        error: FrameError::Truncated.into(),
                    });
                }
            }
        }
        let position = reader.position;
        // Writable again: it may have been sealed, with an index of its own.
        let index = segment.index_path();
        durable::remove(&index).map_err(io_error(&index))?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&segment.path)
            .map_err(io_error(&segment.path))?;
        file.set_len(position).map_err(io_error(&segment.path))?;
        file.sync_all().map_err(io_error(&segment.path))?;
        segment.next = to;
        segment.len = position;
        segment.index.retain(|entry| entry.offset < to);
        appender.active = Arc::new(file);
        self.durable.fetch_min(to, Ordering::AcqRel);
        appender.epochs.cut_at(to);
        appender.epochs.store(&self.dir)?;
        Ok(next - to)
    }

    /// The records and sizes as they are now.
    pub fn view(&self) -> LogView {
        LogView {
            segments: self.appender().segments.clone(),
        }
    }

    /// [`Log::view`] of the segments from the one holding `offset` on: all a reader
    /// of the log's end needs, without copying the older segments' indexes.
    pub fn view_from(&self, offset: u64) -> LogView {
        let appender = self.appender();
        let segments = &appender.segments;
        let at = segments
            .partition_point(|s| s.next <= offset)
            .min(segments.len() - 1);
        LogView {
            segments: segments[at..].to_vec(),
        }
    }
}

/// The first offset of the oldest of `segments` from which on they take at most `bytes`
/// (the last, active, one always counts).
fn first_within(segments: &[Segment], bytes: u64) -> u64 {
    let mut kept = 0u64;
    let mut first = segments.last().map_or(0, |s| s.next);
    for (n, segment) in segments.iter().enumerate().rev() {
        kept = kept.saturating_add(segment.len);
        if kept > bytes && n + 1 < segments.len() {
            break;
        }
        first = segment.first;
    }
    first
}

/// Reads the log in `dir` without changing it, as `mirrorfs log` does while a daemon may
/// be appending: a torn or still-growing tail is simply where the view ends.
pub fn inspect(dir: &Path) -> Result<LogView> {
    let (segments, _) = load(dir)?;
    Ok(LogView { segments })
}

/// The segments of a log at one moment, to read records and sizes from.
#[derive(Clone, Debug)]
pub struct LogView {
    segments: Vec<Segment>,
}

impl LogView {
    /// Positions and sizes.
    pub fn stats(&self) -> LogStats {
        LogStats {
            first_offset: self.segments.first().map_or(0, |s| s.first),
            next_offset: self.segments.last().map_or(0, |s| s.next),
            segments: self.segments.len(),
            bytes: self.segments.iter().map(|s| s.len).sum(),
        }
    }

    /// The first offset of the oldest segment from which on the log's segments take at
    /// most `bytes` (the active segment is always kept): where retention by size cuts.
    pub fn first_within(&self, bytes: u64) -> u64 {
        first_within(&self.segments, bytes)
    }

    /// About how many bytes of log lie from record `offset` to the end (exact to the
    /// index's granularity, which starts the count a little early).
    pub fn bytes_from(&self, offset: u64) -> u64 {
        let at = self.segments.partition_point(|s| s.next <= offset);
        let Some(segment) = self.segments.get(at) else {
            return 0;
        };
        let start = segment.start_for(offset.max(segment.first)).position;
        let later: u64 = self.segments[at + 1..].iter().map(|s| s.len).sum();
        segment.len.saturating_sub(start) + later
    }

    /// Every record from `from` to the end of the view, in order.
    pub fn records(&self, from: u64) -> Result<Records> {
        let stats = self.stats();
        if from < stats.first_offset {
            return Err(LogError::Deleted {
                offset: from,
                first: stats.first_offset,
            });
        }
        let at = self.segments.partition_point(|s| s.next <= from);
        Ok(Records {
            segments: self.segments[at..].to_vec(),
            reader: None,
            from,
            expected: 0,
            failed: false,
        })
    }
}

/// An iterator over records, in offset order; it ends after the first error.
pub struct Records {
    segments: Vec<Segment>,
    reader: Option<FrameReader>,
    from: u64,
    expected: u64,
    failed: bool,
}

impl Records {
    /// The offset of the next record this returns.
    pub fn next_offset(&self) -> u64 {
        self.expected.max(self.from)
    }

    /// Continues a reader that reached the end of what it knew with `view`, a newer
    /// view of the same log: it keeps its place in the segment it reads, so following the
    /// log's end never reads a record twice.
    pub fn extend(&mut self, view: &LogView) {
        if self.failed {
            return;
        }
        let next = self.next_offset();
        let reading = self.segments.first().map(|segment| segment.first);
        let at = view.segments.partition_point(|s| s.next <= next);
        self.segments = view.segments[at..].to_vec();
        if self.segments.first().map(|segment| segment.first) != reading {
            self.reader = None;
        }
        self.from = next;
    }

    fn read_next(&mut self) -> Result<Option<Record>> {
        loop {
            let Some(segment) = self.segments.first() else {
                return Ok(None);
            };
            if self.reader.is_none() {
                let start = segment.start_for(self.from);
                self.expected = start.offset;
                let reader = FrameReader::open(&segment.path, start.position)
                    .map_err(io_error(&segment.path))?;
                self.reader = Some(reader);
            }
            if self.expected >= segment.next {
                if self.segments.len() == 1 {
                    // The end of what the view knew; the place is kept for `extend`.
                    return Ok(None);
                }
                self.segments.remove(0);
                self.reader = None;
                continue;
            }
            let reader = self.reader.as_mut().expect("opened above");
            let position = reader.position;
            let corrupt = |error: ScanError| LogError::Corrupt {
                path: segment.path.clone(),
                offset: self.expected,
                position,
                error,
            };
            let record = match reader.next_record().map_err(io_error(&segment.path))? {
                Some(Ok(record)) => record,
                Some(Err(error)) => return Err(corrupt(error.into())),
                None => return Err(corrupt(FrameError::Truncated.into())),
            };
            if record.offset != self.expected {
                return Err(corrupt(ScanError::Gap {
                    found: record.offset,
                }));
            }
            self.expected += 1;
            if record.offset >= self.from {
                return Ok(Some(record));
            }
        }
    }
}

impl Iterator for Records {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Result<Record>> {
        if self.failed {
            return None;
        }
        let next = self.read_next();
        self.failed = next.is_err();
        next.transpose()
    }
}

/// Every segment in `dir`, checked to continue one another, and how the last one ends.
/// Sealed segments come from their index when it matches, else from a scan that must be
/// clean; the last is always scanned.
fn load(dir: &Path) -> Result<(Vec<Segment>, Tail)> {
    let mut firsts: Vec<u64> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        if let Some(first) = entry.file_name().to_str().and_then(segment::parse_name) {
            firsts.push(first);
        }
    }
    firsts.sort_unstable();
    let mut segments: Vec<Segment> = Vec::with_capacity(firsts.len());
    let mut tail = Tail::Clean;
    for (i, &first) in firsts.iter().enumerate() {
        let path = dir.join(segment::file_name(first));
        let last = i + 1 == firsts.len();
        let loaded = match segment::read_index(&path, first).filter(|_| !last) {
            Some(segment) => segment,
            None => {
                let (segment, end) = segment::scan(&path, first).map_err(io_error(&path))?;
                match end {
                    Tail::Corrupt {
                        offset,
                        position,
                        error,
                    } => {
                        return Err(LogError::Corrupt {
                            path,
                            offset,
                            position,
                            error,
                        });
                    }
                    Tail::Torn { .. } if !last => {
                        return Err(LogError::Corrupt {
                            offset: segment.next,
                            position: segment.len,
                            error: FrameError::Truncated.into(),
                            path,
                        });
                    }
                    end => tail = end,
                }
                segment
            }
        };
        if let Some(before) = segments.last()
            && before.next != loaded.first
        {
            return Err(LogError::Gap {
                path,
                first: loaded.first,
                expected: before.next,
            });
        }
        segments.push(loaded);
    }
    Ok((segments, tail))
}

/// Removes a segment's files durably, its index first (a segment without an index is
/// rescanned, never the reverse).
fn remove_segment(segment: &Segment) -> Result<()> {
    let index = segment.index_path();
    durable::remove(&index).map_err(io_error(&index))?;
    durable::remove(&segment.path).map_err(io_error(&segment.path))
}

/// Makes an empty segment file starting at `first`, durable with its directory entry.
fn create_segment(dir: &Path, first: u64) -> Result<Segment> {
    let segment = Segment::empty(dir, first);
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&segment.path)
        .map_err(io_error(&segment.path))?;
    file.write_all_at(&segment::header(first), 0)
        .and_then(|()| file.sync_all())
        .map_err(io_error(&segment.path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))?;
    Ok(segment)
}

/// Cuts the torn tail off the active segment (rewriting a torn header).
fn cut_torn_tail(active: &mut Segment, bytes: u64) -> Result<()> {
    let file = OpenOptions::new()
        .write(true)
        .open(&active.path)
        .map_err(io_error(&active.path))?;
    if active.len == 0 {
        file.set_len(0)
            .and_then(|()| file.write_all_at(&segment::header(active.first), 0))
            .map_err(io_error(&active.path))?;
        active.len = segment::HEADER_LEN;
    } else {
        file.set_len(active.len).map_err(io_error(&active.path))?;
    }
    file.sync_all().map_err(io_error(&active.path))?;
    tracing::warn!(
        segment = %active.path.display(),
        bytes,
        "cut a torn record off the end of the log (a crash mid-append)"
    );
    Ok(())
}

#[cfg(test)]
mod tests;

/// Writes `head` then `tail` at `position` of `file`, in one pwritev(2) when the kernel
/// takes it whole (a record's frame and its data: one syscall per record).
fn write_both_at(file: &File, head: &[u8], tail: &[u8], position: u64) -> std::io::Result<()> {
    let parts = [
        libc::iovec {
            iov_base: head.as_ptr() as *mut libc::c_void,
            iov_len: head.len(),
        },
        libc::iovec {
            iov_base: tail.as_ptr() as *mut libc::c_void,
            iov_len: tail.len(),
        },
    ];
    // SAFETY: both iovecs point into live slices that outlive the call, which only
    // reads them.
    let written = unsafe {
        libc::pwritev(
            file.as_raw_fd(),
            parts.as_ptr(),
            parts.len() as libc::c_int,
            position as libc::off_t,
        )
    };
    let written = usize::try_from(written).map_err(|_| std::io::Error::last_os_error())?;
    // A short write (a signal, a full disk) is finished, or fails, one part at a time.
    if written < head.len() {
        file.write_all_at(&head[written..], position + written as u64)?;
        return file.write_all_at(tail, position + head.len() as u64);
    }
    let done = written - head.len();
    file.write_all_at(&tail[done..], position + written as u64)
}
