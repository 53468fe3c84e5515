//! What follows the journal's log off this machine (the replica senders): told of every
//! append, and waited for by an fsync when the volume's config says copies must hold what
//! fsync acknowledges. The journal knows it only by this hook, so nothing above `write`
//! knows replication exists.

use std::fmt::Debug;

/// Why the followers could not hold what an fsync asked of them.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    /// The caller has a signal to take: the wait ended as a local one would.
    #[error("interrupted while waiting for replicas")]
    Interrupted,
    /// Too few hold it, or the daemon is stopping; says which.
    #[error("{0}")]
    Unheld(String),
}

/// A follower of the log.
pub trait Follower: Debug + Send + Sync {
    /// Records were appended.
    fn appended(&self);

    /// Waits until the records below `end` are held as the volume requires. `interrupted`
    /// says whether the caller has a signal pending, for a wait that may be long.
    fn hold(&self, end: u64, interrupted: &dyn Fn() -> bool) -> Result<(), FollowError>;

    /// The daemon is stopping: waits give up, now and later.
    fn stopping(&self);

    /// Why no change may be taken now, if none may (a primary that does not hold its
    /// lease). Asked before every change.
    fn refuses(&self) -> Option<String> {
        None
    }
}
