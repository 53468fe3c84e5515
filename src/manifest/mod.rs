//! A copy's manifest (the primary's origin, or a replica's tree): its metadata walked in
//! one canonical order, and per file the blake3 hashes of its content in fixed-size
//! chunks, stored and kept current as changes are made. The quick check compares
//! manifests without reading content; the stored hashes are the evidence the content
//! check tells rot from change by.

pub mod chunks;
pub mod content;
pub mod fresh;
pub mod hasher;
pub mod store;
pub mod tree;
