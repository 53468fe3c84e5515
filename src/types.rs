//! Shared vocabulary: the small validated types every layer speaks.
//!
//! Nothing here does I/O. A `Name` is proof that a string is one path component, which is
//! what lets `origin` promise it never resolves a path that could leave the backing directory.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::ops::Range;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

/// The longest file name Linux filesystems accept (NAME_MAX).
pub const NAME_LEN_MAX: usize = 255;

/// The id of an inode as the kernel sees it (the FUSE node id, also reported as `st_ino`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InodeId(pub u64);

impl InodeId {
    /// The root directory of every mount.
    pub const ROOT: InodeId = InodeId(1);
}

/// An object's identity on the filesystem holding it: device and inode number. The same
/// across renames and remounts while the object exists; the number may be given to a new
/// object once it is gone (a file's ctime tells the two apart).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct FileId {
    /// The device.
    pub dev: u64,
    /// The inode number on it.
    pub ino: u64,
}

impl fmt::Display for InodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "inode {}", self.0)
    }
}

/// Why a string is not a valid single path component.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The empty string names nothing.
    #[error("empty name")]
    Empty,
    /// `.` and `..` are never names of entries we create or look up.
    #[error("'.' and '..' are not entry names")]
    Dot,
    /// A `/` would make it a path; a NUL would truncate it in a syscall.
    #[error("name contains '/' or NUL")]
    Separator,
    /// Longer than NAME_MAX bytes.
    #[error("name longer than {NAME_LEN_MAX} bytes")]
    TooLong,
}

/// One path component: non-empty, not `.` or `..`, no `/` or NUL, at most NAME_MAX bytes.
/// Clones share the bytes, so passing a name around never allocates.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Name(Arc<OsStr>);

impl Name {
    /// Validates `name` as a single path component.
    pub fn new(name: &OsStr) -> Result<Name, NameError> {
        let bytes = name.as_bytes();
        if bytes.is_empty() {
            return Err(NameError::Empty);
        }
        if bytes == b"." || bytes == b".." {
            return Err(NameError::Dot);
        }
        if bytes.iter().any(|&b| b == b'/' || b == 0) {
            return Err(NameError::Separator);
        }
        if bytes.len() > NAME_LEN_MAX {
            return Err(NameError::TooLong);
        }
        Ok(Name(Arc::from(name)))
    }

    /// The component as an `OsStr`.
    pub fn as_os_str(&self) -> &OsStr {
        &self.0
    }

    /// The component's bytes (no NUL inside, by construction).
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl From<Name> for OsString {
    fn from(name: Name) -> OsString {
        name.0.as_ref().to_os_string()
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// A point in time, as seconds and nanoseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "(i64, u32)", into = "(i64, u32)")]
pub struct Timestamp {
    /// Whole seconds (negative before 1970).
    pub seconds: i64,
    /// Nanoseconds, below one billion.
    pub nanos: u32,
}

/// Nanoseconds of a second or more.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("timestamp nanoseconds {0} not below one billion")]
pub struct TimestampError(u32);

impl TryFrom<(i64, u32)> for Timestamp {
    type Error = TimestampError;

    fn try_from((seconds, nanos): (i64, u32)) -> Result<Timestamp, TimestampError> {
        if nanos >= 1_000_000_000 {
            return Err(TimestampError(nanos));
        }
        Ok(Timestamp { seconds, nanos })
    }
}

impl From<Timestamp> for (i64, u32) {
    fn from(time: Timestamp) -> (i64, u32) {
        (time.seconds, time.nanos)
    }
}

impl From<std::time::SystemTime> for Timestamp {
    fn from(time: std::time::SystemTime) -> Timestamp {
        match time.duration_since(std::time::UNIX_EPOCH) {
            Ok(after) => Timestamp {
                seconds: after.as_secs() as i64,
                nanos: after.subsec_nanos(),
            },
            Err(before) => {
                let before = before.duration();
                let (mut seconds, mut nanos) = (-(before.as_secs() as i64), before.subsec_nanos());
                if nanos > 0 {
                    seconds -= 1;
                    nanos = 1_000_000_000 - nanos;
                }
                Timestamp { seconds, nanos }
            }
        }
    }
}

impl From<Timestamp> for std::time::SystemTime {
    fn from(time: Timestamp) -> std::time::SystemTime {
        let nanos = std::time::Duration::from_nanos(u64::from(time.nanos));
        if time.seconds >= 0 {
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(time.seconds as u64) + nanos
        } else {
            std::time::UNIX_EPOCH - std::time::Duration::from_secs(time.seconds.unsigned_abs())
                + nanos
        }
    }
}

/// What says a file is as it was: its size and times. Any change to a file by anyone moves
/// its ctime, and content changes move mtime or size as well; an inode number given to a
/// new file comes with a new ctime. The read cache keeps content by it, and stored hashes
/// count only while it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stamp {
    /// Size in bytes.
    pub size: u64,
    /// Last modification.
    pub mtime: Timestamp,
    /// Last status change.
    pub ctime: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_id_encodes_as_the_pair_stored_hashes_have_always_held() {
        let id = FileId {
            dev: 2049,
            ino: 1 << 40,
        };
        assert_eq!(
            postcard::to_allocvec(&id).unwrap(),
            postcard::to_allocvec(&(2049u64, 1u64 << 40)).unwrap()
        );
    }

    #[test]
    fn name_accepts_ordinary_components() {
        assert!(Name::new(OsStr::new("a")).is_ok());
        assert!(Name::new(OsStr::new("...")).is_ok());
        assert!(Name::new(OsStr::from_bytes(&[0xff, 0xfe])).is_ok());
        assert!(Name::new(OsStr::new(&"x".repeat(NAME_LEN_MAX))).is_ok());
    }

    #[test]
    fn name_rejects_anything_that_could_be_a_path() {
        assert_eq!(Name::new(OsStr::new("")), Err(NameError::Empty));
        assert_eq!(Name::new(OsStr::new(".")), Err(NameError::Dot));
        assert_eq!(Name::new(OsStr::new("..")), Err(NameError::Dot));
        assert_eq!(Name::new(OsStr::new("a/b")), Err(NameError::Separator));
        assert_eq!(Name::new(OsStr::new("/")), Err(NameError::Separator));
        assert_eq!(
            Name::new(OsStr::from_bytes(b"a\0b")),
            Err(NameError::Separator)
        );
        assert_eq!(
            Name::new(OsStr::new(&"x".repeat(NAME_LEN_MAX + 1))),
            Err(NameError::TooLong)
        );
    }
}

/// What kind of object an inode is; the vocabulary of `st_mode & S_IFMT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileKind {
    /// A regular file.
    Regular,
    /// A directory.
    Directory,
    /// A symbolic link.
    Symlink,
    /// A named pipe.
    Fifo,
    /// A unix domain socket.
    Socket,
    /// A character device node.
    CharDevice,
    /// A block device node.
    BlockDevice,
}

impl FileKind {
    /// The kind encoded in a `st_mode`; `None` for a format Linux does not define.
    pub fn from_mode(mode: u32) -> Option<FileKind> {
        match mode & libc::S_IFMT {
            libc::S_IFREG => Some(FileKind::Regular),
            libc::S_IFDIR => Some(FileKind::Directory),
            libc::S_IFLNK => Some(FileKind::Symlink),
            libc::S_IFIFO => Some(FileKind::Fifo),
            libc::S_IFSOCK => Some(FileKind::Socket),
            libc::S_IFCHR => Some(FileKind::CharDevice),
            libc::S_IFBLK => Some(FileKind::BlockDevice),
            _ => None,
        }
    }
}

/// A change made through the mount to one file's content or attributes, as the layers
/// that keep something about a file (the read cache, verify's stored hashes) hear of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// These bytes were written.
    Written(Range<u64>),
    /// The file was cut or extended to this size.
    Truncated(u64),
    /// The content may have changed anywhere (fallocate, the file unlinked).
    Content,
    /// Only attributes changed (chmod, xattr, a new link): the content stays valid, but
    /// the file's ctime moved because of us.
    Attributes,
}
