//! The streaming session on a replica node: a primary sends records (or a snapshot) and
//! the node acknowledges each batch once it is durable in the copy's log and applied.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use tokio::net::TcpStream;

use super::channel::{Channel, ChannelError};
use super::copy::{Base, CopyError, VolumeCopy};
use super::hosted::Hosted;
use super::inspect::{ENTRIES_PER_MESSAGE, hash};
use super::protocol::{Peers, ToNode, ToPrimary, decode};
use super::session::{Limits, SessionError, channel_send, refuse};

/// How long a session in a resync may stay silent (the primary hashes its own files
/// between messages).
const RESYNC_IDLE: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// Streams volume `volume` from a primary at `epoch` into `hosted`'s copy over `channel`,
/// until the primary goes or the session fails.
pub(super) async fn serve(
    hosted: Arc<Hosted>,
    volume: &str,
    mut channel: Channel<TcpStream>,
    epoch: u32,
    peers: Peers,
    limits: &Limits,
) -> Result<(), SessionError> {
    let number = hosted.session.fetch_add(1, Ordering::SeqCst) + 1;
    hosted.open_sessions.fetch_add(1, Ordering::SeqCst);
    let _open = OpenSession(&hosted, number);
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
        tracing::warn!(%volume, epoch, seen, "a primary of an older epoch refused: it is fenced");
        channel_send(&mut channel, &ToPrimary::Fenced { epoch: seen }).await?;
        return Err(SessionError::Fenced { epoch, seen });
    }
    if epoch > seen {
        // From now on the copy refuses every older primary, whatever happens to this one.
        let accepted = hosted.copy().accept_epoch(epoch);
        if let Err(error) = accepted {
            return Err(refuse(&mut channel, error.to_string()).await);
        }
        tracing::info!(%volume, epoch, seen, "a primary of a newer epoch: the older is fenced");
    }
    // What a promotion of this copy will need to know of the volume's replication.
    let kept = hosted.copy().keep_peers(&peers);
    if let Err(error) = kept {
        return Err(refuse(&mut channel, error.to_string()).await);
    }
    tracing::info!(%volume, epoch, next, "primary connected");
    let (last_epoch, needs_snapshot) = {
        let copy = hosted.copy();
        (copy.last_epoch(), copy.needs_snapshot())
    };
    channel_send(
        &mut channel,
        &ToPrimary::Position {
            next,
            epoch,
            last,
            snapshot,
            stuck: stuck.clone(),
            last_epoch,
            needs_snapshot,
        },
    )
    .await?;
    if let Some(stuck) = stuck {
        hosted.report_stuck(volume, &stuck);
        return Err(SessionError::Stuck(stuck));
    }
    // A resync's primary may read large files of its own between two messages.
    let mut resyncing = false;
    loop {
        let idle = if resyncing { RESYNC_IDLE } else { limits.idle };
        let received = tokio::time::timeout(idle, channel.receive())
            .await
            .map_err(|_| SessionError::Silent("streaming", idle))?;
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
            ToNode::Records {
                records,
                high_watermark,
            } => {
                answer(&hosted, number, move |copy| {
                    let next = copy.receive(&records)?;
                    copy.apply_received(&records)?;
                    copy.told_high_watermark(high_watermark)?;
                    Ok(next)
                })
                .await?
            }
            ToNode::Open { .. } => ToPrimary::Refuse {
                reason: "Open sent twice".to_string(),
            },
            // The primary's history parts from the copy's at `to`: the records past it go
            // (they were never this primary's), and the copy waits for a snapshot.
            ToNode::Truncate { to } => {
                tracing::warn!(%volume, to, "the copy holds records the primary never had: cut back, a resync follows");
                let hosted = Arc::clone(&hosted);
                let volume = volume.to_string();
                let answered = tokio::task::spawn_blocking(move || {
                    let mut copy = hosted.copy();
                    let kept = copy.truncate_to(to)?;
                    let shown: Vec<String> = kept.paths.iter().take(10).cloned().collect();
                    tracing::warn!(
                        %volume,
                        records = kept.records,
                        data_bytes = kept.data_bytes,
                        paths = %shown.join(" "),
                        more_paths = kept.paths.len().saturating_sub(shown.len()),
                        kept_in = %kept.dir.display(),
                        "records the new primary never had were cut off and kept aside (mirrorfs log --state-dir shows them)"
                    );
                    copy.position(epoch)
                })
                .await
                .map_err(|error| ChannelError::Io(io::Error::other(error)))?;
                match answered {
                    Ok(position) => position,
                    Err(error) => ToPrimary::Refuse {
                        reason: error.to_string(),
                    },
                }
            }
            // A resync: the tree is listed for the primary to compare with its own.
            ToNode::ResyncBegin {
                offset,
                epoch,
                last,
            } => {
                tracing::info!(%volume, offset, "resync begins");
                resyncing = true;
                let base = Base {
                    offset,
                    epoch,
                    last,
                };
                let hosted = Arc::clone(&hosted);
                let listed = tokio::task::spawn_blocking(move || {
                    let mut copy = hosted.copy();
                    copy.begin_resync(base)?;
                    Ok::<_, CopyError>((copy.list_tree()?, copy.sets_owners()))
                })
                .await
                .map_err(|error| ChannelError::Io(io::Error::other(error)))?;
                match listed {
                    Ok((entries, owners)) => {
                        for batch in entries.chunks(ENTRIES_PER_MESSAGE) {
                            channel_send(&mut channel, &ToPrimary::Entries(batch.to_vec())).await?;
                        }
                        ToPrimary::Listed { owners }
                    }
                    Err(error) => ToPrimary::Refuse {
                        reason: error.to_string(),
                    },
                }
            }
            // The chunk hashes of files whose content a resync compares.
            ToNode::Hash(paths) => hash(&hosted, paths).await?,
            ToNode::ResyncOps(ops) => {
                answer(&hosted, number, move |copy| {
                    copy.resync_ops(&ops)?;
                    Ok(copy.next())
                })
                .await?
            }
            ToNode::ResyncEnd => {
                resyncing = false;
                let answered = answer(&hosted, number, |copy| copy.end_resync()).await?;
                if let ToPrimary::Ack { next } = answered {
                    tracing::info!(%volume, next, "resync complete");
                }
                answered
            }
            ToNode::Inspect
            | ToNode::Walk { .. }
            | ToNode::Read { .. }
            | ToNode::Grant { .. }
            | ToNode::Elect { .. }
            | ToNode::Lease { .. } => ToPrimary::Refuse {
                reason: "a verify request in a streaming session".to_string(),
            },
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
            ToPrimary::Fenced { epoch: seen } => {
                return Err(SessionError::Fenced { epoch, seen });
            }
            ToPrimary::Stuck(stuck) => {
                hosted.report_stuck(volume, &stuck);
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
                (CopyError::StaleEpoch { seen, .. }, _) => ToPrimary::Fenced { epoch: *seen },
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

/// Counts a session out when it ends, however it ends, and lets standby readers back into
/// a tree its resync left between offsets (unless a newer session holds it now).
struct OpenSession<'a>(&'a Hosted, u64);

impl Drop for OpenSession<'_> {
    fn drop(&mut self) {
        let mut copy = self.0.copy();
        if self.0.session.load(Ordering::SeqCst) == self.1 {
            copy.session_ended();
        }
        drop(copy);
        self.0.open_sessions.fetch_sub(1, Ordering::SeqCst);
    }
}
