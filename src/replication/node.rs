//! A replica node: keeps a copy of any number of volumes, each in `DIR/<volume id>/`,
//! for the primaries that hold their keys. Each connection is one primary streaming one
//! volume; a bad connection (wrong key, garbage, a record it cannot take) is closed with
//! one log line, and the node keeps serving everyone else.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};

use super::channel::{Admission, Channel, ChannelError};
use super::copy::{CopyError, VolumeCopy};
use super::hosted::Hosted;
pub use super::hosted::HostedStatus;
use super::key::{KeyError, VolumeKey};
use super::protocol::{ToNode, decode};
use super::session::{Limits, SessionError, refuse};
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
        let hosted = Arc::new(Hosted::new(key, volume.plaintext, copy, hashing));
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
        hosted.stop_hashing();
    }
    Ok(())
}

/// The accept loop's warnings are said at most this often.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// How long the accept loop pauses after a failure, first and at most.
const ACCEPT_PAUSE: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(1));

/// One primary's connection: the handshake and its first message, then the session it
/// asks for, streaming or verify.
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
    let (epoch, peers) = match decode(&first)? {
        ToNode::Open { epoch, peers, .. } => (epoch, peers),
        ToNode::Inspect => return inspect::serve(&hosted, &volume, channel).await,
        _ => {
            let reason = "the first message must be Open or Inspect".to_string();
            return Err(refuse(&mut channel, reason).await);
        }
    };
    stream::serve(hosted, &volume, channel, epoch, peers, limits).await
}
