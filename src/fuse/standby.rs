//! A standby mount's follower: watches the offset the copy's tree holds (its gate), reads
//! the records its node applied since from the copy's log, and tells the kernel to drop
//! what it cached of each path they changed, so an application sees a change within one
//! poll of the node applying it, not only once the kernel's own caching runs out.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use fuser::{INodeNo, Notifier};

use crate::log::{self, LogPath};
use crate::origin::TreeGate;
use crate::types::FileId;
use crate::vfs::{Outside, Volume};

/// How often the gate's offset is looked at.
const POLL: Duration = Duration::from_millis(50);

/// Paths gathered in one look before the kernel is told to drop everything instead.
const PATHS_MAX: usize = 4096;

/// What a standby mount follows: a replica's copy, changed by its node.
#[derive(Debug)]
pub struct Standby {
    /// The copy's gate, shared with its node.
    pub gate: TreeGate,
    /// The copy's log, which names what each applied record changed.
    pub log_dir: PathBuf,
    /// Where the copy's tree is: a snapshot puts a new directory there.
    pub data_dir: PathBuf,
    /// What the follower saw, for status.
    pub followed: Arc<Followed>,
}

/// What a standby's follower saw, for status.
#[derive(Debug, Default)]
pub struct Followed {
    /// The offset served, plus one (0: none seen yet).
    served: AtomicU64,
    /// Notices sent to the kernel.
    notices: AtomicU64,
    /// The copy's tree was replaced by another directory (a snapshot).
    replaced: AtomicBool,
}

impl Followed {
    /// The offset of the first record the served tree lacks, once known.
    pub fn served(&self) -> Option<u64> {
        self.served.load(Ordering::Relaxed).checked_sub(1)
    }

    /// Invalidation notices sent to the kernel.
    pub fn notices(&self) -> u64 {
        self.notices.load(Ordering::Relaxed)
    }

    /// Whether the copy's tree was replaced under the mount (which serves the old one).
    pub fn replaced(&self) -> bool {
        self.replaced.load(Ordering::Relaxed)
    }
}

/// Follows `standby` for `volume` until `stop`.
pub(super) fn follow(standby: &Standby, notifier: &Notifier, volume: &Volume, stop: &AtomicBool) {
    let mut served: Option<u64> = None;
    let root = volume.root_id();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(POLL);
        if !volume.is_standby() {
            // Promoted in place: the mount makes the changes now.
            return;
        }
        if replaced(standby, root) {
            if !standby.followed.replaced.swap(true, Ordering::Relaxed) {
                tracing::error!(
                    data = %standby.data_dir.display(),
                    "the copy's tree was replaced by a snapshot: this standby serves the old one; mount it again to follow the copy"
                );
            }
            continue;
        }
        let looked = look(standby, volume, served);
        let (offset, changed) = match looked {
            Ok(looked) => looked,
            Err(error) => {
                tracing::warn!(%error, "cannot follow the copy; trying again");
                continue;
            }
        };
        for outside in &changed {
            tell_kernel(notifier, outside);
        }
        standby
            .followed
            .notices
            .fetch_add(changed.len() as u64, Ordering::Relaxed);
        if let Some(offset) = offset {
            served = Some(offset);
            standby.followed.served.store(offset + 1, Ordering::Relaxed);
        }
    }
}

/// Whether the copy's data directory is another than the one the volume serves.
fn replaced(standby: &Standby, root: FileId) -> bool {
    std::fs::metadata(&standby.data_dir).is_ok_and(|meta| {
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        } != root
    })
}

/// Under the gate: the offset the tree holds, and what changed since `served`.
fn look(
    standby: &Standby,
    volume: &Volume,
    served: Option<u64>,
) -> Result<(Option<u64>, Vec<Outside>), log::LogError> {
    let gate_error = |source| log::LogError::Io {
        path: standby.gate.path().to_path_buf(),
        source,
    };
    let reading = standby.gate.read().map_err(gate_error)?;
    let offset = reading.offset().map_err(gate_error)?;
    let (Some(from), Some(to)) = (served, offset) else {
        return Ok((offset, Vec::new()));
    };
    if to == from {
        return Ok((offset, Vec::new()));
    }
    let view = log::inspect(&standby.log_dir)?;
    // Cut back, or started over after a resync: no records say what changed.
    if to < from || view.stats().first_offset > from {
        return Ok((offset, volume.everything()));
    }
    let mut paths: Vec<LogPath> = Vec::new();
    for record in view.records(from)? {
        let record = record?;
        if record.offset >= to {
            break;
        }
        for path in [Some(record.op.path()), record.op.new_path()]
            .into_iter()
            .flatten()
        {
            if !paths.contains(path) {
                paths.push(path.clone());
            }
        }
        if paths.len() > PATHS_MAX {
            return Ok((offset, volume.everything()));
        }
    }
    let changed = paths
        .iter()
        .map(|path| volume.outside_change(path))
        .collect();
    Ok((offset, changed))
}

/// Drops the kernel's cached entry and inode (attributes and pages) for `outside`. A
/// notice for something the kernel no longer holds fails with ENOENT, which is fine.
fn tell_kernel(notifier: &Notifier, outside: &Outside) {
    if let Some((parent, name)) = &outside.entry {
        let _ = notifier.inval_entry(INodeNo(parent.0), name.as_os_str());
    }
    if let Some(inode) = outside.inode {
        let _ = notifier.inval_inode(INodeNo(inode.0), 0, 0);
    }
}
