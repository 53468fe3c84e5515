//! `mirrorfs verify` (issue 6, under construction): checking that the primary and its
//! replicas hold the same volume, and that neither has rotted. So far: per-file chunk
//! hashes and the byte ranges two copies differ in (`chunks.rs`).

pub mod chunks;
