//! The write policy: where a volume's changes go once `vfs` has decided them. Every change
//! becomes a record in the volume's change log; with write-through the origin already has
//! it when the record is appended.
//!
//! Ordering: a change is applied to the origin first and recorded second, so the log only
//! ever holds changes that happened. A crash between the two leaves one change in the
//! origin that the log lacks; the call never returned, so nothing acknowledged is missing.

pub mod apply;

use std::path::{Path, PathBuf};

use crate::config::{LogConfig, WriteConfig, WriteMode};
use crate::log::{Log, LogError, LogOptions, Op};

/// The leader epoch of records written before failover exists.
const EPOCH_FIRST: u32 = 1;

/// Where the log lives inside a volume's state directory.
pub fn log_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("log")
}

/// A volume's change recorder: the log and the write policy around it.
#[derive(Debug)]
pub struct Journal {
    log: Log,
    mode: WriteMode,
}

impl Journal {
    /// Opens (and recovers) the log in `state_dir`.
    pub fn open(
        state_dir: &Path,
        write: &WriteConfig,
        log: &LogConfig,
    ) -> Result<Journal, LogError> {
        let log = Log::open(
            &log_dir(state_dir),
            LogOptions {
                segment_bytes: log.segment_bytes,
                epoch: EPOCH_FIRST,
            },
        )?;
        Ok(Journal {
            log,
            mode: write.mode,
        })
    }

    /// The write policy.
    pub fn mode(&self) -> WriteMode {
        self.mode
    }

    /// Records a change the origin already has. With no replica consuming the log yet,
    /// the origin is its only consumer and holds everything, so sealed segments go.
    pub fn record(&self, op: Op) -> Result<u64, LogError> {
        let offset = self.log.append(op)?;
        if self.log.sealed_segments() > 0 {
            self.log.delete_before(offset)?;
        }
        Ok(offset)
    }

    /// Makes every change recorded so far durable in the log.
    pub fn sync(&self) -> Result<(), LogError> {
        match self.log.next_offset().checked_sub(1) {
            Some(last) => self.log.sync_to(last),
            None => Ok(()),
        }
    }

    /// The log itself, for status and tests.
    pub fn log(&self) -> &Log {
        &self.log
    }
}
