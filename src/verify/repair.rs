//! `--repair`: turning what a check found into records that bring the replicas into line
//! with the trusted copy, and writing rotted chunks of the primary back from a replica.
//! Every repair goes through the log, so each replica gets it in order with everything
//! else; the primary already has the state the records describe (or, for rot, has it
//! written back first).

use std::collections::HashSet;
use std::ops::Range;

use crate::log::{LogPath, Op};
use crate::manifest::CHUNK_BYTES;
use crate::manifest::Kind;
use crate::origin::{At, Origin, Stat};
use crate::tree::{place, to_ops_under, xattrs};
use crate::vfs::Repairing;

use super::report::Action;
use super::run::{Fix, Found, Replica};
use crate::manifest::Aspect;

/// Carries out each fix in `found` while `repairing` holds the mount's changes; a finding
/// whose repair failed is marked with why.
pub fn repair(found: &mut [Found], replicas: &mut [Replica], repairing: &Repairing<'_>) {
    let mut done = Done::default();
    for item in found {
        if let Err(error) = one(&item.fix, replicas, repairing, &mut done) {
            item.finding.action = Action::RepairFailed(error.to_string());
        }
    }
}

/// What has been sent already: a change every replica gets is sent once.
#[derive(Default)]
struct Done {
    metadata: HashSet<(Vec<u8>, Aspect)>,
    content: HashSet<(Vec<u8>, u64)>,
    times: HashSet<Vec<u8>>,
}

/// Why one repair could not be made.
#[derive(Debug, thiserror::Error)]
enum RepairError {
    #[error("{0}")]
    Volume(#[from] crate::vfs::VfsError),
    #[error("reading the primary: {0}")]
    Origin(#[from] std::io::Error),
    #[error("reading the primary: {0}")]
    Walk(#[from] crate::tree::WalkError),
    #[error("reading replica {0}: {1}")]
    Remote(String, String),
    #[error("replica {0} sent bytes that do not match the stored hash")]
    Mismatch(String),
}

fn one(
    fix: &Fix,
    replicas: &mut [Replica],
    repairing: &Repairing<'_>,
    done: &mut Done,
) -> Result<(), RepairError> {
    let origin = repairing.origin();
    match fix {
        Fix::Nothing => Ok(()),
        Fix::Metadata {
            aspect,
            path,
            link_of,
            copy,
            copy_subtree,
            ..
        } => {
            let copy_size = copy.as_ref().map_or(0, |entry| entry.size);
            let copy_xattrs: Vec<Vec<u8>> = copy
                .iter()
                .flat_map(|entry| entry.xattrs.iter().map(|xattr| xattr.name.clone()))
                .collect();
            if !done.metadata.insert((path.as_bytes().to_vec(), *aspect)) {
                // Sent for another replica already; the removals are this one's own.
                if !removes(*aspect) {
                    return Ok(());
                }
            }
            let copy = Seen {
                size: copy_size,
                xattrs: &copy_xattrs,
                subtree: copy_subtree,
                link_of: link_of.as_ref(),
            };
            let changes_names = removes(*aspect) || matches!(aspect, Aspect::Missing);
            for op in metadata_ops(origin, *aspect, path, &copy)? {
                repairing.record(op)?;
            }
            // Names added or removed move the replica's directory's mtime: the primary's
            // is sent after, as every change of names through the mount does.
            if changes_names {
                let parent = parent_of(path);
                repairing.record(set_times(&parent, &stat_at(origin, &parent)?))?;
            }
            Ok(())
        }
        Fix::Content { path, ranges, .. } => {
            for range in ranges {
                if !done.content.insert((path.as_bytes().to_vec(), range.start)) {
                    continue;
                }
                for op in content_ops(origin, path, range.clone())? {
                    repairing.record(op)?;
                }
            }
            // A write moves a replica's mtime: the primary's is sent after.
            if done.times.insert(path.as_bytes().to_vec()) {
                let stat = stat_at(origin, path)?;
                repairing.record(set_times(path, &stat))?;
            }
            Ok(())
        }
        Fix::Rot {
            path,
            key,
            chunk,
            expected,
            from,
        } => {
            let Replica { name, remote, .. } = &mut replicas[*from];
            let offset = chunk * CHUNK_BYTES;
            let data = remote
                .read(path, offset, CHUNK_BYTES as u32)
                .map_err(|error| RepairError::Remote(name.clone(), error.to_string()))?;
            if blake3::hash(&data).as_bytes() != expected {
                return Err(RepairError::Mismatch(name.clone()));
            }
            let stat = stat_at(origin, path)?;
            repairing.write(path, *key, offset, &data, stat.mtime)?;
            Ok(())
        }
    }
}

/// Whether repairing `aspect` removes the replica's object first.
fn removes(aspect: Aspect) -> bool {
    matches!(
        aspect,
        Aspect::Extra | Aspect::Kind | Aspect::Target | Aspect::Device | Aspect::Links
    )
}

/// What the check saw of the replica's object.
struct Seen<'a> {
    size: u64,
    xattrs: &'a [Vec<u8>],
    subtree: &'a [(LogPath, Kind)],
    /// What the primary's object is a second name of.
    link_of: Option<&'a LogPath>,
}

/// The records that make a replica's `path` the primary's in `aspect`.
fn metadata_ops(
    origin: &Origin,
    aspect: Aspect,
    path: &LogPath,
    copy: &Seen<'_>,
) -> Result<Vec<Op>, RepairError> {
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
fn recreate(origin: &Origin, path: &LogPath, ops: &mut Vec<Op>) -> Result<(), RepairError> {
    to_ops_under(origin, path, &mut |batch, _| {
        ops.extend(batch);
        true
    })?;
    Ok(())
}

/// Write records of the primary's bytes in `range` of the file at `path`.
fn content_ops(origin: &Origin, path: &LogPath, range: Range<u64>) -> Result<Vec<Op>, RepairError> {
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

fn stat_at(origin: &Origin, path: &LogPath) -> Result<Stat, RepairError> {
    if path.components().next().is_none() {
        return Ok(origin.stat_dir(origin.root())?);
    }
    let (dir, name) = place(origin, path)?;
    Ok(origin.stat(At::Entry(&dir, &name))?)
}

/// The directory holding `path` (the root for a name in the root).
fn parent_of(path: &LogPath) -> LogPath {
    let bytes = path.as_bytes();
    let end = bytes.iter().rposition(|byte| *byte == b'/').unwrap_or(0);
    LogPath::try_from(bytes[..end].to_vec()).expect("a prefix of a valid path is valid")
}

/// A record giving `path` the times `stat` has.
fn set_times(path: &LogPath, stat: &Stat) -> Op {
    Op::SetAttr {
        path: path.clone(),
        mode: None,
        uid: None,
        gid: None,
        atime: Some(stat.atime.into()),
        mtime: Some(stat.mtime.into()),
    }
}
