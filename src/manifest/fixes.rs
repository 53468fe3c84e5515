//! The records that bring a copy's object in line with the origin's: what verify's repair
//! sends a replica, and what a replica's resync will. Each is read from the origin as it
//! is now; applied by `tree::apply`, like every record.

use std::ops::Range;

use crate::log::{LogPath, Op};
use crate::origin::{At, Origin, Stat};
use crate::tree::{WalkError, place, to_ops_under, xattrs};

use super::chunks::CHUNK_BYTES;
use super::compare::Aspect;
use super::tree::Kind;

/// Why the origin's side of a fix could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FixError {
    /// The origin refused.
    #[error("reading the primary: {0}")]
    Origin(#[from] std::io::Error),
    /// Walking the origin failed.
    #[error("reading the primary: {0}")]
    Walk(#[from] WalkError),
}

/// Whether repairing `aspect` removes the replica's object first.
pub fn removes(aspect: Aspect) -> bool {
    matches!(
        aspect,
        Aspect::Extra | Aspect::Kind | Aspect::Target | Aspect::Device | Aspect::Links
    )
}

/// What the check saw of the replica's object.
pub struct Seen<'a> {
    /// Its size.
    pub size: u64,
    /// Its extended attributes' names.
    pub xattrs: &'a [Vec<u8>],
    /// It and everything under it, in path order.
    pub subtree: &'a [(LogPath, Kind)],
    /// What the primary's object is a second name of.
    pub link_of: Option<&'a LogPath>,
}

/// The records that make a replica's `path` the primary's in `aspect`.
pub fn metadata_ops(
    origin: &Origin,
    aspect: Aspect,
    path: &LogPath,
    copy: &Seen<'_>,
) -> Result<Vec<Op>, FixError> {
    let mut ops = Vec::new();
    if removes(aspect) {
        // Deepest first, so each directory is empty when it goes.
        for (at, kind) in copy.subtree.iter().rev() {
            ops.push(match kind {
                Kind::Dir => Op::Rmdir { path: at.clone() },
                _ => Op::Unlink { path: at.clone() },
            });
        }
    }
    match aspect {
        Aspect::Extra => {}
        Aspect::Missing | Aspect::Kind | Aspect::Target | Aspect::Device | Aspect::Links => {
            match copy.link_of {
                // A second name of a file: a link to its first, as on the primary.
                Some(first) => ops.push(Op::Link {
                    path: first.clone(),
                    new_path: path.clone(),
                }),
                None => recreate(origin, path, &mut ops)?,
            }
        }
        Aspect::Size => {
            let stat = stat_at(origin, path)?;
            // Differences in the part both have are the content comparison's; from the
            // chunk the shorter one ends in, the primary's bytes are sent whole.
            let tail = (stat.size.min(copy.size) / CHUNK_BYTES) * CHUNK_BYTES;
            ops.extend(content_ops(origin, path, tail..stat.size)?);
            ops.push(Op::Truncate {
                path: path.clone(),
                size: stat.size,
            });
            ops.push(set_times(path, &stat));
        }
        Aspect::Mode | Aspect::Owner => {
            let stat = stat_at(origin, path)?;
            ops.push(Op::SetAttr {
                path: path.clone(),
                mode: (stat.kind() != Some(crate::types::FileKind::Symlink))
                    .then_some(stat.mode & 0o7777),
                uid: Some(stat.uid),
                gid: Some(stat.gid),
                atime: None,
                mtime: None,
            });
        }
        Aspect::Mtime => ops.push(set_times(path, &stat_at(origin, path)?)),
        Aspect::Xattrs => {
            let (dir, name) = place(origin, path)?;
            let xattrs = xattrs(origin, At::Entry(&dir, &name))?;
            for name in copy.xattrs {
                if !xattrs.iter().any(|(held, _)| held == name) {
                    ops.push(Op::RemoveXattr {
                        path: path.clone(),
                        name: name.clone(),
                    });
                }
            }
            for (name, value) in xattrs {
                ops.push(Op::SetXattr {
                    path: path.clone(),
                    name,
                    value,
                });
            }
        }
        // Repaired by the content comparison's ranges.
        Aspect::Content => {}
    }
    Ok(ops)
}

/// The records that make the primary's object at `path` (and all it holds) where the
/// replica now has nothing; a second name of a file becomes a link to the first.
fn recreate(origin: &Origin, path: &LogPath, ops: &mut Vec<Op>) -> Result<(), FixError> {
    to_ops_under(origin, path, &mut |batch, _| {
        ops.extend(batch);
        true
    })?;
    Ok(())
}

/// Write records of the primary's bytes in `range` of the file at `path`.
pub fn content_ops(
    origin: &Origin,
    path: &LogPath,
    range: Range<u64>,
) -> Result<Vec<Op>, FixError> {
    let (dir, name) = place(origin, path)?;
    let file = origin.open_regular(At::Entry(&dir, &name), libc::O_RDONLY)?;
    let mut ops = Vec::new();
    let mut offset = range.start;
    while offset < range.end {
        let len = (range.end - offset).min(CHUNK_BYTES) as usize;
        let mut data = vec![0u8; len];
        let read = file.read_at(&mut data, offset)?;
        data.truncate(read);
        if data.is_empty() {
            break;
        }
        let read = data.len() as u64;
        ops.push(Op::Write {
            path: path.clone(),
            offset,
            data,
        });
        offset += read;
    }
    Ok(ops)
}

/// The origin's metadata of the object at `path` (the root for the empty path).
pub fn stat_at(origin: &Origin, path: &LogPath) -> Result<Stat, FixError> {
    if path.components().next().is_none() {
        return Ok(origin.stat_dir(origin.root())?);
    }
    let (dir, name) = place(origin, path)?;
    Ok(origin.stat(At::Entry(&dir, &name))?)
}

/// The directory holding `path` (the root for a name in the root).
pub fn parent_of(path: &LogPath) -> LogPath {
    let bytes = path.as_bytes();
    let end = bytes.iter().rposition(|byte| *byte == b'/').unwrap_or(0);
    LogPath::try_from(bytes[..end].to_vec()).expect("a prefix of a valid path is valid")
}

/// A record giving `path` the times `stat` has.
pub fn set_times(path: &LogPath, stat: &Stat) -> Op {
    Op::SetAttr {
        path: path.clone(),
        mode: None,
        uid: None,
        gid: None,
        atime: Some(stat.atime.into()),
        mtime: Some(stat.mtime.into()),
    }
}
