//! What `mirrorfs status` shows of a mounted volume: each layer's own status gathered in
//! one document, which the daemon answers on its control socket.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::cache::CacheStats;
use crate::log::{EpochStart, Fence, LogStats};
use crate::replication::{LastElection, ReplicationStatus};
use crate::write::BehindStatus;

/// What `mirrorfs status` shows of a mounted volume.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    /// The volume id.
    pub volume: String,
    /// The origin.
    pub source: PathBuf,
    /// Where it is mounted.
    pub mountpoint: PathBuf,
    /// The daemon's process id.
    pub pid: u32,
    /// "write-through" or "write-behind".
    pub write_mode: String,
    /// The change log's positions and size.
    pub log: LogStatus,
    /// Write-behind's dirty data and flushing, for a write-behind volume.
    pub write_behind: Option<BehindStatus>,
    /// The read cache's tiers and what they did, when reads go through one.
    pub cache: Option<CacheStats>,
    /// Read-only opens passed through to the kernel since the mount.
    pub passthrough_opens: u64,
    /// The replicas and their positions, when the volume has replicas.
    pub replication: Option<ReplicationStatus>,
    /// Stored hashes and the last verify run.
    #[serde(default)]
    pub verify: VerifyStatus,
    /// Requests whose handler panicked (each answered EIO; see the daemon's log).
    #[serde(default)]
    pub handler_panics: u64,
    /// For a standby mount of a replica's copy: what it serves.
    #[serde(default)]
    pub standby: Option<StandbyStatus>,
    /// The election that made this copy the primary (automatic failover), if one did.
    #[serde(default)]
    pub election: Option<LastElection>,
}

impl Status {
    /// What this mount is: "standby", "fenced" (an old primary), or "primary".
    pub fn role(&self) -> &'static str {
        match (&self.standby, &self.log.fence) {
            (Some(_), _) => "standby",
            (None, Some(_)) => "fenced",
            (None, None) => "primary",
        }
    }
}

/// A standby mount of a replica's copy: the offset it serves and how far behind it is.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StandbyStatus {
    /// The copy's directory (the node's DIR/ID).
    pub copy: PathBuf,
    /// The first record the served tree lacks, once the node has said (the offset served).
    pub served_offset: Option<u64>,
    /// Records the node holds durably (what it acknowledged).
    pub received: u64,
    /// The last high watermark the primary told the copy (stored at most once a second).
    pub high_watermark: u64,
    /// Records the served tree lacks of those the node holds or the primary counted as
    /// committed.
    pub lag: u64,
    /// The tree is between offsets: cut back or mid-resync (reads may mix two states).
    pub out_of_step: bool,
    /// The copy's tree was replaced by a snapshot; this mount serves the old one.
    pub replaced: bool,
    /// Invalidation notices sent to the kernel.
    pub notices: u64,
}

/// verify as status shows it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct VerifyStatus {
    /// Files with stored hashes, when they are kept.
    pub stored_files: Option<u64>,
    /// Files whose stored hashes wait to be brought up to date.
    pub pending_files: u64,
    /// The last run this daemon made (scheduled or asked for).
    pub last_run: Option<LastRun>,
}

/// A verify run's outcome, in brief.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LastRun {
    /// When it ended, in seconds since the Unix epoch.
    pub ended: u64,
    /// Whether the daemon ran it on its own schedule.
    pub scheduled: bool,
    /// Its exit code (fsck's).
    pub exit_code: i32,
    /// How many findings.
    pub findings: u64,
    /// Its summary line.
    pub summary: String,
}

/// The change log as status shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LogStatus {
    /// Positions and sizes.
    #[serde(flatten)]
    pub stats: LogStats,
    /// Every record below this offset is on stable storage.
    pub durable_offset: u64,
    /// Where each leader epoch's records begin, oldest first.
    #[serde(default)]
    pub epochs: Vec<EpochStart>,
    /// What fenced the log, once a newer primary was promoted.
    #[serde(default)]
    pub fence: Option<Fence>,
}
