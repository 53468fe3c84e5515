//! `mirrorfs verify` (issue 6, under construction): checking that the primary and its
//! replicas hold the same volume, and that neither has rotted.

pub mod chunks;
pub mod compare;
pub mod hasher;
pub mod store;
pub mod tree;
