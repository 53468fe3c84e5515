//! A volume's pre-shared key: what a primary and a replica node both hold, and prove to
//! each other, before any record crosses between them.

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Bytes in a key.
pub const KEY_LEN: usize = 32;

/// Why a key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read.
    #[error("cannot read key file {path}: {source}")]
    Read {
        /// The key file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Others than its owner may read or write it.
    #[error("key file {path} is open to others (mode {mode:04o}); run chmod 600 {path}")]
    Exposed {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// It does not hold one key.
    #[error("key file {path} does not hold a key (64 hex digits, as `mirrorfs keygen` writes)")]
    Malformed {
        /// The key file.
        path: PathBuf,
    },
}

/// A volume's pre-shared key. Its `Debug` shows nothing of it.
#[derive(Clone, PartialEq, Eq)]
pub struct VolumeKey([u8; KEY_LEN]);

impl fmt::Debug for VolumeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("VolumeKey(..)")
    }
}

impl VolumeKey {
    /// A new key from the kernel's random source.
    pub fn generate() -> io::Result<VolumeKey> {
        let mut key = [0u8; KEY_LEN];
        let mut filled = 0;
        while filled < KEY_LEN {
            // SAFETY: writes at most KEY_LEN - filled bytes into `key` past `filled`.
            let count =
                unsafe { libc::getrandom(key[filled..].as_mut_ptr().cast(), KEY_LEN - filled, 0) };
            if count < 0 {
                let error = io::Error::last_os_error();
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(error);
            }
            filled += count as usize;
        }
        Ok(VolumeKey(key))
    }

    /// The key from `path`, which only its owner may read or write.
    pub fn read(path: &Path) -> Result<VolumeKey, KeyError> {
        let read = |source| KeyError::Read {
            path: path.to_path_buf(),
            source,
        };
        let mode = fs::metadata(path).map_err(read)?.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Exposed {
                path: path.to_path_buf(),
                mode,
            });
        }
        let text = fs::read_to_string(path).map_err(read)?;
        VolumeKey::from_hex(text.trim_end_matches('\n')).ok_or_else(|| KeyError::Malformed {
            path: path.to_path_buf(),
        })
    }

    /// The key as 64 lowercase hex digits, as key files hold it.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    fn from_hex(text: &str) -> Option<VolumeKey> {
        if text.len() != KEY_LEN * 2 || !text.is_ascii() {
            return None;
        }
        let mut key = [0u8; KEY_LEN];
        for (byte, pair) in key.iter_mut().zip(text.as_bytes().chunks(2)) {
            let pair = std::str::from_utf8(pair).ok()?;
            *byte = u8::from_str_radix(pair, 16).ok()?;
        }
        Some(VolumeKey(key))
    }

    /// A key for one purpose, derived from this one (blake3's key derivation), so that
    /// no two uses of the volume key ever share a key.
    pub fn derive(&self, purpose: &str) -> [u8; KEY_LEN] {
        blake3::derive_key(purpose, &self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::OpenOptionsExt;

    fn write(path: &Path, text: &str, mode: u32) {
        let _ = fs::remove_file(path);
        let mut file = fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(mode)
            .open(path)
            .unwrap();
        io::Write::write_all(&mut file, text.as_bytes()).unwrap();
    }

    #[test]
    fn keys_round_trip_through_a_private_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        let key = VolumeKey::generate().unwrap();
        assert_ne!(key, VolumeKey::generate().unwrap());
        write(&path, &format!("{}\n", key.to_hex()), 0o600);
        assert_eq!(VolumeKey::read(&path).unwrap(), key);
        assert_eq!(format!("{key:?}"), "VolumeKey(..)");
        assert_ne!(key.derive("a"), key.derive("b"));
    }

    #[test]
    fn exposed_or_malformed_key_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        let hex = VolumeKey::generate().unwrap().to_hex();
        write(&path, &hex, 0o644);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let message = VolumeKey::read(&path).unwrap_err().to_string();
        assert!(
            message.contains("0644") && message.contains("chmod 600"),
            "{message}"
        );
        for bad in [
            "",
            "xyz",
            &hex[..63],
            &format!("{hex}00"),
            &format!("g{}", &hex[1..]),
        ] {
            write(&path, bad, 0o600);
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
            let error = VolumeKey::read(&path).unwrap_err();
            assert!(
                matches!(error, KeyError::Malformed { .. }),
                "{bad:?}: {error}"
            );
            assert_eq!(error.to_string().lines().count(), 1);
        }
    }
}
