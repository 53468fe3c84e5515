//! A point of the volume a snapshot can be read at: the origin held still enough that what
//! is read from it, followed by the log's records from one offset on, gives the volume.
//!
//! Records name objects by path, so a copy built from a snapshot follows the log only if
//! every path in the snapshot names the object the log's later records mean by it. While a
//! snapshot reads the origin, nothing may move or remove a name (rename, unlink and rmdir
//! wait; vfs takes [`SnapshotSource::moving`] for them). Everything else goes on: names
//! only appear, and content and attributes change, and each such change is a record at or
//! past the snapshot's offset that sets state, so replaying it over whatever the snapshot
//! saw leaves what the volume has.

use std::io;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::behind::WriteBehind;
use crate::log::Log;
use crate::origin::Origin;

/// The volume's origin and log, as a snapshot for a new copy reads them.
#[derive(Clone, Debug)]
pub struct SnapshotSource {
    origin: Arc<Origin>,
    log: Arc<Log>,
    behind: Option<Arc<WriteBehind>>,
    /// Read by every change that moves or removes a name; written by a snapshot.
    moves: Arc<RwLock<()>>,
    whole: bool,
}

/// The origin held still at a log offset, for as long as this lives.
#[derive(Debug)]
pub struct Frozen<'a> {
    _moves: RwLockWriteGuard<'a, ()>,
    /// Every record below this is in the origin; the copy follows the log from here.
    pub offset: u64,
    /// The origin to read.
    pub origin: &'a Origin,
}

impl SnapshotSource {
    pub(super) fn new(
        origin: Arc<Origin>,
        log: Arc<Log>,
        behind: Option<Arc<WriteBehind>>,
        whole: bool,
    ) -> SnapshotSource {
        SnapshotSource {
            origin,
            log,
            behind,
            moves: Arc::new(RwLock::new(())),
            whole,
        }
    }

    /// The change log.
    pub fn log(&self) -> &Arc<Log> {
        &self.log
    }

    /// Whether the log holds every change since the origin was empty, so that a new copy
    /// needs no snapshot.
    pub fn log_is_whole(&self) -> bool {
        self.whole
    }

    /// Held by a change that moves or removes a name, from before its path is taken until
    /// its record is appended: a snapshot waits for it, and it waits for a snapshot.
    pub fn moving(&self) -> RwLockReadGuard<'_, ()> {
        self.moves
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Holds the origin still and brings it up to the log's end: with write-behind, every
    /// record taken before this call is flushed into the origin first.
    pub fn freeze(&self) -> io::Result<Frozen<'_>> {
        let moves = self
            .moves
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Taken before the flush: every record below it is in the origin after the flush,
        // and later ones may or may not be, which replaying them makes right.
        let offset = self.log.next_offset();
        if let Some(behind) = &self.behind {
            behind.flush_all()?;
        }
        Ok(Frozen {
            _moves: moves,
            offset,
            origin: &self.origin,
        })
    }
}
