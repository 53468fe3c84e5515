//! The disk tier in use: its index (which blocks it holds, 2Q over them), the versions
//! its files belong to, and the one thread that writes and removes its files, in the
//! order the changes happened.
//!
//! The index is the truth; the files follow it through the queue. A block with queued
//! work, or of a file with queued work, is not read back until the work is done, so a
//! reader never sees a file that the index has already moved past.

use std::collections::HashMap;
use std::sync::Arc;

use super::block::Block;
use super::disk::{DiskKey, DiskTier, Inventory};
use super::policy::{Admission, TwoQ};
use super::queue::WorkQueue;
use super::stats::bump;
use super::{Cache, State, lock};
use crate::types::FileId;
use crate::types::Stamp;

/// Bytes of blocks waiting to be written beyond which more are not queued (the disk is
/// slower than the readers; those blocks are simply not kept on disk).
const PENDING_BYTES_MAX: u64 = 64 << 20;

/// Work for the disk writer.
#[derive(Debug)]
pub(super) enum DiskOp {
    /// Write the block's pages (merged with those on disk).
    Store(DiskKey, Arc<Block>),
    /// Remove the block.
    Delete(DiskKey),
    /// Remove every block of the file.
    Forget(FileId),
    /// Record the version the file's blocks belong to.
    Stamp(FileId, Stamp),
}

/// What the disk tier holds, as far as the cache is concerned.
#[derive(Debug)]
pub(super) struct DiskIndex {
    pub(super) policy: TwoQ<DiskKey, ()>,
    /// The origin version each file's blocks belong to.
    versions: HashMap<FileId, Stamp>,
    /// Queued operations per block and per file.
    pending: HashMap<DiskKey, u32>,
    pending_files: HashMap<FileId, u32>,
    pending_bytes: u64,
}

/// The disk tier and its writer's queue.
#[derive(Debug)]
pub(super) struct Disk {
    pub(super) tier: DiskTier,
    pub(super) queue: WorkQueue<DiskOp>,
}

impl DiskIndex {
    /// The index of what `inventory` found, within `budget` (the oldest go first if the
    /// budget shrank). Everything found had been kept before, so it starts protected.
    pub(super) fn new(
        inventory: Inventory,
        budget: u64,
        block_size: u64,
        admission: Admission,
    ) -> (DiskIndex, Vec<DiskKey>) {
        let mut policy = TwoQ::new(budget, block_size, admission);
        let mut evicted = Vec::new();
        for (key, held) in inventory.blocks {
            evicted.extend(policy.insert(key, (), held).into_iter().map(|(key, _)| key));
            policy.promote(&key);
        }
        let index = DiskIndex {
            policy,
            versions: inventory.versions,
            pending: HashMap::new(),
            pending_files: HashMap::new(),
            pending_bytes: 0,
        };
        (index, evicted)
    }

    /// Whether `key` may be read back now: held, of a file at `version`, nothing queued.
    pub(super) fn readable(&self, key: DiskKey, version: Stamp) -> bool {
        self.versions.get(&key.0) == Some(&version)
            && self.policy.peek(&key).is_some()
            && !self.pending.contains_key(&key)
            && !self.pending_files.contains_key(&key.0)
    }
}

impl Cache {
    /// Queues `op` for the disk writer, noting what it touches.
    pub(super) fn disk_op(&self, state: &mut State, op: DiskOp) {
        let (Some(disk), Some(index)) = (&self.disk, &mut state.disk) else {
            return;
        };
        match &op {
            DiskOp::Store(key, block) => {
                *index.pending.entry(*key).or_default() += 1;
                index.pending_bytes += block.weight();
            }
            DiskOp::Delete(key) => *index.pending.entry(*key).or_default() += 1,
            DiskOp::Forget(file) | DiskOp::Stamp(file, _) => {
                *index.pending_files.entry(*file).or_default() += 1;
            }
        }
        disk.queue.push(op);
    }

    /// Offers a block readers have used to the disk tier, if it holds pages the tier may
    /// not have. Prefetched blocks come here only once used, so read-ahead that was never
    /// read never reaches the disk.
    pub(super) fn spill(
        &self,
        state: &mut State,
        key: DiskKey,
        block: &Arc<Block>,
        version: Stamp,
    ) {
        let Some(index) = &mut state.disk else {
            return;
        };
        // An empty block (a read at the end of the file) is not worth a file.
        if block.spilled()
            || block.weight() == 0
            || index.pending_bytes + block.weight() > PENDING_BYTES_MAX
        {
            return;
        }
        block.mark_spilled();
        let mut ops = Vec::new();
        if index.versions.get(&key.0) != Some(&version) {
            if index.versions.contains_key(&key.0) {
                self.forget_on_disk(state, key.0);
            }
            let Some(index) = &mut state.disk else {
                return;
            };
            index.versions.insert(key.0, version);
            ops.push(DiskOp::Stamp(key.0, version));
        }
        let Some(index) = &mut state.disk else {
            return;
        };
        let estimate = self
            .disk
            .as_ref()
            .map_or(0, |disk| disk.tier.footprint(block.weight()));
        let weight = index.policy.weight(&key).unwrap_or(0).max(estimate);
        for (evicted, ()) in index.policy.insert(key, (), weight) {
            ops.push(DiskOp::Delete(evicted));
        }
        ops.push(DiskOp::Store(key, Arc::clone(block)));
        for op in ops {
            self.disk_op(state, op);
        }
    }

    /// Drops blocks `doomed` of `file` from the tier.
    pub(super) fn drop_on_disk(&self, state: &mut State, keys: impl IntoIterator<Item = DiskKey>) {
        let Some(index) = &mut state.disk else {
            return;
        };
        let dropped: Vec<DiskKey> = keys
            .into_iter()
            .filter(|key| index.policy.remove(key).is_some())
            .collect();
        for key in dropped {
            self.disk_op(state, DiskOp::Delete(key));
        }
    }

    /// Drops every block of `file` from the tier.
    pub(super) fn forget_on_disk(&self, state: &mut State, file: FileId) {
        let Some(index) = &mut state.disk else {
            return;
        };
        if index.versions.remove(&file).is_none() {
            return;
        }
        index.policy.remove_where(|key| key.0 == file);
        self.disk_op(state, DiskOp::Forget(file));
    }

    /// The origin version of `file` moved because of changes through the mount, whose
    /// blocks were dropped one by one: the rest stay valid under the new version.
    pub(super) fn adopt_on_disk(&self, state: &mut State, file: FileId, version: Stamp) {
        let Some(index) = &mut state.disk else {
            return;
        };
        if let Some(known) = index.versions.get_mut(&file) {
            *known = version;
            self.disk_op(state, DiskOp::Stamp(file, version));
        }
    }

    /// A file is first seen in this mount at `version`: blocks the tier holds of another
    /// version are stale.
    pub(super) fn first_sight_on_disk(&self, state: &mut State, file: FileId, version: Stamp) {
        let stale = state
            .disk
            .as_ref()
            .and_then(|index| index.versions.get(&file))
            .is_some_and(|known| *known != version);
        if stale {
            self.forget_on_disk(state, file);
        }
    }

    /// The disk writer thread's life: every queued operation, in order, until stopped and
    /// drained (so deletions are never lost at unmount).
    pub(super) fn disk_writer(&self) {
        let Some(disk) = &self.disk else {
            return;
        };
        while let Some(op) = disk.queue.pop(true) {
            let stored = match &op {
                DiskOp::Store(key, block) => {
                    let runs: Vec<(u32, &[u8])> = block.runs().collect();
                    match disk.tier.store(*key, &runs, block.end()) {
                        Ok(held) => {
                            bump(&self.counters.disk_written_bytes, block.weight());
                            Some((*key, held))
                        }
                        Err(error) => {
                            tracing::warn!(%error, "cannot write to the disk tier; block kept in memory only");
                            disk.tier.delete(*key);
                            None
                        }
                    }
                }
                DiskOp::Delete(key) => {
                    disk.tier.delete(*key);
                    None
                }
                DiskOp::Forget(file) => {
                    disk.tier.forget(*file);
                    None
                }
                DiskOp::Stamp(file, version) => {
                    if let Err(error) = disk.tier.set_version(*file, *version) {
                        tracing::warn!(%error, "cannot record a file version in the disk tier");
                        disk.tier.forget(*file);
                    }
                    None
                }
            };
            let mut state = lock(&self.state);
            let State { disk: index, .. } = &mut *state;
            let Some(index) = index else {
                continue;
            };
            let done = |counts: &mut u32| {
                *counts -= 1;
                *counts == 0
            };
            match &op {
                DiskOp::Store(key, block) => {
                    index.pending_bytes -= block.weight();
                    if index.pending.get_mut(key).is_some_and(done) {
                        index.pending.remove(key);
                    }
                }
                DiskOp::Delete(key) => {
                    if index.pending.get_mut(key).is_some_and(done) {
                        index.pending.remove(key);
                    }
                }
                DiskOp::Forget(file) | DiskOp::Stamp(file, _) => {
                    if index.pending_files.get_mut(file).is_some_and(done) {
                        index.pending_files.remove(file);
                    }
                }
            }
            // The file's true size (pages merged with older ones) replaces the estimate.
            // What that evicts, and a block the index let go of while its store waited,
            // is deleted here and now: this thread is the one that orders the files.
            let mut doomed = Vec::new();
            match (&op, stored) {
                (DiskOp::Store(..), Some((key, held))) if index.policy.peek(&key).is_some() => {
                    doomed.extend(
                        index
                            .policy
                            .insert(key, (), held)
                            .into_iter()
                            .map(|(key, ())| key),
                    );
                }
                (DiskOp::Store(key, _), _) => {
                    index.policy.remove(key);
                    doomed.push(*key);
                }
                _ => {}
            }
            drop(state);
            for key in doomed {
                disk.tier.delete(key);
            }
        }
    }
}
