//! Asking the voters (automatic failover, docs/design.md 9.8): one question (`Elect` or
//! `Lease`) put to every other voter at once, each answer awaited for a bounded time. A
//! voter's connection is kept for the next round while it answers.

use std::time::Duration;

use tokio::net::TcpStream;

use crate::config::Replica;

use super::channel::Channel;
use super::key::VolumeKey;
use super::protocol::{ToNode, ToPrimary, decode, encode};

/// One voter's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Answer {
    /// It voted, or granted the lease.
    Granted,
    /// It said no, or could not be asked, and why.
    Refused(String),
    /// It granted a newer epoch than the one asked for.
    Newer(u32),
}

/// The voters one member asks, and its open connections to them.
pub(super) struct Canvass {
    volume: String,
    voters: Vec<Replica>,
    key: VolumeKey,
    plaintext: bool,
    channels: Vec<Option<Channel<TcpStream>>>,
}

impl Canvass {
    /// A canvass of `voters` for `volume`.
    pub(super) fn new(
        volume: String,
        voters: Vec<Replica>,
        key: VolumeKey,
        plaintext: bool,
    ) -> Canvass {
        let channels = voters.iter().map(|_| None).collect();
        Canvass {
            volume,
            voters,
            key,
            plaintext,
            channels,
        }
    }

    /// Puts `ask` to every voter at once: each answer, by voter name, in the order they
    /// came; a voter that did not answer within `within` is refused.
    pub(super) async fn round(&mut self, ask: &ToNode, within: Duration) -> Vec<(String, Answer)> {
        let mut asking = tokio::task::JoinSet::new();
        for (index, voter) in self.voters.iter().enumerate() {
            let (channel, voter, volume, key, plaintext) = (
                self.channels[index].take(),
                voter.clone(),
                self.volume.clone(),
                self.key.clone(),
                self.plaintext,
            );
            let ask = ask.clone();
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
        let mut answers = Vec::new();
        while let Some(joined) = asking.join_next().await {
            if let Ok((index, voter, channel, answer)) = joined {
                self.channels[index] = channel;
                answers.push((voter, answer));
            }
        }
        answers
    }
}

/// Asks `voter` the question `ask`, on `channel` if it is still open, else on a new one.
/// The channel comes back for the next round unless it failed.
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
        Ok(ToPrimary::Leased | ToPrimary::Voted) => (Some(channel), Answer::Granted),
        Ok(ToPrimary::Fenced { epoch }) => (None, Answer::Newer(epoch)),
        Ok(ToPrimary::Refuse { reason }) => (None, Answer::Refused(reason)),
        Ok(other) => (
            None,
            Answer::Refused(format!("unexpected answer {other:?}")),
        ),
        Err(error) => (None, Answer::Refused(error.to_string())),
    }
}

/// The answers that granted, counted.
pub(super) fn granted(answers: &[(String, Answer)]) -> usize {
    answers
        .iter()
        .filter(|(_, answer)| *answer == Answer::Granted)
        .count()
}

/// The newest epoch a voter said it granted past the one asked for, and that voter.
pub(super) fn newer(answers: &[(String, Answer)]) -> Option<(u32, &str)> {
    answers
        .iter()
        .filter_map(|(voter, answer)| match answer {
            Answer::Newer(epoch) => Some((*epoch, voter.as_str())),
            _ => None,
        })
        .max()
}

/// The refusals, as one line: `voter: why; ...`.
pub(super) fn refusals(answers: &[(String, Answer)]) -> String {
    answers
        .iter()
        .filter_map(|(voter, answer)| match answer {
            Answer::Refused(why) => Some(format!("{voter}: {why}")),
            Answer::Newer(epoch) => Some(format!("{voter}: granted epoch {epoch} already")),
            Answer::Granted => None,
        })
        .collect::<Vec<_>>()
        .join("; ")
}
