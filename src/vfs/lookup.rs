//! Finding inodes: lookup, forget, getattr, readlink, access, statfs.

use std::ffi::OsStr;

use crate::origin::{At, FsStats};
use crate::types::{FileKind, InodeId};

use super::{Attr, Result, Target, VfsError, Volume, name};

impl Volume {
    /// The entry `name` of directory `parent`; the kernel then holds one more lookup on it.
    pub fn lookup(&self, parent: InodeId, entry: &OsStr) -> Result<Attr> {
        let entry = name(entry)?;
        let parent_fd = self.dir_fd(parent)?;
        let stat = self.origin.stat(At::Entry(&parent_fd, &entry))?;
        let id = self.table().remember(parent, &entry, &stat);
        self.attr(id, &stat)
    }

    /// The kernel returns `count` lookups of `id`.
    pub fn forget(&self, id: InodeId, count: u64) {
        // Only a directory can have a cached fd; files skip the cache's lock.
        if self.table().forget(id, count) == Some(FileKind::Directory) {
            self.evict_dir_fd(id);
        }
    }

    /// Current attributes of `id`, through the open handle `handle` when given (which works
    /// even after the file's last name is gone).
    pub fn getattr(&self, id: InodeId, handle: Option<u64>) -> Result<Attr> {
        let stat = match self.target(id, handle) {
            Ok(Target::Place(_, stat)) => stat,
            Ok(Target::Open(open)) => open.file.stat()?,
            // A directory whose every name is gone, still open: fstat(2) of it answers on
            // a local filesystem (the kernel sends no handle for a directory's getattr).
            Err(VfsError::Stale(number)) => {
                let open = self
                    .dirs
                    .find(|open| open.inode == id)
                    .ok_or(VfsError::Stale(number))?;
                let stream = open
                    .stream
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                stream.stat()?
            }
            Err(error) => return Err(error),
        };
        self.attr(id, &stat)
    }

    /// The target of symlink `id`.
    pub fn readlink(&self, id: InodeId) -> Result<Vec<u8>> {
        let (located, _) = self.locate(id)?;
        Ok(self.origin.readlink(located.at())?)
    }

    /// `access(2)`. The kernel checks permissions itself (default_permissions), so only
    /// reaching here means the mount was made without it; answer for existence.
    pub fn access(&self, id: InodeId) -> Result<()> {
        self.locate(id).map(drop)
    }

    /// Filesystem figures of the origin's filesystem.
    pub fn statfs(&self) -> Result<FsStats> {
        Ok(self.origin.statfs()?)
    }
}
