//! Promoting a replica's copy to the volume's primary: the copy's tree becomes the new
//! primary's origin and its log the new primary's log, continuing the same offsets in the
//! next leader epoch, so the other replicas follow it from where they are.
//!
//! A copy is promoted only if it holds everything the old primary counted as held by every
//! in-sync replica (its applied offset at least the last high watermark it was told), is
//! not stuck and not in the middle of a snapshot, and was not promoted already; `unclean`
//! (Kafka's unclean leader election) promotes a copy that was behind anyway, and says which
//! offsets it cannot vouch for.
//!
//! Promotion writes, in the copy's directory: the new epoch in the log's history (durably,
//! so this copy refuses the old primary from now on), the applied offset (after a syncfs
//! of the tree), `log-base` (whether the log holds the whole volume), and last
//! `promoted`, the marker that the directory is a primary's state now: a node never opens
//! it as a copy again.

use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;

use crate::config::Replica;
use crate::durable;

use super::channel::Channel;
use super::copy::{CopyError, VolumeCopy};
use super::key::VolumeKey;
use super::protocol::{Stuck, ToNode, ToPrimary, decode, encode};

/// The marker a promotion leaves in the copy's directory: the epoch it began.
pub const PROMOTED_FILE: &str = "promoted";

/// The epoch a copy granted to a promotion, and to whose: `EPOCH NAME UNIX_SECONDS`.
pub(super) const GRANTED_FILE: &str = "granted";

/// A grant not followed by its promotion within this long no longer counts (the
/// promotion gave up; the `promoted` marker, not the grant, says who won).
const GRANT_TTL: Duration = Duration::from_secs(30);

/// What a promotion did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promotion {
    /// The new leader epoch.
    pub epoch: u32,
    /// The offset the new primary's first record gets: the other replicas follow from
    /// here.
    pub next: u64,
    /// With `unclean`, the offsets the copy lacked of what the old primary counted as held
    /// by every in-sync replica: what may be lost.
    pub unvouched: Option<Range<u64>>,
    /// The log holds the whole volume (it began with it empty), so a new replica needs no
    /// snapshot.
    pub whole: bool,
}

/// Why a copy was not promoted.
#[derive(Debug, thiserror::Error)]
pub enum PromoteError {
    /// No copy of the volume here.
    #[error("no copy of volume {0} here")]
    Unknown(String),
    /// A snapshot is being received: the copy holds no whole volume.
    #[error("the copy is in the middle of a snapshot, so it holds no whole volume")]
    MidSnapshot,
    /// The copy was behind what every in-sync replica held.
    #[error(
        "the copy was not in sync: it holds records below {applied}, but was told every in-sync replica holds those below {high_watermark} (--unclean promotes it anyway, losing what it lacks)"
    )]
    OutOfSync {
        /// What the copy holds, applied.
        applied: u64,
        /// The last high watermark it was told.
        high_watermark: u64,
    },
    /// The copy holds nothing of the volume: no record, and no snapshot completed.
    #[error("the copy holds nothing of the volume yet (no record, no completed snapshot)")]
    Empty,
    /// The copy's tree cannot take a record its log holds.
    #[error("the copy is stuck on record {}: {}", .0.offset, .0.error)]
    Stuck(Stuck),
    /// The copy is a primary already.
    #[error("the copy was promoted already, at epoch {0}")]
    Promoted(u32),
    /// A primary is streaming to the copy: the primary is not lost.
    #[error("its primary is still connected to the node; promote only when it is lost")]
    PrimaryConnected,
    /// Another promotion of the copy holds it.
    #[error("another promotion of this copy is under way")]
    Busy,
    /// The epoch was granted to the promotion of another replica's copy.
    #[error("epoch {epoch} was granted to the promotion of replica {to}: one promotion per epoch")]
    GrantedTo {
        /// The epoch.
        epoch: u32,
        /// The replica being promoted.
        to: String,
    },
    /// The copy follows the epoch asked for already (a newer primary streams to it).
    #[error("epoch {asked} is in use already: the copy follows epoch {seen}")]
    EpochInUse {
        /// The epoch asked for.
        asked: u32,
        /// The copy's.
        seen: u32,
    },
    /// The copy's files.
    #[error(transparent)]
    Copy(#[from] CopyError),
    /// The node's directory could not be locked, or the running node asked.
    #[error("{0}")]
    Node(String),
}

/// Where another replica's copy of the volume reaches, as its node answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerPosition {
    /// The replica's name.
    pub name: String,
    /// Its answer.
    pub reach: Reach,
}

/// What another replica's node said of its copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reach {
    /// Its copy holds every record below this offset.
    Next(u64),
    /// Its copy was promoted to primary already, at this epoch: the volume has one.
    Promoted(u32),
    /// It refused to grant the epoch to this promotion, and why: another one is under way.
    Refused(String),
    /// It could not be asked, and why.
    Unknown(String),
}

/// An epoch's grant: to whom, and when.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Grant {
    epoch: u32,
    to: String,
}

fn now_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// The grant the copy at `root` made that still counts, if any.
fn live_grant(root: &Path) -> Result<Option<Grant>, CopyError> {
    let path = root.join(GRANTED_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(CopyError::Io { path, source }),
    };
    let mut words = text.split_whitespace();
    let (Some(epoch), Some(to), Some(at)) = (words.next(), words.next(), words.next()) else {
        // A grant half written is no grant.
        return Ok(None);
    };
    let (Ok(epoch), Ok(at)) = (epoch.parse(), at.parse::<u64>()) else {
        return Ok(None);
    };
    let live = now_seconds().saturating_sub(at) < GRANT_TTL.as_secs();
    Ok(live.then(|| Grant {
        epoch,
        to: to.to_string(),
    }))
}

/// Grants leader epoch `epoch` to the promotion of replica `candidate`, for the copy at
/// `root`: each epoch once, as a Raft voter grants its vote. A grant to another candidate
/// for the epoch stands, unless `candidate`'s name is lower (so two promotions racing,
/// each granted its own copy first, end with exactly one); a copy that follows the epoch
/// already, or was promoted, grants nothing. Durable before it is answered.
pub fn grant(copy: &VolumeCopy, epoch: u32, candidate: &str) -> Result<(), PromoteError> {
    let root = copy.root();
    if let Some(promoted) = promoted_at(root)? {
        return Err(PromoteError::Promoted(promoted));
    }
    let seen = copy.epoch();
    if seen >= epoch {
        return Err(PromoteError::EpochInUse { asked: epoch, seen });
    }
    if let Some(granted) = live_grant(root)?
        && granted.to != candidate
        && (granted.epoch > epoch || (granted.epoch == epoch && granted.to.as_str() < candidate))
    {
        return Err(PromoteError::GrantedTo {
            epoch: granted.epoch,
            to: granted.to,
        });
    }
    let path = root.join(GRANTED_FILE);
    durable::replace(&path, format!("{epoch} {candidate} {}\n", now_seconds()))
        .map_err(|source| CopyError::Io { path, source })?;
    Ok(())
}

/// Asks each replica in `replicas` how far its copy of `volume` reaches, over a
/// read-only (verify) session: a copy behind any of them must not be promoted, since they
/// may hold acknowledged records it lacks. With `grant` (an epoch and a candidate), each
/// is asked to grant the epoch to that promotion too.
pub fn peer_positions(
    volume: &str,
    replicas: &[Replica],
    key: &VolumeKey,
    plaintext: bool,
    grant: Option<(u32, String)>,
) -> Vec<PeerPosition> {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return Vec::new();
    };
    replicas
        .iter()
        .map(|replica| PeerPosition {
            name: replica.name.clone(),
            reach: runtime.block_on(async {
                let ask = async {
                    let stream = TcpStream::connect(&replica.address)
                        .await
                        .map_err(|error| error.to_string())?;
                    let mut channel = Channel::connect(stream, volume, key, plaintext)
                        .await
                        .map_err(|error| error.to_string())?;
                    channel
                        .send(&encode(&ToNode::Inspect))
                        .await
                        .map_err(|error| error.to_string())?;
                    let answer = channel.receive().await.map_err(|error| error.to_string())?;
                    let next = match decode(&answer).map_err(|error| error.to_string())? {
                        ToPrimary::Inspecting { next, .. } => next,
                        ToPrimary::Fenced { epoch } => return Ok(Reach::Promoted(epoch)),
                        ToPrimary::Refuse { reason } => return Err(reason),
                        other => return Err(format!("unexpected answer {other:?}")),
                    };
                    let Some((epoch, candidate)) = grant.clone() else {
                        return Ok(Reach::Next(next));
                    };
                    channel
                        .send(&encode(&ToNode::Grant { epoch, candidate }))
                        .await
                        .map_err(|error| error.to_string())?;
                    let answer = channel.receive().await.map_err(|error| error.to_string())?;
                    match decode(&answer).map_err(|error| error.to_string())? {
                        ToPrimary::Granted => Ok(Reach::Next(next)),
                        ToPrimary::Refuse { reason } => Ok(Reach::Refused(reason)),
                        other => Err(format!("unexpected answer {other:?}")),
                    }
                };
                match tokio::time::timeout(PEER_TIMEOUT, ask).await {
                    Ok(Ok(reach)) => reach,
                    Ok(Err(why)) => Reach::Unknown(why),
                    Err(_) => Reach::Unknown("no answer".to_string()),
                }
            }),
        })
        .collect()
}

/// How long a promotion waits for another replica's node to say where its copy reaches.
const PEER_TIMEOUT: Duration = Duration::from_secs(5);

/// What a running node asked to promote one of its copies is sent, after `promote `.
#[derive(Debug, Serialize, Deserialize)]
pub struct PromoteRequest {
    /// The volume.
    pub volume: String,
    /// Promote a copy that was behind.
    pub unclean: bool,
    /// The copy's replica name, to whose promotion the other replicas granted the epoch.
    #[serde(default)]
    pub candidate: Option<String>,
}

/// A running node's answer to a promotion request.
#[derive(Debug, Serialize, Deserialize)]
pub enum PromoteAnswer {
    /// Done.
    Promoted(Promotion),
    /// Refused, and why.
    Refused(String),
}

/// The epoch a promotion of the copy at `root` began, if it was promoted.
pub fn promoted_at(root: &Path) -> Result<Option<u32>, CopyError> {
    let path = root.join(PROMOTED_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse().map(Some).map_err(|_| CopyError::Io {
            path,
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not an epoch"),
        }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CopyError::Io { path, source }),
    }
}

/// Why the copy at `root` cannot be promoted before it is opened, if it cannot: it is
/// not there, a snapshot is half received, or it is a primary already.
pub fn check_before_opening(root: &Path, volume: &str) -> Result<(), PromoteError> {
    if !root.join("log").is_dir() {
        return Err(PromoteError::Unknown(volume.to_string()));
    }
    if let Some(epoch) = promoted_at(root)? {
        return Err(PromoteError::Promoted(epoch));
    }
    if root.join("staging").exists() && !root.join("base.new").exists() {
        return Err(PromoteError::MidSnapshot);
    }
    Ok(())
}

/// Promotes `copy`, open from `root`, to epoch `epoch` (by default the next one; see the
/// module doc). With `candidate` (the copy's replica name), the epoch must not be granted
/// to another replica's promotion.
pub fn promote(
    copy: &mut VolumeCopy,
    root: &Path,
    unclean: bool,
    candidate: Option<&str>,
    epoch: Option<u32>,
) -> Result<Promotion, PromoteError> {
    if let Some(epoch) = promoted_at(root)? {
        return Err(PromoteError::Promoted(epoch));
    }
    if let Some(granted) = live_grant(root)?
        && granted.epoch > copy.epoch()
        && candidate != Some(granted.to.as_str())
    {
        return Err(PromoteError::GrantedTo {
            epoch: granted.epoch,
            to: granted.to,
        });
    }
    if copy.status().receiving_snapshot {
        return Err(PromoteError::MidSnapshot);
    }
    // Records the log holds and the tree lacks are applied first (a node applies them as
    // they come; one that died between may not have).
    copy.apply_received(&[])?;
    if let Some(stuck) = copy.stuck() {
        return Err(PromoteError::Stuck(stuck.clone()));
    }
    let status = copy.status();
    // A copy that never completed a snapshot and holds no record has none of the volume.
    if copy.next() == 0 && !copy.has_snapshot() && !unclean {
        return Err(PromoteError::Empty);
    }
    let (applied, high_watermark) = (status.applied, copy.high_watermark());
    let unvouched = (applied < high_watermark).then_some(applied..high_watermark);
    if unvouched.is_some() && !unclean {
        return Err(PromoteError::OutOfSync {
            applied,
            high_watermark,
        });
    }
    let epoch = match epoch {
        None => copy.epoch() + 1,
        Some(epoch) if epoch > copy.epoch() => epoch,
        Some(asked) => {
            return Err(PromoteError::EpochInUse {
                asked,
                seen: copy.epoch(),
            });
        }
    };
    copy.begin_epoch(epoch)?;
    copy.store_applied()?;
    let whole = status.log_start == 0 && !copy.has_snapshot();
    let base = root.join("log-base");
    durable::replace(&base, if whole { "whole\n" } else { "partial\n" })
        .map_err(|source| CopyError::Io { path: base, source })?;
    let marker = root.join(PROMOTED_FILE);
    durable::replace(&marker, format!("{epoch}\n")).map_err(|source| CopyError::Io {
        path: marker,
        source,
    })?;
    Ok(Promotion {
        epoch,
        next: copy.next(),
        unvouched,
        whole,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_epoch_is_granted_once_and_the_lower_name_wins_a_tie() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("vol");
        let mut copy = VolumeCopy::open(&root).unwrap();
        grant(&copy, 2, "r1").unwrap();
        // Asked again by the same promotion: granted again.
        grant(&copy, 2, "r1").unwrap();
        // Another promotion for the same epoch: refused, unless its name is lower.
        let refused = grant(&copy, 2, "r2").unwrap_err().to_string();
        assert!(
            refused.contains("granted to the promotion of replica r1"),
            "{refused}"
        );
        grant(&copy, 2, "r0").unwrap();
        assert!(grant(&copy, 2, "r1").is_err());
        // A later epoch is another election.
        grant(&copy, 3, "r1").unwrap();
        assert!(
            grant(&copy, 2, "r0").is_err(),
            "an older epoch than one granted"
        );
        // The copy's own promotion checks the grant: the epoch went to r1, not r0.
        let taken = promote(&mut copy, &root, true, Some("r0"), None).unwrap_err();
        assert!(
            matches!(taken, PromoteError::GrantedTo { epoch: 3, .. }),
            "{taken}"
        );
        // A grant that was never followed by its promotion lapses.
        let stale = format!("3 r1 {}\n", now_seconds() - GRANT_TTL.as_secs() - 1);
        std::fs::write(root.join(GRANTED_FILE), stale).unwrap();
        grant(&copy, 3, "r2").unwrap();
        // A copy following the epoch already grants nothing.
        copy.accept_epoch(3).unwrap();
        let in_use = grant(&copy, 3, "r2").unwrap_err();
        assert!(
            matches!(in_use, PromoteError::EpochInUse { asked: 3, seen: 3 }),
            "{in_use}"
        );
    }
}
