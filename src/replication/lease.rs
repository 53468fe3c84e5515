//! The primary's lease (automatic failover, docs/design.md 9.8): renewed with a majority of
//! the voters (the primary's own ballot box, its replica nodes, its witnesses) every
//! `renew_every`; held until `lease_valid_for` after the round that won it began. While it
//! is not held the primary takes no change and acknowledges no fsync. A voter that granted
//! a newer epoch deposes it (the log is fenced, as by a replica in 9.6).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::config::{FailoverConfig, Replica};
use serde::{Deserialize, Serialize};

use super::ballot::{BallotBox, VoteError};
use super::canvass::{self, Answer, Canvass};
use super::key::VolumeKey;
use super::protocol::ToNode;
use super::vote::{Refusal, Standing};

/// What a lease keeper needs.
pub struct LeaseSetup {
    /// The volume.
    pub volume: String,
    /// This primary's member name.
    pub name: String,
    /// Its epoch.
    pub epoch: u32,
    /// The other voters: replica nodes and witnesses.
    pub voters: Vec<Replica>,
    /// The volume's key.
    pub key: VolumeKey,
    /// Connections may be unencrypted.
    pub plaintext: bool,
    /// The primary's own vote.
    pub own: BallotBox,
    /// Timings and the majority.
    pub failover: FailoverConfig,
}

/// How the lease stands.
#[derive(Debug, Default)]
struct Held {
    /// Until when (by this machine's clock) changes may be taken.
    until: Option<Instant>,
    /// Why the last round did not win, if it did not.
    why_not: String,
    /// Voters that granted in the last round.
    granted: usize,
}

/// The lease as status shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LeaseStatus {
    /// This primary's name among the voters.
    pub name: String,
    /// How long it holds the lease from now, in milliseconds; none when it does not.
    pub held_for_ms: Option<u64>,
    /// Voters that granted its last round, itself included.
    pub granted: usize,
    /// Votes a round needs.
    pub majority: usize,
    /// Every voter: the primary, its replicas, its witnesses.
    pub voters: usize,
    /// Why the last round did not win, if it did not.
    pub why_not: Option<String>,
}

/// Renews the primary's lease on a thread of its own.
#[derive(Debug)]
pub struct LeaseKeeper {
    name: String,
    majority: usize,
    voters: usize,
    held: Arc<Mutex<Held>>,
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl LeaseKeeper {
    /// Runs the first round (so a primary that can hold its lease holds it when this
    /// returns), then renews on a thread until stopped. `standing` is how far the log
    /// reaches; `deposed` is called once, with the newer epoch and the voter that said so.
    pub fn start(
        setup: LeaseSetup,
        standing: impl Fn() -> Standing + Send + 'static,
        fenced: impl Fn() -> bool + Send + 'static,
        deposed: impl Fn(u32, &str) + Send + 'static,
    ) -> std::io::Result<LeaseKeeper> {
        let held = Arc::new(Mutex::new(Held::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (name, majority, voters) = (
            setup.name.clone(),
            setup.failover.majority(),
            setup.failover.voters,
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (first_tx, first_rx) = std::sync::mpsc::channel();
        let thread = {
            let (held, stop) = (Arc::clone(&held), Arc::clone(&stop));
            std::thread::Builder::new()
                .name("lease".to_string())
                .spawn(move || {
                    let watching = Watching {
                        standing: &standing,
                        fenced: &fenced,
                        deposed: &deposed,
                    };
                    runtime.block_on(renew(setup, &held, &stop, watching, first_tx));
                })?
        };
        // The first round's end (or the thread's).
        let _ = first_rx.recv();
        Ok(LeaseKeeper {
            name,
            majority,
            voters,
            held,
            stop,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Why changes must not be taken now, if they must not: the lease is not held.
    pub fn why_not(&self) -> Option<String> {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        match held.until {
            Some(until) if Instant::now() < until => None,
            _ => Some(format!(
                "this primary does not hold its lease ({})",
                held.why_not
            )),
        }
    }

    /// How the lease stands, for status.
    pub fn status(&self) -> LeaseStatus {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let left = held
            .until
            .and_then(|until| until.checked_duration_since(Instant::now()));
        LeaseStatus {
            name: self.name.clone(),
            held_for_ms: left.map(|left| left.as_millis() as u64),
            granted: held.granted,
            majority: self.majority,
            voters: self.voters,
            why_not: (!held.why_not.is_empty()).then(|| held.why_not.clone()),
        }
    }

    /// Stops renewing (the lease runs out on its own).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

/// What the keeper watches of the primary: how far its log reaches, whether it is fenced,
/// and whom to tell when a voter deposes it.
struct Watching<'a> {
    standing: &'a dyn Fn() -> Standing,
    fenced: &'a dyn Fn() -> bool,
    deposed: &'a dyn Fn(u32, &str),
}

/// Rounds until stopped, fenced or deposed.
async fn renew(
    setup: LeaseSetup,
    held: &Mutex<Held>,
    stop: &AtomicBool,
    watching: Watching<'_>,
    first: std::sync::mpsc::Sender<()>,
) {
    let LeaseSetup {
        volume,
        name,
        epoch,
        voters,
        key,
        plaintext,
        own,
        failover,
    } = setup;
    let length = failover.lease;
    let mut canvass = Canvass::new(volume.clone(), voters, key, plaintext);
    let mut first = Some(first);
    let Watching {
        standing,
        fenced,
        deposed,
    } = watching;
    while !stop.load(Ordering::SeqCst) {
        // Fenced by a replica (a promotion by hand): renewing would only keep the voters
        // from electing another.
        if fenced() {
            let mut held = held.lock().unwrap_or_else(|p| p.into_inner());
            held.until = None;
            held.why_not = "fenced: a replica has accepted a newer epoch".to_string();
            break;
        }
        let (began, began_wall) = (Instant::now(), SystemTime::now());
        let reach = standing();
        let ask = ToNode::Lease {
            epoch,
            holder: name.clone(),
            standing: reach,
            length_ms: length.as_millis() as u64,
        };
        let mut answers = canvass.round(&ask, failover.renew_every()).await;
        let own_answer = match own.lease(epoch, &name, reach, length) {
            Ok(()) => Answer::Granted,
            Err(VoteError::Refused(Refusal::Stale { granted, .. })) => Answer::Newer(granted),
            Err(error) => Answer::Refused(error.to_string()),
        };
        let others_granted = canvass::granted(&answers);
        answers.push((name.clone(), own_answer));
        if let Some((newer, voter)) = canvass::newer(&answers) {
            tracing::error!(%volume, epoch, newer, %voter, "a voter granted a newer epoch: this primary is deposed");
            deposed(newer, voter);
            let mut held = held.lock().unwrap_or_else(|p| p.into_inner());
            held.until = None;
            held.why_not = format!("deposed: {voter} granted epoch {newer}");
            break;
        }
        let granted = canvass::granted(&answers);
        let mut next = began + failover.renew_every();
        {
            let mut held = held.lock().unwrap_or_else(|p| p.into_inner());
            held.granted = granted;
            if granted >= failover.majority() {
                held.until = Some(began + failover.lease_valid_for());
                held.why_not.clear();
                // Each lease held, by the wall clock: what a test running every process on
                // one machine checks for overlaps between primaries.
                let unix_ms = |at: SystemTime| {
                    at.duration_since(SystemTime::UNIX_EPOCH)
                        .map_or(0, |since| since.as_millis() as u64)
                };
                tracing::debug!(
                    %volume,
                    epoch,
                    %name,
                    from_ms = unix_ms(began_wall),
                    until_ms = unix_ms(began_wall + failover.lease_valid_for()),
                    "lease held"
                );
            } else {
                held.why_not = format!(
                    "{granted} of the {} votes needed; {}",
                    failover.majority(),
                    canvass::refusals(&answers)
                );
                tracing::warn!(%volume, epoch, granted, why = %held.why_not, "the lease was not renewed in this round");
                // Out of its lease and short of a majority, the primary stops renewing
                // with the other voters that granted for a whole lease, so that they are
                // free to elect another: renewing would keep them from ever voting
                // (a primary cut from its replicas but not from the witness).
                if others_granted > 0 && held.until.is_none_or(|until| until <= Instant::now()) {
                    held.until = None;
                    let aside = length.mul_f64(failover.clock_rate_bound);
                    held.why_not = format!(
                        "{}; stepped aside for {aside:?} so that the voters may elect another",
                        held.why_not
                    );
                    next = Instant::now() + aside;
                }
            }
        }
        if let Some(first) = first.take() {
            let _ = first.send(());
        }
        while !stop.load(Ordering::SeqCst) && Instant::now() < next {
            let pause = next.saturating_duration_since(Instant::now());
            tokio::time::sleep(pause.min(Duration::from_millis(50))).await;
        }
    }
}
