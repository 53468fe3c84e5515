//! What every session on a replica node shares: why one ends, how long it may take, and
//! how it answers or refuses the primary. The streaming session (`stream.rs`) and the
//! verify session (`inspect.rs`) both stand on it; `node.rs` opens the sessions and hands
//! each to one of them.

use std::time::Duration;

use tokio::net::TcpStream;

use super::channel::{Channel, ChannelError};
use super::protocol::Stuck;
use super::protocol::{ProtocolError, ToPrimary, encode};

/// Why one connection ended.
#[derive(Debug, thiserror::Error)]
pub(super) enum SessionError {
    #[error(transparent)]
    Channel(#[from] ChannelError),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("refused: {0}")]
    Refused(String),
    #[error("a newer connection for the volume took over")]
    Superseded,
    /// The peer said nothing for too long: a dead or half-open connection.
    #[error("nothing heard for {1:?} while {0}")]
    Silent(&'static str, Duration),
    /// A primary of an older epoch than the copy has accepted: it is fenced.
    #[error(
        "the primary's epoch {epoch} is older than epoch {seen}, accepted already: it is fenced"
    )]
    Fenced { epoch: u32, seen: u32 },
    /// The copy cannot apply a record (logged by [`Hosted::report_stuck`]).
    #[error("the copy is stuck on record {}", .0.offset)]
    Stuck(Stuck),
}

/// How long a connection may take to open its session, and stay silent in one.
#[derive(Debug)]
pub(super) struct Limits {
    /// How long opening a session may take.
    pub(super) handshake: Duration,
    /// How long a session may stay silent.
    pub(super) idle: Duration,
}

/// Tells the primary why the node will not go on, and ends the session.
pub(super) async fn refuse(channel: &mut Channel<TcpStream>, reason: String) -> SessionError {
    if let Err(error) = channel_send(
        channel,
        &ToPrimary::Refuse {
            reason: reason.clone(),
        },
    )
    .await
    {
        return error.into();
    }
    SessionError::Refused(reason)
}

/// Sends `message` to the primary.
pub(super) async fn channel_send(
    channel: &mut Channel<TcpStream>,
    message: &ToPrimary,
) -> Result<(), ChannelError> {
    channel.send(&encode(message)).await
}
