//! A replica node's copy of one volume, in `DIR/<volume id>/`:
//!
//! ```text
//! data/      the volume as a plain directory tree: restoring is a copy
//! log/       the records received, with the primary's offsets and epochs
//! applied    every record below this offset is durably in data/
//! ```
//!
//! Records are appended to the copy's log and fsynced before they are acknowledged, then
//! applied to `data/` by the same code that applies write-behind's records to an origin.
//! After a crash, opening the copy applies again what the log holds past `applied`;
//! applying a record twice leaves what applying it once does.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::log::{Log, LogError, LogOptions, Record};
use crate::origin::Origin;
use crate::write::applied;
use crate::write::apply::{ApplyError, apply};

/// Segment size of a copy's log.
const SEGMENT_BYTES: u64 = 64 << 20;

/// `applied` is stored at most this often (it costs a syncfs of the copy).
const APPLIED_EVERY: Duration = Duration::from_secs(1);

/// Why a copy could not take records.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The copy's files could not be read or written.
    #[error("replica copy {path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The copy's log refused (a gap, damage).
    #[error("replica log: {0}")]
    Log(#[from] LogError),
    /// A record could not be applied to the tree.
    #[error("{0}")]
    Apply(#[from] ApplyError),
    /// Records from an epoch older than one already seen: a deposed primary.
    #[error("record {offset} is of epoch {epoch}, older than epoch {seen} already seen")]
    StaleEpoch {
        /// The record.
        offset: u64,
        /// Its epoch.
        epoch: u32,
        /// The highest epoch seen.
        seen: u32,
    },
}

/// One volume's copy on a replica node.
#[derive(Debug)]
pub struct VolumeCopy {
    root: PathBuf,
    tree: Origin,
    log: Log,
    applied: u64,
    applied_stored: Instant,
    epoch: u32,
    as_root: bool,
}

impl VolumeCopy {
    /// Opens (or makes) the copy in `root`, bringing `data/` up to what the log holds.
    pub fn open(root: &Path) -> Result<VolumeCopy, CopyError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CopyError::Io { path, source }
        };
        let data = root.join("data");
        std::fs::create_dir_all(&data).map_err(io(&data))?;
        let tree = Origin::open(&data).map_err(io(&data))?;
        let log = Log::open(
            &root.join("log"),
            LogOptions {
                segment_bytes: SEGMENT_BYTES,
                epoch: 0,
            },
        )?;
        let applied_path = root.join("applied");
        let snapshot = log.snapshot();
        let first = snapshot.stats().first_offset;
        let applied = applied::load(&applied_path)
            .map_err(io(&applied_path))?
            .unwrap_or(first)
            .max(first);
        // SAFETY: geteuid cannot fail.
        let as_root = unsafe { libc::geteuid() } == 0;
        let mut epoch = 0;
        let mut copy_applied = applied;
        for record in snapshot.records(applied)? {
            let record = record?;
            apply(&tree, &record, as_root)?;
            epoch = epoch.max(record.epoch);
            copy_applied = record.offset + 1;
        }
        let mut copy = VolumeCopy {
            root: root.to_path_buf(),
            tree,
            log,
            applied: copy_applied,
            applied_stored: Instant::now(),
            epoch,
            as_root,
        };
        copy.store_applied()?;
        Ok(copy)
    }

    /// The offset of the first record the copy lacks.
    pub fn next(&self) -> u64 {
        self.log.next_offset()
    }

    /// [`record_hash`](super::protocol::record_hash) of the last record held, if any.
    pub fn last_hash(&self) -> Result<Option<[u8; 32]>, CopyError> {
        let Some(last) = self.next().checked_sub(1) else {
            return Ok(None);
        };
        match self.log.snapshot().records(last)?.next() {
            Some(record) => Ok(Some(super::protocol::record_hash(&record?))),
            None => Ok(None),
        }
    }

    /// The highest epoch of the records held.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// Where the copy lives.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Takes `records` (the next ones, in order): durable in the copy's log when this
    /// returns, and applied to the tree. Returns the offset of the first record it lacks.
    /// Nothing from a record that is refused on is kept.
    pub fn receive(&mut self, records: &[Record]) -> Result<u64, CopyError> {
        for record in records {
            if record.epoch < self.epoch {
                return Err(CopyError::StaleEpoch {
                    offset: record.offset,
                    epoch: record.epoch,
                    seen: self.epoch,
                });
            }
            self.log.append_record(record)?;
            self.epoch = record.epoch;
        }
        let Some(last) = records.last() else {
            return Ok(self.next());
        };
        self.log.sync_to(last.offset)?;
        for record in records {
            apply(&self.tree, record, self.as_root)?;
            self.applied = record.offset + 1;
        }
        if self.applied_stored.elapsed() >= APPLIED_EVERY {
            self.store_applied()?;
        }
        Ok(self.next())
    }

    /// Makes the tree durable and records how far it is applied.
    pub fn store_applied(&mut self) -> Result<(), CopyError> {
        let path = self.root.join("applied");
        let io = |source| CopyError::Io {
            path: path.clone(),
            source,
        };
        self.tree.sync_filesystem().map_err(io)?;
        applied::store(&path, self.applied).map_err(io)?;
        self.applied_stored = Instant::now();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{LogPath, Op};

    fn path(text: &str) -> LogPath {
        LogPath::try_from(text.as_bytes().to_vec()).unwrap()
    }

    fn records(from: u64, epoch: u32) -> Vec<Record> {
        let ops = [
            Op::Mkdir {
                path: path("d"),
                mode: 0o755,
                uid: 0,
                gid: 0,
            },
            Op::Create {
                path: path("d/f"),
                mode: 0o644,
                uid: 0,
                gid: 0,
            },
            Op::Write {
                path: path("d/f"),
                offset: 0,
                data: b"hello".to_vec(),
            },
        ];
        ops.into_iter()
            .enumerate()
            .map(|(n, op)| Record {
                offset: from + n as u64,
                epoch,
                op,
            })
            .collect()
    }

    #[test]
    fn records_land_in_the_tree_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let mut copy = VolumeCopy::open(dir.path()).unwrap();
        assert_eq!((copy.next(), copy.epoch()), (0, 0));
        assert_eq!(copy.receive(&records(0, 1)).unwrap(), 3);
        assert_eq!(
            std::fs::read(dir.path().join("data/d/f")).unwrap(),
            b"hello"
        );
        // Out of order: refused, nothing kept.
        let error = copy.receive(&records(5, 1)).unwrap_err();
        assert!(
            matches!(error, CopyError::Log(LogError::OutOfOrder { .. })),
            "{error}"
        );
        drop(copy);
        // The tree lost (as if the node crashed before syncing it): reopening applies the log.
        std::fs::remove_dir_all(dir.path().join("data")).unwrap();
        std::fs::remove_file(dir.path().join("applied")).unwrap();
        let copy = VolumeCopy::open(dir.path()).unwrap();
        assert_eq!((copy.next(), copy.epoch()), (3, 1));
        assert_eq!(
            std::fs::read(dir.path().join("data/d/f")).unwrap(),
            b"hello"
        );
    }

    #[test]
    fn a_lower_epoch_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut copy = VolumeCopy::open(dir.path()).unwrap();
        copy.receive(&records(0, 4)).unwrap();
        let error = copy.receive(&records(3, 3)).unwrap_err();
        assert!(
            matches!(
                error,
                CopyError::StaleEpoch {
                    epoch: 3,
                    seen: 4,
                    ..
                }
            ),
            "{error}"
        );
        assert_eq!(copy.next(), 3);
    }
}
