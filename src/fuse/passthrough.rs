//! FUSE passthrough: read-only opens whose reads the kernel does itself, straight from the
//! origin file. The kernel wants one backing file per inode for as long as any
//! passthrough open of it lasts, so backing ids are shared and counted here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use fuser::{BackingId, ReplyOpen};

use crate::vfs::Volume;

/// Backing ids of inodes with passthrough opens, and which handle is of which inode.
#[derive(Debug, Default)]
pub(super) struct Backings {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    by_inode: HashMap<u64, (Arc<BackingId>, usize)>,
    handles: HashMap<u64, u64>,
}

impl Backings {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The backing id for passthrough `handle` of inode `ino`: the inode's own if another
    /// open has one, else a new one for the handle's origin file. `None` if the kernel
    /// refuses (it lacks passthrough, or the daemon lacks CAP_SYS_ADMIN).
    pub(super) fn open(
        &self,
        volume: &Volume,
        reply: &ReplyOpen,
        ino: u64,
        handle: u64,
    ) -> Option<Arc<BackingId>> {
        let mut state = self.state();
        let backing = match state.by_inode.get_mut(&ino) {
            Some((backing, opens)) => {
                *opens += 1;
                Arc::clone(backing)
            }
            None => {
                let file = volume.backing_file(handle).ok()?;
                let backing = match reply.open_backing(file.as_ref()) {
                    Ok(backing) => Arc::new(backing),
                    Err(error) => {
                        tracing::warn!(%error, "the kernel refused FUSE passthrough; reads go through the daemon");
                        return None;
                    }
                };
                state.by_inode.insert(ino, (Arc::clone(&backing), 1));
                backing
            }
        };
        state.handles.insert(handle, ino);
        Some(backing)
    }

    /// `handle` is released; its inode's backing id goes with its last passthrough open.
    pub(super) fn release(&self, handle: u64) {
        let mut state = self.state();
        let Some(ino) = state.handles.remove(&handle) else {
            return;
        };
        if let Some((_, opens)) = state.by_inode.get_mut(&ino) {
            *opens -= 1;
            if *opens == 0 {
                state.by_inode.remove(&ino);
            }
        }
    }
}
