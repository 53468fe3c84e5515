//! A replica node: keeps a copy of any number of volumes, each in `DIR/<volume id>/`,
//! for the primaries that hold their keys. Each connection is one primary streaming one
//! volume; a bad connection (wrong key, garbage, a record it cannot take) is closed with
//! one log line, and the node keeps serving everyone else.

use std::collections::HashMap;
use std::io::{self, BufRead, Write};
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};

use super::ballot::{BALLOT_FILE, BallotBox, VoteError, VotesStatus};
use super::channel::{Admission, Channel, ChannelError};
use super::copy::{CopyError, VolumeCopy, keep_key_file};
use super::elector::{self, OnElected};
use super::hosted::Hosted;
pub use super::hosted::HostedStatus;
use super::key::{KeyError, VolumeKey};
use super::promote::{
    PromoteAnswer, PromoteError, PromoteRequest, Promotion, check_before_opening, promote,
    promoted_at,
};
use super::protocol::{ToNode, ToPrimary, decode};
use super::session::{Limits, SessionError, channel_send, refuse};
use super::voting::{self, Voting};
use super::{inspect, stream};
use crate::config::NodeConfig;
use crate::control::ControlSocket;
use crate::log::LogPath;
use crate::manifest::Hashing;
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
    /// A volume's ballot file cannot be read: voting without it could grant an epoch twice.
    #[error("volume {volume}: {source}")]
    Ballot {
        /// The volume.
        volume: String,
        /// Why.
        source: VoteError,
    },
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
    /// A witness's volumes, by id, with its votes.
    #[serde(default)]
    pub witnessed: Vec<(String, VotesStatus)>,
}

/// Runs the node described by `config` until a stop signal. A copy it promotes after
/// winning an election (automatic failover) is handed to `on_elected`.
pub fn serve(
    config: NodeConfig,
    signals: StopSignals,
    on_elected: OnElected,
) -> Result<(), NodeError> {
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
    let mut handed = HashMap::new();
    let mut witnessed = HashMap::new();
    for volume in &config.volumes {
        let key = VolumeKey::read(&volume.key_file)?;
        let root = config.dir.join(volume.id.as_str());
        let failed = |source| NodeError::Copy {
            volume: volume.id.to_string(),
            source,
        };
        let ballots = |root: &Path| {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(root)
                .map_err(|source| NodeError::Dir {
                    path: root.to_path_buf(),
                    source,
                })?;
            BallotBox::open(&root.join(BALLOT_FILE)).map_err(|source| NodeError::Ballot {
                volume: volume.id.to_string(),
                source,
            })
        };
        if config.witness {
            // A witness keeps no copy: only its votes.
            let votes = Witnessed {
                key,
                plaintext: volume.plaintext,
                ballots: Arc::new(ballots(&root)?),
            };
            witnessed.insert(volume.id.to_string(), votes);
            continue;
        }
        if let Some(epoch) = promoted_at(&root).map_err(failed)? {
            // A primary's state now, maybe in use: never opened as a copy again.
            tracing::warn!(volume = %volume.id, epoch, "the copy was promoted to primary here: not kept as a copy (its older primaries are fenced)");
            handed.insert(
                volume.id.to_string(),
                Handed {
                    key,
                    plaintext: volume.plaintext,
                    epoch,
                },
            );
            continue;
        }
        let mut copy = VolumeCopy::open(&root).map_err(failed)?;
        keep_key_file(&root, &volume.key_file).map_err(failed)?;
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
        let hosted = Arc::new(Hosted::new(
            key,
            volume.plaintext,
            copy,
            hashing,
            ballots(&root)?,
        ));
        if let Some(stuck) = stuck {
            hosted.report_stuck(volume.id.as_str(), &stuck);
        }
        volumes.insert(volume.id.to_string(), hosted);
    }
    let volumes = Arc::new(Kept {
        volumes,
        handed,
        witnessed,
    });
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
        let status = move || NodeStatus {
            pid: std::process::id(),
            listen: address.to_string(),
            dir: dir.clone(),
            volumes: {
                let mut volumes: Vec<HostedStatus> = answering
                    .volumes
                    .iter()
                    .map(|(id, hosted)| hosted.status(id))
                    .collect();
                volumes.sort_by(|a, b| a.id.cmp(&b.id));
                volumes
            },
            witnessed: {
                let mut witnessed: Vec<(String, VotesStatus)> = answering
                    .witnessed
                    .iter()
                    .map(|(id, votes)| (id.clone(), votes.ballots.status()))
                    .collect();
                witnessed.sort_by(|a, b| a.0.cmp(&b.0));
                witnessed
            },
        };
        let handler = promotions(Arc::clone(&listening), config.dir.clone());
        let _control = ControlSocket::serve_with(own.path(), status, Some(handler))
            .map_err(NodeError::Runtime)?;
        match config.witness {
            true => {
                tracing::info!(%address, volumes = listening.witnessed.len(), "witness serving")
            }
            false => {
                tracing::info!(%address, volumes = listening.volumes.len(), "replica node serving")
            }
        }
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        if !listening.volumes.is_empty() {
            tokio::spawn(elector::run(
                listening.volumes.clone(),
                config.dir.clone(),
                on_elected,
                stopped.clone(),
            ));
        }
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
    for (id, hosted) in volumes.volumes.iter() {
        if hosted.promoted().is_some() {
            continue;
        }
        let mut copy = hosted.copy();
        if let Err(error) = copy.apply_received(&[]).and_then(|()| copy.store_applied()) {
            tracing::error!(volume = %id, %error, "cannot bring the copy up to its log");
        }
        hosted.stop_hashing();
    }
    Ok(())
}

/// Promotes the copy of `volume` in node directory `dir`: through the node, if one runs
/// there (it hands the volume over and goes on serving the others), else on the files,
/// holding the node's lock so that no node starts meanwhile.
/// With `candidate`, the copy's replica name, the epoch must not have been granted to
/// another replica's promotion.
pub fn promote_volume(
    dir: &Path,
    volume: &str,
    unclean: bool,
    candidate: Option<&str>,
) -> Result<Promotion, PromoteError> {
    let root = dir.join(volume);
    check_before_opening(&root, volume)?;
    let own = dir.join(NODE_DIR);
    match StateDir::open(&own) {
        Ok(_lock) => {
            let mut copy = VolumeCopy::open(&root)?;
            promote(&mut copy, &root, unclean, candidate, None)
        }
        Err(StateError::Locked { .. }) => ask_node(&own, volume, unclean, candidate),
        Err(error) => Err(PromoteError::Node(error.to_string())),
    }
}

/// Asks the node running with its own files in `own` to promote its copy of `volume`.
fn ask_node(
    own: &Path,
    volume: &str,
    unclean: bool,
    candidate: Option<&str>,
) -> Result<Promotion, PromoteError> {
    let request = PromoteRequest {
        volume: volume.to_string(),
        unclean,
        candidate: candidate.map(str::to_string),
    };
    let line = serde_json::to_string(&request).map_err(|e| PromoteError::Node(e.to_string()))?;
    let failed = |reason: String| {
        PromoteError::Node(format!(
            "the node's directory is locked and no node answers a promotion ({reason}): another promotion may be under way"
        ))
    };
    let mut answers = crate::control::request(own, &format!("promote {line}"))
        .map_err(|error| failed(error.to_string()))?;
    let mut answer = String::new();
    answers
        .read_line(&mut answer)
        .map_err(|error| failed(error.to_string()))?;
    match serde_json::from_str(&answer) {
        Ok(PromoteAnswer::Promoted(promotion)) => Ok(promotion),
        Ok(PromoteAnswer::Refused(reason)) => Err(PromoteError::Node(reason)),
        Err(error) => Err(failed(format!("its answer: {error}"))),
    }
}

/// The accept loop's warnings are said at most this often.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// How long the accept loop pauses after a failure, first and at most.
const ACCEPT_PAUSE: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(1));

/// The volumes a node was started with: the copies it keeps, and those promoted to
/// primary here before it started (it only fences their older primaries).
struct Kept {
    volumes: HashMap<String, Arc<Hosted>>,
    handed: HashMap<String, Handed>,
    /// A witness's volumes: votes only.
    witnessed: HashMap<String, Witnessed>,
}

/// A volume a witness votes for.
struct Witnessed {
    key: VolumeKey,
    plaintext: bool,
    ballots: Arc<BallotBox>,
}

/// A volume promoted to primary on this node before it started.
struct Handed {
    key: VolumeKey,
    plaintext: bool,
    epoch: u32,
}

/// Answers `promote {...}` requests on the node's control socket: the copy is promoted,
/// and handed over, while the node goes on serving the others.
fn promotions(kept: Arc<Kept>, dir: PathBuf) -> crate::control::Handler {
    Arc::new(
        move |request: &str, mut stream: std::os::unix::net::UnixStream| {
            let answer = match request
                .strip_prefix("promote ")
                .map(serde_json::from_str::<PromoteRequest>)
            {
                Some(Ok(asked)) => match kept.volumes.get(&asked.volume) {
                    Some(hosted) => {
                        let root = dir.join(&asked.volume);
                        match hosted.hand_over(
                            &root,
                            asked.unclean,
                            asked.candidate.as_deref(),
                            None,
                        ) {
                            Ok(promotion) => {
                                tracing::warn!(volume = %asked.volume, epoch = promotion.epoch, next = promotion.next, "the copy was promoted to primary: handed over, no longer kept");
                                PromoteAnswer::Promoted(promotion)
                            }
                            Err(error) => PromoteAnswer::Refused(error.to_string()),
                        }
                    }
                    None => match kept.handed.get(&asked.volume) {
                        Some(handed) => {
                            PromoteAnswer::Refused(PromoteError::Promoted(handed.epoch).to_string())
                        }
                        None => PromoteAnswer::Refused(
                            PromoteError::Unknown(asked.volume.clone()).to_string(),
                        ),
                    },
                },
                Some(Err(error)) => PromoteAnswer::Refused(format!("bad request: {error}")),
                None => PromoteAnswer::Refused(format!("unknown request {request:?}")),
            };
            if let Ok(line) = serde_json::to_string(&answer) {
                let _ = writeln!(stream, "{line}");
            }
        },
    )
}

/// One primary's connection: the handshake and its first message, then the session it
/// asks for, streaming or verify.
async fn session(stream: TcpStream, kept: &Kept, limits: &Limits) -> Result<(), SessionError> {
    stream.set_nodelay(true).map_err(ChannelError::Io)?;
    let opening = async {
        let (volume, mut channel) = Channel::accept(stream, |id| {
            let (key, plaintext) = match (
                kept.volumes.get(id),
                kept.handed.get(id),
                kept.witnessed.get(id),
            ) {
                (Some(hosted), _, _) => (&hosted.key, hosted.plaintext),
                (None, Some(handed), _) => (&handed.key, handed.plaintext),
                (None, None, Some(witnessed)) => (&witnessed.key, witnessed.plaintext),
                (None, None, None) => {
                    return Err(format!("volume {id:?} is not kept on this node"));
                }
            };
            Ok(Admission {
                key: key.clone(),
                plaintext,
            })
        })
        .await?;
        let first = channel.receive().await?;
        Ok::<_, SessionError>((volume, channel, first))
    };
    let (volume, mut channel, first) = tokio::time::timeout(limits.handshake, opening)
        .await
        .map_err(|_| SessionError::Silent("opening a session", limits.handshake))??;
    let first = decode(&first)?;
    if let Some(witnessed) = kept.witnessed.get(&volume) {
        let voting = Voting {
            ballots: Arc::clone(&witnessed.ballots),
            own: None,
        };
        return match first {
            ToNode::Elect { .. } | ToNode::Lease { .. } => {
                voting::serve(voting, &volume, channel, first, limits).await
            }
            _ => {
                let reason = "a witness answers only Elect and Lease".to_string();
                Err(refuse(&mut channel, reason).await)
            }
        };
    }
    let promoted = match kept.volumes.get(&volume) {
        Some(hosted) => hosted.promoted(),
        None => kept.handed.get(&volume).map(|handed| handed.epoch),
    };
    if let Some(promoted) = promoted {
        return Err(answer_promoted(&mut channel, &volume, &first, promoted).await);
    }
    let hosted = Arc::clone(&kept.volumes[&volume]);
    let (epoch, peers) = match first {
        ToNode::Open { epoch, peers, .. } => (epoch, peers),
        ToNode::Inspect => return inspect::serve(&hosted, &volume, channel).await,
        ToNode::Elect { .. } | ToNode::Lease { .. } => {
            let standing = Arc::clone(&hosted);
            let voting = Voting {
                ballots: Arc::clone(&hosted.ballots),
                own: Some(Box::new(move || standing.standing())),
            };
            return voting::serve(voting, &volume, channel, first, limits).await;
        }
        _ => {
            let reason = "the first message must be Open, Inspect, Elect or Lease".to_string();
            return Err(refuse(&mut channel, reason).await);
        }
    };
    stream::serve(hosted, &volume, channel, epoch, *peers, limits).await
}

/// Answers the first message of a session for `volume`, promoted to primary on this node
/// at epoch `promoted`: a primary of an older epoch is told it is fenced; anything else is
/// refused, since the node keeps no copy of the volume any more.
async fn answer_promoted(
    channel: &mut Channel<TcpStream>,
    volume: &str,
    first: &ToNode,
    promoted: u32,
) -> SessionError {
    // A promotion of another copy asks where this one reaches: it is told this one is a
    // primary now, at `promoted`.
    if let ToNode::Inspect = first {
        return match channel_send(channel, &ToPrimary::Fenced { epoch: promoted }).await {
            Ok(()) => SessionError::Refused(format!("promoted here at epoch {promoted}")),
            Err(error) => error.into(),
        };
    }
    if let ToNode::Open { epoch, .. } = *first
        && epoch < promoted
    {
        tracing::warn!(%volume, epoch, promoted, "a primary of an older epoch refused: it is fenced");
        if let Err(error) = channel_send(channel, &ToPrimary::Fenced { epoch: promoted }).await {
            return error.into();
        }
        return SessionError::Fenced {
            epoch,
            seen: promoted,
        };
    }
    let reason = format!(
        "volume {volume} was promoted to primary on this node at epoch {promoted}: it is not kept as a copy here"
    );
    refuse(channel, reason).await
}
