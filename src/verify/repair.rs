//! `--repair`: turning what a check found into records that bring the replicas into line
//! with the trusted copy, and writing rotted chunks of the primary back from a replica.
//! Every repair goes through the log, so each replica gets it in order with everything
//! else; the primary already has the state the records describe (or, for rot, has it
//! written back first).

use std::collections::HashSet;

use crate::manifest::CHUNK_BYTES;
use crate::manifest::{
    FixError, Seen, content_ops, metadata_ops, parent_of, removes, set_times, stat_at,
};
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
    #[error(transparent)]
    Fix(#[from] FixError),
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
