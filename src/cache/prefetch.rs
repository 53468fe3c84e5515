//! Read-ahead in the background: a bounded queue of ranges to fetch and the threads that
//! fetch them, as few large origin reads as possible, into the memory tier.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::{Arc, Condvar, Mutex};

use super::block::{BlockKey, page_aligned};
use super::stats::bump;
use super::{Cache, CachedFile, ORIGIN_READ_MAX, Snapshot, lock};

/// Ranges of one file to fetch ahead of its reader.
#[derive(Debug)]
pub(super) struct Job {
    /// The file, open.
    pub(super) file: Arc<CachedFile>,
    /// Its epoch when the job was made.
    pub(super) epoch: u64,
    /// Its generation when the job was made, before its dirtiness was asked: a change
    /// since voids the job.
    pub(super) generation: u64,
    /// What to fetch.
    pub(super) ranges: Vec<Range<u64>>,
}

/// Jobs waiting for a thread.
#[derive(Debug)]
pub(super) struct Queue {
    waiting: Mutex<(VecDeque<Job>, bool)>,
    ready: Condvar,
    max: usize,
}

impl Queue {
    pub(super) fn new(max: usize) -> Queue {
        Queue {
            waiting: Mutex::new((VecDeque::new(), false)),
            ready: Condvar::new(),
            max,
        }
    }

    /// Queues `job`, or drops it when the queue is full: read-ahead is only ever a hint.
    pub(super) fn push(&self, job: Job) {
        let mut waiting = lock(&self.waiting);
        if waiting.0.len() < self.max && !waiting.1 {
            waiting.0.push_back(job);
            self.ready.notify_one();
        }
    }

    /// The next job; `None` once stopped.
    fn pop(&self) -> Option<Job> {
        let mut waiting = lock(&self.waiting);
        loop {
            if waiting.1 {
                return None;
            }
            if let Some(job) = waiting.0.pop_front() {
                return Some(job);
            }
            waiting = self
                .ready
                .wait(waiting)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    /// Wakes every thread to end.
    pub(super) fn stop(&self) {
        let mut waiting = lock(&self.waiting);
        waiting.1 = true;
        waiting.0.clear();
        self.ready.notify_all();
    }
}

impl Cache {
    /// A read-ahead thread's life.
    pub(super) fn prefetch_worker(&self) {
        while let Some(job) = self.jobs.pop() {
            if let Err(error) = self.prefetch(&job) {
                // The reader will meet the same error on its own read, and report it.
                tracing::debug!(%error, "read-ahead failed");
            }
        }
    }

    fn prefetch(&self, job: &Job) -> std::io::Result<()> {
        let snapshot = Snapshot {
            epoch: job.epoch,
            generation: job.generation,
            size: 0,
        };
        for range in &job.ranges {
            let range = page_aligned(range.clone());
            let mut position = range.start;
            while position < range.end {
                let Some(claimed) = self.claim(job, &mut position, range.end) else {
                    return Ok(());
                };
                let Some(first) = claimed.first() else {
                    continue;
                };
                let span = first.1.start..claimed.last().expect("not empty").1.end;
                let read = self.read_origin(&job.file.origin, span.clone());
                let mut state = self.lock();
                for (key, _) in &claimed {
                    state.inflight.remove(key);
                }
                self.filled.notify_all();
                let data = read?;
                bump(&self.counters.prefetched_bytes, data.len() as u64);
                let read_end = span.start + data.len() as u64;
                for (key, piece) in claimed {
                    if piece.start >= read_end && piece.start != span.start {
                        break;
                    }
                    let stop = piece.end.min(read_end);
                    let bytes = data
                        [(piece.start - span.start) as usize..(stop - span.start) as usize]
                        .to_vec();
                    let start = (piece.start % self.block_size) as u32;
                    let hit_end = stop < piece.end;
                    self.keep(
                        &mut state,
                        key,
                        start,
                        bytes,
                        hit_end,
                        snapshot.generation,
                        true,
                    );
                }
                if read_end < span.end {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Claims the blocks from `position` on that neither the memory tier nor another fill
    /// has, as one contiguous run of at most [`ORIGIN_READ_MAX`] bytes; skips the ones
    /// already there. `None` when the job is void (the file changed since it was made).
    fn claim(
        &self,
        job: &Job,
        position: &mut u64,
        end: u64,
    ) -> Option<Vec<(BlockKey, Range<u64>)>> {
        let mut state = self.lock();
        let file = state.files.get(&job.file.key)?;
        if file.epoch != job.epoch || file.generation != job.generation {
            return None;
        }
        let mut claimed: Vec<(BlockKey, Range<u64>)> = Vec::new();
        let mut bytes = 0;
        while *position < end && bytes < ORIGIN_READ_MAX {
            let index = *position / self.block_size;
            let block_start = index * self.block_size;
            let piece = *position..end.min(block_start + self.block_size);
            let key = BlockKey {
                file: job.file.key,
                epoch: job.epoch,
                index,
            };
            let within = (piece.start - block_start) as u32..(piece.end - block_start) as u32;
            let held = state
                .memory
                .peek(&key)
                .is_some_and(|block| block.covers(within));
            if held || state.inflight.contains(&key) {
                if !claimed.is_empty() {
                    break;
                }
                *position = piece.end;
                continue;
            }
            state.inflight.insert(key);
            bytes += piece.end - piece.start;
            *position = piece.end;
            claimed.push((key, piece));
        }
        Some(claimed)
    }
}
