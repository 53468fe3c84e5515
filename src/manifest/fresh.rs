//! Reading a copy's files afresh: the content check's side of the manifest. Each file is
//! hashed with its stamp taken before and after, so what is compared is content that held
//! still while it was read; hashes of a file that had none stored become its stored ones.

use std::io;

use crate::log::LogPath;
use crate::origin::{Origin, OriginFile};
use crate::types::FileKind;

use super::chunks::FileHashes;
use super::hasher::open_in;
use super::store::{HashStore, Key, Stamp, Stored};

/// A file read afresh.
#[derive(Clone, Debug)]
pub struct Fresh {
    /// Its identity in the copy.
    pub key: Key,
    /// Its stamp while it was read.
    pub stamp: Stamp,
    /// Its content's hashes now.
    pub hashes: FileHashes,
    /// What the copy had stored for it, where that was current when it was read.
    pub stored: Option<Stored>,
}

/// Times a file that changes while it is read is read again before giving up.
const ATTEMPTS: usize = 3;

/// Hashes the regular file at `path` in `copy`, reading through `pace` (called with each
/// chunk's length before it is read, to keep to a rate). `None` when there is no regular
/// file there.
pub fn hash(
    copy: &Origin,
    path: &LogPath,
    store: Option<&HashStore>,
    pace: &mut dyn FnMut(u64),
) -> io::Result<Option<Fresh>> {
    let file = match open_in(copy, path) {
        Ok(file) => file,
        Err(error)
            if matches!(
                error.raw_os_error(),
                Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP | libc::EISDIR | libc::ENXIO)
            ) =>
        {
            return Ok(None);
        }
        Err(error) => return Err(error),
    };
    let stat = file.stat()?;
    if stat.kind() != Some(FileKind::Regular) {
        return Ok(None);
    }
    let key = (stat.dev, stat.ino);
    for _ in 0..ATTEMPTS {
        if let Some(fresh) = attempt(&file, key, store, pace)? {
            if fresh.stored.is_none()
                && let Some(store) = store
            {
                store.put(key, fresh.hashes.clone(), fresh.stamp);
            }
            return Ok(Some(fresh));
        }
    }
    Err(io::Error::other(format!(
        "/{path} kept changing while it was read"
    )))
}

/// One reading of the file; `None` when it changed meanwhile.
fn attempt(
    file: &OriginFile,
    key: Key,
    store: Option<&HashStore>,
    pace: &mut dyn FnMut(u64),
) -> io::Result<Option<Fresh>> {
    let before = Stamp::of(&file.stat()?);
    let stored = store.and_then(|store| store.current(key, &before));
    let hashes = FileHashes::of(before.size, |buffer, offset| {
        pace(buffer.len() as u64);
        file.read_at(buffer, offset)
    })?;
    let after = Stamp::of(&file.stat()?);
    // Stored hashes count only if they were current before and are still after.
    let still = store.and_then(|store| store.current(key, &after));
    Ok((before == after).then_some(Fresh {
        key,
        stamp: after,
        hashes,
        stored: stored.filter(|_| still.is_some()),
    }))
}
