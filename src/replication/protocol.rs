//! The messages a primary and a replica node exchange over a [`Channel`](super::channel),
//! encoded with postcard. Records travel as the log holds them, and decoding one checks
//! its paths as reading the log does: no path with `..`, no absolute path, no NUL.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::config::{Acks, Compression, FailoverConfig, FailoverMode, OnInsufficient, Replica};
use crate::log::{Log, LogError, LogPath, Op, Record};
use crate::manifest::Entry;
use crate::manifest::FileHashes;

use super::vote::Standing;

/// Why a message could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("malformed message: {0}")]
pub struct ProtocolError(String);

/// A record the copy holds durably in its log but cannot apply to its tree: the tree
/// stops before it until the cause is removed (a node of a newer version, or room on the
/// disk). Never silent: status shows it, the node logs it, verify reports the copy behind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stuck {
    /// The record's offset.
    pub offset: u64,
    /// What applying it said.
    pub error: String,
}

/// What a primary tells a node of its volume's replication when it opens a session: what
/// a copy promoted to primary needs to write the new primary's config (the other replicas
/// to follow it, and what its fsync waits for).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peers {
    /// The name the primary's config gives this node.
    pub this: String,
    /// Every replica of the volume, this one included, in config order.
    pub replicas: Vec<Replica>,
    /// What fsync waits for.
    pub acks: Acks,
    /// How many replicas must be in sync.
    pub min_insync: u32,
    /// What fsync does when too few are.
    pub on_insufficient: OnInsufficient,
    /// Records cross the network unencrypted.
    pub plaintext: bool,
    /// The config's `on_promote` hook, for a promoted copy to run and keep.
    #[serde(default)]
    pub on_promote: Option<String>,
    /// The config's `on_fenced` hook, for a promoted copy's config to keep.
    #[serde(default)]
    pub on_fenced: Option<String>,
    /// With automatic failover: what the replicas need to elect the next primary.
    #[serde(default)]
    pub failover: Option<AutoFailover>,
    /// How long fsync waits for too few replicas in sync, in milliseconds.
    #[serde(default)]
    pub ack_timeout_ms: Option<u64>,
    /// How far behind a replica may fall and stay in sync, in milliseconds.
    #[serde(default)]
    pub lag_max_ms: Option<u64>,
    /// How the primary compresses what it sends.
    #[serde(default)]
    pub compression: Compression,
    /// The most bytes per second the primary sends each replica.
    #[serde(default)]
    pub rate_bytes_max: Option<u64>,
}

/// A volume's automatic failover as the primary's config has it (`[failover]`): what a
/// replica node needs to stand for election, and to write its own config when it wins.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoFailover {
    /// The primary's name among the voters.
    pub primary: String,
    /// Where the primary's machine serves a replica node once it rejoins, if it says.
    pub primary_address: Option<String>,
    /// Where the primary mounts the volume: a copy elected in its place, with no standby
    /// mounted, is configured to mount there.
    pub mountpoint: std::path::PathBuf,
    /// The lease, in milliseconds.
    pub lease_ms: u64,
    /// The clock rate bound in millionths, rounded up (1.1 is 1 100 000).
    pub clock_rate_bound_ppm: u32,
    /// Promote the most advanced replica when none can prove it is in sync.
    pub unclean: bool,
    /// The witnesses.
    pub witnesses: Vec<Replica>,
}

impl AutoFailover {
    /// What a primary with `config` (automatic, and named), mounted at `mountpoint`, tells
    /// its replicas.
    pub fn from_config(
        config: &FailoverConfig,
        primary: String,
        mountpoint: std::path::PathBuf,
    ) -> AutoFailover {
        AutoFailover {
            primary,
            mountpoint,
            primary_address: config.address.clone(),
            lease_ms: config.lease.as_millis() as u64,
            clock_rate_bound_ppm: (config.clock_rate_bound * 1e6).ceil() as u32,
            unclean: config.unclean,
            witnesses: config.witnesses.clone(),
        }
    }

    /// The failover settings of a volume with `replicas` replicas whose primary sent this:
    /// the timings and the majority derive from these as on the primary.
    pub fn config(&self, replicas: usize) -> FailoverConfig {
        FailoverConfig {
            mode: FailoverMode::Auto,
            auto_off: None,
            lease: std::time::Duration::from_millis(self.lease_ms),
            clock_rate_bound: f64::from(self.clock_rate_bound_ppm) / 1e6,
            unclean: self.unclean,
            witnesses: self.witnesses.clone(),
            voters: 1 + replicas + self.witnesses.len(),
            name: Some(self.primary.clone()),
            address: self.primary_address.clone(),
        }
    }
}

/// What a primary sends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToNode {
    /// First, after the handshake: the primary's epoch and the offsets its log holds.
    Open {
        /// The primary's leader epoch.
        epoch: u32,
        /// The oldest offset the primary's log still has.
        log_start: u64,
        /// The offset its next record will get.
        log_end: u64,
        /// The volume's replication, as the primary's config has it.
        peers: Box<Peers>,
    },
    /// Cut the copy's log back so its next record is `to`: it holds records past the
    /// point where this primary's history parts from it. The node answers `Position`.
    Truncate {
        /// The first offset to remove.
        to: u64,
    },
    /// Records in offset order, continuing from the node's position (none: a heartbeat).
    Records {
        /// The records.
        records: Vec<Record>,
        /// The primary's high watermark when they were sent: every record below it is
        /// held by every in-sync replica. A copy keeps the last one it was told, so that
        /// a promotion can tell whether it was in sync.
        high_watermark: u64,
    },
    /// A snapshot of the volume follows; with the records from `offset` on applied after
    /// it, the copy equals the volume.
    SnapshotBegin {
        /// The log offset the snapshot is consistent from.
        offset: u64,
        /// The primary's epoch.
        epoch: u32,
        /// [`record_hash`] of the primary's record `offset - 1`, which the copy will
        /// answer with until it holds a record of its own.
        last: Option<[u8; 32]>,
    },
    /// Part of a snapshot: operations that rebuild the volume in an empty directory.
    SnapshotOps(Vec<Op>),
    /// An incremental resync begins: the copy's tree, which holds some other state of the
    /// volume, is brought to this primary's by only what differs; with the records from
    /// `offset` on applied after it, the copy equals the volume. The node answers with its
    /// tree's entries (`Entries` batches, then `Listed`).
    ResyncBegin {
        /// The log offset the resync is consistent from.
        offset: u64,
        /// The primary's epoch.
        epoch: u32,
        /// [`record_hash`] of the primary's record `offset - 1`.
        last: Option<[u8; 32]>,
    },
    /// Part of a resync: operations applied to the copy's tree in place.
    ResyncOps(Vec<Op>),
    /// The resync is complete: the copy's log continues from its offset.
    ResyncEnd,
    /// The snapshot is complete.
    SnapshotEnd,
    /// First, instead of `Open`: a verify session, which only reads the copy (it streams
    /// nothing and takes over from no one).
    Inspect,
    /// Walk the copy's metadata from `under`, once it holds every record below `wait_for`
    /// (or `wait_ms` has passed): `Entries` batches, then `Walked`.
    Walk {
        /// The subtree (the empty path for all of it).
        under: LogPath,
        /// The primary's log end when its own walk began.
        wait_for: u64,
        /// How long to wait for the copy to get there.
        wait_ms: u64,
    },
    /// Read and hash these files' content afresh: one `Hashed` each, in order.
    Hash(Vec<LogPath>),
    /// Bytes of a file, for a repair of the primary from this copy: one `Data`.
    Read {
        /// Which file.
        path: LogPath,
        /// Where in it.
        offset: u64,
        /// How many bytes (at most one chunk).
        len: u32,
    },
    /// In a verify session: grant leader epoch `epoch` to the promotion of replica
    /// `candidate` (each epoch once): `Granted`, or `Refuse` saying to whom it went.
    Grant {
        /// The epoch the promotion would begin.
        epoch: u32,
        /// The name of the replica whose copy is being promoted.
        candidate: String,
    },
    /// First, or next in a vote session (automatic failover, to a replica node or a
    /// witness): elect `candidate`, whose copy reaches `standing`, primary at `epoch`:
    /// `Voted`, or `Refuse` saying why not.
    Elect {
        /// The epoch asked for.
        epoch: u32,
        /// The member asking.
        candidate: String,
        /// How far its copy reaches.
        standing: Standing,
    },
    /// First, or next in a vote session: a lease of `length_ms` for `holder`, primary of
    /// `epoch`: `Leased`, or `Refuse`.
    Lease {
        /// The primary's epoch.
        epoch: u32,
        /// The primary's member name.
        holder: String,
        /// How far its log reaches.
        standing: Standing,
        /// The lease's length, in milliseconds.
        length_ms: u64,
    },
}

/// What a replica node answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToPrimary {
    /// Its answer to `Open`: it holds every record below `next` durably, and has seen
    /// records of epochs up to `epoch`.
    Position {
        /// The offset of the first record it lacks.
        next: u64,
        /// The highest epoch it has seen.
        epoch: u32,
        /// [`record_hash`] of its record `next - 1`, so that a primary whose log has a
        /// different history (another volume under the same id, a log started over) is not
        /// taken for the one the copy follows.
        last: Option<[u8; 32]>,
        /// The copy holds a complete snapshot (at or below `next`): a copy at offset 0 of
        /// a volume whose log does not hold it whole needs none again.
        snapshot: bool,
        /// The record the copy cannot apply, if it is stuck (tried again just now): it
        /// holds what it acknowledges, but its tree stops before this record.
        stuck: Option<Stuck>,
        /// The epoch of its record `next - 1`: where a copy that holds records a newer
        /// primary never had parts from it (Kafka's divergence point).
        last_epoch: Option<u32>,
        /// Its tree holds records its log no longer does (it was cut back at a divergence
        /// point): only a snapshot makes it the volume again.
        needs_snapshot: bool,
    },
    /// Every record below `next` is durable on the node.
    Ack {
        /// The offset of the first record it lacks.
        next: u64,
    },
    /// Its answer to `Inspect`.
    Inspecting {
        /// The copy holds every record below this offset, applied to its tree.
        applied: u64,
        /// Its log holds every record below this offset.
        next: u64,
        /// [`record_hash`] of its record `next - 1`: whether it follows the primary's log.
        last: Option<[u8; 32]>,
        /// The node runs as root, so owners in its copy are the volume's.
        owners: bool,
    },
    /// Entries of a walk, in path order.
    Entries(Vec<Entry>),
    /// The copy's tree is listed (after its `Entries`), for a resync; whether owners in it
    /// are the volume's (the node runs as root).
    Listed {
        /// The node sets owners.
        owners: bool,
    },
    /// A walk is complete; the copy's applied offset when it began and ended.
    Walked {
        /// Before.
        before: u64,
        /// After.
        after: u64,
        /// The record the copy is stuck on, if it is: why it may not reach the offset
        /// the walk waited for.
        stuck: Option<Stuck>,
    },
    /// The answer to one `Hash`: each file's hashes, in the order asked.
    Hashed {
        /// One per path asked.
        files: Vec<HashedFile>,
        /// The copy's applied offset when the files were read.
        applied: u64,
    },
    /// Bytes read.
    Data(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A request of a verify session failed (the session goes on).
    Failed {
        /// Why, in one line.
        reason: String,
    },
    /// The node will not take what it was sent; the connection closes after this.
    Refuse {
        /// Why, in one line.
        reason: String,
    },
    /// The node holds the records durably but cannot apply `stuck` to its copy's tree;
    /// the connection closes after this, and the primary shows the replica as stuck.
    Stuck(Stuck),
    /// The copy has accepted a newer leader epoch than the primary's: another primary has
    /// been promoted, and this one is fenced. The connection closes after this.
    Fenced {
        /// The epoch the copy has accepted.
        epoch: u32,
    },
    /// The epoch asked for is granted to the promotion that asked.
    Granted,
    /// The election asked for has this voter's vote.
    Voted,
    /// The lease asked for is granted.
    Leased,
}

/// One file of a `Hashed` answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HashedFile {
    /// The hashes read now, or `None` when there is no regular file at the path.
    pub fresh: Option<FileHashes>,
    /// The copy's stored hashes, where they are current.
    pub stored: Option<FileHashes>,
    /// Why the file could not be read, if it could not.
    pub error: Option<String>,
}

/// A record's fingerprint: blake3 of its encoding.
pub fn record_hash(record: &Record) -> [u8; 32] {
    *blake3::hash(&encode(record)).as_bytes()
}

/// [`record_hash`] of `log`'s record at `offset`; `None` when the log no longer (or not
/// yet) holds it.
pub fn record_hash_at(log: &Log, offset: u64) -> Result<Option<[u8; 32]>, LogError> {
    let view = log.view();
    if offset < view.stats().first_offset {
        return Ok(None);
    }
    match view.records(offset)?.next() {
        Some(record) => Ok(Some(record_hash(&record?))),
        None => Ok(None),
    }
}

/// `message` as bytes for [`Channel::send`](super::channel::Channel::send).
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    postcard::to_allocvec(message).expect("messages always encode")
}

/// A message from bytes received.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ProtocolError> {
    match postcard::take_from_bytes(bytes) {
        Ok((message, [])) => Ok(message),
        Ok((_, rest)) => Err(ProtocolError(format!(
            "{} bytes after the message",
            rest.len()
        ))),
        Err(error) => Err(ProtocolError(error.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::LogPath;

    #[test]
    fn messages_round_trip_and_bad_paths_do_not_decode() {
        let record = Record {
            offset: 7,
            epoch: 2,
            op: Op::Unlink {
                path: LogPath::try_from(b"d/f".to_vec()).unwrap(),
            },
        };
        for message in [
            ToNode::Open {
                epoch: 2,
                log_start: 0,
                log_end: 8,
                peers: Box::new(Peers {
                    this: "r1".to_string(),
                    replicas: vec![Replica {
                        name: "r1".to_string(),
                        address: "[::1]:7000".to_string(),
                    }],
                    acks: Acks::Quorum,
                    min_insync: 1,
                    on_insufficient: OnInsufficient::Wait,
                    plaintext: false,
                    on_promote: Some("ip addr add 10.0.0.9/24 dev eth0".to_string()),
                    on_fenced: None,
                    ack_timeout_ms: Some(3000),
                    lag_max_ms: None,
                    compression: Compression::Zstd,
                    rate_bytes_max: Some(12 << 20),
                    failover: Some(AutoFailover {
                        primary: "p".to_string(),
                        primary_address: Some("10.0.0.1:7071".to_string()),
                        mountpoint: "/mnt/vol".into(),
                        lease_ms: 5000,
                        clock_rate_bound_ppm: 1_100_000,
                        unclean: false,
                        witnesses: vec![Replica {
                            name: "w".to_string(),
                            address: "10.0.0.3:7080".to_string(),
                        }],
                    }),
                }),
            },
            ToNode::Records {
                records: vec![record.clone()],
                high_watermark: 5,
            },
            ToNode::SnapshotBegin {
                offset: 3,
                epoch: 2,
                last: Some([7; 32]),
            },
            ToNode::SnapshotOps(vec![record.op.clone()]),
            ToNode::SnapshotEnd,
        ] {
            assert_eq!(decode::<ToNode>(&encode(&message)).unwrap(), message);
        }
        let ack = ToPrimary::Ack { next: 8 };
        assert_eq!(decode::<ToPrimary>(&encode(&ack)).unwrap(), ack);
        // The same record naming "../f": the bytes are well-formed postcard, the path is not.
        let bytes = encode(&ToNode::Records {
            records: vec![record],
            high_watermark: 0,
        });
        let at = bytes.windows(3).position(|w| w == b"d/f").unwrap();
        for evil in [&b"../"[..], b"/et", b"d/\0"] {
            let mut bad = bytes.clone();
            bad[at..at + 3].copy_from_slice(evil);
            assert!(decode::<ToNode>(&bad).is_err(), "{evil:?}");
        }
        assert!(decode::<ToNode>(b"\xff\xff\xff").is_err());
        let mut trailing = encode(&ToNode::SnapshotEnd);
        trailing.push(0);
        assert!(decode::<ToNode>(&trailing).is_err());
    }
}
