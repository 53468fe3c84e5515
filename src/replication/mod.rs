//! Replication (issue 5, under construction): shipping the change log to replica nodes.
//! So far: the volume key, the authenticated and encrypted channel, the messages, and a
//! replica node's copy of a volume. The node server and the primary's senders are next.

pub mod channel;
pub mod copy;
pub mod isr;
pub mod key;
pub mod node;
pub mod primary;
pub mod protocol;
