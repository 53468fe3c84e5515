//! What the tiers hold: pieces of origin files, named by the file's identity and a block
//! number, and stamped with the file's version so a change by anyone is noticed.

use crate::types::FileId;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Pages are the least the cache fetches: a random 4 KiB read costs one page, not a block.
pub const PAGE: u64 = 4096;

/// One block of one file as this process knows it. `epoch` changes whenever the file's
/// cached content as a whole is found stale, so old blocks are simply never asked for
/// again and age out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlockKey {
    /// The file.
    pub file: FileId,
    /// The file's cache epoch.
    pub epoch: u64,
    /// Block number: byte offset / block size.
    pub index: u64,
}

/// The known parts of one block: disjoint, non-adjacent runs of bytes in offset order,
/// and where the file ended, if a read saw the end. Immutable; adding a run makes a new
/// block that shares the untouched runs.
#[derive(Debug, Default)]
pub struct Block {
    runs: Vec<(u32, Arc<Vec<u8>>)>,
    end: Option<u32>,
    /// Filled by read-ahead rather than by a reader.
    pub prefetched: bool,
    used: AtomicBool,
    /// The disk tier has (or has been sent) every page of it.
    spilled: AtomicBool,
}

impl Block {
    /// A block holding `data` at `start`; `end` where the file ended, if the read saw it.
    pub fn new(start: u32, data: Vec<u8>, end: Option<u32>, prefetched: bool) -> Block {
        Block::default().with(start, data, end, prefetched)
    }

    /// This block with `data` at `start` added (new bytes win where they overlap old).
    pub fn with(&self, start: u32, data: Vec<u8>, end: Option<u32>, prefetched: bool) -> Block {
        let stop = start + data.len() as u32;
        let touches =
            |run_start: u32, run: &[u8]| run_start <= stop && run_start + run.len() as u32 >= start;
        let (low, high) = self
            .runs
            .iter()
            .filter(|(run_start, run)| touches(*run_start, run))
            .fold((start, stop), |(low, high), (run_start, run)| {
                (low.min(*run_start), high.max(run_start + run.len() as u32))
            });
        let merged = if (low, high) == (start, stop) {
            data
        } else {
            let mut joined = vec![0; (high - low) as usize];
            for (run_start, run) in &self.runs {
                if touches(*run_start, run) {
                    let at = (run_start - low) as usize;
                    joined[at..at + run.len()].copy_from_slice(run);
                }
            }
            let at = (start - low) as usize;
            joined[at..at + data.len()].copy_from_slice(&data);
            joined
        };
        let mut runs: Vec<(u32, Arc<Vec<u8>>)> = self
            .runs
            .iter()
            .filter(|(run_start, run)| !touches(*run_start, run))
            .cloned()
            .collect();
        let at = runs.partition_point(|(run_start, _)| *run_start < low);
        runs.insert(at, (low, Arc::new(merged)));
        Block {
            runs,
            end: end.or(self.end),
            prefetched: prefetched && (self.runs.is_empty() || self.prefetched),
            used: AtomicBool::new(self.used.load(Ordering::Relaxed)),
            spilled: AtomicBool::new(false),
        }
    }

    /// Copies the bytes at `start..start + into.len()` into `into` if the block knows all
    /// of them, and returns how many there are (fewer where the file ended).
    pub fn read(&self, start: u32, into: &mut [u8]) -> Option<usize> {
        let stop = match self.end {
            Some(end) if end <= start => return Some(0),
            Some(end) => end.min(start + into.len() as u32),
            None => start + into.len() as u32,
        };
        let (run_start, run) = self
            .runs
            .iter()
            .find(|(run_start, run)| *run_start <= start && run_start + run.len() as u32 >= stop)?;
        let count = (stop - start) as usize;
        let from = (start - run_start) as usize;
        into[..count].copy_from_slice(&run[from..from + count]);
        Some(count)
    }

    /// Whether the block knows every byte of `range` (up to the file's end).
    pub fn covers(&self, range: Range<u32>) -> bool {
        let stop = self.end.map_or(range.end, |end| end.min(range.end));
        range.start >= stop
            || self
                .runs
                .iter()
                .any(|(start, run)| *start <= range.start && start + run.len() as u32 >= stop)
    }

    /// Bytes held.
    pub fn weight(&self) -> u64 {
        self.runs.iter().map(|(_, run)| run.len() as u64).sum()
    }

    /// Where the file ended within this block, if a read saw it.
    pub fn end(&self) -> Option<u32> {
        self.end
    }

    /// The runs, in offset order.
    pub fn runs(&self) -> impl Iterator<Item = (u32, &[u8])> {
        self.runs
            .iter()
            .map(|(start, run)| (*start, run.as_slice()))
    }

    /// Marks the block used by a reader; true the first time.
    pub fn first_use(&self) -> bool {
        !self.used.swap(true, Ordering::Relaxed)
    }

    /// Whether the disk tier has been sent this block.
    pub fn spilled(&self) -> bool {
        self.spilled.load(Ordering::Relaxed)
    }

    /// Notes that the disk tier has been sent (or read back) this block.
    pub fn mark_spilled(&self) {
        self.spilled.store(true, Ordering::Relaxed);
    }

    /// Whether a reader has used the block.
    pub fn used(&self) -> bool {
        self.used.load(Ordering::Relaxed)
    }
}

/// `range` widened to whole pages.
pub fn page_aligned(range: Range<u64>) -> Range<u64> {
    range.start / PAGE * PAGE..range.end.div_ceil(PAGE) * PAGE
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(block: &Block, start: u32, len: usize) -> Option<Vec<u8>> {
        let mut into = vec![0; len];
        let count = block.read(start, &mut into)?;
        into.truncate(count);
        Some(into)
    }

    #[test]
    fn runs_merge_and_new_bytes_win() {
        let block = Block::new(100, vec![1; 50], None, false);
        assert_eq!(read(&block, 110, 10), Some(vec![1; 10]));
        assert_eq!(read(&block, 90, 20), None, "starts before the run");
        let block = block.with(300, vec![3; 10], None, false);
        assert_eq!(block.runs().count(), 2);
        assert_eq!(block.weight(), 60);
        // Bridges both runs, overlapping each.
        let block = block.with(140, vec![2; 170], None, false);
        assert_eq!(block.runs().count(), 1);
        let all = read(&block, 100, 210).unwrap();
        assert_eq!(&all[..40], &[1; 40]);
        assert_eq!(&all[40..210], &[2; 170][..]);
        assert_eq!(block.weight(), 210);
        // Adjacent runs join too.
        let block = block.with(310, vec![4; 5], None, false);
        assert_eq!(block.runs().count(), 1);
        assert_eq!(
            read(&block, 305, 10).unwrap(),
            [2, 2, 2, 2, 2, 4, 4, 4, 4, 4]
        );
        // A run before everything, then one inside, leaves order and content right.
        let block = block
            .with(0, vec![9; 10], None, false)
            .with(200, vec![7; 2], None, false);
        let runs: Vec<(u32, usize)> = block.runs().map(|(s, r)| (s, r.len())).collect();
        assert_eq!(runs, vec![(0, 10), (100, 215)]);
        assert_eq!(read(&block, 199, 4).unwrap(), [2, 7, 7, 2]);
    }

    #[test]
    fn a_run_overlapping_several_keeps_its_bytes_on_top() {
        let block = Block::new(0, vec![1; 10], None, false)
            .with(20, vec![2; 10], None, false)
            .with(5, vec![5; 20], None, false);
        assert_eq!(block.runs().count(), 1);
        let all = read(&block, 0, 30).unwrap();
        assert_eq!(&all[..5], &[1; 5]);
        assert_eq!(&all[5..25], &[5; 20]);
        assert_eq!(&all[25..], &[2; 5]);
    }

    #[test]
    fn the_end_of_the_file_shortens_reads() {
        let block = Block::new(0, vec![1; 100], Some(100), false);
        assert_eq!(read(&block, 90, 4096).unwrap().len(), 10);
        assert_eq!(read(&block, 100, 10), Some(vec![]));
        assert_eq!(read(&block, 5000, 10), Some(vec![]));
        assert!(block.covers(0..4096));
        assert!(!Block::new(0, vec![1; 100], None, false).covers(0..4096));
    }

    #[test]
    fn first_use_is_reported_once_and_survives_growth() {
        let block = Block::new(0, vec![0; 10], None, true);
        assert!(block.prefetched);
        assert!(block.first_use());
        assert!(!block.first_use());
        let grown = block.with(10, vec![0; 10], None, false);
        assert!(grown.used() && !grown.prefetched);
    }

    #[test]
    fn pages_round_outwards() {
        assert_eq!(page_aligned(1..2), 0..4096);
        assert_eq!(page_aligned(4096..8192), 4096..8192);
        assert_eq!(page_aligned(4095..4097), 0..8192);
    }
}
