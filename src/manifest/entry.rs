//! One file's entry in a copy's stored hashes: what is stored for it, and the change to it
//! not yet in them. Shared by the store (`store.rs`) and its files (`saved.rs`).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::log::LogPath;
use crate::types::Stamp;

use super::chunks::{ChunkHash, FileHashes};

/// One file's stored hashes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stored {
    /// The content's chunk hashes.
    pub hashes: FileHashes,
    /// Their root (kept, so a quick check computes none).
    pub root: ChunkHash,
    /// The file's stamp when they were taken.
    pub stamp: Stamp,
    /// When a content check last read the file and found it matching (Unix seconds; 0 for
    /// never).
    pub verified: u64,
}

/// A change to a file its stored hashes do not reflect yet.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Pending {
    /// The file's newest name when it was marked, which the hasher opens it by.
    pub path: Option<LogPath>,
    /// Chunks written.
    pub chunks: BTreeSet<u64>,
    /// The content may have changed anywhere.
    pub whole: bool,
    /// The size was set (the chunks a size change makes or cuts are found by the size).
    pub resized: bool,
    /// The copy must hold every record below this offset before the file is rehashed
    /// (write-behind brings content in later than its record).
    pub after: u64,
    /// Marks whose maker did not say what the file's stamp was just before its change
    /// ([`super::HashStore::seen_before`]): for these, the hasher trusts chunks no mark names only
    /// when size and mtime are still those stored.
    pub unchecked: u32,
}
