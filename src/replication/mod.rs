//! Replication (issue 5, under construction): the volume key so far.

pub mod channel;
pub mod key;
