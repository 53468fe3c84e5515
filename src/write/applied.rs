//! The applied offset of write-behind, kept in `state_dir/applied`: every record below it
//! is durably in the origin. Recovery replays from it; without the file (write-through,
//! or a clean stop) there is nothing to replay.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// The stored offset, `None` when there is no file.
pub fn load(path: &Path) -> io::Result<Option<u64>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    text.trim().parse().map(Some).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} does not hold an offset: {:?}",
                path.display(),
                text.trim()
            ),
        )
    })
}

/// Stores `offset` durably, replacing the file atomically.
pub fn store(path: &Path, offset: u64) -> io::Result<()> {
    replace_durably(path, format!("{offset}\n"))
}

/// Replaces the file at `path` with `text`, atomically and durably (a crash leaves the old
/// text or the new, never part of one). The file is mirrorfs's own: mode 0600 whatever
/// the umask (the daemon runs with umask 0).
pub fn replace_durably(path: &Path, text: impl AsRef<[u8]>) -> io::Result<()> {
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)?;
    // A temporary file left by a crash keeps the mode it was made with.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(text.as_ref())?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temporary, path)?;
    sync_parent(path)
}

/// Removes the file durably (nothing is left to replay).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("applied");
        assert_eq!(load(&path).unwrap(), None);
        store(&path, 42).unwrap();
        assert_eq!(load(&path).unwrap(), Some(42));
        std::fs::write(&path, "forty-two").unwrap();
        let error = load(&path).unwrap_err();
        assert!(
            error.to_string().contains("does not hold an offset"),
            "{error}"
        );
        remove(&path).unwrap();
        remove(&path).unwrap();
        assert_eq!(load(&path).unwrap(), None);
    }
}
