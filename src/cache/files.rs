//! What the cache knows of each origin file: which epoch its blocks are under, which
//! origin version they belong to, and how to tell a change of ours from another program's.

use std::sync::Weak;
use std::time::Instant;

use super::CachedFile;
use crate::types::Stamp;

/// What the cache knows of one origin file.
#[derive(Debug)]
pub(super) struct FileState {
    /// Part of every block key: moving it on makes every cached block unreachable.
    pub(super) epoch: u64,
    /// The origin's version the cached blocks belong to.
    pub(super) version: Stamp,
    /// When `version` was last compared with the origin's.
    pub(super) checked: Instant,
    /// Bumped by every change through the mount; fills that began before are not kept.
    pub(super) generation: u64,
    /// A change through the mount moved the origin's version since it was last checked.
    pub(super) changed_locally: bool,
    /// The origin's end of file as known: a block holding it carries an end marker, which
    /// a change of size makes stale.
    pub(super) size: u64,
    /// Blocks held in memory under the current epoch.
    pub(super) blocks: usize,
    /// The highest block number filled under the current epoch.
    pub(super) last_index: u64,
    /// Open files reading through the cache.
    pub(super) opens: usize,
    /// The most recent of them, for refresh-ahead to check and refill the file with.
    pub(super) open: Weak<CachedFile>,
    /// When a reader last read it, for refresh-ahead to tell hot files from idle ones.
    pub(super) read: Instant,
}

/// What comparing the origin's version with the cached one found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Revalidated {
    /// The same version.
    Same,
    /// A new version that changes made through the mount explain: blocks stay valid.
    Adopted,
    /// A new version nothing of ours explains: every cached block is stale.
    Stale,
}

impl FileState {
    /// A file first seen at `version`, under `epoch`.
    pub(super) fn new(version: Stamp, epoch: u64) -> FileState {
        FileState {
            epoch,
            version,
            checked: Instant::now(),
            generation: 0,
            changed_locally: false,
            size: version.size,
            blocks: 0,
            last_index: 0,
            opens: 0,
            open: Weak::new(),
            read: Instant::now(),
        }
    }

    /// Compares the origin's `version` with the cached one. `dirty`: the file has
    /// unflushed writes, whose flushing will move the version again. A stale file moves
    /// to `next_epoch`.
    pub(super) fn revalidate(
        &mut self,
        version: Stamp,
        dirty: bool,
        next_epoch: &mut u64,
    ) -> Revalidated {
        let outcome = if version == self.version {
            Revalidated::Same
        } else if self.changed_locally || dirty {
            Revalidated::Adopted
        } else {
            self.new_epoch(next_epoch);
            self.generation += 1;
            Revalidated::Stale
        };
        if outcome != Revalidated::Same && !dirty {
            self.size = version.size;
        }
        self.version = version;
        self.checked = Instant::now();
        if !dirty {
            self.changed_locally = false;
        }
        outcome
    }

    /// Makes every cached block of the file unreachable: they age out unasked.
    pub(super) fn new_epoch(&mut self, next_epoch: &mut u64) {
        self.epoch = *next_epoch;
        *next_epoch += 1;
        self.blocks = 0;
        self.last_index = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(size: u64, ctime: i64) -> Stamp {
        let time = crate::types::Timestamp {
            seconds: ctime,
            nanos: 0,
        };
        Stamp {
            size,
            mtime: time,
            ctime: time,
        }
    }

    #[test]
    fn only_an_unexplained_change_makes_blocks_stale() {
        let mut next_epoch = 2;
        let mut file = FileState::new(version(10, 1), 1);
        assert_eq!(
            file.revalidate(version(10, 1), false, &mut next_epoch),
            Revalidated::Same
        );
        // Another program wrote: a new epoch, and fills in flight are void.
        assert_eq!(
            file.revalidate(version(10, 2), false, &mut next_epoch),
            Revalidated::Stale
        );
        assert_eq!((file.epoch, file.generation, next_epoch), (2, 1, 3));
        // We wrote: the new version is ours.
        file.changed_locally = true;
        assert_eq!(
            file.revalidate(version(20, 3), false, &mut next_epoch),
            Revalidated::Adopted
        );
        assert_eq!((file.epoch, file.size), (2, 20));
        assert!(!file.changed_locally, "explained once");
        assert_eq!(
            file.revalidate(version(20, 4), false, &mut next_epoch),
            Revalidated::Stale
        );
        // Unflushed writes explain changes until they are flushed, and keep the size.
        assert_eq!(
            file.revalidate(version(30, 5), true, &mut next_epoch),
            Revalidated::Adopted
        );
        assert_eq!(file.size, 20);
        assert_eq!(
            file.revalidate(version(40, 6), true, &mut next_epoch),
            Revalidated::Adopted
        );
        assert_eq!(
            file.revalidate(version(40, 7), false, &mut next_epoch),
            Revalidated::Stale
        );
    }
}
