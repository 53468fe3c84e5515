//! Removing and moving names: unlink, rmdir, rename.

use std::ffi::OsStr;

use crate::log::{LogPath, Op};
use crate::origin::{At, Stat};
use crate::types::Change;
use crate::types::{FileKind, InodeId};

use super::{Result, Volume, name};

impl Volume {
    /// `unlink(2)`.
    pub fn unlink(&self, parent: InodeId, entry: &OsStr) -> Result<()> {
        let naming = self.moving()?;
        let entry = name(entry)?;
        let path = self.entry_path(parent, &entry)?;
        let parent_fd = self.dir_fd(parent)?;
        self.origin.unlink(At::Entry(&parent_fd, &entry))?;
        let unlinked = self.table().drop_name(parent, &entry);
        // The inode number may soon name another file; its blocks must not be found.
        let changed: Vec<_> = unlinked
            .map(|id| (id, Change::Content))
            .into_iter()
            .collect();
        naming.entries_changed(&[(parent, &parent_fd)], &changed, [Op::Unlink { path }])
    }

    /// `rmdir(2)`. The removed directory's cached fd is dropped, because the origin may
    /// give its inode number to a new directory at once.
    pub fn rmdir(&self, parent: InodeId, entry: &OsStr) -> Result<()> {
        let naming = self.moving()?;
        let entry = name(entry)?;
        let path = self.entry_path(parent, &entry)?;
        let parent_fd = self.dir_fd(parent)?;
        let at = At::Entry(&parent_fd, &entry);
        let removed = self
            .origin
            .stat(at)
            .ok()
            .and_then(|stat| self.known_id(&stat));
        self.origin.rmdir(at)?;
        self.table().drop_name(parent, &entry);
        if let Some(id) = removed {
            self.evict_dir_fd(id);
        }
        naming.entries_changed(&[(parent, &parent_fd)], &[], [Op::Rmdir { path }])
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
        let naming = self.moving()?;
        let entry = name(entry)?;
        let new_entry = name(new_entry)?;
        let from_path = self.entry_path(parent, &entry)?;
        let to_path = self.entry_path(new_parent, &new_entry)?;
        let parent_fd = self.dir_fd(parent)?;
        let new_parent_fd = self.dir_fd(new_parent)?;
        let from = At::Entry(&parent_fd, &entry);
        let to = At::Entry(&new_parent_fd, &new_entry);
        let moved = self.origin.stat(from)?;
        let replaced = self.origin.stat(to).ok();
        self.flush_before_rename(&moved, replaced.as_ref())?;
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
        let mut changed = Vec::new();
        if let Some(id) = moved_id {
            changed.push((id, Change::Attributes));
        }
        if let Some(id) = replaced_id.filter(|id| Some(*id) != moved_id) {
            let change = if exchange {
                Change::Attributes
            } else {
                Change::Content
            };
            changed.push((id, change));
        }
        let replaced_dir = replaced.is_some_and(|stat| stat.kind() == Some(FileKind::Directory));
        if let Some(id) = replaced_id.filter(|_| replaced_dir && !exchange) {
            self.evict_dir_fd(id);
        }
        let records = if exchange {
            exchange_records(from_path, to_path)?
        } else {
            vec![Op::Rename {
                from: from_path,
                to: to_path,
                flags,
            }]
        };
        let parent_dirs = [(parent, &parent_fd), (new_parent, &new_parent_fd)];
        let dirs = if new_parent == parent {
            &parent_dirs[..1]
        } else {
            &parent_dirs[..]
        };
        naming.entries_changed(dirs, &changed, records)
    }

    /// Write-behind: makes a rename safe to lose in a crash. Recovery finds a file's
    /// bytes by following the log's renames, and the origin is renamed before the record
    /// is appended. If the daemon dies between the two:
    /// - the moved file's bytes would be replayed at its old name, which no longer exists,
    ///   so they must already be in the origin: flushed first;
    /// - a replaced file's older writes would be replayed into the file that now has its
    ///   name, so no record older than the rename may be replayed at all: a barrier.
    fn flush_before_rename(&self, moved: &Stat, replaced: Option<&Stat>) -> Result<()> {
        if replaced.is_some() {
            return Ok(self.journal().barrier()?);
        }
        if moved.kind() == Some(FileKind::Directory) {
            return Ok(self.journal().flush_all()?);
        }
        let id = self.table().id_of(moved.id());
        if let Some(id) = id {
            self.journal().flush_file(id)?;
        }
        Ok(())
    }
}

/// The records of RENAME_EXCHANGE: three plain renames through a temporary name beside
/// `from`, because a swap applied twice swaps back, while each plain rename applied twice
/// in a row finds its source gone and does nothing.
fn exchange_records(from: LogPath, to: LogPath) -> Result<Vec<Op>> {
    let unique =
        blake3::hash(format!("{from}\0{to}\0{:?}", std::time::SystemTime::now()).as_bytes());
    let temporary_name = format!(".mirrorfs-exchange-{}", &unique.to_hex()[..16]);
    let mut parent = from.components().collect::<Vec<_>>();
    parent.pop();
    let temporary = LogPath::try_from(parent.join(&b'/'))?.join(temporary_name.as_bytes())?;
    Ok([
        (from.clone(), temporary.clone()),
        (to.clone(), from),
        (temporary, to),
    ]
    .into_iter()
    .map(|(from, to)| Op::Rename { from, to, flags: 0 })
    .collect())
}
