//! What one change log record says: its offset, its leader epoch and the operation.
//!
//! Records name objects by path relative to the volume root, because their readers (the
//! origin applier, replicas, operators) know paths, not this mount's node ids. Every path
//! and name is validated when a record is decoded, so no record, however it was made, can
//! point outside the volume.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::types::{NAME_LEN_MAX, Timestamp};

/// The longest path a record may carry (PATH_MAX).
pub const PATH_LEN_MAX: usize = 4096;

/// One change, at its place in the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Position in the log: gapless and increasing from the volume's first change.
    pub offset: u64,
    /// The leader epoch the record was written in (1 until failover exists).
    pub epoch: u32,
    /// What changed.
    pub op: Op,
}

/// A mutation, as applying it to a copy of the volume needs it. Each one sets state
/// ("this range holds these bytes", "this name is gone") rather than describing a delta,
/// so applying a record twice gives the same result as once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// A new empty regular file.
    Create {
        /// Where.
        path: LogPath,
        /// Permission bits.
        mode: u32,
        /// Owner.
        uid: u32,
        /// Group.
        gid: u32,
    },
    /// A new directory.
    Mkdir {
        /// Where.
        path: LogPath,
        /// Permission bits.
        mode: u32,
        /// Owner.
        uid: u32,
        /// Group.
        gid: u32,
    },
    /// A new FIFO, socket or device node.
    Mknod {
        /// Where.
        path: LogPath,
        /// File type and permission bits, as mknod(2) takes them.
        mode: u32,
        /// Device number, for device nodes.
        rdev: u64,
        /// Owner.
        uid: u32,
        /// Group.
        gid: u32,
    },
    /// A new symbolic link.
    Symlink {
        /// Where.
        path: LogPath,
        /// What it points to (stored, never followed by mirrorfs).
        #[serde(with = "serde_bytes")]
        target: Vec<u8>,
        /// Owner.
        uid: u32,
        /// Group.
        gid: u32,
    },
    /// A new name for an existing object.
    Link {
        /// The existing name.
        path: LogPath,
        /// The new name.
        new_path: LogPath,
    },
    /// A non-directory name removed.
    Unlink {
        /// Which.
        path: LogPath,
    },
    /// An empty directory removed.
    Rmdir {
        /// Which.
        path: LogPath,
    },
    /// A name moved, as renameat2(2) with `flags` (RENAME_NOREPLACE, RENAME_EXCHANGE).
    Rename {
        /// From.
        from: LogPath,
        /// To.
        to: LogPath,
        /// renameat2 flags.
        flags: u32,
    },
    /// Bytes written at an offset.
    Write {
        /// Which file.
        path: LogPath,
        /// Where in it.
        offset: u64,
        /// What.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// A file's size set.
    Truncate {
        /// Which file.
        path: LogPath,
        /// Its new size.
        size: u64,
    },
    /// Mode, owner or times set; `None` leaves that attribute alone.
    SetAttr {
        /// Which object (the empty path is the volume root).
        path: LogPath,
        /// Permission bits.
        mode: Option<u32>,
        /// Owner.
        uid: Option<u32>,
        /// Group.
        gid: Option<u32>,
        /// Access time.
        atime: Option<Timestamp>,
        /// Modification time.
        mtime: Option<Timestamp>,
    },
    /// An extended attribute set.
    SetXattr {
        /// Which object.
        path: LogPath,
        /// Attribute name, with its namespace prefix.
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        /// Its value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// An extended attribute removed.
    RemoveXattr {
        /// Which object.
        path: LogPath,
        /// Attribute name.
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
    },
    /// Space allocated or deallocated, as fallocate(2) with `mode`.
    Fallocate {
        /// Which file.
        path: LogPath,
        /// fallocate mode flags.
        mode: i32,
        /// Start of the range.
        offset: u64,
        /// Length of the range.
        length: u64,
    },
    /// Bytes copied from one file to another (copy_file_range(2)): copies copy them
    /// locally, as they hold the source as it was when the record was made.
    Copy {
        /// The file copied from.
        from: LogPath,
        /// Where in it.
        from_offset: u64,
        /// The file copied to.
        path: LogPath,
        /// Where in it.
        offset: u64,
        /// How many bytes were copied.
        length: u64,
    },
}

impl Op {
    /// The record that `path` has modification time `mtime`, and nothing else changed:
    /// copies apply changes later than the origin made them, and would otherwise get
    /// their own times.
    pub fn set_mtime(path: LogPath, mtime: std::time::SystemTime) -> Op {
        Op::SetAttr {
            path,
            mode: None,
            uid: None,
            gid: None,
            atime: None,
            mtime: Some(mtime.into()),
        }
    }

    /// The operation's name, as `mirrorfs log` prints it.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Create { .. } => "create",
            Op::Mkdir { .. } => "mkdir",
            Op::Mknod { .. } => "mknod",
            Op::Symlink { .. } => "symlink",
            Op::Link { .. } => "link",
            Op::Unlink { .. } => "unlink",
            Op::Rmdir { .. } => "rmdir",
            Op::Rename { .. } => "rename",
            Op::Write { .. } => "write",
            Op::Truncate { .. } => "truncate",
            Op::SetAttr { .. } => "setattr",
            Op::SetXattr { .. } => "setxattr",
            Op::RemoveXattr { .. } => "removexattr",
            Op::Fallocate { .. } => "fallocate",
            Op::Copy { .. } => "copy",
        }
    }

    /// The path the operation acts on (for link and rename, the existing one; for a copy,
    /// the file copied to).
    pub fn path(&self) -> &LogPath {
        match self {
            Op::Create { path, .. }
            | Op::Mkdir { path, .. }
            | Op::Mknod { path, .. }
            | Op::Symlink { path, .. }
            | Op::Link { path, .. }
            | Op::Unlink { path }
            | Op::Rmdir { path }
            | Op::Write { path, .. }
            | Op::Truncate { path, .. }
            | Op::SetAttr { path, .. }
            | Op::SetXattr { path, .. }
            | Op::RemoveXattr { path, .. }
            | Op::Fallocate { path, .. }
            | Op::Copy { path, .. } => path,
            Op::Rename { from, .. } => from,
        }
    }

    /// Points the operation at `new` instead of its path (for link and rename, the
    /// existing one).
    pub fn set_path(&mut self, new: LogPath) {
        match self {
            Op::Create { path, .. }
            | Op::Mkdir { path, .. }
            | Op::Mknod { path, .. }
            | Op::Symlink { path, .. }
            | Op::Link { path, .. }
            | Op::Unlink { path }
            | Op::Rmdir { path }
            | Op::Write { path, .. }
            | Op::Truncate { path, .. }
            | Op::SetAttr { path, .. }
            | Op::SetXattr { path, .. }
            | Op::RemoveXattr { path, .. }
            | Op::Fallocate { path, .. }
            | Op::Copy { path, .. } => *path = new,
            Op::Rename { from, .. } => *from = new,
        }
    }

    /// The second path of a link or rename.
    pub fn new_path(&self) -> Option<&LogPath> {
        match self {
            Op::Link { new_path, .. } => Some(new_path),
            Op::Rename { to, .. } => Some(to),
            _ => None,
        }
    }

    /// Bytes of data the operation carries: what it weighs in a message.
    pub fn carried_bytes(&self) -> u64 {
        match self {
            Op::Write { data, .. } => data.len() as u64,
            Op::Symlink { target, .. } => target.len() as u64,
            Op::SetXattr { value, .. } => value.len() as u64,
            _ => 0,
        }
    }

    /// Bytes of file data the record carries, or the length it sets.
    pub fn length(&self) -> u64 {
        match self {
            Op::Write { data, .. } => data.len() as u64,
            Op::Truncate { size, .. } => *size,
            Op::Fallocate { length, .. } | Op::Copy { length, .. } => *length,
            _ => 0,
        }
    }
}

/// A path relative to the volume root: components separated by `/`, each a valid name
/// (no `.`, `..`, NUL or empty component); the empty path is the root itself.
#[derive(Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "serde_bytes::ByteBuf", into = "serde_bytes::ByteBuf")]
pub struct LogPath(Vec<u8>);

/// Why bytes are not a volume-relative path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Longer than PATH_MAX.
    #[error("path longer than {PATH_LEN_MAX} bytes")]
    TooLong,
    /// Starts with `/`, has an empty, `.` or `..` component, or a NUL.
    #[error("path is not relative to the volume root or has a '.', '..', empty or NUL part")]
    NotRelative,
    /// A component longer than NAME_MAX.
    #[error("path component longer than {NAME_LEN_MAX} bytes")]
    NameTooLong,
}

impl LogPath {
    /// The volume root.
    pub fn root() -> LogPath {
        LogPath(Vec::new())
    }

    /// The path's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The path's components, root first.
    pub fn components(&self) -> impl Iterator<Item = &[u8]> {
        self.0.split(|&b| b == b'/').filter(|part| !part.is_empty())
    }

    /// This path with one more component (which must be a valid name).
    pub fn join(&self, name: &[u8]) -> Result<LogPath, PathError> {
        let mut bytes = Vec::with_capacity(self.0.len() + 1 + name.len());
        bytes.extend_from_slice(&self.0);
        if !bytes.is_empty() {
            bytes.push(b'/');
        }
        bytes.extend_from_slice(name);
        LogPath::try_from(bytes)
    }
}

impl TryFrom<Vec<u8>> for LogPath {
    type Error = PathError;

    fn try_from(bytes: Vec<u8>) -> Result<LogPath, PathError> {
        if bytes.len() > PATH_LEN_MAX {
            return Err(PathError::TooLong);
        }
        if !bytes.is_empty() {
            for part in bytes.split(|&b| b == b'/') {
                if part.is_empty() || part == b"." || part == b".." || part.contains(&0) {
                    return Err(PathError::NotRelative);
                }
                if part.len() > NAME_LEN_MAX {
                    return Err(PathError::NameTooLong);
                }
            }
        }
        Ok(LogPath(bytes))
    }
}

impl From<LogPath> for Vec<u8> {
    fn from(path: LogPath) -> Vec<u8> {
        path.0
    }
}

impl TryFrom<serde_bytes::ByteBuf> for LogPath {
    type Error = PathError;

    fn try_from(bytes: serde_bytes::ByteBuf) -> Result<LogPath, PathError> {
        LogPath::try_from(bytes.into_vec())
    }
}

impl From<LogPath> for serde_bytes::ByteBuf {
    fn from(path: LogPath) -> serde_bytes::ByteBuf {
        serde_bytes::ByteBuf::from(path.0)
    }
}

impl fmt::Display for LogPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}", self.0.escape_ascii())
    }
}

impl fmt::Debug for LogPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_volume() {
        for bad in [
            &b"/etc"[..],
            b"a//b",
            b"a/../b",
            b"..",
            b"./a",
            b"a/",
            b"a\0b",
        ] {
            assert_eq!(
                LogPath::try_from(bad.to_vec()),
                Err(PathError::NotRelative),
                "{}",
                bad.escape_ascii()
            );
        }
        assert_eq!(
            LogPath::try_from(vec![b'x'; 256]),
            Err(PathError::NameTooLong)
        );
        assert_eq!(LogPath::try_from(vec![b'x'; 4097]), Err(PathError::TooLong));
        let path = LogPath::root().join(b"d").unwrap().join(b"f.txt").unwrap();
        assert_eq!(path.as_bytes(), b"d/f.txt");
        assert_eq!(path.components().count(), 2);
        assert_eq!(LogPath::root().components().count(), 0);
        assert!(LogPath::root().join(b"..").is_err());
    }

    #[test]
    fn timestamps_before_1970_round_trip() {
        let time = std::time::UNIX_EPOCH - std::time::Duration::new(1, 250);
        let stamp = Timestamp::from(time);
        assert_eq!((stamp.seconds, stamp.nanos), (-2, 999_999_750));
        assert_eq!(std::time::SystemTime::from(stamp), time);
    }
}
