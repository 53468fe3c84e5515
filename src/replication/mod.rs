//! Replication: shipping the change log to replica nodes, with Kafka's semantics
//! (offsets, acks, the in-sync set, the high watermark, epochs), and snapshots for copies
//! the log alone cannot bring up to date.

pub mod channel;
pub mod copy;
mod hosted;
mod inspect;
pub mod isr;
pub mod key;
pub mod node;
pub mod primary;
pub mod protocol;
mod session;
pub mod snapshot;
mod stream;
