//! mirrorfs: a Linux FUSE filesystem that serves a backing directory (the *origin*) at a
//! mount point. See ARCHITECTURE.md for the layers and the invariants between them.

#![warn(missing_docs)]

pub mod cache;
pub mod cli;
pub mod config;
pub mod control;
mod durable;
pub mod fuse;
mod hooks;
pub mod log;
pub mod manifest;
pub mod metrics;
pub mod origin;
pub mod replication;
pub mod signals;
pub mod state;
pub mod status;
mod throttled;
pub mod tree;
pub mod types;
pub mod verify;
pub mod vfs;
pub mod write;
