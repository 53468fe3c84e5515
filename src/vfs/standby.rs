//! A standby volume: the origin is a replica's copy that another process (its node)
//! changes, so every request reads through the copy's gate (never a record half applied),
//! changes through the mount are refused, and what the node changed is found by path so
//! the caller can drop the kernel's cached copies of it.

use crate::log::LogPath;
use crate::origin::{At, Reading, TreeGate};
use crate::tree::place;
use crate::types::{InodeId, Name};
use crate::write::Journal;

use super::{Result, VfsError, Volume};

/// Why changes are refused on a standby.
const READ_ONLY: &str = "a standby mount of a replica's copy is read-only";

/// What the kernel may hold of a path another process changed: the entry by that name and
/// the inode it names now, where the volume has given them out.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outside {
    /// The directory holding the name, and the name.
    pub entry: Option<(InodeId, Name)>,
    /// The object the path names now.
    pub inode: Option<InodeId>,
}

impl Volume {
    /// Makes this a standby: requests read the origin through `gate`, shared with the
    /// process that changes it, and changes are refused (EROFS).
    pub fn stand_by(&self, gate: TreeGate) {
        let _ = self.standby.set(gate);
    }

    /// The gate requests read through, while the volume is a standby (not promoted).
    fn gate(&self) -> Option<&TreeGate> {
        self.standby.get().filter(|_| self.promoted.get().is_none())
    }

    /// Whether the volume is a standby.
    pub fn is_standby(&self) -> bool {
        self.gate().is_some()
    }

    /// Holds the tree for one request, if the volume is a standby: the node's changes
    /// wait until it is dropped.
    pub fn hold_tree(&self) -> Result<Option<Reading>> {
        Ok(self.gate().map(TreeGate::read).transpose()?)
    }

    /// Turns a standby into a primary in place: `journal` (the promoted copy's log, and
    /// through it the replicas) records its changes from now on, and changes are taken.
    /// Open files stay open (those opened read-only stay so). Gives `journal` back if
    /// the volume is no standby, or was promoted already.
    pub fn promote_in_place(&self, journal: Journal) -> std::result::Result<(), Journal> {
        if self.standby.get().is_none() {
            return Err(journal);
        }
        // One store: the journal is there for any change the end of the standby lets in.
        self.promoted.set(journal)
    }

    /// The origin the volume serves, to share with a journal opened for it.
    pub fn origin_shared(&self) -> &std::sync::Arc<crate::origin::Origin> {
        &self.origin
    }

    /// Err(Refused) while the volume is a standby.
    pub(super) fn check_standby(&self) -> Result<()> {
        match self.is_standby() {
            true => Err(VfsError::Refused(READ_ONLY.to_string())),
            false => Ok(()),
        }
    }

    /// What the kernel may hold of `path`, changed by another process: looked up on the
    /// origin now (the caller holds the tree), and named by the ids this volume gave out.
    pub fn outside_change(&self, path: &LogPath) -> Outside {
        if path.as_bytes().is_empty() {
            return Outside {
                entry: None,
                inode: Some(InodeId::ROOT),
            };
        }
        let Ok((dir, name)) = place(&self.origin, path) else {
            // The directory is gone too: its own entry is dropped by its own change.
            return Outside::default();
        };
        let table = self.table();
        // Only ids the kernel holds: others it has nothing cached for.
        let given_out = |stat: crate::origin::Stat| {
            table.id_of(stat.id()).filter(|id| table.get(*id).is_some())
        };
        let entry = self
            .origin
            .stat_dir(&dir)
            .ok()
            .and_then(given_out)
            .map(|parent| (parent, name.clone()));
        let inode = self
            .origin
            .stat(At::Entry(&dir, &name))
            .ok()
            .and_then(given_out);
        Outside { entry, inode }
    }

    /// Everything the kernel may hold: every inode given out, by every name it was
    /// reached by (when the tree changed in ways no record names, as by a resync).
    pub fn everything(&self) -> Vec<Outside> {
        let table = self.table();
        let mut all = Vec::new();
        for (id, inode) in table.all() {
            all.push(Outside {
                entry: None,
                inode: Some(id),
            });
            for (parent, name) in &inode.links {
                all.push(Outside {
                    entry: Some((*parent, name.clone())),
                    inode: None,
                });
            }
        }
        all
    }

    /// The identity of the directory the volume serves.
    pub fn root_id(&self) -> crate::types::FileId {
        self.origin.root_stat().id()
    }
}
