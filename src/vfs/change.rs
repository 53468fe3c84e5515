//! The order every change through the mount follows, written once:
//!
//! 1. [`Naming`]: the names lock, from before the change takes a path until its records are
//!    appended (shared; exclusive for a change that moves or removes names), so no record
//!    carries a path that a move recorded before it has made wrong.
//! 2. [`InodeChange`], for a change to one inode: the inode's turn, then what write-behind
//!    must bring into the origin first ([`Wait`]), then the stored hashes marked.
//! 3. The caller changes the origin.
//! 4. [`InodeChange::made`] or [`Naming::entries_changed`]: the read cache hears of it,
//!    then the records are appended; a directory whose entries changed gets its new mtime
//!    recorded last.
//!
//! Each guard is released in the reverse order, after the records are appended.

use std::sync::{MutexGuard, RwLockReadGuard, RwLockWriteGuard};

use crate::cache::Change;
use crate::log::{LogPath, Op};
use crate::manifest::Changing;
use crate::origin::DirFd;
use crate::types::{FileId, FileKind, InodeId};

use super::{INODE_TURNS, Result, Volume};

/// What write-behind must bring into the origin before a change to an inode is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Wait {
    /// Nothing: the change does not touch what unflushed bytes touch.
    Nothing,
    /// The inode's unflushed bytes, which would otherwise move its mtime again.
    FileFlushed,
    /// Every record so far, durably: the change moves bytes under unflushed ones (truncate,
    /// fallocate), which recovery must never replay across it.
    Barrier,
}

/// Step 1 of a change: held from before it takes a path until its records are appended.
/// Public operations take it once, at their start; nothing they call takes it again (a
/// waiting mover would make a second shared take wait forever).
pub(super) struct Naming<'v> {
    volume: &'v Volume,
    _held: Held<'v>,
}

/// The names lock, as a [`Naming`] holds it.
enum Held<'v> {
    /// A change that keeps every name where it is.
    Shared { _names: RwLockReadGuard<'v, ()> },
    /// A change that moves or removes names: it waits for changes that took a path to
    /// record it, and for a snapshot being read for a new replica.
    Moving {
        _snapshot: RwLockReadGuard<'v, ()>,
        _names: RwLockWriteGuard<'v, ()>,
    },
}

/// Steps 2 to 4 of a change to one inode; see the module doc.
pub(super) struct InodeChange<'n, H: Fn() -> u64> {
    volume: &'n Volume,
    id: InodeId,
    path: Option<LogPath>,
    effect: Option<Change>,
    /// The inode's origin identity, looked up once for the stored hashes and the cache.
    key: Option<FileId>,
    // Dropped after the records are appended: the file is rehashed from then on.
    _hashing: Option<Changing<'n, H>>,
    _turn: MutexGuard<'n, ()>,
}

impl Volume {
    /// Step 1 of a change that keeps every name where it is.
    pub(super) fn naming(&self) -> Result<Naming<'_>> {
        self.check_open()?;
        Ok(self.naming_unchecked())
    }

    /// Step 1 of recording what completes a change already made (a release's mtime, which
    /// the copies need to end where the origin is): refused as any change is, except while
    /// the primary only lacks its lease (docs/design.md 9.8). A record appended then is
    /// acknowledged by nobody, and is cut back if another primary was elected meanwhile;
    /// refusing it would leave the copies' mtime apart for good once the lease is back.
    pub(super) fn naming_to_complete(&self) -> Result<Naming<'_>> {
        self.check_open_but_the_lease()?;
        Ok(self.naming_unchecked())
    }

    fn naming_unchecked(&self) -> Naming<'_> {
        let names = self
            .names
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Naming {
            volume: self,
            _held: Held::Shared { _names: names },
        }
    }

    /// Step 1 of a change that moves or removes names (rename, unlink, rmdir, repairs).
    pub(super) fn moving(&self) -> Result<Naming<'_>> {
        self.check_open()?;
        let snapshot = self.journal().moving();
        let names = self
            .names
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Ok(Naming {
            volume: self,
            _held: Held::Moving {
                _snapshot: snapshot,
                _names: names,
            },
        })
    }

    /// Waits until every change made to the origin through the mount so far has its record
    /// in the log: each change holds the names lock from its origin change to its append,
    /// and this takes it exclusively for a moment. A check that sees the origin changed
    /// then finds the change's record.
    pub fn settle_records(&self) {
        drop(
            self.names
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
    }

    /// Held from a change to inode `id` in the origin until its record is appended, and
    /// around reading an attribute of `id` to record it, so the copies learn of one inode's
    /// changes in the order the origin took them: two at once (a release recording a
    /// file's mtime as rsync sets it, two creates stating their directory) could otherwise
    /// be recorded the other way round, and leave every copy with the older value. Taken
    /// after the names lock, never while holding another inode's turn.
    fn inode_turn(&self, id: InodeId) -> MutexGuard<'_, ()> {
        self.inode_turns[(id.0 % INODE_TURNS as u64) as usize]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Tells the read cache, and the stored hashes, of a change made to `id` through the
    /// mount that did not mark the stored hashes before it was made: they only learn that
    /// the file's ctime moved.
    fn cache_changed(&self, id: InodeId, change: Change) {
        if self.hashes.is_some() {
            let path = self.inode_path(id).ok().flatten();
            drop(self.hashing(id, path.as_ref(), &Change::Attributes));
        }
        self.cache_heard(id, change);
    }

    /// Tells the read cache of a change made to `id` through the mount.
    fn cache_heard(&self, id: InodeId, change: Change) {
        let Some(cache) = &self.cache else {
            return;
        };
        let key = self.table().get(id).map(|inode| inode.key);
        if let Some(key) = key {
            cache.changed(key, change);
        }
    }

    /// Marks a change about to be made to regular file `id` (named `path`) in the stored
    /// hashes; the file is rehashed once the guard is dropped (after the change's record)
    /// and the origin holds the change.
    fn hashing<'s>(
        &'s self,
        id: InodeId,
        path: Option<&LogPath>,
        change: &Change,
    ) -> Option<Changing<'s, impl Fn() -> u64 + use<'s>>> {
        let hashes = self.hashes.as_ref()?;
        let key = self
            .table()
            .get(id)
            .filter(|inode| inode.kind == FileKind::Regular)?
            .key;
        let log = self.journal().log();
        Some(hashes.changing(key, path, change, move || log.next_offset()))
    }

    /// Appends a record of a change the origin now has.
    pub(super) fn record(&self, op: Op) -> Result<()> {
        self.record_all(std::slice::from_ref(&op))
    }

    /// Records `ops`, in order, in one append.
    pub(super) fn record_all(&self, ops: &[Op]) -> Result<()> {
        self.journal()
            .record_all(ops)
            .map_err(|error| self.log_failed(error))
    }
}

impl<'v> Naming<'v> {
    /// Step 2 of a change to inode `id`, named `path` in the log (`None`: an unlinked file
    /// still open, which no copy can see, so nothing is recorded): its turn, what write-
    /// behind must bring in first, and, for a change to content, the stored hashes marked.
    /// `effect` is what the read cache will hear of; `None` for a change that only records
    /// an attribute the origin already has.
    pub(super) fn inode(
        &self,
        id: InodeId,
        path: Option<LogPath>,
        wait: Wait,
        effect: Option<Change>,
    ) -> Result<InodeChange<'v, impl Fn() -> u64 + use<'v>>> {
        let volume = self.volume;
        let turn = volume.inode_turn(id);
        match wait {
            Wait::Nothing => {}
            Wait::FileFlushed => volume.journal().flush_file(id)?,
            Wait::Barrier => volume.journal().barrier()?,
        }
        // One look at the table, for the hashes and the cache both: a write comes here.
        let known = (volume.hashes.is_some() || volume.cache.is_some())
            .then(|| volume.table().get(id).map(|inode| (inode.kind, inode.key)))
            .flatten();
        let hashing = match (&effect, &volume.hashes, known) {
            (Some(Change::Attributes) | None, _, _) => None,
            (Some(content), Some(hashes), Some((FileKind::Regular, key))) => {
                let log = volume.journal().log();
                Some(hashes.changing(key, path.as_ref(), content, move || log.next_offset()))
            }
            _ => None,
        };
        Ok(InodeChange {
            volume,
            id,
            path,
            effect,
            key: known.map(|(_, key)| key),
            _hashing: hashing,
            _turn: turn,
        })
    }

    /// Step 4 of a change to names in directory `dir` (open as `dir_fd`) and perhaps
    /// `other` (a rename's second directory): the read cache hears of the inodes
    /// `changed`, `records` are appended, then each directory's new modification time
    /// (copies make the change later than the origin did, and would keep their own time).
    pub(super) fn entries_changed(
        &self,
        dirs: &[(InodeId, &DirFd)],
        changed: &[(InodeId, Change)],
        records: impl IntoIterator<Item = Op>,
    ) -> Result<()> {
        let volume = self.volume;
        for (id, change) in changed {
            volume.cache_changed(*id, change.clone());
        }
        // One append for the records and the first directory's time (one syscall where
        // a change takes four); the second directory's turn is taken after the first's.
        let mut ops: Vec<Op> = records.into_iter().collect();
        for (dir, dir_fd) in dirs {
            let path = volume.dir_path(*dir)?;
            // Read and recorded in the directory's turn: see `inode_turn`.
            let _turn = volume.inode_turn(*dir);
            let mtime = volume.origin.stat_dir(dir_fd)?.mtime;
            ops.push(Op::set_mtime(path, mtime));
            volume.record_all(&std::mem::take(&mut ops))?;
        }
        volume.record_all(&ops)
    }
}

impl<H: Fn() -> u64> InodeChange<'_, H> {
    /// The path the change is recorded under, if any.
    pub(super) fn path(&self) -> Option<&LogPath> {
        self.path.as_ref()
    }

    /// Step 4: the origin holds the change. The read cache hears of it, then the records
    /// `records` makes of the inode's path are appended (none without a path).
    pub(super) fn made(self, records: impl FnOnce(LogPath) -> Vec<Op>) -> Result<()> {
        match &self.effect {
            None => {}
            // The stored hashes learn that the file's ctime moved.
            Some(Change::Attributes) => self.volume.cache_changed(self.id, Change::Attributes),
            // A content change marked the stored hashes before it was made (a regular
            // file, with hashes kept): the cache is all that is left to tell.
            Some(content) => {
                if let (Some(cache), Some(key)) = (&self.volume.cache, self.key) {
                    cache.changed(key, content.clone());
                }
            }
        }
        let Some(path) = self.path.clone() else {
            return Ok(());
        };
        self.volume.record_all(&records(path))
    }
}

/// The record that `path` has permission bits `mode` (changed as a side effect the copies
/// would not repeat: setgid dropped by fallocate or an access ACL).
pub(super) fn set_mode(path: LogPath, mode: u32) -> Op {
    Op::SetAttr {
        path,
        mode: Some(mode),
        uid: None,
        gid: None,
        atime: None,
        mtime: None,
    }
}
