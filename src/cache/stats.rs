//! What the read cache did since the mount: counters kept by the read path, and the figures
//! for `mirrorfs status`.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// Counters bumped without a lock by readers and prefetch workers.
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) memory_hits: AtomicU64,
    pub(super) memory_misses: AtomicU64,
    pub(super) disk_hits: AtomicU64,
    pub(super) disk_misses: AtomicU64,
    pub(super) disk_corrupt: AtomicU64,
    pub(super) disk_written_bytes: AtomicU64,
    pub(super) origin_reads: AtomicU64,
    pub(super) origin_bytes: AtomicU64,
    pub(super) prefetched_bytes: AtomicU64,
    pub(super) prefetch_used_bytes: AtomicU64,
    pub(super) prefetch_unused_bytes: AtomicU64,
    pub(super) invalidations: AtomicU64,
    pub(super) refreshes: AtomicU64,
}

/// Adds `amount` to `counter`.
pub(super) fn bump(counter: &AtomicU64, amount: u64) {
    counter.fetch_add(amount, Ordering::Relaxed);
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// The cache as `mirrorfs status` shows it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CacheStats {
    /// The memory tier.
    pub memory: TierStats,
    /// The disk tier, if there is one.
    pub disk: Option<TierStats>,
    /// Reads the cache made of the origin, for readers and for read-ahead.
    pub origin_reads: u64,
    /// Bytes those reads returned.
    pub origin_bytes: u64,
    /// Bytes read ahead of readers.
    pub prefetched_bytes: u64,
    /// Of those, bytes in blocks a reader then used.
    pub prefetch_used_bytes: u64,
    /// Bytes in read-ahead blocks dropped before any reader used them.
    pub prefetch_unused_bytes: u64,
    /// Files whose cached blocks were dropped because the origin changed under them.
    pub invalidations: u64,
    /// Hot files checked against the origin in the background (refresh-ahead).
    pub refreshes: u64,
    /// Blocks read back from the disk tier that failed their hash (dropped, never served).
    pub corrupt_blocks: u64,
    /// Bytes written to the disk tier.
    pub disk_written_bytes: u64,
}

/// One tier's use and effect.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TierStats {
    /// Bytes held now.
    pub bytes: u64,
    /// The budget.
    pub budget: u64,
    /// Blocks held now.
    pub blocks: u64,
    /// Reads answered here.
    pub hits: u64,
    /// Reads that had to go further down.
    pub misses: u64,
    /// Blocks dropped to stay within the budget.
    pub evictions: u64,
    /// Blocks moved to the protected list because they were read again.
    pub promotions: u64,
}

impl Counters {
    /// The counters' share of the figures; the tiers fill in their own parts.
    pub(super) fn collect(&self, memory: TierStats, disk: Option<TierStats>) -> CacheStats {
        let memory = TierStats {
            hits: load(&self.memory_hits),
            misses: load(&self.memory_misses),
            ..memory
        };
        let disk = disk.map(|disk| TierStats {
            hits: load(&self.disk_hits),
            misses: load(&self.disk_misses),
            ..disk
        });
        CacheStats {
            memory,
            disk,
            origin_reads: load(&self.origin_reads),
            origin_bytes: load(&self.origin_bytes),
            prefetched_bytes: load(&self.prefetched_bytes),
            prefetch_used_bytes: load(&self.prefetch_used_bytes),
            prefetch_unused_bytes: load(&self.prefetch_unused_bytes),
            invalidations: load(&self.invalidations),
            refreshes: load(&self.refreshes),
            corrupt_blocks: load(&self.disk_corrupt),
            disk_written_bytes: load(&self.disk_written_bytes),
        }
    }
}
