//! A copy's metadata as a list of entries in one canonical order: what the quick check
//! compares between the primary and a replica. The walk reads metadata only (stat, readlink,
//! xattrs), never file content.
//!
//! Names are sorted bytewise within each directory and the walk is depth-first, so two
//! walks of equal trees give equal lists, and two lists can be merged in one pass
//! ([`path_order`]).

use std::cmp::Ordering;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;

use serde::{Deserialize, Serialize};

use crate::log::{LogPath, Timestamp};
use crate::origin::{At, DirFd, Origin, Stat};
use crate::types::{FileKind, Name};

use super::chunks::{ChunkHash, FileHashes};
use super::store::{HashStore, Stamp};

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
    pub key: (u64, u64),
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

/// Why a walk stopped.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// The copy refused a read.
    #[error("reading /{path}: {source}")]
    Read {
        /// The object.
        path: LogPath,
        /// Why.
        source: io::Error,
    },
    /// The caller wants no more.
    #[error("stopped")]
    Stopped,
}

/// The order entries are listed in: component by component, bytewise, a directory before
/// what it holds.
pub fn path_order(a: &LogPath, b: &LogPath) -> Ordering {
    a.components().cmp(b.components())
}

/// Walks `copy` from `under` (the empty path for all of it), handing each entry to `take`,
/// which returns false to stop the walk. Objects removed while the walk runs are left out.
/// Regular files get their root from `store` where it holds a current one.
pub fn walk(
    copy: &Origin,
    under: &LogPath,
    store: Option<&HashStore>,
    take: &mut dyn FnMut(Entry) -> bool,
) -> Result<(), TreeError> {
    let mut walker = Walker {
        copy,
        store,
        take,
        links: HashMap::new(),
    };
    walker.walk(under)
}

struct Walker<'a> {
    copy: &'a Origin,
    store: Option<&'a HashStore>,
    take: &'a mut dyn FnMut(Entry) -> bool,
    /// The first path of each file with more than one name.
    links: HashMap<(u64, u64), LogPath>,
}

/// A directory being walked: its fd, its path, and its names not yet visited.
struct Frame {
    dir: DirFd,
    path: LogPath,
    names: std::vec::IntoIter<Name>,
}

impl Walker<'_> {
    fn walk(&mut self, under: &LogPath) -> Result<(), TreeError> {
        let Some((dir, stat)) = self.start(under)? else {
            return Ok(());
        };
        let entry = self.entry(At::Dir(&dir), under, &stat)?;
        self.hand_on(entry)?;
        let names = self.names(&dir, under)?;
        let mut stack = vec![Frame {
            dir,
            path: under.clone(),
            names: names.into_iter(),
        }];
        while let Some(frame) = stack.last_mut() {
            let Some(name) = frame.names.next() else {
                stack.pop();
                continue;
            };
            let dir = frame.dir.clone();
            let Ok(path) = frame.path.join(name.as_bytes()) else {
                // No log path can name it, so no record can change it on a replica either;
                // it is left out of both sides alike.
                continue;
            };
            let at = At::Entry(&dir, &name);
            let stat = match self.copy.stat(at) {
                Ok(stat) => stat,
                Err(error) if error.raw_os_error() == Some(libc::ENOENT) => continue,
                Err(source) => return Err(TreeError::Read { path, source }),
            };
            let entry = self.entry(at, &path, &stat)?;
            self.hand_on(entry)?;
            if stat.kind() == Some(FileKind::Directory) {
                let child = match self.copy.open_dir(at) {
                    Ok(child) => child,
                    Err(error) if error.raw_os_error() == Some(libc::ENOENT) => continue,
                    Err(source) => return Err(TreeError::Read { path, source }),
                };
                let names = self.names(&child, &path)?;
                stack.push(Frame {
                    dir: child,
                    path,
                    names: names.into_iter(),
                });
            }
        }
        Ok(())
    }

    /// The directory the walk starts at, or `None` when `under` does not exist or is not a
    /// directory in this copy (then its own entry is all there is, if anything).
    fn start(&mut self, under: &LogPath) -> Result<Option<(DirFd, Stat)>, TreeError> {
        let read = |source| TreeError::Read {
            path: under.clone(),
            source,
        };
        let mut dir = self.copy.root().clone();
        let mut parts = under.components().peekable();
        while let Some(part) = parts.next() {
            let Ok(name) = Name::new(OsStr::from_bytes(part)) else {
                return Ok(None);
            };
            let at = At::Entry(&dir, &name);
            let stat = match self.copy.stat(at) {
                Ok(stat) => stat,
                Err(error) if error.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
                Err(error) => return Err(read(error)),
            };
            if stat.kind() != Some(FileKind::Directory) {
                if parts.peek().is_none() {
                    let entry = self.entry(at, under, &stat)?;
                    self.hand_on(entry)?;
                }
                return Ok(None);
            }
            dir = self.copy.open_dir(at).map_err(read)?;
        }
        let stat = self.copy.stat_dir(&dir).map_err(read)?;
        Ok(Some((dir, stat)))
    }

    fn hand_on(&mut self, mut entry: Entry) -> Result<(), TreeError> {
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
            false => Err(TreeError::Stopped),
        }
    }

    /// The names in `dir`, sorted bytewise.
    fn names(&self, dir: &DirFd, path: &LogPath) -> Result<Vec<Name>, TreeError> {
        let read = |source| TreeError::Read {
            path: path.clone(),
            source,
        };
        let mut stream = self.copy.open_dir_stream(At::Dir(dir)).map_err(read)?;
        let mut names = Vec::new();
        while let Some(entry) = stream.next_entry().map_err(read)? {
            if let Ok(name) = Name::new(&entry.name) {
                names.push(name);
            }
        }
        names.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        Ok(names)
    }

    fn entry(&mut self, at: At<'_>, path: &LogPath, stat: &Stat) -> Result<Entry, TreeError> {
        let read = |source| TreeError::Read {
            path: path.clone(),
            source,
        };
        let kind = match stat.kind() {
            Some(FileKind::Regular) => Kind::File,
            Some(FileKind::Directory) => Kind::Dir,
            Some(FileKind::Symlink) => Kind::Symlink,
            _ => Kind::Special,
        };
        let target = match kind {
            Kind::Symlink => self.copy.readlink(at).map_err(read)?,
            _ => Vec::new(),
        };
        let link_of = match kind {
            Kind::Dir => None,
            _ if stat.nlink > 1 => match self.links.get(&(stat.dev, stat.ino)) {
                Some(first) => Some(first.clone()),
                None => {
                    self.links.insert((stat.dev, stat.ino), path.clone());
                    None
                }
            },
            _ => None,
        };
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
            xattrs: self.xattrs(at).map_err(read)?,
            link_of,
            root: None,
            local: Some(Local {
                key: (stat.dev, stat.ino),
                ctime: stat.ctime.into(),
            }),
        })
    }

    fn xattrs(&self, at: At<'_>) -> io::Result<Vec<Xattr>> {
        let names = match self.copy.list_xattr(at) {
            Ok(names) => names,
            Err(error) if matches!(error.raw_os_error(), Some(libc::ENOTSUP | libc::ENOENT)) => {
                return Ok(Vec::new());
            }
            Err(error) => return Err(error),
        };
        let mut xattrs = Vec::new();
        for name in names.split(|byte| *byte == 0).filter(|n| !n.is_empty()) {
            let value = match self.copy.get_xattr(at, OsStr::from_bytes(name)) {
                Ok(value) => value,
                Err(error) if error.raw_os_error() == Some(libc::ENODATA) => continue,
                Err(error) => return Err(error),
            };
            xattrs.push(Xattr {
                name: name.to_vec(),
                value: *blake3::hash(&value).as_bytes(),
            });
        }
        xattrs.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        Ok(xattrs)
    }
}
