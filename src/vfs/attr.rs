//! Changing attributes: chmod, chown, truncate, utimens.

use crate::log::{LogPath, Op};
use crate::origin::{Stat, TimeSet, TimesUpdate};
use crate::types::Change;
use crate::types::Timestamp;
use crate::types::{FileKind, InodeId};

use super::change::Wait;
use super::{Attr, Result, Target, VfsError, Volume, Writer};

/// The attribute changes of one setattr call; `None` leaves a field as it is.
#[derive(Clone, Copy, Debug, Default)]
pub struct SetAttr {
    /// New permission bits.
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New size (regular files).
    pub size: Option<u64>,
    /// New access time.
    pub atime: Option<TimeSet>,
    /// New modification time.
    pub mtime: Option<TimeSet>,
}

impl Volume {
    /// Applies `changes` to `id` in the order a local filesystem would (owner first, since
    /// chown clears setuid bits that a mode in the same call must be able to set; times last,
    /// since truncating moves mtime). Uses the open `handle` when given. A truncation by
    /// `writer` drops setuid and setgid as a write by it would (the kernel leaves that to
    /// the filesystem: FUSE_HANDLE_KILLPRIV_V2).
    pub fn setattr(
        &self,
        writer: &Writer<'_>,
        id: InodeId,
        handle: Option<u64>,
        mut changes: SetAttr,
    ) -> Result<Attr> {
        let naming = self.naming()?;
        let times = TimesUpdate {
            atime: changes.atime,
            mtime: changes.mtime,
        };
        let has_times = times.atime.is_some() || times.mtime.is_some();
        let wait = if changes.size.is_some() {
            // Unflushed bytes must land first, or they would land past the new end; and
            // recovery must never replay them across it.
            Wait::Barrier
        } else if has_times {
            // Unflushed bytes must land first, or the flush would move mtime again.
            Wait::FileFlushed
        } else {
            Wait::Nothing
        };
        // The inode's turn also keeps writes to the file out until the change is made.
        let change = naming.inode(id, self.inode_path(id)?, wait, Some(cache_change(&changes)))?;
        let target = match self.target(id, handle) {
            // Under its writeback cache, the kernel writes back the times it kept of a file
            // it is dropping, whose every name is gone and no open holds: nothing shows it
            // any more, so there is nothing to set or record. An error here would be kept
            // as a writeback error of the whole mount, and fail a later syncfs(2).
            Err(VfsError::Stale(_))
                if changes.is_times_only()
                    && handle.is_none()
                    && self.writeback.load(std::sync::atomic::Ordering::Relaxed) =>
            {
                return Ok(self.forgotten_attr(id, &changes));
            }
            target => target?,
        };
        let mut stat = match &target {
            Target::Open(open) => {
                let file = &open.file;
                if changes.uid.is_some() || changes.gid.is_some() {
                    file.chown(changes.uid, changes.gid)?;
                }
                if let Some(mode) = changes.mode {
                    file.chmod(mode & 0o7777)?;
                }
                if let Some(size) = changes.size {
                    file.set_len(size)?;
                }
                if has_times {
                    file.set_times(times)?;
                }
                file.stat()?
            }
            Target::Place(located, stat) => {
                let at = located.at();
                if changes.uid.is_some() || changes.gid.is_some() {
                    self.origin.chown(at, changes.uid, changes.gid)?;
                }
                if let Some(mode) = changes.mode {
                    self.origin.chmod(at, mode & 0o7777)?;
                }
                if let Some(size) = changes.size {
                    if stat.kind() == Some(FileKind::Directory) {
                        return Err(VfsError::IsDirectory);
                    }
                    self.origin.truncate(at, size)?;
                }
                if has_times {
                    self.origin.set_times(at, times)?;
                }
                self.origin.stat(at)?
            }
        };
        let dropped = match changes.size {
            Some(_) if changes.mode.is_none() => writer.drops(stat.mode, stat.gid),
            _ => 0,
        };
        if dropped != 0 {
            let mode = stat.mode & 0o7777 & !dropped;
            stat = match &target {
                Target::Open(open) => {
                    open.file.chmod(mode)?;
                    open.file.stat()?
                }
                Target::Place(located, _) => {
                    self.origin.chmod(located.at(), mode)?;
                    self.origin.stat(located.at())?
                }
            };
            changes.mode = Some(mode);
        }
        change.made(|path| setattr_records(path, &changes, &stat))?;
        self.attr(id, &stat)
    }
}

impl SetAttr {
    /// Only times are set.
    fn is_times_only(&self) -> bool {
        self.mode.is_none() && self.uid.is_none() && self.gid.is_none() && self.size.is_none()
    }
}

impl Volume {
    /// What the kernel is told of `id` after it set `changes`' times on an object that no
    /// longer exists: its kind, no links, those times.
    fn forgotten_attr(&self, id: InodeId, changes: &SetAttr) -> Attr {
        let kind = self
            .table()
            .get(id)
            .map_or(FileKind::Regular, |inode| inode.kind);
        let time = |set: Option<TimeSet>| match set {
            Some(TimeSet::At(at)) => at,
            _ => std::time::SystemTime::now(),
        };
        let mtime = time(changes.mtime);
        Attr {
            id,
            kind,
            perm: 0,
            nlink: 0,
            uid: 0,
            gid: 0,
            rdev: 0,
            size: 0,
            blocks: 0,
            blksize: 4096,
            atime: time(changes.atime),
            mtime,
            ctime: mtime,
        }
    }
}

/// The records of what one setattr did: the size, then the other attributes as they now
/// are (so "now" becomes the time the origin took, the same on every copy).
fn setattr_records(path: LogPath, changes: &SetAttr, now: &Stat) -> Vec<Op> {
    let mut records = Vec::new();
    if let Some(size) = changes.size {
        records.push(Op::Truncate {
            path: path.clone(),
            size,
        });
    }
    let owner = changes.uid.is_some() || changes.gid.is_some();
    // Truncating moves mtime; the copies get the origin's.
    let mtime_moved = changes.mtime.is_some() || changes.size.is_some();
    if changes.mode.is_none() && !owner && changes.atime.is_none() && !mtime_moved {
        return records;
    }
    // A chown may clear setuid bits, so after one the mode is stated too; a symlink's
    // mode means nothing on Linux and no copy could set it.
    let mode_stated = (changes.mode.is_some() || owner) && now.kind() != Some(FileKind::Symlink);
    records.push(Op::SetAttr {
        path,
        mode: mode_stated.then_some(now.mode & 0o7777),
        uid: changes.uid.map(|_| now.uid),
        gid: changes.gid.map(|_| now.gid),
        atime: changes.atime.map(|_| Timestamp::from(now.atime)),
        mtime: mtime_moved.then(|| Timestamp::from(now.mtime)),
    });
    records
}

/// What a setattr did to the content, as the read cache must hear of it.
fn cache_change(changes: &SetAttr) -> Change {
    match changes.size {
        Some(size) => Change::Truncated(size),
        None => Change::Attributes,
    }
}
