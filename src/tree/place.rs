//! A volume path over a tree: the directory holding its last component, each directory on
//! the way opened without following symlinks, so no path reaches outside the tree.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;

use crate::log::LogPath;
use crate::origin::{At, DirFd, Origin, OriginFile};
use crate::types::Name;

/// The directory holding `path`'s last component, and that component. Each directory on
/// the way is opened without following symlinks.
pub fn place(copy: &Origin, path: &LogPath) -> io::Result<(DirFd, Name)> {
    let mut parts = path.components().peekable();
    let mut dir = copy.root().clone();
    while let Some(part) = parts.next() {
        let name = Name::new(OsStr::from_bytes(part)).map_err(io::Error::other)?;
        if parts.peek().is_none() {
            return Ok((dir, name));
        }
        dir = copy.open_dir(At::Entry(&dir, &name))?;
    }
    Err(io::Error::from_raw_os_error(libc::EINVAL))
}

/// The regular file at `path`, opened with `flags` (never blocking, never following a
/// symlink; ENXIO for anything but a regular file).
pub fn open_regular(copy: &Origin, path: &LogPath, flags: i32) -> io::Result<OriginFile> {
    let (dir, name) = place(copy, path)?;
    copy.open_regular(At::Entry(&dir, &name), flags)
}
