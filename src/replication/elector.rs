//! A replica node standing for election (automatic failover, docs/design.md 9.8). When
//! the primary of a volume it keeps has fallen silent and the copy can prove it is in sync,
//! the node asks the other voters for the next epoch; with a majority of votes it asks them
//! for a lease under that epoch (which settles the epoch for good: a voter that leased it
//! gives it to nobody else), then promotes the copy and hands it to the node's
//! [`OnElected`], which serves it. A candidate that loses changes nothing but the votes it
//! was given; it tries again later, at a newer epoch if a voter names one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::candidacy::{LastElection, RETRY_AFTER, jitter};
use super::canvass::{self, Canvass};
use super::hosted::{Hosted, PRIMARY_SILENT};
use super::promote::Promotion;
use super::protocol::{AutoFailover, Peers, ToNode};

/// A copy this node promoted after winning an election: what serving it needs.
#[derive(Clone, Debug)]
pub struct Elected {
    /// The volume.
    pub volume: String,
    /// The promoted copy's directory: the new primary's state.
    pub root: PathBuf,
    /// What the promotion did.
    pub promotion: Promotion,
    /// What the old primary said of the volume's replication.
    pub peers: Peers,
}

/// The file a node writes, in a copy's directory, with the config that serves the copy it
/// promoted after winning an election.
pub const ELECTED_CONFIG: &str = "primary.toml";

/// The file a node writes, in a copy's directory, with the election that promoted it (a
/// [`LastElection`] in JSON): the new primary's `mirrorfs status` shows it.
pub const ELECTION_FILE: &str = "elected.json";

/// The election that made the copy in `root` its volume's primary, if one did.
pub fn load_election(root: &Path) -> Option<LastElection> {
    let bytes = std::fs::read(root.join(ELECTION_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// What a node does with a copy it promoted after winning an election: run on a thread of
/// its own, since serving it may take a while (a standby promoted in place, hooks).
pub type OnElected = Arc<dyn Fn(Elected) + Send + Sync>;

/// How often the elector looks at each volume.
const TICK: Duration = Duration::from_millis(250);

/// How long one round of questions waits for the voters.
const ROUND_WITHIN: Duration = Duration::from_secs(1);

/// Watches every volume in `volumes` (each kept in `dir/<id>`) until `stopped` turns true,
/// standing for election when its primary is lost.
pub(super) async fn run(
    volumes: HashMap<String, Arc<Hosted>>,
    dir: PathBuf,
    on_elected: OnElected,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        for (id, hosted) in &volumes {
            let root = dir.join(id);
            if let Some(elected) = watch(id, hosted, &root).await {
                let on_elected = Arc::clone(&on_elected);
                let spawned = std::thread::Builder::new()
                    .name("elected".to_string())
                    .spawn(move || on_elected(elected));
                if let Err(error) = spawned {
                    tracing::error!(volume = %id, %error, "cannot start serving the promoted copy");
                }
            }
        }
        tokio::select! {
            _ = stopped.changed() => return,
            _ = tokio::time::sleep(TICK) => {}
        }
    }
}

/// Looks at volume `id` once: stands for election if it should, and returns the promoted
/// copy if it won.
async fn watch(id: &str, hosted: &Arc<Hosted>, root: &Path) -> Option<Elected> {
    if hosted.promoted().is_some() {
        return None;
    }
    let candidacy = &hosted.candidacy;
    // A copy busy is one a primary's session is writing: not silent. Never waited for,
    // so the node's runtime is never held up here.
    let (peers, next, high_watermark, stuck) = {
        let copy = hosted.try_copy()?;
        // What the primary last said; a volume without automatic failover has no election.
        let peers = copy
            .peers()
            .filter(|peers| peers.failover.is_some())?
            .clone();
        let stuck = copy.stuck().cloned();
        (peers, copy.next(), copy.high_watermark(), stuck)
    };
    let auto = peers.failover.clone()?;
    let silent = hosted.primary_silent_for();
    if silent < PRIMARY_SILENT {
        candidacy.set_now(format!("following {}", auto.primary));
        candidacy.wait_until(None);
        return None;
    }
    if !candidacy.due() {
        return None;
    }
    // Its own vote would be refused: asking the others would only unsettle them.
    let votes = hosted.ballots.status();
    if let (Some(holder), Some(left)) = (votes.lease_holder, votes.lease_left_ms) {
        candidacy.set_now(format!(
            "waiting: the lease of {holder} runs {left} ms more here"
        ));
        return None;
    }
    if let Some(stuck) = stuck {
        candidacy.set_now(format!(
            "not standing: the copy is stuck on record {}",
            stuck.offset
        ));
        return None;
    }
    if next < high_watermark && !auto.unclean {
        candidacy.set_now(format!(
            "not standing: the copy is not in sync (it holds records below {next}, and was told the in-sync replicas hold those below {high_watermark}); waiting for a replica that is (unclean = true would promote the most advanced)"
        ));
        return None;
    }
    let reason = format!(
        "primary {} not heard for {:.1} s",
        auto.primary,
        silent.as_secs_f64()
    );
    let stood = stand(id, hosted, root, &peers, &auto, &reason).await;
    let retry = RETRY_AFTER + RETRY_AFTER.mul_f64(jitter());
    candidacy.wait_until(Some(Instant::now() + retry));
    stood
}

/// Stands for election once; promotes the copy when it wins.
async fn stand(
    id: &str,
    hosted: &Arc<Hosted>,
    root: &Path,
    peers: &Peers,
    auto: &AutoFailover,
    reason: &str,
) -> Option<Elected> {
    let candidacy = &hosted.candidacy;
    let epoch = {
        let seen = candidacy.newest_seen();
        let granted = hosted.ballots.status().granted_epoch.unwrap_or(0);
        hosted.copy().epoch().max(seen).max(granted) + 1
    };
    candidacy.set_now(format!("standing for epoch {epoch}: {reason}"));
    let at = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64());
    let finish = |won: bool, outcome: String| {
        candidacy.record(LastElection {
            epoch,
            at,
            reason: reason.to_string(),
            won,
            outcome,
        });
    };
    let outcome = match campaign(id, hosted, peers, auto, epoch).await {
        Ok(outcome) => outcome,
        Err(why) => {
            tracing::info!(volume = %id, epoch, %why, "election lost");
            finish(false, why);
            return None;
        }
    };
    let promoting = Arc::clone(hosted);
    let at_root = root.to_path_buf();
    let (unclean, this) = (auto.unclean, peers.this.clone());
    let promoted = tokio::task::spawn_blocking(move || {
        promoting.hand_over(&at_root, unclean, Some(&this), Some(epoch))
    })
    .await;
    let promotion = match promoted {
        Ok(Ok(promotion)) => promotion,
        Ok(Err(error)) => {
            let why = format!("{outcome}, but the copy could not be promoted: {error}");
            tracing::error!(volume = %id, epoch, %why, "election won, promotion failed");
            finish(false, why);
            return None;
        }
        Err(error) => {
            finish(
                false,
                format!("{outcome}, but the promotion failed: {error}"),
            );
            return None;
        }
    };
    tracing::warn!(volume = %id, epoch, next = promotion.next, %reason, %outcome, "elected primary: the copy was promoted");
    if let Some(unvouched) = &promotion.unvouched {
        tracing::error!(volume = %id, start = unvouched.start, end = unvouched.end, "unclean election: offsets the old primary's in-sync replicas held and this copy lacks may be lost");
    }
    finish(true, outcome);
    if let Some(won) = candidacy.status().last {
        let saved = serde_json::to_vec(&won)
            .map_err(std::io::Error::other)
            .and_then(|bytes| crate::durable::replace(&root.join(ELECTION_FILE), bytes));
        if let Err(error) = saved {
            tracing::warn!(volume = %id, %error, "cannot keep the election for status");
        }
    }
    candidacy.set_now(format!("primary since epoch {epoch}"));
    Some(Elected {
        volume: id.to_string(),
        root: root.to_path_buf(),
        promotion,
        peers: peers.clone(),
    })
}

/// Asks the other voters for epoch `epoch`, then (with a majority of votes, its own cast
/// last) for a lease under it: the votes and leases won, or why not.
async fn campaign(
    id: &str,
    hosted: &Hosted,
    peers: &Peers,
    auto: &AutoFailover,
    epoch: u32,
) -> Result<String, String> {
    let failover = auto.config(peers.replicas.len());
    let name = &peers.this;
    let standing = hosted.standing();
    let voters = peers
        .replicas
        .iter()
        .filter(|replica| &replica.name != name)
        .chain(&auto.witnesses)
        .cloned()
        .collect();
    let mut canvass = Canvass::new(id.to_string(), voters, hosted.key.clone(), hosted.plaintext);
    let elect = ToNode::Elect {
        epoch,
        candidate: name.clone(),
        standing,
    };
    let answers = canvass.round(&elect, ROUND_WITHIN).await;
    if let Some((newer, voter)) = canvass::newer(&answers) {
        hosted.candidacy.saw_epoch(newer);
        return Err(format!("{voter} granted epoch {newer} already"));
    }
    // Its own vote last: a candidate that cannot win leaves its own ballot alone, so the
    // primary it could not hear is not deposed by it.
    let votes = canvass::granted(&answers) + 1;
    if votes < failover.majority() {
        return Err(format!(
            "{votes} of the {} votes needed; {}",
            failover.majority(),
            canvass::refusals(&answers)
        ));
    }
    hosted
        .ballots
        .elect(epoch, name, standing, Some(standing))
        .map_err(|error| format!("its own vote: {error}"))?;
    let lease = ToNode::Lease {
        epoch,
        holder: name.clone(),
        standing,
        length_ms: failover.lease.as_millis() as u64,
    };
    let answers = canvass.round(&lease, ROUND_WITHIN).await;
    hosted
        .ballots
        .lease(epoch, name, standing, failover.lease)
        .map_err(|error| format!("its own lease: {error}"))?;
    let leased = canvass::granted(&answers) + 1;
    if leased < failover.majority() {
        return Err(format!(
            "{votes} votes, but only {leased} of the {} leases needed; {}",
            failover.majority(),
            canvass::refusals(&answers)
        ));
    }
    Ok(format!(
        "{votes} votes and {leased} leases of {} voters",
        failover.voters
    ))
}
