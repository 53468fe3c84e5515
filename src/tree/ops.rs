//! Reading a volume's origin into the operations that rebuild it in an empty directory:
//! what a new replica gets before the log's records from the snapshot's offset on.
//!
//! The operations are the log's own (`Op`), applied by the same code, so a snapshot needs
//! no second format and no second applier. The walk is the tree's one walk; a directory is made
//! writable by its owner until its entries are in, and gets its real mode and times after
//! them (making an entry changes its directory's times). Files are read by their data
//! extents (SEEK_DATA/SEEK_HOLE), so holes stay holes. A second name of a file already
//! sent becomes a link.

use serde::{Deserialize, Serialize};

use super::walk::{Visitor, WalkError, walk, xattrs};
use crate::log::{LogPath, Op};
use crate::origin::{At, DirFd, Origin, OriginFile, Stat};
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

/// Records giving each of `paths` the modification time it has in `tree` now (a path
/// that names nothing there is left out): what makes copies end where `tree` is when the
/// records that moved those times did not say what they became.
pub fn mtimes_now<'a>(tree: &Origin, paths: impl IntoIterator<Item = &'a LogPath>) -> Vec<Op> {
    paths
        .into_iter()
        .filter_map(|path| {
            let stat = match path.components().next() {
                None => tree.stat_dir(tree.root()).ok()?,
                Some(_) => {
                    let (dir, name) = super::place(tree, path).ok()?;
                    tree.stat(At::Entry(&dir, &name)).ok()?
                }
            };
            Some(Op::set_mtime(path.clone(), stat.mtime))
        })
        .collect()
}

/// Reads all of `origin` into operations, handing them to `emit` in batches with the
/// figures so far; `emit` returns false to stop the walk.
pub fn to_ops(
    origin: &Origin,
    emit: &mut dyn FnMut(Vec<Op>, WalkStats) -> bool,
) -> Result<WalkStats, WalkError> {
    to_ops_under(origin, &LogPath::root(), emit)
}

/// Reads the object at `under` (and all it holds) into the operations that make it where
/// nothing is: what a repair sends for an object a replica lacks. A name that is missing
/// gives no operations.
pub fn to_ops_under(
    origin: &Origin,
    under: &LogPath,
    emit: &mut dyn FnMut(Vec<Op>, WalkStats) -> bool,
) -> Result<WalkStats, WalkError> {
    let mut reader = Reader {
        origin,
        emit,
        batch: Vec::new(),
        batch_bytes: 0,
        stats: WalkStats::default(),
    };
    walk(origin, under, &mut reader)?;
    reader.hand_on()?;
    Ok(reader.stats)
}

/// Turns what the walk visits into operations, in batches.
struct Reader<'a> {
    origin: &'a Origin,
    emit: &'a mut dyn FnMut(Vec<Op>, WalkStats) -> bool,
    batch: Vec<Op>,
    batch_bytes: u64,
    stats: WalkStats,
}

impl Visitor for Reader<'_> {
    fn object(
        &mut self,
        at: At<'_>,
        path: &LogPath,
        stat: &Stat,
        link_of: Option<&LogPath>,
    ) -> Result<(), WalkError> {
        if path.components().next().is_none() {
            // The root is there already; its attributes come after its entries.
            return Ok(());
        }
        self.stats.objects += 1;
        if let Some(first) = link_of {
            return self.push(Op::Link {
                path: first.clone(),
                new_path: path.clone(),
            });
        }
        match stat.kind() {
            // Writable by its owner until its entries are in.
            Some(FileKind::Directory) => self.push(Op::Mkdir {
                path: path.clone(),
                mode: (stat.mode & 0o7777) | 0o700,
                uid: stat.uid,
                gid: stat.gid,
            }),
            _ => self.object(at, path, stat),
        }
    }

    /// A directory whose entries are all in: its xattrs, mode and times.
    fn dir_done(&mut self, dir: &DirFd, path: &LogPath, stat: &Stat) -> Result<(), WalkError> {
        self.xattrs(At::Dir(dir), path)?;
        let root = path.components().next().is_none();
        self.push(Op::SetAttr {
            path: path.clone(),
            mode: Some(stat.mode & 0o7777),
            // The root is not made by an operation that sets its owner.
            uid: root.then_some(stat.uid),
            gid: root.then_some(stat.gid),
            atime: Some(stat.atime.into()),
            mtime: Some(stat.mtime.into()),
        })
    }

    fn unnameable(&mut self, parent: &LogPath, name: &Name) {
        tracing::warn!(%parent, ?name, "snapshot: path too long for the log, left out");
        self.stats.skipped += 1;
    }
}

impl Reader<'_> {
    /// Anything but a directory or a second name of a file.
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
                    .map_err(WalkError::read(path))?;
                self.content(&file, path)?;
            }
            Some(FileKind::Symlink) => {
                let target = self.origin.readlink(at).map_err(WalkError::read(path))?;
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
        while let Some(data) = file.next_data(position).map_err(WalkError::read(path))? {
            let hole = file.next_hole(data).map_err(WalkError::read(path))?;
            let mut at = data;
            while at < hole {
                let mut buffer = vec![0; (hole - at).min(CHUNK_BYTES) as usize];
                let read = file
                    .read_at(&mut buffer, at)
                    .map_err(WalkError::read(path))?;
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
        let size = file.stat().map_err(WalkError::read(path))?.size;
        self.push(Op::Truncate {
            path: path.clone(),
            size,
        })
    }

    fn xattrs(&mut self, at: At<'_>, path: &LogPath) -> Result<(), WalkError> {
        for (name, value) in xattrs(self.origin, at).map_err(WalkError::read(path))? {
            self.push(Op::SetXattr {
                path: path.clone(),
                name,
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
            false => Err(WalkError::Stopped),
        }
    }
}
