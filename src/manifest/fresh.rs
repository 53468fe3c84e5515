//! Reading a copy's files afresh: the content check's side of the manifest. Each file is
//! hashed with its stamp taken before and after, so what is compared is content that held
//! still while it was read; hashes of a file that had none stored become its stored ones.

use std::io;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use crate::log::LogPath;
use crate::origin::{At, DirFd, Origin, OriginFile};
use crate::tree::place;
use crate::types::{FileId, FileKind, Name, Stamp};

use super::chunks::FileHashes;
use super::content::FileContent;
use super::entry::Stored;
use super::store::HashStore;

/// A file read afresh.
#[derive(Clone, Debug)]
pub struct Fresh {
    /// Its identity in the copy.
    pub key: FileId,
    /// Its stamp while it was read.
    pub stamp: Stamp,
    /// Its content's hashes now.
    pub hashes: FileHashes,
    /// What the copy had stored for it, where that was current when it was read.
    pub stored: Option<Stored>,
}

/// Times a file that changes while it is read is read again before giving up.
const ATTEMPTS: usize = 3;

/// Opens a copy's files by path for reading, keeping the last directory open: the files a
/// check reads come directory by directory.
pub struct Files<'a> {
    copy: &'a Origin,
    last: Option<(Vec<u8>, DirFd)>,
}

impl<'a> Files<'a> {
    /// Files of `copy`.
    pub fn new(copy: &'a Origin) -> Files<'a> {
        Files { copy, last: None }
    }

    /// The file at `path`, opened without following a symlink anywhere on the way.
    pub fn open(&mut self, path: &LogPath) -> io::Result<OriginFile> {
        let bytes = path.as_bytes();
        let (parent, name) = match bytes.iter().rposition(|byte| *byte == b'/') {
            Some(at) => (&bytes[..at], &bytes[at + 1..]),
            None => (&b""[..], bytes),
        };
        let name = Name::new(OsStr::from_bytes(name)).map_err(io::Error::other)?;
        let dir = match &self.last {
            Some((cached, dir)) if cached.as_slice() == parent => dir.clone(),
            _ => {
                let dir = match parent.is_empty() {
                    true => self.copy.root().clone(),
                    false => {
                        let parent_path =
                            LogPath::try_from(parent.to_vec()).map_err(io::Error::other)?;
                        let (above, last) = place(self.copy, &parent_path)?;
                        self.copy.open_dir(At::Entry(&above, &last))?
                    }
                };
                self.last = Some((parent.to_vec(), dir.clone()));
                dir
            }
        };
        self.copy
            .open_regular(At::Entry(&dir, &name), libc::O_RDONLY)
    }
}

/// Hashes the regular file at `path` among `files`, reading through `pace` (called with
/// each chunk's length before it is read, to keep to a rate). `None` when there is no
/// regular file there.
pub fn hash(
    files: &mut Files<'_>,
    path: &LogPath,
    store: Option<&HashStore>,
    pace: &mut dyn FnMut(u64),
    stop: &dyn Fn() -> bool,
) -> io::Result<Option<Fresh>> {
    let file = match files.open(path) {
        Ok(file) => file,
        Err(error) if crate::origin::gone(&error) || crate::origin::not_regular(&error) => {
            return Ok(None);
        }
        Err(error) => return Err(error),
    };
    let stat = file.stat()?;
    if stat.kind() != Some(FileKind::Regular) {
        return Ok(None);
    }
    let key = stat.id();
    for _ in 0..ATTEMPTS {
        if let Some(fresh) = attempt(&file, key, store, pace, stop)? {
            if fresh.stored.is_none()
                && let Some(store) = store
            {
                store.put(key, fresh.hashes.clone(), fresh.stamp);
            }
            return Ok(Some(fresh));
        }
    }
    Err(io::Error::other(format!(
        "{path} kept changing while it was read"
    )))
}

/// One reading of the file; `None` when it changed meanwhile.
fn attempt(
    file: &OriginFile,
    key: FileId,
    store: Option<&HashStore>,
    pace: &mut dyn FnMut(u64),
    stop: &dyn Fn() -> bool,
) -> io::Result<Option<Fresh>> {
    let before = file.stat()?.stamp();
    let stored = store.and_then(|store| store.current(key, &before));
    let content = &mut FileContent::new(file).paced(pace).stopping_when(stop);
    let hashes = FileHashes::of(before.size, content)?;
    let after = file.stat()?.stamp();
    // Stored hashes count only if they were current before and are still after.
    let still = store.and_then(|store| store.current(key, &after));
    Ok((before == after).then_some(Fresh {
        key,
        stamp: after,
        hashes,
        stored: stored.filter(|_| still.is_some()),
    }))
}
