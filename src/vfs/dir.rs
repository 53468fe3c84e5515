//! Listing directories: opendir, readdir, readdirplus, releasedir, fsyncdir.

use std::ffi::OsStr;
use std::sync::{Arc, Mutex};

use crate::origin::{At, DirEntry, DirStream};
use crate::types::{FileId, FileKind, InodeId, Name};

use super::handles::DirHandle;
use super::{Attr, Result, VfsError, Volume};

/// One entry handed to a listing sink.
#[derive(Clone, Copy, Debug)]
pub struct ListedEntry<'a> {
    /// The number to list it with (its node id when known).
    pub ino: u64,
    /// The cookie that resumes the listing after it.
    pub next_offset: u64,
    /// Its type.
    pub kind: FileKind,
    /// Its name ("." and ".." included).
    pub name: &'a OsStr,
}

impl Volume {
    /// `opendir(3)`.
    pub fn opendir(&self, id: InodeId) -> Result<u64> {
        let dir = self.dir_fd(id)?;
        let stream = self.origin.open_dir_stream(At::Dir(&dir))?;
        Ok(self.dirs.insert(DirHandle {
            inode: id,
            stream: Mutex::new(stream),
        }))
    }

    /// Lists entries from `offset` on, passing each to `accept` until it returns false
    /// (the reply is full); that entry is then listed again by the next call.
    pub fn readdir(
        &self,
        handle: u64,
        offset: u64,
        mut accept: impl FnMut(&ListedEntry<'_>) -> bool,
    ) -> Result<()> {
        let open = self.dir_handle(handle)?;
        let dir = self.dir_fd(open.inode)?;
        let root_dev = self.origin.root_stat().dev;
        let mut stream = lock(&open.stream);
        stream.seek(offset)?;
        while let Some(entry) = stream.next_entry()? {
            let Some(kind) = self.entry_kind(&dir, &entry)? else {
                continue;
            };
            let ino = match entry.name.as_encoded_bytes() {
                b"." => open.inode.0,
                b".." => self.parent_of(open.inode).0,
                _ => self.table().listing_ino(FileId {
                    dev: root_dev,
                    ino: entry.ino,
                }),
            };
            let listed = ListedEntry {
                ino,
                next_offset: entry.next_offset,
                kind,
                name: &entry.name,
            };
            if !accept(&listed) {
                stream.unread();
                break;
            }
        }
        Ok(())
    }

    /// Like `readdir`, with each entry's attributes; every accepted entry other than "."
    /// and ".." counts as one lookup the kernel now holds (as the kernel counts it).
    pub fn readdirplus(
        &self,
        handle: u64,
        offset: u64,
        mut accept: impl FnMut(&ListedEntry<'_>, &Attr) -> bool,
    ) -> Result<()> {
        let open = self.dir_handle(handle)?;
        let dir = self.dir_fd(open.inode)?;
        let mut stream = lock(&open.stream);
        stream.seek(offset)?;
        while let Some(entry) = stream.next_entry()? {
            let dots = matches!(entry.name.as_encoded_bytes(), b"." | b"..");
            let (entry_name, stat) = if dots {
                (None, self.origin.stat_dir(&dir)?)
            } else {
                let entry_name = Name::new(&entry.name).map_err(VfsError::Name)?;
                match self.origin.stat(At::Entry(&dir, &entry_name)) {
                    Ok(stat) => (Some(entry_name), stat),
                    // Removed since it was listed: skip it, as a local listing would have.
                    Err(error) if crate::origin::gone(&error) => continue,
                    Err(error) => return Err(error.into()),
                }
            };
            let id = match (&entry_name, entry.name.as_encoded_bytes()) {
                (None, b".") => open.inode,
                (None, _) => self.parent_of(open.inode),
                (Some(_), _) => self.table().id_for(stat.id()),
            };
            let attr = self.attr(id, &stat)?;
            let listed = ListedEntry {
                ino: id.0,
                next_offset: entry.next_offset,
                kind: attr.kind,
                name: &entry.name,
            };
            if !accept(&listed, &attr) {
                stream.unread();
                break;
            }
            if let Some(entry_name) = entry_name {
                self.table().remember(open.inode, &entry_name, &stat);
            }
        }
        Ok(())
    }

    /// `closedir(3)`.
    pub fn releasedir(&self, handle: u64) -> Result<()> {
        self.dirs
            .remove(handle)
            .map(drop)
            .ok_or(VfsError::UnknownHandle(handle))
    }

    /// `fsync(2)` on a directory: makes its entries durable.
    pub fn fsyncdir(&self, id: InodeId) -> Result<()> {
        let dir = self.dir_fd(id)?;
        self.origin.sync_dir(At::Dir(&dir))?;
        Ok(self.journal().sync()?)
    }

    fn dir_handle(&self, handle: u64) -> Result<Arc<DirHandle>> {
        self.dirs.get(handle).ok_or(VfsError::UnknownHandle(handle))
    }

    /// The listed type, asking the origin when its listing does not say (DT_UNKNOWN).
    /// `None` when the entry vanished meanwhile.
    fn entry_kind(&self, dir: &crate::origin::DirFd, entry: &DirEntry) -> Result<Option<FileKind>> {
        if let Some(kind) = entry.kind {
            return Ok(Some(kind));
        }
        let Ok(entry_name) = Name::new(&entry.name) else {
            return Ok(Some(FileKind::Directory));
        };
        match self.origin.stat(At::Entry(dir, &entry_name)) {
            Ok(stat) => Ok(Some(stat.kind().ok_or(VfsError::UnsupportedKind)?)),
            Err(error) if crate::origin::gone(&error) => Ok(None),
            Err(error) => Err(error.into()),
        }
    }

    /// The parent directory of directory `id` as last seen (the root is its own parent).
    fn parent_of(&self, id: InodeId) -> InodeId {
        let table = self.table();
        table
            .get(id)
            .and_then(|inode| inode.links.first())
            .map_or(InodeId::ROOT, |(parent, _)| *parent)
    }
}

fn lock(stream: &Mutex<DirStream>) -> std::sync::MutexGuard<'_, DirStream> {
    stream
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
