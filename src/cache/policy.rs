//! The admission and eviction policy both tiers share: entries under a byte budget, with
//! 2Q admission so that one pass over a lot of data (a scan, once-only random reads)
//! cannot flush the entries that are read again and again.
//!
//! 2Q (Johnson and Shasha, 1994), simplified as in PostgreSQL's and Linux's
//! active/inactive lists: an entry seen for the first time enters a small FIFO
//! (`probation`, a quarter of the budget). Reading it again while there does not promote it
//! (a reader taking one block in several requests is not reuse); when it falls out, only
//! its key is remembered (`ghosts`, up to twice as many keys as the budget holds entries).
//! An entry offered again after falling out, or one the ghost list remembers, has shown
//! reuse and goes to the main LRU (`protected`); so does one the owner calls `promote` on
//! (the disk tier does on a hit, which only a reuse after the memory tier let go can
//! cause). A scan therefore only ever cycles through probation and the ghost list and
//! never evicts a protected entry. `Admission::Always` is a plain LRU.

use std::hash::Hash;
use std::num::NonZeroUsize;

use lru::LruCache;

pub use crate::config::Admission;

/// Share of the budget for entries seen once, in quarters.
const PROBATION_QUARTERS: u64 = 1;

/// Remembered keys of evicted probation entries, per entry the whole budget holds: an
/// entry re-read within twice the tier's reach counts as reused. Keys only, so cheap.
const GHOSTS_PER_SLOT: usize = 2;

/// A byte-budgeted set of entries `V` keyed by `K`, each with a weight in bytes.
#[derive(Debug)]
pub struct TwoQ<K: Hash + Eq + Clone, V> {
    budget: u64,
    admission: Admission,
    protected: LruCache<K, (V, u64)>,
    protected_bytes: u64,
    probation: LruCache<K, (V, u64)>,
    probation_bytes: u64,
    ghosts: LruCache<K, ()>,
    /// Counters since creation.
    pub stats: PolicyStats,
}

/// What the policy did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyStats {
    /// Lookups that found their entry.
    pub hits: u64,
    /// Lookups that did not.
    pub misses: u64,
    /// Entries dropped to stay within the budget.
    pub evictions: u64,
    /// Entries that went to the main list because they were used again.
    pub promotions: u64,
}

impl<K: Hash + Eq + Clone, V> TwoQ<K, V> {
    /// A policy holding at most `budget` bytes of entries of typically `unit` bytes.
    pub fn new(budget: u64, unit: u64, admission: Admission) -> TwoQ<K, V> {
        let slots = (budget / unit.max(1)).max(1) as usize;
        let ghost_slots =
            NonZeroUsize::new((slots * GHOSTS_PER_SLOT).max(1)).expect("at least one");
        TwoQ {
            budget,
            admission,
            // Bounded by bytes (see `shrink`), not by entries.
            protected: LruCache::unbounded(),
            protected_bytes: 0,
            probation: LruCache::unbounded(),
            probation_bytes: 0,
            ghosts: LruCache::new(ghost_slots),
            stats: PolicyStats::default(),
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.protected_bytes + self.probation_bytes
    }

    /// The budget in bytes.
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.protected.len() + self.probation.len()
    }

    /// The entry under `key`, if held, counted as a hit or a miss.
    pub fn get(&mut self, key: &K) -> Option<&V> {
        let found = if self.protected.contains(key) {
            self.protected.get(key)
        } else {
            self.probation.peek(key)
        };
        match found {
            Some((value, _)) => {
                self.stats.hits += 1;
                Some(value)
            }
            None => {
                self.stats.misses += 1;
                None
            }
        }
    }

    /// Every key held.
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.protected
            .iter()
            .chain(self.probation.iter())
            .map(|(key, _)| key)
    }

    /// The entry under `key`, if held, without counting or reordering anything.
    pub fn peek(&self, key: &K) -> Option<&V> {
        self.protected
            .peek(key)
            .or_else(|| self.probation.peek(key))
            .map(|(value, _)| value)
    }

    /// The weight of the entry under `key`, if held.
    pub fn weight(&self, key: &K) -> Option<u64> {
        self.protected
            .peek(key)
            .or_else(|| self.probation.peek(key))
            .map(|(_, weight)| *weight)
    }

    /// Moves a probation entry to the main list: its owner saw it reused.
    pub fn promote(&mut self, key: &K) {
        if self.admission == Admission::Always {
            return;
        }
        if let Some((value, weight)) = self.probation.pop(key) {
            self.probation_bytes -= weight;
            self.protected_bytes += weight;
            self.protected.put(key.clone(), (value, weight));
            self.stats.promotions += 1;
        }
    }

    /// Offers an entry of `weight` bytes. One replacing an entry under the same key keeps
    /// that entry's list. Returns what was evicted to make room (the offered entry itself
    /// when it is larger than the whole budget).
    pub fn insert(&mut self, key: K, value: V, weight: u64) -> Vec<(K, V)> {
        if weight > self.budget {
            return vec![(key, value)];
        }
        let was_protected = self.protected.contains(&key);
        self.remove(&key);
        let reused = self.ghosts.pop(&key).is_some();
        if self.admission == Admission::Always || was_protected || reused {
            if reused {
                self.stats.promotions += 1;
            }
            self.protected_bytes += weight;
            self.protected.put(key, (value, weight));
        } else {
            self.probation_bytes += weight;
            self.probation.put(key, (value, weight));
        }
        self.shrink()
    }

    /// Drops the entry under `key` and returns it.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        if let Some((value, weight)) = self.protected.pop(key) {
            self.protected_bytes -= weight;
            return Some(value);
        }
        let (value, weight) = self.probation.pop(key)?;
        self.probation_bytes -= weight;
        Some(value)
    }

    /// Drops every entry whose key `doomed` says so, and returns them.
    pub fn remove_where(&mut self, mut doomed: impl FnMut(&K) -> bool) -> Vec<(K, V)> {
        let keys: Vec<K> = self
            .protected
            .iter()
            .chain(self.probation.iter())
            .map(|(key, _)| key)
            .filter(|key| doomed(key))
            .cloned()
            .collect();
        keys.into_iter()
            .filter_map(|key| self.remove(&key).map(|value| (key, value)))
            .collect()
    }

    /// Evicts until within budget: probation first while it is over its share, so that
    /// entries seen once make room for each other, then the least recently used.
    fn shrink(&mut self) -> Vec<(K, V)> {
        let probation_share = self.budget * PROBATION_QUARTERS / 4;
        let mut evicted = Vec::new();
        while self.bytes() > self.budget {
            let from_probation =
                self.probation_bytes > probation_share || self.protected.is_empty();
            let victim = if from_probation {
                self.probation.pop_lru().inspect(|(key, (_, weight))| {
                    self.probation_bytes -= weight;
                    if self.admission == Admission::ScanResistant {
                        self.ghosts.put(key.clone(), ());
                    }
                })
            } else {
                None
            };
            let victim = victim.or_else(|| {
                self.protected
                    .pop_lru()
                    .inspect(|(_, (_, weight))| self.protected_bytes -= weight)
            });
            match victim {
                Some((key, (value, _))) => {
                    self.stats.evictions += 1;
                    evicted.push((key, value));
                }
                None => break,
            }
        }
        evicted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLOCK: u64 = 4;

    /// Reads `key` through the tier, filling it on a miss as a reader would.
    fn read(tier: &mut TwoQ<u64, u8>, key: u64) -> bool {
        if tier.get(&key).is_some() {
            return true;
        }
        tier.insert(key, key as u8, BLOCK);
        false
    }

    #[test]
    fn the_budget_holds() {
        let mut tier = TwoQ::new(10 * BLOCK, BLOCK, Admission::ScanResistant);
        for key in 0..1000 {
            read(&mut tier, key % 37);
            read(&mut tier, key % 7);
            assert!(tier.bytes() <= 10 * BLOCK, "{} bytes", tier.bytes());
        }
        assert!(tier.stats.evictions > 0);
        let refused = tier.insert(999, 0, 100);
        assert_eq!(refused, vec![(999, 0)], "larger than the budget");
        assert!(tier.peek(&999).is_none());
    }

    /// A hot set re-read between the blocks of a long once-only scan keeps its hits with
    /// 2Q, and loses them with plain LRU.
    fn hot_hit_ratio(admission: Admission) -> f64 {
        let mut tier = TwoQ::new(20 * BLOCK, BLOCK, admission);
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
    fn an_entry_read_again_after_falling_out_is_promoted() {
        let mut tier = TwoQ::new(8 * BLOCK, BLOCK, Admission::ScanResistant);
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
        assert!(tier.get(&1).is_some(), "a protected entry survives a scan");
    }

    #[test]
    fn replacing_or_promoting_keeps_an_entry_protected() {
        let mut tier = TwoQ::new(8 * BLOCK, BLOCK, Admission::ScanResistant);
        read(&mut tier, 1);
        tier.promote(&1);
        // A larger version of the same block (more of it read) stays in the main list.
        tier.insert(1, 9, 2 * BLOCK);
        for key in 100..200 {
            read(&mut tier, key);
        }
        assert_eq!(tier.peek(&1), Some(&9));
        assert_eq!(tier.stats.promotions, 1);
    }

    #[test]
    fn removing_frees_bytes_and_evictions_are_returned() {
        let mut tier = TwoQ::new(8 * BLOCK, BLOCK, Admission::Always);
        for key in 0..4 {
            read(&mut tier, key);
        }
        assert_eq!(tier.remove(&0), Some(0));
        assert_eq!(tier.bytes(), 3 * BLOCK);
        let removed = tier.remove_where(|key| *key >= 2);
        assert_eq!(removed.len(), 2);
        assert_eq!(tier.bytes(), BLOCK);
        assert!(tier.get(&1).is_some() && tier.get(&2).is_none());
        for key in 10..17 {
            assert!(tier.insert(key, 0, BLOCK).is_empty());
        }
        assert_eq!(
            tier.insert(17, 0, BLOCK),
            vec![(1, 1)],
            "least recently used first"
        );
    }
}
