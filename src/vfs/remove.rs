//! Removing and moving names: unlink, rmdir, rename.

use std::ffi::OsStr;

use crate::origin::At;
use crate::types::{FileKind, InodeId};

use super::{Result, Volume, name};

impl Volume {
    /// `unlink(2)`. Link hints that led here are dropped lazily, when next tried.
    pub fn unlink(&self, parent: InodeId, entry: &OsStr) -> Result<()> {
        let entry = name(entry)?;
        let parent_fd = self.dir_fd(parent)?;
        self.origin.unlink(At::Entry(&parent_fd, &entry))?;
        Ok(())
    }

    /// `rmdir(2)`. The removed directory's cached fd is dropped, because the origin may
    /// give its inode number to a new directory at once.
    pub fn rmdir(&self, parent: InodeId, entry: &OsStr) -> Result<()> {
        let entry = name(entry)?;
        let parent_fd = self.dir_fd(parent)?;
        let at = At::Entry(&parent_fd, &entry);
        let removed = self
            .origin
            .stat(at)
            .ok()
            .and_then(|stat| self.known_id(&stat));
        self.origin.rmdir(at)?;
        if let Some(id) = removed {
            self.evict_dir_fd(id);
        }
        Ok(())
    }

    /// `rename(2)` / `renameat2(2)` with RENAME_NOREPLACE or RENAME_EXCHANGE in `flags`.
    pub fn rename(
        &self,
        parent: InodeId,
        entry: &OsStr,
        new_parent: InodeId,
        new_entry: &OsStr,
        flags: u32,
    ) -> Result<()> {
        let entry = name(entry)?;
        let new_entry = name(new_entry)?;
        let parent_fd = self.dir_fd(parent)?;
        let new_parent_fd = self.dir_fd(new_parent)?;
        let from = At::Entry(&parent_fd, &entry);
        let to = At::Entry(&new_parent_fd, &new_entry);
        let moved = self.origin.stat(from)?;
        let replaced = self.origin.stat(to).ok();
        self.origin.rename(from, to, flags)?;

        let moved_id = self.known_id(&moved);
        let replaced_id = replaced.as_ref().and_then(|stat| self.known_id(stat));
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        let mut table = self.table();
        if let Some(id) = moved_id {
            table.drop_hint(id, parent, &entry);
            table.add_hint(id, new_parent, &new_entry);
        }
        if let Some(id) = replaced_id.filter(|id| Some(*id) != moved_id) {
            table.drop_hint(id, new_parent, &new_entry);
            if exchange {
                table.add_hint(id, parent, &entry);
            }
        }
        drop(table);
        let replaced_dir = replaced.is_some_and(|stat| stat.kind() == Some(FileKind::Directory));
        if let Some(id) = replaced_id.filter(|_| replaced_dir && !exchange) {
            self.evict_dir_fd(id);
        }
        Ok(())
    }
}
