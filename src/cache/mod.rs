//! The read cache (issue 4, under construction): tiers of file data between `vfs` and the
//! origin. So far only the memory tier's admission and eviction exist, as tested pure
//! logic; nothing reads through it yet.

pub mod memory;
