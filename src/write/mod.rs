//! The write policy: where a volume's changes go once `vfs` has decided them. Every change
//! becomes a record in the volume's change log.
//!
//! - write-through: the origin has a change before its record is appended, so the log only
//!   holds changes that happened. A crash between the two leaves one change in the origin
//!   that the log lacks; its call never returned, so nothing acknowledged is missing.
//! - write-behind ([`behind`]): names and attributes are applied the same way; file data
//!   is appended to the log and kept in memory, and a flusher brings the origin up to date.
//!   Recovery ([`recover`]) replays what the flusher had not applied.

mod applied;
mod behind;
mod dirty;
mod follower;
mod recover;
mod snapshot;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLockReadGuard};
use std::thread::JoinHandle;
use std::time::SystemTime;

use crate::config::{LogConfig, WriteConfig, WriteMode};
use crate::durable;
use crate::log::{Log, LogError, LogOptions, LogPath, Op};
use crate::origin::{Origin, OriginFile};
use crate::types::InodeId;

use crate::tree::ApplyError;
pub use applied::{load as load_applied, store as store_applied};
pub use behind::BehindStatus;
use behind::{Overlay, Tuning, WriteBehind};
pub use follower::{FollowError, Follower};
pub use snapshot::SnapshotSource;

/// The leader epoch a new volume's log begins in (a promotion moves a log to the next).
const EPOCH_FIRST: u32 = 1;

/// Where the log lives inside a volume's state directory.
pub fn log_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("log")
}

/// Why the journal could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The log could not be opened or read.
    #[error("{0}")]
    Log(#[from] LogError),
    /// Recovery could not apply a record to the origin; it stays in the log.
    #[error("recovery stopped, the rest stays in the log: {0}")]
    Apply(#[from] ApplyError),
    /// The origin could not be made durable after recovery.
    #[error("origin: {0}")]
    Origin(io::Error),
    /// A state file could not be read or written.
    #[error("{path}: {source}")]
    State {
        /// Which file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

/// Why a write could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The origin refused (write-through).
    #[error("origin: {0}")]
    Origin(#[from] io::Error),
    /// The record could not be appended.
    #[error("change log: {0}")]
    Log(#[from] LogError),
}

/// Why changes could not be made durable.
#[derive(Debug, thiserror::Error)]
pub enum DurableError {
    /// The origin could not sync the file (write-through).
    #[error("origin: {0}")]
    Origin(#[from] io::Error),
    /// The log could not sync the records.
    #[error("change log: {0}")]
    Log(#[from] LogError),
    /// The followers do not hold them as the volume requires.
    #[error("replication: {0}")]
    Follow(#[from] FollowError),
}

/// A volume's change recorder: the log and the write policy around it.
#[derive(Debug)]
pub struct Journal {
    log: Arc<Log>,
    /// Told of every append; waited for by `durable`.
    follower: Option<Arc<dyn Follower>>,
    behind: Option<Arc<WriteBehind>>,
    /// What a snapshot for a new copy reads; also what a move of a name waits for.
    snapshot: SnapshotSource,
    flusher: Mutex<Option<JoinHandle<()>>>,
}

impl Journal {
    /// Opens the log in `state_dir`, replays into `origin` whatever an earlier write-behind
    /// daemon left unapplied, and starts the flusher for write-behind. `as_root` says the
    /// daemon may set owners when replaying.
    pub fn open(
        state_dir: &Path,
        write: &WriteConfig,
        log: &LogConfig,
        origin: Arc<Origin>,
        as_root: bool,
    ) -> Result<Journal, JournalError> {
        let log = Arc::new(Log::open(
            &log_dir(state_dir),
            LogOptions {
                segment_bytes: log.segment_bytes,
                epoch: EPOCH_FIRST,
            },
        )?);
        let applied_path = state_dir.join("applied");
        let state_error = |path: &Path| {
            let path = path.to_path_buf();
            move |source| JournalError::State { path, source }
        };
        let base_path = state_dir.join("log-base");
        let whole = match std::fs::read_to_string(&base_path) {
            Ok(text) => text.trim() == "whole",
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                // A new log holds the whole volume only if the origin was empty when it
                // began; otherwise a new copy of the volume needs a snapshot first.
                let stats = log.view().stats();
                let whole = stats.first_offset == 0
                    && stats.next_offset == 0
                    && origin.is_empty().map_err(state_error(origin.path()))?;
                let text = if whole { "whole\n" } else { "partial\n" };
                durable::replace(&base_path, text).map_err(state_error(&base_path))?;
                whole
            }
            Err(error) => return Err(state_error(&base_path)(error)),
        };
        let from = applied::load(&applied_path).map_err(state_error(&applied_path))?;
        if let Some(from) = from {
            recover::replay(&log, &origin, from, as_root)?;
        }
        let behind = match write.mode {
            WriteMode::WriteThrough => {
                durable::remove(&applied_path).map_err(state_error(&applied_path))?;
                None
            }
            WriteMode::WriteBehind => {
                applied::store(&applied_path, log.next_offset())
                    .map_err(state_error(&applied_path))?;
                let tuning = Tuning {
                    dirty_bytes_max: write.dirty_bytes_max,
                    flush_interval: write.flush_interval,
                };
                Some(Arc::new(WriteBehind::new(
                    Arc::clone(&log),
                    Arc::clone(&origin),
                    applied_path,
                    tuning,
                )))
            }
        };
        let flusher = behind.as_ref().map(|behind| {
            let behind = Arc::clone(behind);
            std::thread::Builder::new()
                .name("flusher".to_string())
                .spawn(move || behind.run_flusher())
                .expect("spawn the flusher thread")
        });
        let snapshot = SnapshotSource::new(
            origin,
            Arc::clone(&log),
            behind.as_ref().map(Arc::clone),
            whole,
        );
        Ok(Journal {
            log,
            follower: None,
            behind,
            snapshot,
            flusher: Mutex::new(flusher),
        })
    }

    /// Makes a copy just made in the origin (copy_file_range into `file`) as durable as
    /// its record will claim: under write-behind, fsync makes only the log durable, and a
    /// copy's record holds no bytes, so the copy goes to disk now.
    pub fn settle_copy(&self, file: &OriginFile) -> io::Result<()> {
        match self.behind {
            Some(_) => file.sync(true),
            None => Ok(()),
        }
    }

    /// The write policy.
    pub fn mode(&self) -> WriteMode {
        match self.behind {
            Some(_) => WriteMode::WriteBehind,
            None => WriteMode::WriteThrough,
        }
    }

    /// Makes `follower` follow the log from now on.
    pub fn follow(&mut self, follower: Arc<dyn Follower>) {
        self.follower = Some(follower);
    }

    /// Records `ops`, changes the origin already has, in one append to the log.
    pub fn record_all(&self, ops: &[Op]) -> Result<(), LogError> {
        if ops.is_empty() {
            return Ok(());
        }
        self.log.append_all(ops)?;
        self.appended();
        self.release_applied()
    }

    fn appended(&self) {
        if let Some(follower) = &self.follower {
            follower.appended();
        }
    }

    /// Makes every change recorded so far durable where the volume requires: `file`'s
    /// bytes in the origin (write-through; write-behind's are durable in the log), the
    /// records in the log, and held by the followers. `interrupted` says whether the
    /// caller has a signal pending.
    pub fn durable(
        &self,
        file: &OriginFile,
        data_only: bool,
        interrupted: &dyn Fn() -> bool,
    ) -> Result<(), DurableError> {
        if self.behind.is_none() {
            file.sync(data_only)?;
        }
        self.sync()?;
        if let Some(follower) = &self.follower {
            follower.hold(self.log.next_offset(), interrupted)?;
        }
        Ok(())
    }

    /// Why no change may be taken now, if the followers say none may.
    pub fn refuses(&self) -> Option<String> {
        self.follower
            .as_ref()
            .and_then(|follower| follower.refuses())
    }

    /// The daemon is stopping: waits for followers give up.
    pub fn stopping(&self) {
        if let Some(follower) = &self.follower {
            follower.stopping();
        }
    }

    /// Write-through: the origin is the only consumer so far, and it has everything, so
    /// sealed segments go. Write-behind's flusher deletes what it has applied.
    fn release_applied(&self) -> Result<(), LogError> {
        // One lock, and a no-op unless a segment was sealed since.
        if self.behind.is_none() {
            self.log.delete_before(u64::MAX)?;
        }
        Ok(())
    }

    /// Writes `data` at `position` of file `id`, open as `file` and named `path` (`None`
    /// once unlinked: then only the open file sees it, and it goes straight there).
    pub fn write(
        &self,
        id: InodeId,
        file: &Arc<OriginFile>,
        path: Option<LogPath>,
        position: u64,
        data: &[u8],
    ) -> Result<(), WriteError> {
        match (&self.behind, path) {
            (Some(behind), Some(path)) => {
                behind.write(id, file, path, position, data)?;
                self.appended();
                Ok(())
            }
            (_, path) => {
                file.write_at(data, position)?;
                if let Some(path) = path {
                    self.log.append_write(&path, position, data)?;
                    self.appended();
                    self.release_applied()?;
                }
                Ok(())
            }
        }
    }

    /// Unflushed bytes of `id` in `[position, position + len)` to lay over an origin read.
    pub fn overlay(&self, id: InodeId, position: u64, len: usize) -> Option<Overlay> {
        self.behind.as_ref()?.overlay(id, position, len)
    }

    /// End of `id`'s unflushed bytes and the time of its newest write.
    pub fn dirty_attr(&self, id: InodeId) -> Option<(u64, SystemTime)> {
        self.behind.as_ref()?.dirty_attr(id)
    }

    /// The modification time file `id` (open as `file`, whose stat said `stated`) has as
    /// the mount shows it: its newest unflushed write's, or the origin's. Never the moment
    /// of a flush under way (write-behind reads it again under the overlay's lock;
    /// write-through has no flush, and takes `stated` as it is).
    pub fn mtime(
        &self,
        id: InodeId,
        file: &OriginFile,
        stated: SystemTime,
    ) -> io::Result<SystemTime> {
        match &self.behind {
            Some(behind) => behind.mtime(id, file),
            None => Ok(stated),
        }
    }

    /// Brings `id`'s unflushed bytes into the origin now.
    pub fn flush_file(&self, id: InodeId) -> io::Result<()> {
        match &self.behind {
            Some(behind) => behind.flush_file(id),
            None => Ok(()),
        }
    }

    /// Write-behind: makes the origin hold every record so far, durably (see
    /// [`WriteBehind::barrier`]).
    pub fn barrier(&self) -> io::Result<()> {
        match &self.behind {
            Some(behind) => behind.barrier(),
            None => Ok(()),
        }
    }

    /// Brings every unflushed byte into the origin now.
    pub fn flush_all(&self) -> io::Result<()> {
        match &self.behind {
            Some(behind) => behind.flush_all(),
            None => Ok(()),
        }
    }

    /// Makes every change recorded so far durable in the log.
    pub fn sync(&self) -> Result<(), LogError> {
        match self.log.next_offset().checked_sub(1) {
            Some(last) => self.log.sync_to(last),
            None => Ok(()),
        }
    }

    /// What says, from any thread, below which offset the origin holds every record
    /// (write-through: all of them; write-behind: what the flusher has applied).
    pub fn applied_source(&self) -> impl Fn() -> u64 + Send + Sync + 'static {
        let log = Arc::clone(&self.log);
        let behind = self.behind.clone();
        move || match &behind {
            Some(behind) => behind.status().applied_offset,
            None => log.next_offset(),
        }
    }

    /// Write-behind's state, if this volume writes behind.
    pub fn behind_status(&self) -> Option<BehindStatus> {
        self.behind.as_ref().map(|behind| behind.status())
    }

    /// Flushes everything and stops the flusher (at unmount). What cannot be flushed stays
    /// in the log for the next mount to replay.
    pub fn shutdown(&self) {
        let Some(behind) = &self.behind else {
            return;
        };
        behind.stop();
        let flusher = self
            .flusher
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(flusher) = flusher
            && flusher.join().is_err()
        {
            tracing::error!("the flusher thread panicked; unflushed data stays in the log");
            return;
        }
        let status = behind.status();
        if status.dirty_bytes == 0 && status.applied_offset >= self.log.next_offset() {
            tracing::info!(
                applied = status.applied_offset,
                "write-behind flushed everything"
            );
        } else {
            tracing::warn!(
                dirty_bytes = status.dirty_bytes,
                applied = status.applied_offset,
                "unmounting with data not in the origin; it is in the log and the next mount replays it"
            );
        }
    }

    /// The log itself, for status and tests.
    pub fn log(&self) -> &Log {
        &self.log
    }

    /// What a snapshot of the volume for a new replica reads.
    pub fn snapshot_source(&self) -> SnapshotSource {
        self.snapshot.clone()
    }

    /// Held by a change that moves or removes a name, until its record is appended (see
    /// [`SnapshotSource::moving`]).
    pub fn moving(&self) -> RwLockReadGuard<'_, ()> {
        self.snapshot.moving()
    }
}
