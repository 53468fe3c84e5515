//! A vote session (automatic failover, docs/design.md 9.8): a candidate asks a replica node
//! or a witness for its vote, or a primary for its lease and then renews it, over one
//! connection, until it closes or falls silent.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use super::ballot::{BallotBox, VoteError};
use super::channel::{Channel, ChannelError};
use super::protocol::{ToNode, ToPrimary, decode};
use super::session::{Limits, SessionError, channel_send, refuse};
use super::vote::{Refusal, Standing};

/// What a voter answers from: its ballot box, and how far its own copy reaches (a
/// witness has none).
pub(super) struct Voting {
    /// The volume's votes.
    pub ballots: Arc<BallotBox>,
    /// This voter's copy's standing, read when a candidate asks.
    pub own: Option<Box<dyn Fn() -> Standing + Send + Sync>>,
}

/// Serves a vote session whose `first` message was decoded already.
pub(super) async fn serve(
    voting: Voting,
    volume: &str,
    mut channel: Channel<TcpStream>,
    first: ToNode,
    limits: &Limits,
) -> Result<(), SessionError> {
    let voting = Arc::new(voting);
    let mut message = first;
    loop {
        let answer = match answer(&voting, volume, message).await? {
            Ok(answer) => answer,
            Err(reason) => return Err(refuse(&mut channel, reason).await),
        };
        channel_send(&mut channel, &answer).await?;
        let received = tokio::time::timeout(limits.idle, channel.receive())
            .await
            .map_err(|_| SessionError::Silent("in a vote session", limits.idle))?;
        let bytes = match received {
            Ok(bytes) => bytes,
            Err(ChannelError::Io(error)) if error.kind() == io::ErrorKind::UnexpectedEof => {
                return Ok(());
            }
            Err(error) => return Err(error.into()),
        };
        message = match decode::<ToNode>(&bytes) {
            Ok(message) => message,
            Err(error) => return Err(refuse(&mut channel, error.to_string()).await),
        };
    }
}

/// The answer to one message: `Voted`, `Leased` or a `Refuse` naming the voter's reason;
/// `Err` for a message that has no place in a vote session.
async fn answer(
    voting: &Arc<Voting>,
    volume: &str,
    message: ToNode,
) -> Result<Result<ToPrimary, String>, SessionError> {
    let voting = Arc::clone(voting);
    let volume = volume.to_string();
    tokio::task::spawn_blocking(move || match message {
        ToNode::Elect {
            epoch,
            candidate,
            standing,
        } => {
            let own = voting.own.as_ref().map(|own| own());
            Ok(
                match voting.ballots.elect(epoch, &candidate, standing, own) {
                    Ok(()) => {
                        tracing::warn!(%volume, epoch, %candidate, ?standing, "voted for a new primary");
                        ToPrimary::Voted
                    }
                    // The candidate learns the newest epoch, to stand at the next one.
                    Err(VoteError::Refused(Refusal::Stale { granted, .. })) => {
                        ToPrimary::Fenced { epoch: granted }
                    }
                    Err(error) => ToPrimary::Refuse {
                        reason: error.to_string(),
                    },
                },
            )
        }
        ToNode::Lease {
            epoch,
            holder,
            standing,
            length_ms,
        } => {
            let length = Duration::from_millis(length_ms);
            Ok(
                match voting.ballots.lease(epoch, &holder, standing, length) {
                    Ok(()) => ToPrimary::Leased,
                    // A newer epoch was granted: the asker is deposed, as a replica tells
                    // an older primary (9.6).
                    Err(VoteError::Refused(Refusal::Stale { granted, .. })) => {
                        ToPrimary::Fenced { epoch: granted }
                    }
                    Err(error) => ToPrimary::Refuse {
                        reason: error.to_string(),
                    },
                },
            )
        }
        _ => Err("only Elect and Lease belong in a vote session".to_string()),
    })
    .await
    .map_err(|error| ChannelError::Io(io::Error::other(error)).into())
}
