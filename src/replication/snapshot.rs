//! Reading a volume's origin into the operations that rebuild it in an empty directory:
//! what a new replica gets before the log's records from the snapshot's offset on.
//!
//! The operations are the log's own (`Op`), applied by the same code, so a snapshot needs
//! no second format and no second applier. The walk is depth-first; a directory is made
//! writable by its owner until its entries are in, and gets its real mode and times after
//! them (making an entry changes its directory's times). Files are read by their data
//! extents (SEEK_DATA/SEEK_HOLE), so holes stay holes. A second name of a file already
//! sent becomes a link.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;

use serde::{Deserialize, Serialize};

use crate::log::{LogPath, Op};
use crate::origin::{At, DirFd, Origin, OriginFile, Stat};
use crate::tree::place;
use crate::types::{FileKind, Name};

/// File bytes per write operation.
const CHUNK_BYTES: u64 = 1 << 20;

/// Operations are handed on in batches of about this many bytes.
const BATCH_BYTES: u64 = 4 << 20;

/// What a snapshot has covered so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalkStats {
    /// Files, directories, links and other objects.
    pub objects: u64,
    /// File bytes read.
    pub bytes: u64,
    /// Objects left out because no log path can name them (over PATH_MAX).
    pub skipped: u64,
}

/// Why a snapshot could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    /// The origin refused.
    #[error("snapshot: reading /{path}: {source}")]
    Origin {
        /// The object.
        path: LogPath,
        /// Why.
        source: io::Error,
    },
    /// Whoever took the operations wants no more.
    #[error("snapshot abandoned")]
    Abandoned,
}

/// Reads all of `origin` into operations, handing them to `emit` in batches with the
/// figures so far; `emit` returns false to stop the walk.
pub fn walk(
    origin: &Origin,
    emit: &mut dyn FnMut(Vec<Op>, WalkStats) -> bool,
) -> Result<WalkStats, WalkError> {
    walk_under(origin, &LogPath::root(), emit)
}

/// Reads the object at `under` (and all it holds) into the operations that make it where
/// nothing is: what a repair sends for an object a replica lacks. A name that is missing
/// gives no operations.
pub fn walk_under(
    origin: &Origin,
    under: &LogPath,
    emit: &mut dyn FnMut(Vec<Op>, WalkStats) -> bool,
) -> Result<WalkStats, WalkError> {
    let mut walker = Walker {
        origin,
        emit,
        batch: Vec::new(),
        batch_bytes: 0,
        links: HashMap::new(),
        stats: WalkStats::default(),
    };
    walker.tree(under)?;
    walker.hand_on()?;
    Ok(walker.stats)
}

struct Walker<'a> {
    origin: &'a Origin,
    emit: &'a mut dyn FnMut(Vec<Op>, WalkStats) -> bool,
    batch: Vec<Op>,
    batch_bytes: u64,
    /// The first path of each file with more than one name.
    links: HashMap<(u64, u64), LogPath>,
    stats: WalkStats,
}

/// A directory being walked.
struct Frame {
    dir: DirFd,
    path: LogPath,
    stat: Stat,
    names: std::vec::IntoIter<Name>,
}

impl Walker<'_> {
    fn tree(&mut self, under: &LogPath) -> Result<(), WalkError> {
        let Some((dir, stat)) = self.start(under)? else {
            return Ok(());
        };
        let names = self.names(&dir, under)?;
        let mut stack = vec![Frame {
            dir,
            path: under.clone(),
            stat,
            names: names.into_iter(),
        }];
        while let Some(frame) = stack.last_mut() {
            let Some(name) = frame.names.next() else {
                let frame = stack.pop().expect("not empty");
                self.finish_dir(&frame)?;
                continue;
            };
            let parent = frame.dir.clone();
            let Ok(path) = frame.path.join(name.as_bytes()) else {
                tracing::warn!(parent = %frame.path, name = ?name, "snapshot: path too long for the log, left out");
                self.stats.skipped += 1;
                continue;
            };
            let at = At::Entry(&parent, &name);
            let stat = match self.origin.stat(at) {
                Ok(stat) => stat,
                // Removed outside the mount since it was listed.
                Err(error) if error.raw_os_error() == Some(libc::ENOENT) => continue,
                Err(error) => return Err(failed(&path)(error)),
            };
            self.stats.objects += 1;
            if stat.kind() == Some(FileKind::Directory) {
                let dir = self.begin_dir(at, &path, &stat)?;
                let names = self.names(&dir, &path)?;
                stack.push(Frame {
                    dir,
                    path,
                    stat,
                    names: names.into_iter(),
                });
                continue;
            }
            if stat.nlink > 1 {
                if let Some(first) = self.links.get(&(stat.dev, stat.ino)) {
                    let op = Op::Link {
                        path: first.clone(),
                        new_path: path,
                    };
                    self.push(op)?;
                    continue;
                }
                self.links.insert((stat.dev, stat.ino), path.clone());
            }
            self.object(at, &path, &stat)?;
        }
        Ok(())
    }

    /// The directory a walk from `under` starts in, after the operation that makes it; or
    /// `None` when `under` is not a directory (then its operations are all there is).
    fn start(&mut self, under: &LogPath) -> Result<Option<(DirFd, Stat)>, WalkError> {
        if under.components().next().is_none() {
            let dir = self.origin.root().clone();
            let stat = self.origin.stat_dir(&dir).map_err(failed(under))?;
            return Ok(Some((dir, stat)));
        }
        let (parent, name) = match place(self.origin, under) {
            Ok(place) => place,
            Err(error) if error.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(error) => return Err(failed(under)(error)),
        };
        let at = At::Entry(&parent, &name);
        let stat = match self.origin.stat(at) {
            Ok(stat) => stat,
            Err(error) if error.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(error) => return Err(failed(under)(error)),
        };
        self.stats.objects += 1;
        if stat.kind() != Some(FileKind::Directory) {
            self.object(at, under, &stat)?;
            return Ok(None);
        }
        let dir = self.begin_dir(at, under, &stat)?;
        Ok(Some((dir, stat)))
    }

    /// The operation that makes directory `path` (writable by its owner until its entries
    /// are in), and the directory opened for walking.
    fn begin_dir(&mut self, at: At<'_>, path: &LogPath, stat: &Stat) -> Result<DirFd, WalkError> {
        self.push(Op::Mkdir {
            path: path.clone(),
            mode: (stat.mode & 0o7777) | 0o700,
            uid: stat.uid,
            gid: stat.gid,
        })?;
        self.origin.open_dir(at).map_err(failed(path))
    }

    /// The names in `dir`, in the order the origin lists them.
    fn names(&self, dir: &DirFd, path: &LogPath) -> Result<Vec<Name>, WalkError> {
        let mut stream = self
            .origin
            .open_dir_stream(At::Dir(dir))
            .map_err(failed(path))?;
        let mut names = Vec::new();
        while let Some(entry) = stream.next_entry().map_err(failed(path))? {
            if let Ok(name) = Name::new(&entry.name) {
                names.push(name);
            }
        }
        Ok(names)
    }

    /// A directory whose entries are all in: its xattrs, mode and times.
    fn finish_dir(&mut self, frame: &Frame) -> Result<(), WalkError> {
        self.xattrs(At::Dir(&frame.dir), &frame.path)?;
        let root = frame.path.components().next().is_none();
        self.push(Op::SetAttr {
            path: frame.path.clone(),
            mode: Some(frame.stat.mode & 0o7777),
            // The root is not made by an operation that sets its owner.
            uid: root.then_some(frame.stat.uid),
            gid: root.then_some(frame.stat.gid),
            atime: Some(frame.stat.atime.into()),
            mtime: Some(frame.stat.mtime.into()),
        })
    }

    /// Anything but a directory, or a second name of a file.
    fn object(&mut self, at: At<'_>, path: &LogPath, stat: &Stat) -> Result<(), WalkError> {
        let mode = stat.mode & 0o7777;
        match stat.kind() {
            Some(FileKind::Regular) => {
                self.push(Op::Create {
                    path: path.clone(),
                    mode,
                    uid: stat.uid,
                    gid: stat.gid,
                })?;
                let file = self
                    .origin
                    .open_regular(at, libc::O_RDONLY)
                    .map_err(failed(path))?;
                self.content(&file, path)?;
            }
            Some(FileKind::Symlink) => {
                let target = self.origin.readlink(at).map_err(failed(path))?;
                self.push(Op::Symlink {
                    path: path.clone(),
                    target,
                    uid: stat.uid,
                    gid: stat.gid,
                })?;
            }
            _ => self.push(Op::Mknod {
                path: path.clone(),
                mode: stat.mode,
                rdev: stat.rdev,
                uid: stat.uid,
                gid: stat.gid,
            })?,
        }
        self.xattrs(at, path)?;
        let symlink = stat.kind() == Some(FileKind::Symlink);
        self.push(Op::SetAttr {
            path: path.clone(),
            // A symlink's mode means nothing on Linux and cannot be set.
            mode: (!symlink).then_some(mode),
            uid: None,
            gid: None,
            atime: Some(stat.atime.into()),
            mtime: Some(stat.mtime.into()),
        })
    }

    /// A regular file's data extents, then its size (a trailing hole, or a file that
    /// shrank while it was read).
    fn content(&mut self, file: &OriginFile, path: &LogPath) -> Result<(), WalkError> {
        let mut position = 0;
        loop {
            let data = match file.seek(position as i64, libc::SEEK_DATA) {
                Ok(data) => data as u64,
                Err(error) if error.raw_os_error() == Some(libc::ENXIO) => break,
                Err(error) => return Err(failed(path)(error)),
            };
            let hole = file
                .seek(data as i64, libc::SEEK_HOLE)
                .map_err(failed(path))? as u64;
            let mut at = data;
            while at < hole {
                let mut buffer = vec![0; (hole - at).min(CHUNK_BYTES) as usize];
                let read = file.read_at(&mut buffer, at).map_err(failed(path))?;
                if read == 0 {
                    break;
                }
                buffer.truncate(read);
                self.stats.bytes += read as u64;
                self.push(Op::Write {
                    path: path.clone(),
                    offset: at,
                    data: buffer,
                })?;
                at += read as u64;
            }
            if at < hole {
                break;
            }
            position = hole;
        }
        let size = file.stat().map_err(failed(path))?.size;
        self.push(Op::Truncate {
            path: path.clone(),
            size,
        })
    }

    fn xattrs(&mut self, at: At<'_>, path: &LogPath) -> Result<(), WalkError> {
        let names = match self.origin.list_xattr(at) {
            Ok(names) => names,
            Err(error) if unsupported(&error) => return Ok(()),
            Err(error) => return Err(failed(path)(error)),
        };
        for name in names
            .split(|byte| *byte == 0)
            .filter(|name| !name.is_empty())
        {
            let value = match self.origin.get_xattr(at, OsStr::from_bytes(name)) {
                Ok(value) => value,
                // Removed since it was listed.
                Err(error) if error.raw_os_error() == Some(libc::ENODATA) => continue,
                Err(error) => return Err(failed(path)(error)),
            };
            self.push(Op::SetXattr {
                path: path.clone(),
                name: name.to_vec(),
                value,
            })?;
        }
        Ok(())
    }

    fn push(&mut self, op: Op) -> Result<(), WalkError> {
        self.batch_bytes += 64 + op.carried_bytes();
        self.batch.push(op);
        if self.batch_bytes >= BATCH_BYTES {
            self.hand_on()?;
        }
        Ok(())
    }

    fn hand_on(&mut self) -> Result<(), WalkError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        self.batch_bytes = 0;
        let batch = std::mem::take(&mut self.batch);
        match (self.emit)(batch, self.stats) {
            true => Ok(()),
            false => Err(WalkError::Abandoned),
        }
    }
}

fn unsupported(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::ENOTSUP))
}

fn failed(path: &LogPath) -> impl FnOnce(io::Error) -> WalkError + '_ {
    move |source| WalkError::Origin {
        path: path.clone(),
        source,
    }
}
