//! Write-behind: a write returns once its record is in the log; its bytes stay there, mapped
//! by each file's dirty extents, until a flusher thread copies them to the origin, oldest
//! file first, adjacent extents merged into large writes.
//!
//! - Reads see unflushed bytes: the overlay of dirty extents is taken before the origin is
//!   read, and an extent leaves the overlay only after it is in the origin.
//! - Back-pressure: past `dirty_bytes_max`, writers wait for the flusher; never fail.
//! - The applied offset (every record below it is in the origin, durably) is written to
//!   `state_dir/applied` after each flush round; recovery replays from there.
//! - An origin that fails keeps the bytes here and in the log; the flusher retries.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use crate::log::{Log, LogError, LogPath};
use crate::origin::{Origin, OriginFile, TimeSet, TimesUpdate};
use crate::types::InodeId;

use super::applied;
use super::dirty::{DirtyFile, Extent};

/// After a failed flush, the flusher waits this long before trying again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Writes at least this large have their log bytes sent to disk at once (small ones wait
/// for the kernel's writeback or an fsync, as they would on a local filesystem).
const WRITEBACK_EARLY_MIN: usize = 128 << 10;

/// Adjacent dirty extents are gathered into one origin write of up to this many bytes.
const FLUSH_WRITE_MAX: u64 = 8 << 20;

/// How a write-behind volume is tuned.
#[derive(Clone, Copy, Debug)]
pub struct Tuning {
    /// Unflushed bytes beyond which writers wait.
    pub dirty_bytes_max: u64,
    /// The longest a change waits before the origin gets it.
    pub flush_interval: Duration,
}

/// What write-behind is holding and how flushing goes, for `mirrorfs status`.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct BehindStatus {
    /// Bytes written through the mount and not yet in the origin.
    pub dirty_bytes: u64,
    /// Files holding them.
    pub dirty_files: usize,
    /// Every record below this offset is durably in the origin.
    pub applied_offset: u64,
    /// Bytes the flusher has written to the origin since mount.
    pub flushed_bytes: u64,
    /// The last flush failure, while flushing keeps failing.
    pub flush_error: Option<String>,
}

/// The write-behind state of one volume.
#[derive(Debug)]
pub struct WriteBehind {
    log: Arc<Log>,
    origin: Arc<Origin>,
    applied_path: PathBuf,
    tuning: Tuning,
    state: Mutex<State>,
    /// Signalled whenever dirty bytes shrink, flushing is asked for, or stopping begins.
    changed: Condvar,
    /// One file is flushed at a time, so older bytes of a file never land after a
    /// newer one.
    flush_turn: Mutex<()>,
    /// One applied offset is stored at a time (the flusher's and a barrier's), so the file
    /// never goes back to an older value and its temporary file has one writer.
    storing_applied: Mutex<()>,
}

#[derive(Debug, Default)]
struct State {
    files: HashMap<InodeId, Pending>,
    bytes: u64,
    /// Flush now, not when the interval is up (a writer waits for space).
    urgent: bool,
    stopping: bool,
    status: BehindStatus,
}

/// One file's unflushed bytes and a descriptor to write them through (it reaches the file
/// whatever has happened to its names since).
#[derive(Debug)]
struct Pending {
    dirty: DirtyFile,
    file: Arc<OriginFile>,
    since: Instant,
}

/// Unflushed bytes of one file that a read must lay over what the origin returns; taken
/// before the origin is read.
#[derive(Debug)]
pub struct Overlay {
    extents: Vec<(u64, Extent)>,
    end: u64,
}

impl Overlay {
    /// Lays the dirty bytes over `buffer`, whose first `read` bytes came from the origin
    /// at `position`, and returns how many bytes of `buffer` the file now has.
    pub fn apply(&self, position: u64, buffer: &mut [u8], read: usize) -> io::Result<usize> {
        let wanted_end = position + buffer.len() as u64;
        let end = (position + read as u64).max(self.end.min(wanted_end));
        let len = (end - position) as usize;
        // Past the origin's end and before the dirty bytes is a hole.
        buffer[read.min(len)..len].fill(0);
        for (from, extent) in &self.extents {
            let at = (from - position) as usize;
            extent.read(0, &mut buffer[at..at + extent.len as usize])?;
        }
        Ok(len)
    }
}

impl WriteBehind {
    /// Write-behind over `origin`, recording in `log`, with `applied` offset kept at
    /// `applied_path` (already recovered: everything in the log is in the origin).
    pub fn new(
        log: Arc<Log>,
        origin: Arc<Origin>,
        applied_path: PathBuf,
        tuning: Tuning,
    ) -> WriteBehind {
        let applied_offset = log.next_offset();
        WriteBehind {
            log,
            origin,
            applied_path,
            tuning,
            state: Mutex::new(State {
                status: BehindStatus {
                    applied_offset,
                    ..BehindStatus::default()
                },
                ..State::default()
            }),
            changed: Condvar::new(),
            flush_turn: Mutex::new(()),
            storing_applied: Mutex::new(()),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records `data` written at `position` of file `id` (open as `file`, named `path`)
    /// and keeps it until flushed. Waits while the dirty bytes are at their limit.
    pub fn write(
        &self,
        id: InodeId,
        file: &Arc<OriginFile>,
        path: LogPath,
        position: u64,
        data: &[u8],
    ) -> Result<(), LogError> {
        let mut state = self.state();
        while state.bytes > 0 && state.bytes + data.len() as u64 > self.tuning.dirty_bytes_max {
            state.urgent = true;
            self.changed.notify_all();
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        // Appended under the state lock, so the overlay and the log agree on order.
        let appended = self.log.append_write(&path, position, data)?;
        let extent_writeback = appended.clone();
        let extent = Extent {
            source: appended.file,
            source_position: appended.end - data.len() as u64,
            len: data.len() as u64,
            record: appended.offset,
        };
        let pending = state.files.entry(id).or_insert_with(|| Pending {
            dirty: DirtyFile::new(),
            file: Arc::clone(file),
            since: Instant::now(),
        });
        let grown = pending.dirty.write(position, extent, SystemTime::now());
        state.bytes = state.bytes.saturating_add_signed(grown);
        if state.bytes > self.tuning.dirty_bytes_max / 2 {
            // Start early so writers rarely have to wait.
            state.urgent = true;
            self.changed.notify_all();
        }
        drop(state);
        // The bytes will be fsynced soon if the writer cares; let the disk start now,
        // while the next write travels through FUSE.
        if data.len() >= WRITEBACK_EARLY_MIN {
            extent_writeback.start_writeback(data.len() as u64);
        }
        Ok(())
    }

    /// The unflushed bytes of `id` within `[position, position + len)`, if any.
    pub fn overlay(&self, id: InodeId, position: u64, len: usize) -> Option<Overlay> {
        let state = self.state();
        let dirty = &state.files.get(&id)?.dirty;
        Some(Overlay {
            extents: dirty.overlapping(position, position + len as u64),
            end: dirty.end(),
        })
    }

    /// The end of `id`'s unflushed bytes and the time of its newest write, if it has any.
    pub fn dirty_attr(&self, id: InodeId) -> Option<(u64, SystemTime)> {
        let state = self.state();
        let dirty = &state.files.get(&id)?.dirty;
        Some((dirty.end(), dirty.mtime))
    }

    /// `id`'s modification time: its newest unflushed write's, or else the origin's, read
    /// under the overlay's lock, which a flush holds while it gives the origin that time
    /// back and lets the file go.
    pub fn mtime(&self, id: InodeId, file: &OriginFile) -> io::Result<SystemTime> {
        let state = self.state();
        match state.files.get(&id) {
            Some(pending) => Ok(pending.dirty.mtime),
            None => Ok(file.stat()?.mtime),
        }
    }

    /// Writes `id`'s unflushed bytes to the origin now (before a change that must come
    /// after them: truncate, explicit times, rename).
    pub fn flush_file(&self, id: InodeId) -> io::Result<()> {
        self.flush_one(id, false)
    }

    /// Copies `id`'s unflushed bytes to the origin; with `durable`, also fdatasyncs them.
    /// The flusher thread asks for that: the sync then runs in this thread, so it is paced
    /// (and, in the benchmark, throttled) like the daemon's other I/O, not by the kernel's
    /// writeback threads.
    fn flush_one(&self, id: InodeId, durable: bool) -> io::Result<()> {
        let _turn = self
            .flush_turn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (file, written) = {
            let state = self.state();
            match state.files.get(&id) {
                Some(pending) => (Arc::clone(&pending.file), pending.dirty.to_flush()),
                None => return Ok(()),
            }
        };
        copy_out(&written, &file)?;
        if durable {
            file.sync(true)?;
        }
        let mut state = self.state();
        let Some(pending) = state.files.get_mut(&id) else {
            return Ok(());
        };
        let dropped = pending.dirty.forget_written(&written);
        let clean = pending.dirty.is_empty();
        if clean {
            // The origin took the time of the flush; the file's is that of its last write.
            // Set before the file leaves the overlay, whose mtime everyone is shown until
            // then: nobody ever sees the flush's time.
            let mtime = pending.dirty.mtime;
            file.set_times(TimesUpdate {
                atime: None,
                mtime: Some(TimeSet::At(mtime)),
            })?;
            state.files.remove(&id);
        } else {
            // What is left was written since it was taken: its own interval starts now.
            pending.since = Instant::now();
        }
        state.bytes -= dropped;
        state.status.flushed_bytes += dropped;
        self.changed.notify_all();
        Ok(())
    }

    /// Brings every unflushed byte into the origin and moves the stored applied offset past
    /// every record so far, before a change recovery must never replay older content
    /// records across: a truncate or fallocate is made in the origin before its record
    /// is appended, and if the daemon died between the two, replaying earlier writes of
    /// the file over it would bring back bytes it cut.
    pub fn barrier(&self) -> io::Result<()> {
        self.flush_each(false)?;
        self.advance_applied()
    }

    /// Writes every file's unflushed bytes to the origin now (before a directory moves).
    pub fn flush_all(&self) -> io::Result<()> {
        self.flush_each(false)
    }

    fn flush_each(&self, durable: bool) -> io::Result<()> {
        for id in self.dirty_ids() {
            self.flush_one(id, durable)?;
        }
        Ok(())
    }

    /// Dirty files, the one holding the oldest record first.
    fn dirty_ids(&self) -> Vec<InodeId> {
        let state = self.state();
        let mut ids: Vec<(u64, InodeId)> = state
            .files
            .iter()
            .map(|(id, pending)| (pending.dirty.first_record().unwrap_or(u64::MAX), *id))
            .collect();
        ids.sort_unstable();
        ids.into_iter().map(|(_, id)| id).collect()
    }

    /// Where flushing stands.
    pub fn status(&self) -> BehindStatus {
        let state = self.state();
        BehindStatus {
            dirty_bytes: state.bytes,
            dirty_files: state.files.len(),
            ..state.status.clone()
        }
    }

    /// The flusher thread's body: flush when the oldest change is `flush_interval` old or
    /// when asked, until stopped with nothing left to flush.
    pub fn run_flusher(&self) {
        loop {
            if !self.wait_for_work() {
                return;
            }
            let outcome = self.flush_each(true).and_then(|()| self.advance_applied());
            let mut state = self.state();
            match outcome {
                Ok(()) => state.status.flush_error = None,
                Err(error) => {
                    tracing::error!(%error, "write-behind flush failed; the data stays in the log and is retried");
                    state.status.flush_error = Some(error.to_string());
                    if state.stopping {
                        // Unmounting: what is left is in the log, replayed at next mount.
                        return;
                    }
                    let _ = self
                        .changed
                        .wait_timeout(state, RETRY_AFTER)
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                }
            }
        }
    }

    /// Waits until flushing is due; false once stopping with nothing dirty.
    fn wait_for_work(&self) -> bool {
        let mut state = self.state();
        loop {
            if state.stopping {
                return !state.files.is_empty()
                    || self.log.next_offset() > state.status.applied_offset;
            }
            let oldest = state.files.values().map(|pending| pending.since).min();
            let due = oldest.map(|since| since + self.tuning.flush_interval);
            if state.urgent || due.is_some_and(|due| due <= Instant::now()) {
                state.urgent = false;
                return true;
            }
            let timeout = due.map_or(self.tuning.flush_interval, |due| {
                due.saturating_duration_since(Instant::now())
            });
            state = self
                .changed
                .wait_timeout(state, timeout)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }

    /// Makes what was flushed durable in the origin and moves the applied offset past it,
    /// which lets the log delete what no consumer needs.
    fn advance_applied(&self) -> io::Result<()> {
        let _turn = self
            .storing_applied
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let applied = {
            let state = self.state();
            state
                .files
                .values()
                .filter_map(|pending| pending.dirty.first_record())
                .min()
                .unwrap_or_else(|| self.log.next_offset())
        };
        if applied <= self.state().status.applied_offset {
            return Ok(());
        }
        self.origin.sync_filesystem()?;
        applied::store(&self.applied_path, applied)?;
        self.state().status.applied_offset = applied;
        if let Err(error) = self.log.delete_before(applied) {
            tracing::warn!(%error, "could not delete applied log segments");
        }
        Ok(())
    }

    /// Asks the flusher to write everything out and stop.
    pub fn stop(&self) {
        self.state().stopping = true;
        self.changed.notify_all();
    }
}

/// Copies `extents` (by file position, ascending) from the log to `file`, gathering runs
/// of adjacent extents into writes of up to [`FLUSH_WRITE_MAX`] bytes.
fn copy_out(extents: &[(u64, Extent)], file: &OriginFile) -> io::Result<()> {
    let mut buffer: Vec<u8> = Vec::new();
    let mut run_start = 0;
    for (start, extent) in extents {
        let adjacent = run_start + buffer.len() as u64 == *start;
        if !buffer.is_empty() && (!adjacent || buffer.len() as u64 + extent.len > FLUSH_WRITE_MAX) {
            file.write_at(&buffer, run_start)?;
            buffer.clear();
        }
        if buffer.is_empty() {
            run_start = *start;
        }
        let at = buffer.len();
        buffer.resize(at + extent.len as usize, 0);
        extent.read(0, &mut buffer[at..])?;
    }
    if !buffer.is_empty() {
        file.write_at(&buffer, run_start)?;
    }
    Ok(())
}
