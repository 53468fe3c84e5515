//! A copy's manifest (the primary's origin, or a replica's tree): its metadata walked in
//! one canonical order, and per file the blake3 hashes of its content in fixed-size
//! chunks, stored and kept current as changes are made; and two manifests merged into
//! their differences (`compare.rs`, pure logic). The quick check compares
//! manifests without reading content; the stored hashes are the evidence the content
//! check tells rot from change by.

mod chunks;
mod compare;
mod content;
mod entry;
mod fixes;
mod fresh;
mod hasher;
mod saved;
mod store;
mod tree;

pub use chunks::{CHUNK_BYTES, ChunkHash, FileHashes};
pub use compare::{Aspect, Compare, Difference};
pub use fixes::{
    FixError, Seen, content_ops, metadata_ops, parent_of, removes, set_times, stat_at,
};
pub use fresh::{Files, hash as hash_afresh};
pub use hasher::Hashing;
pub use saved::{
    JOURNAL_MAGIC as STORE_JOURNAL_MAGIC, JOURNAL_NAME as STORE_JOURNAL_NAME, MAGIC as STORE_MAGIC,
    SNAPSHOT_NAME as STORE_FILE_NAME,
};
pub use store::{Changing, HashStore, unix_now};
pub use tree::{Entry, Kind, Xattr, find, path_order, subtree, walk as list};
