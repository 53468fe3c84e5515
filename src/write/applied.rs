//! The applied offset of write-behind, kept in `state_dir/applied`: every record below it
//! is durably in the origin. Recovery replays from it; without the file (write-through,
//! or a clean stop) there is nothing to replay.

use std::io;
use std::path::Path;

use crate::durable;

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
    durable::replace(path, format!("{offset}\n"))
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
        durable::remove(&path).unwrap();
        durable::remove(&path).unwrap();
        assert_eq!(load(&path).unwrap(), None);
    }
}
