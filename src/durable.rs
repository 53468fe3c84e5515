//! mirrorfs's own small files (an applied offset, a segment index, the stored hashes, a
//! copy's base): each written whole, replaced atomically and durably, and private (0600
//! whatever the umask; the daemon runs with umask 0).

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Replaces the file at `path` with `bytes`: a crash leaves the old bytes or the new,
/// never part of one.
pub fn replace(path: &Path, bytes: impl AsRef<[u8]>) -> io::Result<()> {
    let temporary = temporary(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)?;
    // A temporary file left by a crash keeps the mode it was made with.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(bytes.as_ref())?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temporary, path)?;
    sync_parent(path)
}

/// Removes the file at `path` durably; a file already gone is no error.
pub fn remove(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        other => other?,
    }
    sync_parent(path)
}

/// Makes a change to the directory holding `path` durable.
pub fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(parent) => File::open(parent)?.sync_all(),
        None => Ok(()),
    }
}

/// Where `path`'s next contents are written before they replace it: beside it, with
/// `.tmp` added to its whole name.
fn temporary(path: &Path) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(".tmp");
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn replaces_whole_and_private_and_removes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seg.index");
        // A temporary file a crash left, open to all: its mode does not survive.
        std::fs::write(dir.path().join("seg.index.tmp"), b"torn").unwrap();
        std::fs::set_permissions(
            dir.path().join("seg.index.tmp"),
            std::fs::Permissions::from_mode(0o666),
        )
        .unwrap();
        replace(&path, b"first").unwrap();
        replace(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert!(!dir.path().join("seg.index.tmp").exists());
        remove(&path).unwrap();
        remove(&path).unwrap();
        assert!(!path.exists());
    }
}
