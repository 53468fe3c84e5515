//! A copy's metadata as a list of entries in one canonical order: what the quick check
//! compares between the primary and a replica. The walk reads metadata only (stat, readlink,
//! xattrs), never file content.
//!
//! Names are sorted bytewise within each directory and the walk is depth-first, so two
//! walks of equal trees give equal lists, and two lists can be merged in one pass
//! ([`path_order`]).

use std::cmp::Ordering;
use std::io;

use serde::{Deserialize, Serialize};

use crate::log::LogPath;
use crate::origin::{At, Origin, Stat};
use crate::tree::{Visitor, WalkError, xattrs};
use crate::types::Timestamp;
use crate::types::{FileId, FileKind, Stamp};

use super::chunks::{ChunkHash, FileHashes};
use super::store::HashStore;

/// One object of a copy, as the quick check compares it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Where, relative to the volume root (the root itself is the empty path).
    pub path: LogPath,
    /// What it is.
    pub kind: Kind,
    /// Permission bits (and setuid, setgid, sticky); 0 for symlinks.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes (regular files and symlinks).
    pub size: u64,
    /// Last modification (compared for everything but directories, whose times the log
    /// does not carry).
    pub mtime: Timestamp,
    /// Device number, for device nodes.
    pub rdev: u64,
    /// A symlink's target.
    #[serde(with = "serde_bytes")]
    pub target: Vec<u8>,
    /// Extended attributes, sorted by name.
    pub xattrs: Vec<Xattr>,
    /// For a second (third, ...) name of a file: the first name of it in this walk.
    pub link_of: Option<LogPath>,
    /// The stored root hash of a regular file's content, where the copy has a current one.
    pub root: Option<ChunkHash>,
    /// Where the object lives in this copy (not sent: it means nothing in another copy).
    #[serde(skip)]
    pub local: Option<Local>,
}

impl Entry {
    /// The stamp stored hashes of this file must have to describe it (where it was walked).
    pub fn stamp(&self) -> Stamp {
        Stamp {
            size: self.size,
            mtime: self.mtime,
            ctime: self.local.map_or(self.mtime, |local| local.ctime),
        }
    }
}

/// What only the copy that walked an entry can use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Local {
    /// Origin device and inode number.
    pub key: FileId,
    /// The file's change time: with size and mtime, what says its stored hashes are current.
    pub ctime: Timestamp,
}

/// The object kinds the quick check tells apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A FIFO, socket or device node.
    Special,
}

impl Kind {
    /// The kind's name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Dir => "directory",
            Kind::Symlink => "symlink",
            Kind::Special => "special file",
        }
    }
}

/// One extended attribute: its name and a hash of its value (values can be large; what
/// differs is named, and the repair reads the value from the good copy).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Xattr {
    /// The name, with its namespace.
    #[serde(with = "serde_bytes")]
    pub name: Vec<u8>,
    /// blake3 of the value.
    pub value: ChunkHash,
}

/// The order entries are listed in: component by component, bytewise, a directory before
/// what it holds.
pub fn path_order(a: &LogPath, b: &LogPath) -> Ordering {
    a.components().cmp(b.components())
}

/// The entry at `path` in `entries` (a listing, in [`path_order`]).
pub fn find<'e>(entries: &'e [Entry], path: &LogPath) -> Option<&'e Entry> {
    entries
        .binary_search_by(|entry| path_order(&entry.path, path))
        .ok()
        .map(|at| &entries[at])
}

/// The entry at `path` in `entries` (a listing, in [`path_order`]) and everything under
/// it, with their kinds.
pub fn subtree(entries: &[Entry], path: &LogPath) -> Vec<(LogPath, Kind)> {
    let Ok(at) = entries.binary_search_by(|entry| path_order(&entry.path, path)) else {
        return Vec::new();
    };
    let depth = path.components().count();
    entries[at..]
        .iter()
        .take_while(|entry| entry.path.components().take(depth).eq(path.components()))
        .map(|entry| (entry.path.clone(), entry.kind))
        .collect()
}

/// Walks `copy` from `under` (the empty path for all of it), handing each entry to `take`,
/// which returns false to stop the walk (`WalkError::Stopped`). Objects removed while the
/// walk runs are left out. Regular files get their root from `store` where it holds a
/// current one.
pub fn walk(
    copy: &Origin,
    under: &LogPath,
    store: Option<&HashStore>,
    take: &mut dyn FnMut(Entry) -> bool,
) -> Result<(), WalkError> {
    let mut lister = Lister { copy, store, take };
    crate::tree::walk(copy, under, &mut lister)
}

/// Makes an entry of each object the walk visits.
struct Lister<'a> {
    copy: &'a Origin,
    store: Option<&'a HashStore>,
    take: &'a mut dyn FnMut(Entry) -> bool,
}

impl Visitor for Lister<'_> {
    fn object(
        &mut self,
        at: At<'_>,
        path: &LogPath,
        stat: &Stat,
        link_of: Option<&LogPath>,
    ) -> Result<(), WalkError> {
        let entry = self
            .entry(at, path, stat, link_of)
            .map_err(WalkError::read(path))?;
        self.hand_on(entry)
    }
}

impl Lister<'_> {
    fn hand_on(&mut self, mut entry: Entry) -> Result<(), WalkError> {
        if entry.kind == Kind::File {
            entry.root = match (entry.size, self.store, &entry.local) {
                (0, _, _) => Some(
                    FileHashes::of(0, &mut &[][..])
                        .expect("nothing to read")
                        .root(),
                ),
                (_, Some(store), Some(local)) => {
                    let root = store
                        .current(local.key, &entry.stamp())
                        .map(|stored| stored.hashes.root());
                    if root.is_none() {
                        // So that the next quick check can compare it.
                        store.request(local.key, &entry.path);
                    }
                    root
                }
                _ => None,
            };
        }
        match (self.take)(entry) {
            true => Ok(()),
            false => Err(WalkError::Stopped),
        }
    }

    fn entry(
        &self,
        at: At<'_>,
        path: &LogPath,
        stat: &Stat,
        link_of: Option<&LogPath>,
    ) -> io::Result<Entry> {
        let kind = match stat.kind() {
            Some(FileKind::Regular) => Kind::File,
            Some(FileKind::Directory) => Kind::Dir,
            Some(FileKind::Symlink) => Kind::Symlink,
            _ => Kind::Special,
        };
        let target = match kind {
            Kind::Symlink => self.copy.readlink(at)?,
            _ => Vec::new(),
        };
        let xattrs = xattrs(self.copy, at)?
            .into_iter()
            .map(|(name, value)| Xattr {
                name,
                value: *blake3::hash(&value).as_bytes(),
            })
            .collect();
        Ok(Entry {
            path: path.clone(),
            kind,
            mode: match kind {
                Kind::Symlink => 0,
                Kind::Special => stat.mode,
                _ => stat.mode & 0o7777,
            },
            uid: stat.uid,
            gid: stat.gid,
            size: match kind {
                Kind::File | Kind::Symlink => stat.size,
                _ => 0,
            },
            mtime: stat.mtime.into(),
            rdev: match kind {
                Kind::Special => stat.rdev,
                _ => 0,
            },
            target,
            xattrs,
            link_of: link_of.cloned(),
            root: None,
            local: Some(Local {
                key: stat.id(),
                ctime: stat.ctime.into(),
            }),
        })
    }
}
