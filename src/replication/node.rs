//! A replica node: keeps a copy of any number of volumes, each in `DIR/<volume id>/`,
//! for the primaries that hold their keys. Each connection is one primary streaming one
//! volume; a bad connection (wrong key, garbage, a record it cannot take) is closed with
//! one log line, and the node keeps serving everyone else.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};

use super::channel::{Admission, Channel, ChannelError};
use super::copy::{Base, CopyError, CopyStatus, Stuck, VolumeCopy};
use super::inspect;
use super::key::{KeyError, VolumeKey};
use super::protocol::{ProtocolError, ToNode, ToPrimary, decode, encode};
use crate::config::node::NodeConfig;
use crate::control::ControlSocket;
use crate::log::LogPath;
use crate::manifest::hasher::Hashing;
use crate::manifest::store::HashStore;
use crate::origin::Origin;
use crate::signals::StopSignals;
use crate::state::{StateDir, StateError};
use crate::throttled::Throttled;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A volume's key file cannot be used.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A volume's copy could not be opened.
    #[error("volume {volume}: {source}")]
    Copy {
        /// The volume.
        volume: String,
        /// Why.
        source: CopyError,
    },
    /// The node's directory could not be made.
    #[error("cannot make {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The listening address could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Listen {
        /// The address.
        address: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// The runtime could not start.
    #[error("cannot start: {0}")]
    Runtime(io::Error),
    /// The node's own directory is locked by another node, or unusable.
    #[error(transparent)]
    State(#[from] StateError),
}

/// The node's own files (its lock and control socket), beside the copies: a volume id
/// cannot start with '.', so no copy is ever named so.
pub const NODE_DIR: &str = ".node";

/// What `mirrorfs replica status` shows of a running node.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node's process id.
    pub pid: u32,
    /// Where it listens.
    pub listen: String,
    /// Its directory.
    pub dir: PathBuf,
    /// Each volume it keeps, by id.
    pub volumes: Vec<HostedStatus>,
}

/// One volume a node keeps.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HostedStatus {
    /// The volume id.
    pub id: String,
    /// Where its copy stands.
    #[serde(flatten)]
    pub copy: CopyStatus,
    /// Whether a primary is connected now.
    pub connected: bool,
    /// When a primary last sent something, in seconds since the Unix epoch.
    pub last_contact: Option<f64>,
}

/// Why one connection ended.
#[derive(Debug, thiserror::Error)]
pub(super) enum SessionError {
    #[error(transparent)]
    Channel(#[from] ChannelError),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("refused: {0}")]
    Refused(String),
    #[error("a newer connection for the volume took over")]
    Superseded,
    /// The peer said nothing for too long: a dead or half-open connection.
    #[error("nothing heard for {1:?} while {0}")]
    Silent(&'static str, Duration),
    /// The copy cannot apply a record (logged by [`Hosted::report_stuck`]).
    #[error("the copy is stuck on record {}", .0.offset)]
    Stuck(Stuck),
}

/// How often a copy stuck on the same record is logged again.
const STUCK_LOG_EVERY: Duration = Duration::from_secs(60);

/// One volume the node keeps.
#[derive(Debug)]
pub(super) struct Hosted {
    key: VolumeKey,
    plaintext: bool,
    copy: Mutex<VolumeCopy>,
    /// The copy's stored hashes and their hasher.
    hashing: Hashing,
    /// The newest connection's number; older ones stop at their next message.
    session: AtomicU64,
    /// When a primary last sent something.
    contact: Mutex<Option<SystemTime>>,
    /// Sessions open now.
    open_sessions: AtomicU64,
    /// The stuck record last logged, and when.
    stuck_logged: Mutex<Option<(u64, Instant)>>,
}

impl Hosted {
    fn status(&self, id: &str) -> HostedStatus {
        let contact = *self.contact.lock().unwrap_or_else(|p| p.into_inner());
        HostedStatus {
            id: id.to_string(),
            copy: self.copy().status(),
            connected: self.open_sessions.load(Ordering::SeqCst) > 0,
            last_contact: contact.and_then(|at| {
                at.duration_since(SystemTime::UNIX_EPOCH)
                    .ok()
                    .map(|since| since.as_secs_f64())
            }),
        }
    }

    /// Logs that the copy is stuck on `stuck`: at once for a new record, then once per
    /// [`STUCK_LOG_EVERY`] (a primary retries every second or two).
    fn report_stuck(&self, volume: &str, stuck: &Stuck) {
        let mut logged = self
            .stuck_logged
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let due = logged
            .is_none_or(|(offset, at)| offset != stuck.offset || at.elapsed() >= STUCK_LOG_EVERY);
        if due {
            tracing::error!(
                %volume,
                offset = stuck.offset,
                error = %stuck.error,
                "the copy is stuck: it holds this record but cannot apply it, and its tree \
                 stays before it until the cause is removed (mirrorfs replica status shows it)"
            );
            *logged = Some((stuck.offset, Instant::now()));
        }
    }

    /// The copy's stored hashes.
    pub(super) fn hashes(&self) -> &Arc<HashStore> {
        self.hashing.store()
    }

    pub(super) fn copy(&self) -> MutexGuard<'_, VolumeCopy> {
        self.copy
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Runs the node described by `config` until a stop signal.
pub fn serve(config: NodeConfig, signals: StopSignals) -> Result<(), NodeError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&config.dir)
        .map_err(|source| NodeError::Dir {
            path: config.dir.clone(),
            source,
        })?;
    let own = StateDir::open(&config.dir.join(NODE_DIR))?;
    let mut volumes = HashMap::new();
    for volume in &config.volumes {
        let key = VolumeKey::read(&volume.key_file)?;
        let root = config.dir.join(volume.id.as_str());
        let failed = |source| NodeError::Copy {
            volume: volume.id.to_string(),
            source,
        };
        let mut copy = VolumeCopy::open(&root).map_err(failed)?;
        let data = copy.data_dir();
        // Records are applied before they are acknowledged: the tree always holds all the
        // copy has, so nothing waits for an applied offset.
        let hashing = Hashing::start(
            &root,
            move |path: &LogPath| {
                crate::tree::open_regular(&Origin::open(&data)?, path, libc::O_RDONLY)
            },
            || u64::MAX,
        )
        .map_err(|source| {
            failed(CopyError::Io {
                path: root.clone(),
                source,
            })
        })?;
        copy.keep_hashes(Arc::clone(hashing.store()));
        tracing::info!(volume = %volume.id, next = copy.next(), "volume copy opened");
        let stuck = copy.stuck().cloned();
        let hosted = Arc::new(Hosted {
            key,
            plaintext: volume.plaintext,
            copy: Mutex::new(copy),
            hashing,
            session: AtomicU64::new(0),
            contact: Mutex::new(None),
            open_sessions: AtomicU64::new(0),
            stuck_logged: Mutex::new(None),
        });
        if let Some(stuck) = stuck {
            hosted.report_stuck(volume.id.as_str(), &stuck);
        }
        volumes.insert(volume.id.to_string(), hosted);
    }
    let volumes = Arc::new(volumes);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(NodeError::Runtime)?;
    let listening = Arc::clone(&volumes);
    runtime.block_on(async move {
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| NodeError::Listen {
                    address: config.listen,
                    source,
                })?;
        let address = listener.local_addr().map_err(NodeError::Runtime)?;
        let answering = Arc::clone(&listening);
        let dir = config.dir.clone();
        let _control = ControlSocket::serve(own.path(), move || NodeStatus {
            pid: std::process::id(),
            listen: address.to_string(),
            dir: dir.clone(),
            volumes: {
                let mut volumes: Vec<HostedStatus> = answering
                    .iter()
                    .map(|(id, hosted)| hosted.status(id))
                    .collect();
                volumes.sort_by(|a, b| a.id.cmp(&b.id));
                volumes
            },
        })
        .map_err(NodeError::Runtime)?;
        tracing::info!(%address, volumes = listening.len(), "replica node serving");
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        std::thread::Builder::new()
            .name("stop".to_string())
            .spawn(move || {
                if let Some(signal) = signals.wait() {
                    tracing::info!(signal, "stop signal received");
                }
                let _ = stop.send(true);
            })
            .map_err(NodeError::Runtime)?;
        let limits = Arc::new(Limits {
            handshake: config.handshake_timeout,
            idle: config.idle_timeout,
        });
        let open = Arc::new(tokio::sync::Semaphore::new(config.connections_max as usize));
        let mut refused = Throttled::new(
            "connections_max reached: a connection was closed at once",
            LOG_EVERY,
        );
        let mut failed = Throttled::new("cannot accept a connection", LOG_EVERY);
        let mut pause = ACCEPT_PAUSE.0;
        loop {
            tokio::select! {
                _ = stopped.changed() => return Ok::<(), NodeError>(()),
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        pause = ACCEPT_PAUSE.0;
                        let Ok(permit) = Arc::clone(&open).try_acquire_owned() else {
                            drop(stream);
                            refused.warn(&peer);
                            continue;
                        };
                        let volumes = Arc::clone(&listening);
                        let limits = Arc::clone(&limits);
                        tokio::spawn(async move {
                            let _permit = permit;
                            match session(stream, &volumes, &limits).await {
                                Ok(()) | Err(SessionError::Stuck(_)) => {}
                                Err(error) => {
                                    tracing::warn!(%peer, %error, "replication connection closed");
                                }
                            }
                        });
                    }
                    // Out of descriptors, most often: accepting again at once fails again.
                    Err(error) => {
                        failed.warn(&error);
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(ACCEPT_PAUSE.1);
                    }
                },
            }
        }
    })?;
    drop(runtime);
    // A stopped node's trees hold everything its logs do: copying one restores the volume.
    for (id, hosted) in volumes.iter() {
        let mut copy = hosted.copy();
        if let Err(error) = copy.apply_received(&[]).and_then(|()| copy.store_applied()) {
            tracing::error!(volume = %id, %error, "cannot bring the copy up to its log");
        }
        hosted.hashing.stop();
    }
    Ok(())
}

/// The accept loop's warnings are said at most this often.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// How long the accept loop pauses after a failure, first and at most.
const ACCEPT_PAUSE: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(1));

/// How long a connection may take to open its session, and stay silent in one.
#[derive(Debug)]
pub(super) struct Limits {
    handshake: Duration,
    idle: Duration,
}

/// One primary's connection, from handshake to close.
async fn session(
    stream: TcpStream,
    volumes: &HashMap<String, Arc<Hosted>>,
    limits: &Limits,
) -> Result<(), SessionError> {
    stream.set_nodelay(true).map_err(ChannelError::Io)?;
    let opening = async {
        let (volume, mut channel) = Channel::accept(stream, |id| match volumes.get(id) {
            Some(hosted) => Ok(Admission {
                key: hosted.key.clone(),
                plaintext: hosted.plaintext,
            }),
            None => Err(format!("volume {id:?} is not kept on this node")),
        })
        .await?;
        let first = channel.receive().await?;
        Ok::<_, SessionError>((volume, channel, first))
    };
    let (volume, mut channel, first) = tokio::time::timeout(limits.handshake, opening)
        .await
        .map_err(|_| SessionError::Silent("opening a session", limits.handshake))??;
    let hosted = Arc::clone(&volumes[&volume]);
    let epoch = match decode(&first)? {
        ToNode::Open { epoch, .. } => epoch,
        ToNode::Inspect => return inspect::serve(&hosted, &volume, channel).await,
        _ => {
            let reason = "the first message must be Open or Inspect".to_string();
            return Err(refuse(&mut channel, reason).await);
        }
    };
    let number = hosted.session.fetch_add(1, Ordering::SeqCst) + 1;
    hosted.open_sessions.fetch_add(1, Ordering::SeqCst);
    let _open = OpenSession(&hosted);
    let position = {
        let mut copy = hosted.copy();
        if copy.stuck().is_some() {
            // Each connection tries a stuck record again: the cause may be gone.
            let _ = copy.apply_received(&[]);
        }
        copy.last_hash()
            .map(|last| (copy.next(), copy.epoch(), last, copy.has_snapshot()))
            .map(|position| (position, copy.stuck().cloned()))
    };
    let ((next, seen, last, snapshot), stuck) = match position {
        Ok(position) => position,
        Err(error) => return Err(refuse(&mut channel, error.to_string()).await),
    };
    if epoch < seen {
        let reason = format!("epoch {epoch} is older than epoch {seen} already seen");
        return Err(refuse(&mut channel, reason).await);
    }
    tracing::info!(%volume, epoch, next, "primary connected");
    channel_send(
        &mut channel,
        &ToPrimary::Position {
            next,
            epoch: seen,
            last,
            snapshot,
            stuck: stuck.clone(),
        },
    )
    .await?;
    if let Some(stuck) = stuck {
        hosted.report_stuck(&volume, &stuck);
        return Err(SessionError::Stuck(stuck));
    }
    loop {
        let received = tokio::time::timeout(limits.idle, channel.receive())
            .await
            .map_err(|_| SessionError::Silent("streaming", limits.idle))?;
        let bytes = match received {
            Ok(bytes) => bytes,
            Err(ChannelError::Io(error)) if error.kind() == io::ErrorKind::UnexpectedEof => {
                tracing::info!(%volume, "primary disconnected");
                return Ok(());
            }
            Err(error) => return Err(error.into()),
        };
        if hosted.session.load(Ordering::SeqCst) != number {
            return Err(SessionError::Superseded);
        }
        *hosted.contact.lock().unwrap_or_else(|p| p.into_inner()) = Some(SystemTime::now());
        let message = match decode::<ToNode>(&bytes) {
            Ok(message) => message,
            Err(error) => {
                let reason = error.to_string();
                return Err(refuse(&mut channel, reason).await);
            }
        };
        let reply = match message {
            // Acknowledged once durable in the copy's log and applied to its tree, so what
            // a primary's fsync waited for is in the tree when the fsync returns.
            ToNode::Records(records) => {
                answer(&hosted, number, move |copy| {
                    let next = copy.receive(&records)?;
                    copy.apply_received(&records)?;
                    Ok(next)
                })
                .await?
            }
            ToNode::Open { .. } => ToPrimary::Refuse {
                reason: "Open sent twice".to_string(),
            },
            ToNode::Inspect | ToNode::Walk { .. } | ToNode::Hash(_) | ToNode::Read { .. } => {
                ToPrimary::Refuse {
                    reason: "a verify request in a streaming session".to_string(),
                }
            }
            ToNode::SnapshotBegin {
                offset,
                epoch,
                last,
            } => {
                let base = Base {
                    offset,
                    epoch,
                    last,
                };
                tracing::info!(%volume, offset, "snapshot begins");
                answer(&hosted, number, move |copy| {
                    copy.begin_snapshot(base)?;
                    Ok(copy.next())
                })
                .await?
            }
            ToNode::SnapshotOps(ops) => {
                answer(&hosted, number, move |copy| {
                    copy.snapshot_ops(&ops)?;
                    Ok(copy.next())
                })
                .await?
            }
            ToNode::SnapshotEnd => {
                let answered = answer(&hosted, number, |copy| copy.end_snapshot()).await?;
                if let ToPrimary::Ack { next } = answered {
                    tracing::info!(%volume, next, "snapshot complete");
                }
                answered
            }
        };
        channel_send(&mut channel, &reply).await?;
        match reply {
            ToPrimary::Refuse { reason } => return Err(SessionError::Refused(reason)),
            ToPrimary::Stuck(stuck) => {
                hosted.report_stuck(&volume, &stuck);
                return Err(SessionError::Stuck(stuck));
            }
            _ => {}
        }
    }
}

/// Runs `take` on the copy in a blocking thread: an Ack of the offset it returns, or a
/// Refuse saying why it failed.
/// Nothing is done for session `number` once a newer one has begun: it is checked under
/// the copy's lock, so an older session's message never lands in a newer one's snapshot.
async fn answer(
    hosted: &Arc<Hosted>,
    number: u64,
    take: impl FnOnce(&mut VolumeCopy) -> Result<u64, CopyError> + Send + 'static,
) -> Result<ToPrimary, SessionError> {
    let hosted = Arc::clone(hosted);
    let taken = tokio::task::spawn_blocking(move || {
        let mut copy = hosted.copy();
        let current = hosted.session.load(Ordering::SeqCst) == number;
        current.then(|| {
            take(&mut copy).map_err(|error| match (&error, copy.stuck()) {
                (CopyError::Apply(_), Some(stuck)) => ToPrimary::Stuck(stuck.clone()),
                _ => ToPrimary::Refuse {
                    reason: error.to_string(),
                },
            })
        })
    })
    .await
    .map_err(|error| ChannelError::Io(io::Error::other(error)))?;
    Ok(match taken {
        None => return Err(SessionError::Superseded),
        Some(Ok(next)) => ToPrimary::Ack { next },
        Some(Err(refusal)) => refusal,
    })
}

/// Counts a session out when it ends, however it ends.
struct OpenSession<'a>(&'a Hosted);

impl Drop for OpenSession<'_> {
    fn drop(&mut self) {
        self.0.open_sessions.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Tells the primary why the node will not go on, and ends the session.
pub(super) async fn refuse(channel: &mut Channel<TcpStream>, reason: String) -> SessionError {
    if let Err(error) = channel_send(
        channel,
        &ToPrimary::Refuse {
            reason: reason.clone(),
        },
    )
    .await
    {
        return error.into();
    }
    SessionError::Refused(reason)
}

pub(super) async fn channel_send(
    channel: &mut Channel<TcpStream>,
    message: &ToPrimary,
) -> Result<(), ChannelError> {
    channel.send(&encode(message)).await
}
