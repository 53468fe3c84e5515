//! A node's side of a verify session: walking its copy's metadata and hashing its files
//! for a primary's `mirrorfs verify`, so that only entries and hashes cross the network.
//! The session only reads; records keep arriving in the volume's streaming session
//! meanwhile.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use super::channel::{Channel, ChannelError};
use super::hosted::Hosted;
use super::protocol::{HashedFile, ToNode, ToPrimary, decode};
use super::session::{SessionError, channel_send, refuse};
use crate::log::LogPath;
use crate::manifest::CHUNK_BYTES;
use crate::manifest::HashStore;
use crate::manifest::{Entry, list};
use crate::manifest::{Files, hash_afresh};
use crate::origin::Origin;

/// Entries per `Entries` message.
pub(super) const ENTRIES_PER_MESSAGE: usize = 512;

/// A verify session that asks nothing for this long is closed (between requests the
/// primary may read its own files for a while).
const INSPECT_IDLE: Duration = Duration::from_secs(15 * 60);

/// How often the copy's position is looked at while a walk waits for it.
const POLL: Duration = Duration::from_millis(20);

/// Serves one verify session until the primary closes it.
pub(super) async fn serve(
    hosted: &Arc<Hosted>,
    volume: &str,
    mut channel: Channel<TcpStream>,
) -> Result<(), SessionError> {
    let opened = {
        let hosted = Arc::clone(hosted);
        blocking(move || {
            let copy = hosted.copy();
            let last = copy.last_hash();
            last.map(|last| ToPrimary::Inspecting {
                applied: copy.status().applied,
                next: copy.next(),
                last,
                owners: copy.sets_owners(),
            })
        })
        .await?
    };
    let inspecting = match opened {
        Ok(inspecting) => inspecting,
        Err(error) => return Err(refuse(&mut channel, error.to_string()).await),
    };
    tracing::info!(%volume, "verify session opened");
    channel_send(&mut channel, &inspecting).await?;
    loop {
        let received = tokio::time::timeout(INSPECT_IDLE, channel.receive())
            .await
            .map_err(|_| SessionError::Silent("in a verify session", INSPECT_IDLE))?;
        let bytes = match received {
            Ok(bytes) => bytes,
            Err(ChannelError::Io(error)) if error.kind() == io::ErrorKind::UnexpectedEof => {
                tracing::info!(%volume, "verify session closed");
                return Ok(());
            }
            Err(error) => return Err(error.into()),
        };
        match decode::<ToNode>(&bytes) {
            Ok(ToNode::Walk {
                under,
                wait_for,
                wait_ms,
            }) => walk(hosted, &mut channel, under, wait_for, wait_ms).await?,
            Ok(ToNode::Hash(paths)) => {
                let answer = hash(hosted, paths).await?;
                channel_send(&mut channel, &answer).await?;
            }
            Ok(ToNode::Read { path, offset, len }) => {
                let answer = read(hosted, path, offset, len).await?;
                channel_send(&mut channel, &answer).await?;
            }
            Ok(ToNode::Grant { epoch, candidate }) => {
                let granting = Arc::clone(hosted);
                let who = candidate.clone();
                let granted = blocking(move || granting.grant(epoch, &who)).await?;
                let answer = match granted {
                    Ok(()) => {
                        tracing::warn!(%volume, epoch, %candidate, "epoch granted to a promotion");
                        ToPrimary::Granted
                    }
                    Err(error) => ToPrimary::Refuse {
                        reason: error.to_string(),
                    },
                };
                channel_send(&mut channel, &answer).await?;
            }
            Ok(other) => {
                let reason = format!("{} in a verify session", message_name(&other));
                return Err(refuse(&mut channel, reason).await);
            }
            Err(error) => return Err(refuse(&mut channel, error.to_string()).await),
        }
    }
}

fn message_name(message: &ToNode) -> &'static str {
    match message {
        ToNode::Open { .. } => "Open",
        ToNode::Records { .. } => "Records",
        ToNode::Truncate { .. } => "Truncate",
        ToNode::SnapshotBegin { .. } => "SnapshotBegin",
        ToNode::SnapshotOps(_) => "SnapshotOps",
        ToNode::SnapshotEnd => "SnapshotEnd",
        ToNode::ResyncBegin { .. } => "ResyncBegin",
        ToNode::ResyncOps(_) => "ResyncOps",
        ToNode::ResyncEnd => "ResyncEnd",
        ToNode::Inspect => "Inspect",
        ToNode::Walk { .. } => "Walk",
        ToNode::Hash(_) => "Hash",
        ToNode::Read { .. } => "Read",
        ToNode::Grant { .. } => "Grant",
        ToNode::Elect { .. } => "Elect",
        ToNode::Lease { .. } => "Lease",
    }
}

/// Runs `work` on a blocking thread.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, SessionError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| ChannelError::Io(io::Error::other(error)).into())
}

/// The copy's applied offset.
async fn applied(hosted: &Arc<Hosted>) -> Result<u64, SessionError> {
    let hosted = Arc::clone(hosted);
    blocking(move || hosted.copy().status().applied).await
}

/// Whether the copy is stuck on a record.
async fn stuck(hosted: &Arc<Hosted>) -> Result<bool, SessionError> {
    let hosted = Arc::clone(hosted);
    blocking(move || hosted.copy().stuck().is_some()).await
}

/// The copy's tree and stored hashes, opened for reading.
async fn tree(hosted: &Arc<Hosted>) -> Result<io::Result<(Origin, Arc<HashStore>)>, SessionError> {
    let hosted = Arc::clone(hosted);
    blocking(move || {
        let data = hosted.copy().data_dir();
        Origin::open(&data).map(|tree| (tree, Arc::clone(hosted.hashes())))
    })
    .await
}

/// Answers a `Walk`: waits for the copy to reach `wait_for`, then streams its entries.
async fn walk(
    hosted: &Arc<Hosted>,
    channel: &mut Channel<TcpStream>,
    under: LogPath,
    wait_for: u64,
    wait_ms: u64,
) -> Result<(), SessionError> {
    let deadline = Instant::now() + Duration::from_millis(wait_ms);
    let mut before = applied(hosted).await?;
    // A stuck copy gets no further by waiting.
    while before < wait_for && Instant::now() < deadline && !stuck(hosted).await? {
        tokio::time::sleep(POLL).await;
        before = applied(hosted).await?;
    }
    let (tree, store) = match tree(hosted).await? {
        Ok(opened) => opened,
        Err(error) => {
            let reason = format!("cannot open the copy: {error}");
            return Ok(channel_send(channel, &ToPrimary::Failed { reason }).await?);
        }
    };
    let (batches, mut receive) = tokio::sync::mpsc::channel::<Vec<Entry>>(4);
    let walking = tokio::task::spawn_blocking(move || {
        let mut batch = Vec::with_capacity(ENTRIES_PER_MESSAGE);
        let walked = list(&tree, &under, Some(&store), &mut |entry| {
            batch.push(entry);
            if batch.len() < ENTRIES_PER_MESSAGE {
                return true;
            }
            let full = std::mem::replace(&mut batch, Vec::with_capacity(ENTRIES_PER_MESSAGE));
            batches.blocking_send(full).is_ok()
        });
        if !batch.is_empty() {
            let _ = batches.blocking_send(batch);
        }
        walked
    });
    while let Some(batch) = receive.recv().await {
        channel_send(channel, &ToPrimary::Entries(batch)).await?;
    }
    let walked = walking
        .await
        .map_err(|error| ChannelError::Io(io::Error::other(error)))?;
    let answer = match walked {
        Ok(()) => {
            let hosted = Arc::clone(hosted);
            let (after, stuck) = blocking(move || {
                let copy = hosted.copy();
                (copy.status().applied, copy.stuck().cloned())
            })
            .await?;
            ToPrimary::Walked {
                before,
                after,
                stuck,
            }
        }
        Err(error) => ToPrimary::Failed {
            reason: error.to_string(),
        },
    };
    Ok(channel_send(channel, &answer).await?)
}

/// Answers a `Hash`: the files read in one go, with the copy's directory fds kept.
pub(super) async fn hash(
    hosted: &Arc<Hosted>,
    paths: Vec<LogPath>,
) -> Result<ToPrimary, SessionError> {
    let (tree, store) = match tree(hosted).await? {
        Ok(opened) => opened,
        Err(error) => {
            return Ok(ToPrimary::Failed {
                reason: format!("cannot open the copy: {error}"),
            });
        }
    };
    let applied = applied(hosted).await?;
    let files = blocking(move || {
        let mut files = Files::new(&tree);
        paths
            .iter()
            .map(
                |path| match hash_afresh(&mut files, path, Some(&store), &mut |_| {}, &|| false) {
                    Ok(fresh) => HashedFile {
                        stored: fresh.as_ref().and_then(|fresh| {
                            fresh.stored.as_ref().map(|stored| stored.hashes.clone())
                        }),
                        fresh: fresh.map(|fresh| fresh.hashes),
                        error: None,
                    },
                    Err(error) => HashedFile {
                        fresh: None,
                        stored: None,
                        error: Some(error.to_string()),
                    },
                },
            )
            .collect()
    })
    .await?;
    Ok(ToPrimary::Hashed { files, applied })
}

/// Answers a `Read`.
async fn read(
    hosted: &Arc<Hosted>,
    path: LogPath,
    offset: u64,
    len: u32,
) -> Result<ToPrimary, SessionError> {
    let (tree, _) = match tree(hosted).await? {
        Ok(opened) => opened,
        Err(error) => {
            return Ok(ToPrimary::Failed {
                reason: format!("cannot open the copy: {error}"),
            });
        }
    };
    let len = u64::from(len).min(CHUNK_BYTES) as usize;
    let data = blocking(move || {
        let file = crate::tree::open_regular(&tree, &path, libc::O_RDONLY)?;
        let mut buffer = vec![0u8; len];
        let read = file.read_at(&mut buffer, offset)?;
        buffer.truncate(read);
        Ok::<_, io::Error>(buffer)
    })
    .await?;
    Ok(match data {
        Ok(data) => ToPrimary::Data(data),
        Err(error) => ToPrimary::Failed {
            reason: error.to_string(),
        },
    })
}
