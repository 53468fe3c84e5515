//! The TOML schema exactly as written in a mount config. Every field is optional here;
//! `Config::resolve` fills defaults and rejects contradictions. Unknown keys are errors.

use std::path::PathBuf;

use serde::Deserialize;

use super::units::{ByteSize, Span};

/// A whole mount config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `[volume]`: what is mounted where.
    #[serde(default)]
    pub volume: RawVolume,
    /// `[cache]`: what may be cached, and for how long.
    #[serde(default)]
    pub cache: RawCache,
    /// `[write]`: the write policy.
    #[serde(default)]
    pub write: RawWrite,
    /// `[log]`: the change log's files.
    #[serde(default)]
    pub log: RawLog,
    /// `[replication]`: the replica nodes the log is streamed to.
    #[serde(default)]
    pub replication: super::replication::RawReplication,
    /// `[verify]`: stored hashes and scheduled checks.
    #[serde(default)]
    pub verify: super::verify::RawVerify,
    /// `[failover]`: who decides that a replica takes over.
    #[serde(default)]
    pub failover: super::failover::RawFailover,
    /// `[metrics]`: where Prometheus scrapes the daemon.
    #[serde(default)]
    pub metrics: RawMetrics,
}

/// The `[metrics]` section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    /// The address the daemon serves `/metrics` on ("127.0.0.1:9464").
    pub listen: Option<String>,
}

/// How writes reach the origin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WriteMode {
    /// The origin is updated before the call returns.
    WriteThrough,
    /// The call returns once the change is in the log; the origin catches up.
    WriteBehind,
}

/// The `[write]` section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWrite {
    /// write-through or write-behind.
    pub mode: Option<WriteMode>,
    /// write-behind: unflushed bytes beyond which writers wait.
    pub dirty_bytes_max: Option<ByteSize>,
    /// write-behind: the longest a change waits before the origin gets it.
    pub flush_interval: Option<Span>,
    /// The kernel's writeback cache: small writes gathered into large requests.
    pub kernel_writeback: Option<bool>,
}

/// The `[log]` section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    /// A segment file is sealed and a new one begun past this size.
    pub segment_bytes: Option<ByteSize>,
}

/// Which blocks the cache tiers let in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Admission {
    /// Blocks read only once (scans) cannot push out blocks read again and again (2Q).
    ScanResistant,
    /// Every block read is kept, least recently used out first (plain LRU).
    Always,
}

/// Whether read-only opens may be handed to the kernel (FUSE passthrough).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Passthrough {
    /// Every read comes to the daemon and its cache.
    Off,
    /// Read-only opens of files with no unflushed writes read the origin directly.
    Auto,
}

/// The `[cache]` section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    /// The memory tier's budget; 0 turns the read cache off.
    pub memory_bytes: Option<ByteSize>,
    /// The disk tier's directory, on a fast local disk; none, no disk tier.
    pub disk_dir: Option<PathBuf>,
    /// The disk tier's budget.
    pub disk_bytes: Option<ByteSize>,
    /// The unit the tiers keep and the origin is read in for sequential streams.
    pub block_size: Option<ByteSize>,
    /// Read-ahead's first window, once a stream is seen.
    pub readahead_min: Option<ByteSize>,
    /// The largest window read-ahead grows to.
    pub readahead_max: Option<ByteSize>,
    /// scan-resistant or always.
    pub admission: Option<Admission>,
    /// How stale a change made directly in the origin (not through the mount) may be seen.
    pub revalidate_after: Option<Span>,
    /// Revalidate hot files in the background before `revalidate_after` runs out.
    pub refresh_ahead: Option<bool>,
    /// off or auto.
    pub passthrough: Option<Passthrough>,
}

/// The `[volume]` section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVolume {
    /// The volume's name; later, its namespace on replica nodes.
    pub id: Option<String>,
    /// The origin (backing directory).
    pub source: Option<PathBuf>,
    /// Where the volume is mounted.
    pub mountpoint: Option<PathBuf>,
    /// mirrorfs's own files for this volume; never inside `source`.
    pub state_dir: Option<PathBuf>,
    /// Let users other than the one who mounted use the mount (permissions still apply).
    pub allow_other: Option<bool>,
}
