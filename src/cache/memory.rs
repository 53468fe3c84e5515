//! The memory tier: blocks of file data under a byte budget, with 2Q admission so that
//! one pass over a lot of data (a scan, a once-only random read) cannot flush the blocks
//! that are read again and again.
//!
//! 2Q (Johnson and Shasha, 1994), simplified as in PostgreSQL's and Linux's
//! active/inactive lists: a block read for the first time enters a small FIFO (`probation`,
//! a quarter of the budget). If it is read again while there, it is simply served (a
//! reader taking one block in several requests is not reuse); when it falls out, only its
//! key is remembered (`ghosts`, up to twice as many keys as the budget holds blocks). A block read again after falling out,
//! or one the ghost list remembers at its first read, has shown reuse and goes to the main
//! LRU (`protected`). A scan therefore only ever cycles through probation and the ghost
//! list, and never evicts a protected block. `Admission::Always` is a plain LRU.

use std::hash::Hash;
use std::num::NonZeroUsize;
use std::sync::Arc;

use lru::LruCache;

/// Which blocks may take room from others.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// 2Q: only blocks read twice reach the main list.
    ScanResistant,
    /// Every block read enters the main list (plain LRU).
    Always,
}

/// Share of the budget for blocks seen once, in quarters.
const PROBATION_QUARTERS: u64 = 1;

/// Remembered keys of evicted probation blocks, per block the whole budget holds: a block
/// re-read within twice the cache's reach counts as reused. Keys only, so this is cheap.
const GHOSTS_PER_SLOT: usize = 2;

/// A byte-budgeted block cache keyed by `K`.
#[derive(Debug)]
pub struct MemoryTier<K: Hash + Eq + Clone> {
    budget: u64,
    admission: Admission,
    protected: LruCache<K, Arc<[u8]>>,
    protected_bytes: u64,
    probation: LruCache<K, Arc<[u8]>>,
    probation_bytes: u64,
    ghosts: LruCache<K, ()>,
    /// Counters since creation.
    pub stats: MemoryStats,
}

/// What the memory tier did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Reads answered from memory.
    pub hits: u64,
    /// Reads that had to go further.
    pub misses: u64,
    /// Blocks dropped to stay within the budget.
    pub evictions: u64,
    /// Blocks that went to the main list because they were read again.
    pub promotions: u64,
}

impl<K: Hash + Eq + Clone> MemoryTier<K> {
    /// A tier holding at most `budget` bytes of blocks of up to `block_size` bytes.
    pub fn new(budget: u64, block_size: u64, admission: Admission) -> MemoryTier<K> {
        let slots = (budget / block_size.max(1)).max(1) as usize;
        let ghost_slots =
            NonZeroUsize::new((slots * GHOSTS_PER_SLOT).max(1)).expect("at least one");
        MemoryTier {
            budget,
            admission,
            // Bounded by bytes (see `shrink`), not by entries.
            protected: LruCache::unbounded(),
            protected_bytes: 0,
            probation: LruCache::unbounded(),
            probation_bytes: 0,
            ghosts: LruCache::new(ghost_slots),
            stats: MemoryStats::default(),
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.protected_bytes + self.probation_bytes
    }

    /// The block under `key`, if held. A second read of a probation block promotes it
    /// under `Always`; under 2Q it stays put until it falls out (see the module notes).
    pub fn get(&mut self, key: &K) -> Option<Arc<[u8]>> {
        if let Some(block) = self.protected.get(key) {
            self.stats.hits += 1;
            return Some(Arc::clone(block));
        }
        if let Some(block) = self.probation.peek(key) {
            self.stats.hits += 1;
            return Some(Arc::clone(block));
        }
        self.stats.misses += 1;
        None
    }

    /// Offers a block just read from a lower tier. Returns whether it was kept.
    pub fn insert(&mut self, key: K, block: Arc<[u8]>) -> bool {
        let len = block.len() as u64;
        if len > self.budget {
            return false;
        }
        self.remove(&key);
        let reused = self.ghosts.pop(&key).is_some();
        if self.admission == Admission::Always || reused {
            if reused {
                self.stats.promotions += 1;
            }
            self.protected_bytes += len;
            self.protected.put(key, block);
        } else {
            self.probation_bytes += len;
            self.probation.put(key, block);
        }
        self.shrink();
        true
    }

    /// Drops the block under `key` (its file changed).
    pub fn remove(&mut self, key: &K) {
        if let Some(block) = self.protected.pop(key) {
            self.protected_bytes -= block.len() as u64;
        }
        if let Some(block) = self.probation.pop(key) {
            self.probation_bytes -= block.len() as u64;
        }
    }

    /// Drops every block whose key `doomed` says so (a file truncated or replaced).
    pub fn remove_where(&mut self, mut doomed: impl FnMut(&K) -> bool) {
        let keys: Vec<K> = self
            .protected
            .iter()
            .chain(self.probation.iter())
            .map(|(key, _)| key)
            .filter(|key| doomed(key))
            .cloned()
            .collect();
        for key in keys {
            self.remove(&key);
        }
    }

    /// Evicts until within budget: probation first while it is over its share, so that
    /// blocks seen once make room for each other, then the least recently used.
    fn shrink(&mut self) {
        let probation_share = self.budget * PROBATION_QUARTERS / 4;
        while self.bytes() > self.budget {
            let from_probation =
                self.probation_bytes > probation_share || self.protected.is_empty();
            if from_probation {
                if let Some((key, block)) = self.probation.pop_lru() {
                    self.probation_bytes -= block.len() as u64;
                    if self.admission == Admission::ScanResistant {
                        self.ghosts.put(key, ());
                    }
                    self.stats.evictions += 1;
                    continue;
                }
            }
            match self.protected.pop_lru() {
                Some((_, block)) => {
                    self.protected_bytes -= block.len() as u64;
                    self.stats.evictions += 1;
                }
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLOCK: u64 = 4;

    fn block(byte: u8) -> Arc<[u8]> {
        Arc::from(vec![byte; BLOCK as usize])
    }

    /// Reads `key` through the tier, filling it on a miss as a reader would.
    fn read(tier: &mut MemoryTier<u64>, key: u64) -> bool {
        if tier.get(&key).is_some() {
            return true;
        }
        tier.insert(key, block(key as u8));
        false
    }

    #[test]
    fn the_budget_holds() {
        let mut tier = MemoryTier::new(10 * BLOCK, BLOCK, Admission::ScanResistant);
        for key in 0..1000 {
            read(&mut tier, key % 37);
            read(&mut tier, key % 7);
            assert!(tier.bytes() <= 10 * BLOCK, "{} bytes", tier.bytes());
        }
        assert!(tier.stats.evictions > 0);
        assert!(
            !tier.insert(999, Arc::from(vec![0u8; 100])),
            "larger than the budget"
        );
    }

    /// A hot set re-read between the blocks of a long once-only scan keeps its hits with
    /// 2Q, and loses them with plain LRU.
    fn hot_hit_ratio(admission: Admission) -> f64 {
        let mut tier = MemoryTier::new(20 * BLOCK, BLOCK, admission);
        let hot: Vec<u64> = (0..10).collect();
        // Warm up: the hot set is read twice, so 2Q has seen its reuse.
        for _ in 0..3 {
            for key in &hot {
                read(&mut tier, *key);
            }
        }
        let (mut hits, mut reads) = (0, 0);
        for scan in 0..2000u64 {
            read(&mut tier, 1_000_000 + scan);
            // More scan blocks between two reads of the hot set than the whole budget.
            if scan % 30 == 0 {
                for key in &hot {
                    reads += 1;
                    hits += read(&mut tier, *key) as u64;
                }
            }
        }
        hits as f64 / reads as f64
    }

    #[test]
    fn a_scan_does_not_flush_the_hot_set() {
        let resistant = hot_hit_ratio(Admission::ScanResistant);
        let plain = hot_hit_ratio(Admission::Always);
        assert!(resistant > 0.95, "2Q hot hit ratio {resistant}");
        assert!(plain < 0.1, "plain LRU hot hit ratio {plain}");
    }

    #[test]
    fn a_block_read_again_after_falling_out_is_promoted() {
        let mut tier = MemoryTier::new(8 * BLOCK, BLOCK, Admission::ScanResistant);
        read(&mut tier, 1);
        for key in 100..110 {
            read(&mut tier, key);
        }
        assert!(tier.get(&1).is_none(), "fell out of probation");
        assert!(!read(&mut tier, 1));
        assert_eq!(tier.stats.promotions, 1);
        for key in 200..300 {
            read(&mut tier, key);
        }
        assert!(tier.get(&1).is_some(), "a protected block survives a scan");
    }

    #[test]
    fn removing_frees_bytes() {
        let mut tier = MemoryTier::new(8 * BLOCK, BLOCK, Admission::Always);
        for key in 0..4 {
            read(&mut tier, key);
        }
        tier.remove(&0);
        assert_eq!(tier.bytes(), 3 * BLOCK);
        tier.remove_where(|key| *key >= 2);
        assert_eq!(tier.bytes(), BLOCK);
        assert!(tier.get(&1).is_some() && tier.get(&2).is_none());
    }
}
