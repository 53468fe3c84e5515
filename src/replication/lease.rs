//! The primary's lease (automatic failover, docs/design.md 9.8): renewed with a majority of
//! the voters (the primary's own ballot box, its replica nodes, its witnesses) every
//! `renew_every`; held until `lease_valid_for` after the round that won it began. While it
//! is not held the primary takes no change and acknowledges no fsync. A voter that granted
//! a newer epoch deposes it (the log is fenced, as by a replica in 9.6).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;

use crate::config::{FailoverConfig, Replica};

use super::ballot::{BallotBox, VoteError};
use super::channel::Channel;
use super::key::VolumeKey;
use super::protocol::{ToNode, ToPrimary, decode, encode};
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

/// One voter's answer in a round.
enum Answer {
    Leased,
    Refused(String),
    /// It granted a newer epoch: this primary is deposed.
    Deposed(u32),
}

impl LeaseKeeper {
    /// Runs the first round (so a primary that can hold its lease holds it when this
    /// returns), then renews on a thread until stopped. `standing` is how far the log
    /// reaches; `deposed` is called once, with the newer epoch and the voter that said so.
    pub fn start(
        setup: LeaseSetup,
        standing: impl Fn() -> Standing + Send + 'static,
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
                    runtime.block_on(renew(setup, &held, &stop, &standing, &deposed, first_tx));
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

/// Rounds until stopped or deposed.
async fn renew(
    setup: LeaseSetup,
    held: &Mutex<Held>,
    stop: &AtomicBool,
    standing: &dyn Fn() -> Standing,
    deposed: &dyn Fn(u32, &str),
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
    let mut channels: Vec<Option<Channel<TcpStream>>> = voters.iter().map(|_| None).collect();
    let mut first = Some(first);
    while !stop.load(Ordering::SeqCst) {
        let began = Instant::now();
        let reach = standing();
        let ask = ToNode::Lease {
            epoch,
            holder: name.clone(),
            standing: reach,
            length_ms: length.as_millis() as u64,
        };
        let mut answers: Vec<(String, Answer)> = Vec::new();
        answers.push((
            name.clone(),
            match own.lease(epoch, &name, reach, length) {
                Ok(()) => Answer::Leased,
                Err(VoteError::Refused(Refusal::Stale { granted, .. })) => Answer::Deposed(granted),
                Err(error) => Answer::Refused(error.to_string()),
            },
        ));
        let mut asking = tokio::task::JoinSet::new();
        for (index, voter) in voters.iter().enumerate() {
            let (channel, voter, volume, key) = (
                channels[index].take(),
                voter.clone(),
                volume.clone(),
                key.clone(),
            );
            let ask = ask.clone();
            let within = failover.renew_every();
            asking.spawn(async move {
                let asked = tokio::time::timeout(
                    within,
                    ask_voter(channel, &voter, &volume, &key, plaintext, &ask),
                )
                .await;
                let (channel, answer) = match asked {
                    Ok(asked) => asked,
                    Err(_) => (None, Answer::Refused("no answer in time".to_string())),
                };
                (index, voter.name, channel, answer)
            });
        }
        while let Some(joined) = asking.join_next().await {
            if let Ok((index, voter, channel, answer)) = joined {
                channels[index] = channel;
                answers.push((voter, answer));
            }
        }
        if let Some((voter, newer)) = answers.iter().find_map(|(voter, answer)| match answer {
            Answer::Deposed(newer) => Some((voter.clone(), *newer)),
            _ => None,
        }) {
            tracing::error!(%volume, epoch, newer, %voter, "a voter granted a newer epoch: this primary is deposed");
            deposed(newer, &voter);
            let mut held = held.lock().unwrap_or_else(|p| p.into_inner());
            held.until = None;
            held.why_not = format!("deposed: {voter} granted epoch {newer}");
            break;
        }
        let granted = answers
            .iter()
            .filter(|(_, answer)| matches!(answer, Answer::Leased))
            .count();
        {
            let mut held = held.lock().unwrap_or_else(|p| p.into_inner());
            held.granted = granted;
            if granted >= failover.majority() {
                held.until = Some(began + failover.lease_valid_for());
                held.why_not.clear();
            } else {
                let refusals: Vec<String> = answers
                    .iter()
                    .filter_map(|(voter, answer)| match answer {
                        Answer::Refused(why) => Some(format!("{voter}: {why}")),
                        _ => None,
                    })
                    .collect();
                held.why_not = format!(
                    "{granted} of the {} votes needed; {}",
                    failover.majority(),
                    refusals.join("; ")
                );
                tracing::warn!(%volume, epoch, granted, why = %held.why_not, "the lease was not renewed in this round");
            }
        }
        if let Some(first) = first.take() {
            let _ = first.send(());
        }
        let next = began + failover.renew_every();
        while !stop.load(Ordering::SeqCst) && Instant::now() < next {
            let pause = next.saturating_duration_since(Instant::now());
            tokio::time::sleep(pause.min(Duration::from_millis(50))).await;
        }
    }
}

/// Asks `voter` for the lease `ask` names, on `channel` if it is still open, else on a new
/// one. The channel comes back for the next round unless it failed.
async fn ask_voter(
    channel: Option<Channel<TcpStream>>,
    voter: &Replica,
    volume: &str,
    key: &VolumeKey,
    plaintext: bool,
    ask: &ToNode,
) -> (Option<Channel<TcpStream>>, Answer) {
    let mut channel = match channel {
        Some(channel) => channel,
        None => {
            let connected = async {
                let stream = TcpStream::connect(&voter.address).await?;
                stream.set_nodelay(true)?;
                Channel::connect(stream, volume, key, plaintext)
                    .await
                    .map_err(std::io::Error::other)
            };
            match connected.await {
                Ok(channel) => channel,
                Err(error) => return (None, Answer::Refused(error.to_string())),
            }
        }
    };
    if let Err(error) = channel.send(&encode(ask)).await {
        return (None, Answer::Refused(error.to_string()));
    }
    let answer = match channel.receive().await {
        Ok(bytes) => bytes,
        Err(error) => return (None, Answer::Refused(error.to_string())),
    };
    match decode::<ToPrimary>(&answer) {
        Ok(ToPrimary::Leased) => (Some(channel), Answer::Leased),
        Ok(ToPrimary::Fenced { epoch }) => (None, Answer::Deposed(epoch)),
        Ok(ToPrimary::Refuse { reason }) => (None, Answer::Refused(reason)),
        Ok(other) => (
            None,
            Answer::Refused(format!("unexpected answer {other:?}")),
        ),
        Err(error) => (None, Answer::Refused(error.to_string())),
    }
}
