//! The primary's side: one sender per replica node streams the change log to it, and
//! fsync waits for the replicas `acks` asks for.
//!
//! A sender connects, learns how far the node's copy is, sends the records from there in
//! batches (after a snapshot of the volume when the log no longer holds, or never held,
//! what the copy lacks), and then follows the log's end as records are appended, up to
//! four batches in flight ahead of the node's acknowledgements; an idle sender sends an
//! empty batch every second, which the node answers like any other, so the in-sync set
//! stays current. A stop signal makes fsyncs waiting for replicas give up (EIO). On any error the sender reconnects
//! with backoff (100 ms doubling to 5 s). Acknowledgements move each replica's progress,
//! from which the in-sync set, the high watermark, fsync's answer and the log's retention
//! follow (`isr.rs`).

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::channel::{Channel, ChannelError};
use super::isr::{Progress, Rule, high_watermark, satisfied};
use super::key::{KeyError, VolumeKey};
use super::protocol::Stuck;
use super::protocol::{
    AutoFailover, Peers, ProtocolError, ToNode, ToPrimary, decode, encode, record_hash_at,
};
use super::resync;
use crate::config::Replica;
use crate::config::Span;
use crate::config::{Compression, OnInsufficient, ReplicationConfig};
use crate::hooks::Moment;
use crate::log::{Fence, Log, LogError, Op, Record, Records};
use crate::manifest::HashStore;

use super::lease::{LeaseKeeper, LeaseStatus};
use crate::tree::WalkError;
use crate::tree::{WalkStats, to_ops};
use crate::write::SnapshotSource;
use crate::write::{FollowError, Follower};

/// Records per batch at most, by bytes (a single larger record goes alone).
const BATCH_BYTES: u64 = 4 << 20;

/// An idle connection sends an empty batch this often.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// The shortest wait for a replica's answer.
const ANSWER_TIMEOUT_MIN: Duration = Duration::from_secs(5);

/// How long a resync waits for a node to hash the files it was asked for (it reads them
/// whole; the node's own idle timeout for a session in a resync is its streaming one, and
/// it is the one talking then).
const HASH_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the log's retention floor is looked at again (a replica that is away sends
/// no acknowledgement that would).
const RETENTION_EVERY: Duration = Duration::from_secs(1);

/// Batches sent ahead of the node's acknowledgements.
const IN_FLIGHT: usize = 4;

/// While a batch is in flight and no fsync waits, up to this many small records gather
/// for the next batch before it is sent (TCP's Nagle, Kafka's linger): a replica makes
/// one durable write per batch, and a stream of unlinks otherwise costs one per record.
const GATHERED_MAX: u64 = 256;

/// Records gather only after a batch this small: a stream of large writes keeps every
/// batch it may in flight.
const GATHERED_AFTER_BYTES: u64 = 64 << 10;

/// Snapshot batches read ahead of the connection.
const SNAPSHOT_AHEAD: usize = 4;

/// A replica on another history is logged again this often while it stays so.
const ALARM_EVERY: Duration = Duration::from_secs(60);

/// What an operator does about a replica whose copy follows another history.
pub const DIVERGED_ADVICE: &str = "this primary's log no longer holds what the replica's copy \
    holds (a new state_dir, or a log cut short) or the copy is of another volume with this id; \
    the replica is not fed until its copy is moved aside on its node (DIR/<volume id>, with the \
    node stopped), after which it gets a snapshot";

/// A wait for replicas starts asking whether its caller was interrupted after this long
/// (a wait that ends sooner never reads /proc).
const INTERRUPT_AFTER: Duration = Duration::from_millis(200);

/// Reconnection backoff bounds.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

/// Why replication could not start, or an fsync could not be acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    /// The key file cannot be used.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The senders' runtime could not start.
    #[error("cannot start replication: {0}")]
    Runtime(io::Error),
    /// Too few replicas in sync for `ack_timeout` (with `on_insufficient = "fail"`).
    #[error("only {in_sync} replica(s) in sync, {needed} needed, for {waited:?}")]
    Insufficient {
        /// In sync at the end.
        in_sync: usize,
        /// Needed.
        needed: u32,
        /// How long fsync waited.
        waited: Duration,
    },
    /// The daemon is stopping: fsync no longer waits for replicas.
    #[error("the volume is being unmounted; the replicas may not hold this yet")]
    Stopping,
    /// The primary does not hold its lease (automatic failover): it acknowledges nothing.
    #[error("{0}")]
    NotLeased(String),
    /// The caller has a signal to take: the wait ends as a local one would (EINTR).
    #[error("interrupted while waiting for replicas")]
    Interrupted,
}

/// Why one connection to a replica ended.
#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error("cannot connect: {0}")]
    Connect(io::Error),
    #[error(transparent)]
    Channel(#[from] ChannelError),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("refused: {0}")]
    Refused(String),
    #[error("stuck: the replica holds record {} but cannot apply it: {}", .0.offset, .0.error)]
    Stuck(Stuck),
    #[error("fenced: the replica has accepted epoch {0}, so another primary was promoted")]
    Fenced(u32),
    #[error("no answer for {0:?}")]
    Silent(Duration),
    #[error("unexpected answer: {0}")]
    Unexpected(String),
    #[error("snapshot: {0}")]
    Walk(#[from] WalkError),
    #[error("snapshot: {0}")]
    Snapshot(io::Error),
    #[error("the replica holds records up to {next}, past this log's end {end}")]
    Ahead { next: u64, end: u64 },
    #[error(
        "the replica's record {offset} differs from this log's: its copy follows another history of the volume"
    )]
    Diverged { offset: u64 },
}

/// What `mirrorfs status` shows of one replica.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ReplicaStatus {
    /// Its configured name.
    pub name: String,
    /// Its address.
    pub address: String,
    /// "in sync", "catching up", "snapshotting", "stuck", "diverged" (its copy follows
    /// another history: see [`DIVERGED_ADVICE`]) or "offline".
    pub state: String,
    /// Every record below this is durable on it.
    pub acknowledged: u64,
    /// Records it lacks.
    pub lag_records: u64,
    /// About how many bytes of log it lacks.
    pub lag_bytes: u64,
    /// Seconds since it last held the whole log (none if never).
    pub lag_seconds: Option<f64>,
    /// The snapshot being sent, if one is.
    pub snapshot: Option<SnapshotStatus>,
    /// Why the last connection ended, if it did.
    pub error: Option<String>,
    /// The record the replica cannot apply, if it is stuck on one: it stays out of the
    /// in-sync set until it applies it.
    pub stuck: Option<Stuck>,
}

/// A snapshot on its way to a replica.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SnapshotStatus {
    /// The log offset it is consistent from.
    pub offset: u64,
    /// Objects and bytes sent so far.
    pub sent: WalkStats,
    /// Seconds since it began.
    pub seconds: f64,
}

/// Replication's state, as status shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ReplicationStatus {
    /// The primary's epoch.
    pub epoch: u32,
    /// The offset every in-sync replica holds.
    pub high_watermark: u64,
    /// The oldest record the log keeps for the replicas.
    pub retained_from: u64,
    /// fsync calls waiting for replicas now.
    #[serde(default)]
    pub waiting_fsyncs: u64,
    /// What they wait for, while any do.
    #[serde(default)]
    pub waiting_for: Option<String>,
    /// Per replica.
    pub replicas: Vec<ReplicaStatus>,
    /// With automatic failover: the primary's lease.
    #[serde(default)]
    pub lease: Option<LeaseStatus>,
}

/// The senders of one volume, and what fsync waits on.
#[derive(Debug)]
pub struct Replication {
    rule: Rule,
    on_insufficient: OnInsufficient,
    ack_timeout: Duration,
    epoch: u32,
    log: Arc<Log>,
    shared: Arc<Shared>,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    /// The volume, and the hook run when this primary is fenced.
    volume: String,
    on_fenced: Option<String>,
    /// With automatic failover: the primary's lease, without which it takes nothing.
    lease: std::sync::OnceLock<LeaseKeeper>,
}

/// The log's retention for the replicas.
#[derive(Debug)]
struct Retention {
    log: Arc<Log>,
    bytes_max: u64,
}

#[derive(Debug)]
struct Shared {
    /// What fsync waits for, and what counts as in sync.
    rule: Rule,
    replicas: Mutex<Vec<ReplicaState>>,
    /// Signalled on every acknowledgement and connection change.
    changed: Condvar,
    /// Signalled on every append to the log.
    appended: Notify,
    stopping: AtomicBool,
    /// Set at a stop signal: waiting fsyncs give up.
    waits_cancelled: AtomicBool,
    /// fsync calls waiting now.
    waiting: AtomicU64,
    retention: Retention,
    /// The volume's stored hashes, once kept: a resync trusts their current roots.
    hashes: std::sync::OnceLock<Arc<HashStore>>,
}

#[derive(Debug)]
struct ReplicaState {
    replica: Replica,
    progress: Progress,
    error: Option<String>,
    snapshot: Option<Snapshotting>,
    /// What the replica last said it is stuck on; cleared when it acknowledges again.
    stuck: Option<Stuck>,
    /// Its copy follows another history of the volume (until it connects cleanly).
    diverged: bool,
    /// When that was last logged.
    alarmed: Option<Instant>,
    /// A handshake with it has been tried (answered or failed) since the start.
    tried: bool,
}

#[derive(Debug)]
struct Snapshotting {
    offset: u64,
    sent: WalkStats,
    started: Instant,
}

impl Shared {
    fn replicas(&self) -> MutexGuard<'_, Vec<ReplicaState>> {
        self.replicas
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The high watermark now: every record below it is held by every in-sync replica
    /// (the log's end when none is in sync).
    fn high_watermark(&self) -> u64 {
        let progress: Vec<Progress> = self
            .replicas()
            .iter()
            .map(|state| state.progress.clone())
            .collect();
        let end = self.retention.log.next_offset();
        high_watermark(self.rule, &progress, end, Instant::now())
    }

    /// Moves the log's retention floor: the oldest record any replica still needs (and
    /// the one before it, so that a returning replica's last record can be checked), but
    /// no further back than `retain_bytes_max` of log. A replica left behind that floor
    /// is resynced when it returns (a snapshot if its copy is empty).
    fn retain(&self, replicas: &[ReplicaState]) {
        let needed = replicas
            .iter()
            .map(|r| r.progress.acked)
            .min()
            .map_or(u64::MAX, |acked| acked.saturating_sub(1));
        let log = &self.retention.log;
        let floor = needed.max(log.first_within(self.retention.bytes_max));
        log.retain_from(floor);
    }
}

/// fsync's view of the senders: the journal tells them of appends and waits on them.
impl Follower for Replication {
    fn appended(&self) {
        Replication::appended(self);
    }

    fn hold(&self, end: u64, interrupted: &dyn Fn() -> bool) -> Result<(), FollowError> {
        self.wait(end, interrupted).map_err(|error| match error {
            ReplicationError::Interrupted => FollowError::Interrupted,
            other => FollowError::Unheld(other.to_string()),
        })?;
        // Acknowledged only under a held lease: one that ran out while the replicas were
        // waited for acknowledges nothing (docs/design.md 9.8).
        match self.refuses() {
            Some(why) => Err(FollowError::Unheld(why)),
            None => Ok(()),
        }
    }

    fn stopping(&self) {
        self.cancel_waits();
    }

    fn refuses(&self) -> Option<String> {
        self.lease.get().and_then(LeaseKeeper::why_not)
    }
}

impl Replication {
    /// Starts a sender per replica of `config` for volume `volume`, reading the log and,
    /// for snapshots, the origin of `source`; the replicas are told `failover`, with
    /// which they elect the next primary on their own.
    pub fn start(
        config: &ReplicationConfig,
        volume: &str,
        source: SnapshotSource,
        epoch: u32,
        failover: Option<AutoFailover>,
    ) -> Result<Arc<Replication>, ReplicationError> {
        let log = Arc::clone(source.log());
        let key = VolumeKey::read(&config.key_file)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("replication")
            .enable_all()
            .build()
            .map_err(ReplicationError::Runtime)?;
        let rule = Rule {
            acks: config.acks,
            min_insync: config.min_insync,
            lag_max: config.lag_max,
        };
        let shared = Arc::new(Shared {
            rule,
            replicas: Mutex::new(
                config
                    .replicas
                    .iter()
                    .map(|replica| ReplicaState {
                        replica: replica.clone(),
                        progress: Progress::new(),
                        error: None,
                        snapshot: None,
                        stuck: None,
                        diverged: false,
                        alarmed: None,
                        tried: false,
                    })
                    .collect(),
            ),
            changed: Condvar::new(),
            appended: Notify::new(),
            stopping: AtomicBool::new(false),
            waits_cancelled: AtomicBool::new(false),
            waiting: AtomicU64::new(0),
            retention: Retention {
                log: Arc::clone(&log),
                bytes_max: config.retain_bytes_max,
            },
            hashes: std::sync::OnceLock::new(),
        });
        // Nothing is deleted until every replica has said what it holds (or the log
        // outgrows retain_bytes_max).
        shared.retain(&shared.replicas());
        let retaining = Arc::clone(&shared);
        runtime.spawn(async move {
            while !retaining.stopping.load(Ordering::SeqCst) {
                tokio::time::sleep(RETENTION_EVERY).await;
                retaining.retain(&retaining.replicas());
            }
        });
        for index in 0..config.replicas.len() {
            let sender = Sender {
                shared: Arc::clone(&shared),
                index,
                replica: config.replicas[index].clone(),
                volume: volume.to_string(),
                key: key.clone(),
                plaintext: config.plaintext,
                source: source.clone(),
                epoch,
                peers: Peers {
                    this: config.replicas[index].name.clone(),
                    replicas: config.replicas.clone(),
                    acks: config.acks,
                    min_insync: config.min_insync,
                    on_insufficient: config.on_insufficient,
                    plaintext: config.plaintext,
                    on_promote: config.on_promote.clone(),
                    on_fenced: config.on_fenced.clone(),
                    failover: failover.clone(),
                    ack_timeout_ms: Some(config.ack_timeout.as_millis() as u64),
                    lag_max_ms: Some(config.lag_max.as_millis() as u64),
                    compression: config.compression,
                    rate_bytes_max: config.rate_bytes_max,
                },
                // As long as a replica may lag and stay in sync, and no shorter than a
                // batch takes on a slow link.
                answer_timeout: config.lag_max.max(ANSWER_TIMEOUT_MIN),
            };
            runtime.spawn(sender.run());
        }
        Ok(Arc::new(Replication {
            rule,
            on_insufficient: config.on_insufficient,
            ack_timeout: config.ack_timeout,
            epoch,
            log,
            shared,
            runtime: Mutex::new(Some(runtime)),
            volume: volume.to_string(),
            on_fenced: config.on_fenced.clone(),
            lease: std::sync::OnceLock::new(),
        }))
    }

    /// Takes changes only while `keeper` holds the primary's lease (automatic failover).
    pub fn keep_lease(&self, keeper: LeaseKeeper) {
        let _ = self.lease.set(keeper);
    }

    /// A voter granted epoch `epoch`, newer than this primary's: it is fenced, as when a
    /// replica says so.
    pub fn deposed(&self, epoch: u32, by: &str) {
        let fence = Fence {
            epoch,
            by: by.to_string(),
        };
        fence_primary(
            &self.shared,
            &self.log,
            &self.volume,
            self.on_fenced.as_deref(),
            fence,
        );
    }

    /// Records were appended to the log: senders waiting for them go on.
    pub fn appended(&self) {
        self.shared.appended.notify_waiters();
    }

    /// Waits until the records below `end` are held as `acks` requires. With
    /// `on_insufficient = "fail"`, gives up after `ack_timeout` while too few replicas are in
    /// sync; with "wait", waits for as long as it takes.
    pub fn wait(&self, end: u64, interrupted: &dyn Fn() -> bool) -> Result<(), ReplicationError> {
        let Some(last) = end.checked_sub(1) else {
            return Ok(());
        };
        let started = Instant::now();
        let _waiting = Waiting::count(&self.shared);
        let mut replicas = self.shared.replicas();
        loop {
            if self.shared.waits_cancelled.load(Ordering::SeqCst) {
                return Err(ReplicationError::Stopping);
            }
            // Without its lease the primary acknowledges nothing: no use waiting for the
            // replicas (docs/design.md 9.8).
            if let Some(why) = self.lease.get().and_then(LeaseKeeper::why_not) {
                return Err(ReplicationError::NotLeased(why));
            }
            let now = Instant::now();
            let progress: Vec<Progress> = replicas.iter().map(|r| r.progress.clone()).collect();
            match satisfied(self.rule, &progress, last, self.log.next_offset(), now) {
                Ok(true) => return Ok(()),
                _ if now.duration_since(started) >= INTERRUPT_AFTER && interrupted() => {
                    return Err(ReplicationError::Interrupted);
                }
                Err(in_sync)
                    if self.on_insufficient == OnInsufficient::Fail
                        && now.duration_since(started) >= self.ack_timeout =>
                {
                    return Err(ReplicationError::Insufficient {
                        in_sync,
                        needed: self.rule.min_insync,
                        waited: now.duration_since(started),
                    });
                }
                _ => {}
            }
            // The in-sync set also changes with time alone: look again now and then.
            replicas = self
                .shared
                .changed
                .wait_timeout(replicas, Duration::from_millis(100))
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }

    /// Lets resyncs use the volume's stored hashes: a file whose current stored root is the
    /// copy's is not read on either side, and a file compared is not read for its hashes.
    pub fn keep_hashes(&self, store: Arc<HashStore>) {
        let _ = self.shared.hashes.set(store);
    }

    /// Waits, at most `timeout`, until a handshake with every replica has been tried: a
    /// primary that starts learns from them whether a newer one was promoted (and is
    /// fenced, [`Log::fence`]) before it takes a change.
    pub fn first_contact(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut replicas = self.shared.replicas();
        while !replicas.iter().all(|state| state.tried) && !self.log.is_fenced() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            replicas = self
                .shared
                .changed
                .wait_timeout(replicas, left)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }

    /// The state of every replica.
    pub fn status(&self) -> ReplicationStatus {
        let replicas = self.shared.replicas();
        let now = Instant::now();
        let end = self.log.next_offset();
        let progress: Vec<Progress> = replicas.iter().map(|r| r.progress.clone()).collect();
        let log = self.log.view();
        let waiting = self.shared.waiting.load(Ordering::SeqCst);
        let waiting_for = (waiting > 0).then(|| {
            let last = end.saturating_sub(1);
            match satisfied(self.rule, &progress, last, end, now) {
                Err(in_sync) => format!(
                    "in sync {in_sync} of min_insync {}; {}",
                    self.rule.min_insync,
                    match self.on_insufficient {
                        OnInsufficient::Fail => format!(
                            "each fails with EIO after ack_timeout ({})",
                            Span(self.ack_timeout)
                        ),
                        OnInsufficient::Wait => {
                            "they wait (on_insufficient = \"wait\"); a signal interrupts them"
                                .to_string()
                        }
                    }
                ),
                Ok(_) => "the in-sync replicas to acknowledge".to_string(),
            }
        });
        ReplicationStatus {
            epoch: self.epoch,
            lease: self.lease.get().map(LeaseKeeper::status),
            waiting_fsyncs: waiting,
            waiting_for,
            high_watermark: high_watermark(self.rule, &progress, end, now),
            retained_from: self.log.retained_from(),
            replicas: replicas
                .iter()
                .map(|state| {
                    let progress = &state.progress;
                    let label = if state.stuck.is_some() {
                        "stuck"
                    } else if state.diverged {
                        "diverged"
                    } else if !progress.connected {
                        "offline"
                    } else if state.snapshot.is_some() {
                        "snapshotting"
                    } else if progress.in_sync(self.rule.lag_max, end, now) {
                        "in sync"
                    } else {
                        "catching up"
                    };
                    ReplicaStatus {
                        name: state.replica.name.clone(),
                        address: state.replica.address.clone(),
                        state: label.to_string(),
                        acknowledged: progress.acked,
                        lag_records: end.saturating_sub(progress.acked),
                        lag_bytes: log.bytes_from(progress.acked),
                        lag_seconds: if progress.acked >= end {
                            Some(0.0)
                        } else {
                            progress
                                .caught_up
                                .map(|at| now.duration_since(at).as_secs_f64())
                        },
                        snapshot: state.snapshot.as_ref().map(|snapshot| SnapshotStatus {
                            offset: snapshot.offset,
                            sent: snapshot.sent,
                            seconds: now.duration_since(snapshot.started).as_secs_f64(),
                        }),
                        error: state.error.clone(),
                        stuck: state.stuck.clone(),
                    }
                })
                .collect(),
        }
    }

    /// Makes every fsync waiting for replicas, and every later one, give up (a stop
    /// signal: an application blocked in fsync would otherwise keep the mount busy for as
    /// long as no replica is reachable). The senders go on until [`Replication::shutdown`].
    pub fn cancel_waits(&self) {
        self.shared.waits_cancelled.store(true, Ordering::SeqCst);
        self.shared.changed.notify_all();
    }

    /// Stops the senders (records not yet sent stay in the log for the next mount).
    pub fn shutdown(&self) {
        if let Some(lease) = self.lease.get() {
            lease.stop();
        }
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.appended.notify_waiters();
        let runtime = self
            .runtime
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(runtime) = runtime {
            runtime.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

/// A newer primary exists (a replica or a voter said so): the log is fenced (durably: a
/// restart stays fenced), `on_fenced` runs, every sender stops, and every fsync waiting for
/// replicas fails.
fn fence_primary(shared: &Shared, log: &Log, volume: &str, on_fenced: Option<&str>, fence: Fence) {
    let epoch = fence.epoch;
    tracing::error!(%fence, "this primary is fenced: it takes no more changes (EROFS); rejoin it as a replica of the new primary");
    if let Err(error) = log.fence_by(fence) {
        tracing::error!(%error, "the fence could not be kept on disk; the mount still refuses changes until it stops");
    }
    if let Some(hook) = on_fenced {
        let moment = Moment {
            volume,
            epoch,
            role: "fenced",
            config: None,
        };
        crate::hooks::spawn(hook, moment);
    }
    shared.stopping.store(true, Ordering::SeqCst);
    shared.appended.notify_waiters();
    shared.waits_cancelled.store(true, Ordering::SeqCst);
    shared.changed.notify_all();
}

/// Counts one waiting fsync for as long as it lives.
struct Waiting<'a>(&'a Shared);

impl Waiting<'_> {
    fn count(shared: &Shared) -> Waiting<'_> {
        shared.waiting.fetch_add(1, Ordering::SeqCst);
        // Senders gathering records for their next batch send them now.
        shared.appended.notify_waiters();
        Waiting(shared)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One replica's sender.
struct Sender {
    shared: Arc<Shared>,
    index: usize,
    replica: Replica,
    volume: String,
    key: VolumeKey,
    plaintext: bool,
    source: SnapshotSource,
    epoch: u32,
    /// What the replica is told of the volume's replication when a session opens.
    peers: Peers,
    answer_timeout: Duration,
}

/// What the thread reading a snapshot hands to the connection.
enum Piece {
    Begin { offset: u64, last: Option<[u8; 32]> },
    Ops(Vec<Op>, WalkStats),
    End,
}

impl Sender {
    async fn run(self) {
        let mut backoff = BACKOFF.0;
        while !self.shared.stopping.load(Ordering::SeqCst) {
            let result = self.stream().await;
            let error = match result {
                Ok(()) => return,
                Err(error) => error,
            };
            self.lost(&error);
            self.shared.changed.notify_all();
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF.1);
        }
    }

    /// Notes why the connection ended, and says so: a replica stuck on a record once per
    /// record, one on another history once per [`ALARM_EVERY`] with what to do (it
    /// reconnects every few seconds and fails again, and nothing else would show it), any
    /// other loss once when it begins.
    fn lost(&self, error: &SendError) {
        if let SendError::Fenced(epoch) = error {
            self.fenced(*epoch);
        }
        let mut replicas = self.shared.replicas();
        let state = &mut replicas[self.index];
        let name = &self.replica.name;
        match error {
            SendError::Stuck(stuck) => {
                if state.stuck.as_ref() != Some(stuck) {
                    tracing::error!(replica = %name, %error, "replica stuck");
                }
                state.stuck = Some(stuck.clone());
                // Not in sync, whatever it acknowledged: its tree lacks the record.
                state.progress.caught_up = None;
            }
            SendError::Diverged { .. } | SendError::Ahead { .. } => {
                if state.alarmed.is_none_or(|at| at.elapsed() >= ALARM_EVERY) {
                    tracing::error!(replica = %name, %error, advice = DIVERGED_ADVICE, "replica diverged");
                    state.alarmed = Some(Instant::now());
                }
                state.diverged = true;
                state.progress.caught_up = None;
            }
            _ if state.progress.connected || state.error.is_none() => {
                tracing::warn!(replica = %name, %error, "replica connection lost");
            }
            _ => {}
        }
        state.progress.connected = false;
        state.error = Some(error.to_string());
        state.snapshot = None;
        state.tried = true;
    }

    /// A replica has accepted a newer epoch: another primary was promoted, and this one
    /// must take no more changes.
    fn fenced(&self, epoch: u32) {
        let fence = Fence {
            epoch,
            by: self.replica.name.clone(),
        };
        let hook = self.peers.on_fenced.as_deref();
        fence_primary(&self.shared, self.log(), &self.volume, hook, fence);
    }

    /// Where this log's history parts from the copy `position` describes, if the copy
    /// holds records past it: its last record is of an older epoch than this primary's,
    /// and reaches past where that epoch ends in this log (the next one's start, Kafka's
    /// OffsetsForLeaderEpoch). Records below it are this log's too (checked after the cut).
    fn parting(&self, position: &ToPrimary, end: u64) -> Option<u64> {
        let ToPrimary::Position {
            next,
            last_epoch: Some(last_epoch),
            ..
        } = *position
        else {
            return None;
        };
        if last_epoch >= self.epoch {
            return None;
        }
        let epochs = self.log().epochs();
        // Every epoch here newer than the copy's: they part where this history begins.
        let parting = match epochs.end_of(last_epoch, end) {
            Some((_, parting)) => parting,
            None => epochs.entries().first()?.start,
        };
        (parting < next).then_some(parting)
    }

    /// One connection: from the handshake until it fails (or the volume stops).
    async fn stream(&self) -> Result<(), SendError> {
        let stream =
            tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.replica.address))
                .await
                .map_err(|_| SendError::Connect(io::Error::from(io::ErrorKind::TimedOut)))?
                .map_err(SendError::Connect)?;
        stream.set_nodelay(true).map_err(SendError::Connect)?;
        let mut channel = Channel::connect(stream, &self.volume, &self.key, self.plaintext).await?;
        if self.peers.compression == Compression::Zstd {
            channel.compress();
        }
        if let Some(rate) = self.peers.rate_bytes_max {
            channel.pace(rate);
        }
        let stats = self.log().view().stats();
        let open = ToNode::Open {
            epoch: self.epoch,
            log_start: stats.first_offset,
            log_end: stats.next_offset,
            peers: Box::new(self.peers.clone()),
        };
        let mut position = self.ask(&mut channel, &open).await?;
        if let Some(to) = self.parting(&position, stats.next_offset) {
            // It holds records of an older epoch this primary never had (written by the
            // old primary after this log's copy of it stopped): cut them off.
            tracing::warn!(replica = %self.replica.name, to, "the replica holds records past where this primary's epoch began: it is cut back, and resynced (only what differs is sent)");
            position = self.ask(&mut channel, &ToNode::Truncate { to }).await?;
        }
        let (next, last, based, needs_snapshot) = match position {
            ToPrimary::Position {
                stuck: Some(stuck), ..
            } => return Err(SendError::Stuck(stuck)),
            ToPrimary::Position {
                next,
                last,
                snapshot,
                needs_snapshot,
                ..
            } => (next, last, snapshot, needs_snapshot),
            other => return Err(SendError::Unexpected(format!("{other:?}"))),
        };
        if next > stats.next_offset {
            return Err(SendError::Ahead {
                next,
                end: stats.next_offset,
            });
        }
        // The copy must follow this log: its last record must be this log's record there.
        // (A copy begun by a snapshot whose last record was gone already cannot tell.)
        if let (Some(held), Some(theirs)) = (next.checked_sub(1), last) {
            let log = Arc::clone(self.log());
            let ours = tokio::task::spawn_blocking(move || record_hash_at(&log, held))
                .await
                .map_err(|error| SendError::Connect(io::Error::other(error)))??;
            if ours.is_some_and(|ours| ours != theirs) {
                return Err(SendError::Diverged { offset: held });
            }
        }
        tracing::info!(replica = %self.replica.name, next, "replica connected");
        self.mark_connected();
        let whole = stats.first_offset == 0 && self.source.log_is_whole();
        let next = if needs_snapshot || (next > 0 && next < stats.first_offset) {
            // A copy that still has a tree (cut back, rejoined, or let go by retention)
            // gets only what differs.
            self.resync(&mut channel).await?
        } else if next < stats.first_offset || (next == 0 && !whole && !based) {
            self.snapshot(&mut channel).await?
        } else {
            next
        };
        self.acknowledged(next);
        self.follow(channel, next).await
    }

    /// Whether records from `sent` on wait for the answer to the batches `in_flight`,
    /// gathering into one batch (see [`GATHERED_MAX`]), after a last batch of
    /// `last_bytes`.
    fn gathering(&self, in_flight: &VecDeque<u64>, sent: u64, last_bytes: u64) -> bool {
        !in_flight.is_empty()
            && last_bytes < GATHERED_AFTER_BYTES
            && self.shared.waiting.load(Ordering::SeqCst) == 0
            && self.log().next_offset() - sent < GATHERED_MAX
    }

    /// Streams the log from `next` on: up to [`IN_FLIGHT`] batches sent ahead of the
    /// node's acknowledgements, which a task of their own reads (so that waiting for one
    /// never cuts a message in half); an idle connection sends an empty batch every
    /// [`HEARTBEAT`].
    async fn follow(&self, channel: Channel<TcpStream>, next: u64) -> Result<(), SendError> {
        let (mut sending, mut receiving) = channel.split();
        let (answers, mut answered) = tokio::sync::mpsc::channel(IN_FLIGHT + 1);
        let reader = tokio::spawn(async move {
            loop {
                let answer = match receiving.receive().await {
                    Ok(bytes) => decode::<ToPrimary>(&bytes).map_err(SendError::from),
                    Err(error) => Err(error.into()),
                };
                let failed = answer.is_err();
                if answers.send(answer).await.is_err() || failed {
                    return;
                }
            }
        });
        let _reader = AbortOnDrop(reader);
        // The end offset of each batch sent and not yet acknowledged, oldest first.
        let mut in_flight: VecDeque<u64> = VecDeque::new();
        let mut sent = next;
        let mut reader = None;
        let mut heard = Instant::now();
        let mut idle_since = Instant::now();
        let mut last_bytes = 0;
        loop {
            if self.shared.stopping.load(Ordering::SeqCst) {
                return Ok(());
            }
            let notified = self.shared.appended.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            while in_flight.len() < IN_FLIGHT
                && sent < self.log().next_offset()
                && !self.gathering(&in_flight, sent, last_bytes)
            {
                let log = Arc::clone(self.log());
                let (from, held) = (sent, reader.take());
                let batch;
                (batch, reader) = tokio::task::spawn_blocking(move || read_batch(&log, from, held))
                    .await
                    .map_err(|error| SendError::Connect(io::Error::other(error)))??;
                let Some(last) = batch.last() else { break };
                sent = last.offset + 1;
                last_bytes = batch.iter().map(weight).sum();
                let batch = ToNode::Records {
                    records: batch,
                    high_watermark: self.shared.high_watermark(),
                };
                sending.send(&encode(&batch)).await?;
                if in_flight.is_empty() {
                    heard = Instant::now();
                }
                in_flight.push_back(sent);
            }
            if in_flight.is_empty() && idle_since.elapsed() >= HEARTBEAT {
                let heartbeat = ToNode::Records {
                    records: Vec::new(),
                    high_watermark: self.shared.high_watermark(),
                };
                sending.send(&encode(&heartbeat)).await?;
                heard = Instant::now();
                in_flight.push_back(sent);
            }
            let silent_at = heard + self.answer_timeout;
            tokio::select! {
                answer = answered.recv(), if !in_flight.is_empty() => {
                    let answer = answer.ok_or_else(|| {
                        SendError::Connect(io::Error::from(io::ErrorKind::UnexpectedEof))
                    })??;
                    match answer {
                        ToPrimary::Ack { next } => {
                            in_flight.pop_front();
                            heard = Instant::now();
                            idle_since = Instant::now();
                            self.acknowledged(next);
                        }
                        ToPrimary::Refuse { reason } => return Err(SendError::Refused(reason)),
                        ToPrimary::Stuck(stuck) => return Err(SendError::Stuck(stuck)),
                        ToPrimary::Fenced { epoch } => return Err(SendError::Fenced(epoch)),
                        other => return Err(SendError::Unexpected(format!("{other:?}"))),
                    }
                }
                () = &mut notified, if in_flight.len() < IN_FLIGHT => {}
                () = tokio::time::sleep_until(silent_at.into()), if !in_flight.is_empty() => {
                    return Err(SendError::Silent(self.answer_timeout));
                }
                () = tokio::time::sleep_until((idle_since + HEARTBEAT).into()), if in_flight.is_empty() => {}
            }
        }
    }

    fn log(&self) -> &Arc<Log> {
        self.source.log()
    }

    /// Sends a snapshot of the volume, read by a blocking thread that holds the origin
    /// still while it reads; returns the offset the copy now continues from.
    async fn snapshot(&self, channel: &mut Channel<TcpStream>) -> Result<u64, SendError> {
        let (pieces, mut received) = tokio::sync::mpsc::channel(SNAPSHOT_AHEAD);
        let source = self.source.clone();
        let reading = tokio::task::spawn_blocking(move || -> Result<(), SendError> {
            let frozen = source.freeze().map_err(SendError::Snapshot)?;
            let offset = frozen.offset;
            let last = match offset.checked_sub(1) {
                Some(held) => record_hash_at(source.log(), held).unwrap_or(None),
                None => None,
            };
            if pieces.blocking_send(Piece::Begin { offset, last }).is_err() {
                return Ok(());
            }
            to_ops(frozen.origin, &mut |ops, stats| {
                pieces.blocking_send(Piece::Ops(ops, stats)).is_ok()
            })?;
            drop(frozen);
            let _ = pieces.blocking_send(Piece::End);
            Ok(())
        });
        let mut offset = None;
        while let Some(piece) = received.recv().await {
            let message = match piece {
                Piece::Begin { offset: at, last } => {
                    tracing::info!(replica = %self.replica.name, offset = at, "snapshot begins");
                    offset = Some(at);
                    self.snapshot_progress(at, WalkStats::default());
                    ToNode::SnapshotBegin {
                        offset: at,
                        epoch: self.epoch,
                        last,
                    }
                }
                Piece::Ops(ops, stats) => {
                    self.snapshot_progress(offset.unwrap_or(0), stats);
                    ToNode::SnapshotOps(ops)
                }
                Piece::End => ToNode::SnapshotEnd,
            };
            let end = matches!(message, ToNode::SnapshotEnd);
            match self.ask(channel, &message).await? {
                ToPrimary::Ack { next } if end => {
                    if Some(next) != offset {
                        return Err(SendError::Unexpected(format!(
                            "the snapshot from {offset:?} ended at {next}"
                        )));
                    }
                    tracing::info!(replica = %self.replica.name, next, "snapshot complete");
                    self.shared.replicas()[self.index].snapshot = None;
                    return Ok(next);
                }
                ToPrimary::Ack { .. } => {}
                other => return Err(SendError::Unexpected(format!("{other:?}"))),
            }
        }
        // The reading thread ended without the end of the snapshot: it failed.
        reading
            .await
            .map_err(|error| SendError::Snapshot(io::Error::other(error)))??;
        Err(SendError::Snapshot(io::Error::other(
            "the snapshot ended early",
        )))
    }

    fn snapshot_progress(&self, offset: u64, sent: WalkStats) {
        let mut replicas = self.shared.replicas();
        let snapshot = replicas[self.index]
            .snapshot
            .get_or_insert_with(|| Snapshotting {
                offset,
                sent,
                started: Instant::now(),
            });
        snapshot.offset = offset;
        snapshot.sent = sent;
    }

    /// An incremental resync (`resync.rs`): its reading side on a blocking thread that
    /// holds the freeze, this side relaying its steps to the node. Returns the offset the
    /// copy continues from.
    async fn resync(&self, channel: &mut Channel<TcpStream>) -> Result<u64, SendError> {
        let (steps, mut stepped) = tokio::sync::mpsc::channel(SNAPSHOT_AHEAD);
        let (hearing, heard) = std::sync::mpsc::channel();
        let source = self.source.clone();
        let store = self.shared.hashes.get().cloned();
        let reading = tokio::task::spawn_blocking(move || {
            resync::run(&source, store.as_deref(), &steps, &heard)
        });
        let mut offset = None;
        let mut sent = WalkStats::default();
        // Files compared by their chunk hashes (no current stored root vouched for them).
        let mut hashed = 0usize;
        while let Some(step) = stepped.recv().await {
            match step {
                resync::Step::Begin { offset: at, last } => {
                    tracing::info!(replica = %self.replica.name, offset = at, "resync begins");
                    offset = Some(at);
                    self.snapshot_progress(at, sent);
                    let begin = ToNode::ResyncBegin {
                        offset: at,
                        epoch: self.epoch,
                        last,
                    };
                    channel.send(&encode(&begin)).await?;
                    let mut entries = Vec::new();
                    let owners = loop {
                        match self.receive(channel).await? {
                            ToPrimary::Entries(batch) => entries.extend(batch),
                            ToPrimary::Listed { owners } => break owners,
                            other => return Err(SendError::Unexpected(format!("{other:?}"))),
                        }
                    };
                    let _ = hearing.send(resync::Heard::Listed(entries, owners));
                }
                resync::Step::Hash(paths) => {
                    hashed += paths.len();
                    channel.send(&encode(&ToNode::Hash(paths))).await?;
                    // The node reads the files whole: a large one takes its time.
                    match self.receive_within(channel, HASH_TIMEOUT).await? {
                        ToPrimary::Hashed { files, .. } => {
                            let _ = hearing.send(resync::Heard::Hashed(files));
                        }
                        other => return Err(SendError::Unexpected(format!("{other:?}"))),
                    }
                }
                resync::Step::Ops(ops, bytes) => {
                    sent.objects += ops.len() as u64;
                    sent.bytes += bytes;
                    self.snapshot_progress(offset.unwrap_or(0), sent);
                    match self.ask(channel, &ToNode::ResyncOps(ops)).await? {
                        ToPrimary::Ack { .. } => {}
                        other => return Err(SendError::Unexpected(format!("{other:?}"))),
                    }
                }
                resync::Step::End => match self.ask(channel, &ToNode::ResyncEnd).await? {
                    ToPrimary::Ack { next } if Some(next) == offset => {
                        tracing::info!(replica = %self.replica.name, next, operations = sent.objects, hashed, bytes = sent.bytes, "resync complete");
                        self.shared.replicas()[self.index].snapshot = None;
                        return Ok(next);
                    }
                    other => return Err(SendError::Unexpected(format!("{other:?}"))),
                },
            }
        }
        reading
            .await
            .map_err(|error| SendError::Snapshot(io::Error::other(error)))?
            .map_err(|error| SendError::Snapshot(io::Error::other(error.to_string())))?;
        Err(SendError::Snapshot(io::Error::other(
            "the resync ended early",
        )))
    }

    /// The node's next message, within the answer timeout (a peer gone silent, as a cut
    /// link leaves it, is given up on after it).
    async fn receive(&self, channel: &mut Channel<TcpStream>) -> Result<ToPrimary, SendError> {
        self.receive_within(channel, self.answer_timeout).await
    }

    /// The node's next message, within `timeout`.
    async fn receive_within(
        &self,
        channel: &mut Channel<TcpStream>,
        timeout: Duration,
    ) -> Result<ToPrimary, SendError> {
        let answer = tokio::time::timeout(timeout, channel.receive())
            .await
            .map_err(|_| SendError::Silent(timeout))??;
        match decode(&answer)? {
            ToPrimary::Refuse { reason } => Err(SendError::Refused(reason)),
            ToPrimary::Fenced { epoch } => Err(SendError::Fenced(epoch)),
            answer => Ok(answer),
        }
    }

    async fn ask(
        &self,
        channel: &mut Channel<TcpStream>,
        message: &ToNode,
    ) -> Result<ToPrimary, SendError> {
        channel.send(&encode(message)).await?;
        self.receive(channel).await
    }

    fn mark_connected(&self) {
        let mut replicas = self.shared.replicas();
        let state = &mut replicas[self.index];
        state.tried = true;
        self.shared.changed.notify_all();
        state.progress.connected = true;
        state.error = None;
        state.stuck = None;
        state.diverged = false;
    }

    /// The replica holds every record below `next`.
    fn acknowledged(&self, next: u64) {
        {
            let mut replicas = self.shared.replicas();
            replicas[self.index].progress.acknowledged(
                next,
                self.log().next_offset(),
                Instant::now(),
            );
            self.shared.retain(&replicas);
        }
        self.shared.changed.notify_all();
    }
}

/// Aborts a task when dropped (the connection it serves is over).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What a record weighs in a batch: its data, and a little for the rest.
fn weight(record: &Record) -> u64 {
    64 + record.op.carried_bytes()
}

/// The records from `from` on, up to [`BATCH_BYTES`] (at least one if there is one),
/// read on with `reader` when it stands at `from` (the end of the last batch), and the
/// reader to go on with.
fn read_batch(
    log: &Log,
    from: u64,
    reader: Option<Records>,
) -> Result<(Vec<Record>, Option<Records>), LogError> {
    let mut batch = Vec::new();
    if from >= log.next_offset() {
        return Ok((batch, reader));
    }
    let mut records = match reader {
        Some(mut reader) if reader.next_offset() == from => {
            reader.extend(&log.view_from(from));
            reader
        }
        _ => log.view_from(from).records(from)?,
    };
    let mut bytes = 0;
    while bytes < BATCH_BYTES && batch.len() < 4096 {
        let Some(record) = records.next() else { break };
        let record = record?;
        bytes += weight(&record);
        batch.push(record);
    }
    Ok((batch, Some(records)))
}
