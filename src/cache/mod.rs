//! The read cache: blocks of origin files in memory and on a fast local disk, between
//! `vfs` and the origin, with read-ahead.
//!
//! `vfs` opens a [`CachedFile`] per open file and reads through [`Cache::read`]; it tells
//! the cache of every change it makes ([`Cache::changed`]). A read looks in memory, then
//! on disk, then reads the origin. The cache holds origin content only: write-behind's
//! unflushed bytes are laid over by `vfs` afterwards, and no block is kept while its file
//! has unflushed bytes, so a flush can never leave a stale block behind.
//!
//! Coherence rests on two numbers per file (see `files.rs`):
//! - the *epoch*, part of every memory block's key: when the origin changed under the
//!   cache (another program wrote: size, mtime or ctime moved, and no change of ours
//!   explains it) the epoch moves on, the old blocks are never asked for again, and the
//!   disk tier forgets the file;
//! - the *generation*, bumped by every change made through the mount: a fill that began
//!   before a change is not kept, so a reader racing a writer cannot cache old bytes.

mod block;
mod disk;
mod files;
mod policy;
mod prefetch;
mod queue;
mod readahead;
mod refresh;
mod spill;
mod stats;

use std::collections::{HashMap, HashSet};
use std::io;
use std::ops::Range;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::config::CacheConfig;
use crate::origin::{OriginFile, Stat};
pub use crate::types::Change;
use crate::types::FileId;
use crate::types::Stamp;
use block::{Block, BlockKey, page_aligned};
use disk::DiskError;
pub use disk::{DiskTier, Found};
use files::{FileState, Revalidated};
use policy::TwoQ;
use queue::WorkQueue;
use readahead::Readahead;
use spill::{Disk, DiskIndex, DiskOp};
use stats::{Counters, bump};

pub use stats::{CacheStats, TierStats};

/// Threads reading ahead: enough to keep a few streams' origin reads in flight at once.
const PREFETCH_THREADS: usize = 2;

/// Read-ahead requests waiting beyond this many are dropped (the reader fetches itself).
const PREFETCH_QUEUE_MAX: usize = 64;

/// The most one origin read asks for: large enough that a sequential stream costs few
/// requests, small enough that the reader waiting on its first block is not kept long.
const ORIGIN_READ_MAX: u64 = 8 << 20;

/// Files the cache keeps its notes on although nothing of them is cached or open.
const FILES_REMEMBERED_MAX: usize = 65_536;

/// A change touching more blocks than this drops the whole file (a new epoch) instead of
/// looking each block up.
const DROP_ONE_BY_ONE_MAX: u64 = 256;

/// Why the cache could not start.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The disk tier's directory cannot be used.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// A background thread could not be started.
    #[error("cannot start a cache thread: {0}")]
    Thread(#[from] io::Error),
}

/// The read cache of one volume.
#[derive(Debug)]
pub struct Cache {
    block_size: u64,
    readahead: (u64, u64),
    revalidate_after: Duration,
    state: Mutex<State>,
    /// Signalled whenever an in-flight fill ends.
    filled: Condvar,
    counters: Counters,
    jobs: WorkQueue<prefetch::Job>,
    disk: Option<Disk>,
    /// Set to stop the refresh-ahead thread, which sleeps on it.
    refresh_stop: (Mutex<bool>, Condvar),
    threads: Mutex<Vec<JoinHandle<()>>>,
}

#[derive(Debug)]
struct State {
    memory: TwoQ<BlockKey, Arc<Block>>,
    files: HashMap<FileId, FileState>,
    /// Blocks a read is filling now; readers of them wait instead of reading too.
    inflight: HashSet<BlockKey>,
    next_epoch: u64,
    disk: Option<DiskIndex>,
}

/// One open file reading through the cache.
#[derive(Debug)]
pub struct CachedFile {
    key: FileId,
    origin: Arc<OriginFile>,
    readahead: Mutex<Readahead>,
}

impl CachedFile {
    /// The origin file's identity.
    pub fn key(&self) -> FileId {
        self.key
    }
}

/// What a read needs to know of its file, taken under the lock once.
#[derive(Clone, Copy, Debug)]
struct ReadState {
    epoch: u64,
    generation: u64,
    size: u64,
}

/// Where the bytes of a fill came from, and whether they may be kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fill {
    /// Read ahead, not for a reader waiting now.
    prefetched: bool,
    /// Read back from the disk tier.
    from_disk: bool,
    /// The file's generation when the fetch began (see `Cache::read`).
    generation: u64,
    /// False while the file has unflushed writes.
    keep: bool,
}

/// Fetched bytes of one block.
#[derive(Debug)]
struct Piece {
    /// Offset in the block.
    start: u32,
    /// The bytes.
    data: Vec<u8>,
    /// Where the file ended in the block, if the fetch saw it.
    end: Option<u32>,
}

impl Cache {
    /// The cache `config` describes, with its background threads running; `None` when
    /// the config turns caching off.
    pub fn start(config: &CacheConfig) -> Result<Option<Arc<Cache>>, CacheError> {
        if !config.enabled() {
            return Ok(None);
        }
        let mut index = None;
        let mut disk = None;
        let mut evicted = Vec::new();
        if let Some(tier) = &config.disk {
            let (opened, inventory) = DiskTier::open(&tier.dir, config.block_size)?;
            let (built, over_budget) =
                DiskIndex::new(inventory, tier.bytes, config.block_size, config.admission);
            index = Some(built);
            evicted = over_budget;
            disk = Some(Disk {
                tier: opened,
                queue: WorkQueue::new(usize::MAX),
            });
        }
        let cache = Arc::new(Cache {
            block_size: config.block_size,
            readahead: (config.readahead_min, config.readahead_max),
            revalidate_after: config.revalidate_after,
            state: Mutex::new(State {
                memory: TwoQ::new(config.memory_bytes, config.block_size, config.admission),
                files: HashMap::new(),
                inflight: HashSet::new(),
                next_epoch: 1,
                disk: index,
            }),
            filled: Condvar::new(),
            counters: Counters::default(),
            jobs: WorkQueue::new(PREFETCH_QUEUE_MAX),
            disk,
            refresh_stop: (Mutex::new(false), Condvar::new()),
            threads: Mutex::new(Vec::new()),
        });
        {
            let mut state = cache.lock();
            for key in evicted {
                cache.disk_op(&mut state, DiskOp::Delete(key));
            }
        }
        let mut threads = Vec::new();
        for number in 0..PREFETCH_THREADS {
            let worker = Arc::clone(&cache);
            threads.push(
                std::thread::Builder::new()
                    .name(format!("prefetch-{number}"))
                    .spawn(move || worker.prefetch_worker())?,
            );
        }
        if config.refresh_ahead {
            let refresher = Arc::clone(&cache);
            threads.push(
                std::thread::Builder::new()
                    .name("refresh-ahead".to_string())
                    .spawn(move || refresher.refresher())?,
            );
        }
        if cache.disk.is_some() {
            let writer = Arc::clone(&cache);
            threads.push(
                std::thread::Builder::new()
                    .name("disk-tier".to_string())
                    .spawn(move || writer.disk_writer())?,
            );
        }
        *lock(&cache.threads) = threads;
        Ok(Some(cache))
    }

    /// Stops the background threads: queued read-ahead is dropped, the disk tier's queued
    /// writes and removals are done first.
    pub fn shutdown(&self) {
        self.jobs.stop();
        if let Some(disk) = &self.disk {
            disk.queue.stop();
        }
        *lock(&self.refresh_stop.0) = true;
        self.refresh_stop.1.notify_all();
        for thread in std::mem::take(&mut *lock(&self.threads)) {
            if thread.join().is_err() {
                tracing::error!("a cache thread panicked");
            }
        }
    }

    /// Starts reading `origin` (whose metadata is `stat`) through the cache. `dirty`: the
    /// file has unflushed writes, so a changed origin version may be ours.
    pub fn open(&self, origin: Arc<OriginFile>, stat: &Stat, dirty: bool) -> Arc<CachedFile> {
        let key = stat.id();
        let version = stat.stamp();
        let mut state = self.lock();
        let first_sight = !state.files.contains_key(&key);
        self.revalidate(&mut state, key, version, dirty);
        if let Some(file) = state.files.get_mut(&key) {
            file.opens += 1;
        }
        if first_sight {
            self.first_sight_on_disk(&mut state, key, version);
        }
        let file = Arc::new(CachedFile {
            key,
            origin,
            readahead: Mutex::new(Readahead::new(self.readahead.0, self.readahead.1)),
        });
        if let Some(known) = state.files.get_mut(&key) {
            known.open = Arc::downgrade(&file);
        }
        file
    }

    /// The open file is closed.
    pub fn release(&self, file: &CachedFile) {
        let mut state = self.lock();
        if let Some(known) = state.files.get_mut(&file.key) {
            known.opens = known.opens.saturating_sub(1);
        }
        // A file with nothing cached is still remembered, so that the blocks it had are
        // recognized as reused when read again (their keys carry its epoch); only many
        // such files are forgotten, all at once.
        if state.files.len() > FILES_REMEMBERED_MAX {
            state
                .files
                .retain(|_, file| file.opens > 0 || file.blocks > 0);
        }
    }

    /// Reads `into.len()` bytes at `offset` of `file`, short only at the origin's end of
    /// file. `dirty` says whether the file has unflushed writes now; the cache asks only
    /// after it has noted the file's generation, so a write racing this read is seen by
    /// one or the other.
    pub fn read(
        &self,
        file: &Arc<CachedFile>,
        offset: u64,
        into: &mut [u8],
        dirty: impl FnOnce() -> bool,
    ) -> io::Result<usize> {
        let len = into.len() as u64;
        let advice = lock(&file.readahead).observe(offset, len);
        let (due, mut seen) = self.read_state(file)?;
        let dirty = dirty();
        if due {
            let version = file.origin.stat()?.stamp();
            let mut state = self.lock();
            self.revalidate(&mut state, file.key, version, dirty);
            let known = &state.files[&file.key];
            // Fills keep the generation noted before `dirty` was asked (see above).
            seen = ReadState {
                epoch: known.epoch,
                size: known.size,
                ..seen
            };
        }
        if !dirty && !advice.prefetch.is_empty() {
            self.jobs.offer(prefetch::Job {
                file: Arc::clone(file),
                epoch: seen.epoch,
                generation: seen.generation,
                ranges: clip(advice.prefetch, seen.size),
            });
        }
        let mut done = 0u64;
        while done < len {
            let position = offset + done;
            let within = position % self.block_size;
            let piece = (len - done).min(self.block_size - within);
            let key = BlockKey {
                file: file.key,
                epoch: seen.epoch,
                index: position / self.block_size,
            };
            let wanted = within as u32..(within + piece) as u32;
            let slot = &mut into[done as usize..(done + piece) as usize];
            let count = match self.held(key, wanted.clone(), advice.streaming) {
                Held::Block(block) => {
                    bump(&self.counters.memory_hits, 1);
                    block
                        .read(within as u32, slot)
                        .expect("the block covers the range")
                }
                Held::Nothing(claim) => {
                    bump(&self.counters.memory_misses, 1);
                    let keep = !dirty;
                    let block = match self.read_disk(key, wanted, seen, keep, false) {
                        Some(block) => block,
                        // Only what was asked for: read-ahead fetches the rest of a
                        // stream, and a random reader must pay for nothing more.
                        None => self.read_origin_block(
                            file,
                            key,
                            page_aligned(position..position + piece),
                            seen,
                            keep,
                        )?,
                    };
                    drop(claim);
                    block.read(within as u32, slot).unwrap_or(0)
                }
            };
            done += count as u64;
            if (count as u64) < piece {
                break;
            }
        }
        Ok(done as usize)
    }

    /// A change made through the mount to the file `key`.
    pub fn changed(&self, key: FileId, change: Change) {
        let mut state = self.lock();
        let state = &mut *state;
        let Some(file) = state.files.get_mut(&key) else {
            // Never read through the cache in this mount; the disk tier may still hold
            // blocks of it, which only an unchanged version would let anyone read.
            if change != Change::Attributes {
                self.forget_on_disk(state, key);
            }
            return;
        };
        file.changed_locally = true;
        let old_size = file.size;
        let (first, last) = match change {
            Change::Attributes => return,
            Change::Written(range) => {
                file.size = file.size.max(range.end);
                (
                    range.start / self.block_size,
                    range.end.saturating_sub(1) / self.block_size,
                )
            }
            Change::Truncated(size) => {
                file.size = size;
                (size / self.block_size, u64::MAX)
            }
            Change::Content => {
                file.generation += 1;
                file.new_epoch(&mut state.next_epoch);
                self.forget_on_disk(state, key);
                return;
            }
        };
        file.generation += 1;
        // The block that held the old end of file says the file ends there.
        let stale_end = (file.size != old_size).then_some(old_size / self.block_size);
        let memory_last = last.min(file.last_index);
        if memory_last.saturating_sub(first) >= DROP_ONE_BY_ONE_MAX {
            file.new_epoch(&mut state.next_epoch);
        } else {
            let epoch = file.epoch;
            let mut dropped = 0;
            for index in (first..=memory_last).chain(stale_end) {
                let block = BlockKey {
                    file: key,
                    epoch,
                    index,
                };
                if let Some(block) = state.memory.remove(&block) {
                    dropped += 1;
                    self.count_unused(&block);
                }
            }
            if let Some(file) = state.files.get_mut(&key) {
                file.blocks -= dropped;
            }
        }
        if last.saturating_sub(first) >= DROP_ONE_BY_ONE_MAX {
            let doomed = |disk_key: &(FileId, u64)| {
                disk_key.0 == key
                    && ((first..=last).contains(&disk_key.1) || Some(disk_key.1) == stale_end)
            };
            let keys: Vec<_> = state.disk.as_ref().map_or(Vec::new(), |index| {
                index.policy.keys().filter(|k| doomed(k)).copied().collect()
            });
            self.drop_on_disk(state, keys);
        } else {
            let keys = (first..=last).chain(stale_end).map(|index| (key, index));
            self.drop_on_disk(state, keys.collect::<Vec<_>>());
        }
    }

    /// What the cache did since it started.
    pub fn stats(&self) -> CacheStats {
        let state = self.lock();
        let tier = |policy_bytes, budget, blocks, stats: policy::PolicyStats| TierStats {
            bytes: policy_bytes,
            budget,
            blocks,
            evictions: stats.evictions,
            promotions: stats.promotions,
            ..TierStats::default()
        };
        let memory = tier(
            state.memory.bytes(),
            state.memory.budget(),
            state.memory.len() as u64,
            state.memory.stats,
        );
        let disk = state.disk.as_ref().map(|index| {
            tier(
                index.policy.bytes(),
                index.policy.budget(),
                index.policy.len() as u64,
                index.policy.stats,
            )
        });
        drop(state);
        self.counters.collect(memory, disk)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// The file's epoch, generation and size now, and whether its version is due for a
    /// check against the origin.
    fn read_state(&self, file: &CachedFile) -> io::Result<(bool, ReadState)> {
        let mut state = self.lock();
        if !state.files.contains_key(&file.key) {
            // Forgotten while open cannot happen (`opens` holds it); a new file otherwise.
            let version = file.origin.stat()?.stamp();
            self.revalidate(&mut state, file.key, version, false);
        }
        let known = state.files.get_mut(&file.key).expect("just made sure");
        known.read = std::time::Instant::now();
        Ok((
            known.checked.elapsed() >= self.revalidate_after,
            ReadState {
                epoch: known.epoch,
                generation: known.generation,
                size: known.size,
            },
        ))
    }

    /// Compares the origin's `version` of `key` with the cached one (creating the file's
    /// state if new), and makes both tiers follow.
    fn revalidate(
        &self,
        state: &mut State,
        key: FileId,
        version: Stamp,
        dirty: bool,
    ) -> Revalidated {
        let State {
            files, next_epoch, ..
        } = state;
        let file = files.entry(key).or_insert_with(|| {
            *next_epoch += 1;
            FileState::new(version, *next_epoch - 1)
        });
        let outcome = file.revalidate(version, dirty, next_epoch);
        match outcome {
            Revalidated::Same => {}
            Revalidated::Adopted => self.adopt_on_disk(state, key, version),
            Revalidated::Stale => {
                tracing::debug!(
                    dev = key.dev,
                    ino = key.ino,
                    "origin file changed; its cached blocks are dropped"
                );
                bump(&self.counters.invalidations, 1);
                self.forget_on_disk(state, key);
            }
        }
        outcome
    }

    /// Looks `key` up in memory for `range`, waiting while another read fills it. On a
    /// miss, a streaming reader claims the block so that others wait for its fill. A block
    /// used for the first time is counted, and offered to the disk tier.
    fn held(&self, key: BlockKey, range: Range<u32>, streaming: bool) -> Held<'_> {
        let mut state = self.lock();
        loop {
            if let Some(block) = state.memory.get(&key)
                && block.covers(range.clone())
            {
                let block = Arc::clone(block);
                if block.first_use() && block.prefetched {
                    bump(&self.counters.prefetch_used_bytes, block.weight());
                }
                if !block.spilled()
                    && let Some(file) = state.files.get(&key.file)
                    && file.epoch == key.epoch
                {
                    let version = file.version;
                    self.spill(&mut state, (key.file, key.index), &block, version);
                }
                return Held::Block(block);
            }
            if !state.inflight.contains(&key) {
                let claimed = streaming && state.inflight.insert(key);
                return Held::Nothing(Claim {
                    cache: self,
                    keys: if claimed { vec![key] } else { Vec::new() },
                });
            }
            state = self
                .filled
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    /// The pages covering `range` of `key` from the disk tier, kept in memory if `keep`;
    /// `None` if the tier does not have them all (or has them damaged).
    fn read_disk(
        &self,
        key: BlockKey,
        range: Range<u32>,
        seen: ReadState,
        keep: bool,
        prefetched: bool,
    ) -> Option<Arc<Block>> {
        let disk = self.disk.as_ref()?;
        let disk_key = (key.file, key.index);
        let readable = {
            let state = self.lock();
            let index = state.disk.as_ref()?;
            let known = state.files.get(&key.file)?;
            known.epoch == key.epoch && index.readable(disk_key, known.version)
        };
        if !readable {
            if !prefetched {
                bump(&self.counters.disk_misses, 1);
            }
            return None;
        }
        let found = disk.tier.read(disk_key, range);
        let mut state = self.lock();
        match found {
            Ok(Found::Pages { start, data, end }) => {
                if let Some(index) = &mut state.disk {
                    index.policy.get(&disk_key);
                    index.policy.promote(&disk_key);
                }
                if !prefetched {
                    bump(&self.counters.disk_hits, 1);
                }
                let fill = Fill {
                    prefetched,
                    from_disk: true,
                    generation: seen.generation,
                    keep,
                };
                Some(self.keep(&mut state, key, Piece { start, data, end }, fill))
            }
            Ok(Found::Missing) => {
                bump(&self.counters.disk_misses, 1);
                None
            }
            Ok(Found::Corrupt) => {
                bump(&self.counters.disk_corrupt, 1);
                bump(&self.counters.disk_misses, 1);
                if let Some(index) = &mut state.disk {
                    index.policy.remove(&disk_key);
                }
                None
            }
            Err(error) => {
                tracing::warn!(%error, "cannot read the disk tier; reading the origin");
                bump(&self.counters.disk_misses, 1);
                None
            }
        }
    }

    /// Reads `range` (within one block) of the origin, and keeps it if `keep` and nothing
    /// changed the file since `seen`.
    fn read_origin_block(
        &self,
        file: &CachedFile,
        key: BlockKey,
        range: Range<u64>,
        seen: ReadState,
        keep: bool,
    ) -> io::Result<Arc<Block>> {
        let data = self.read_origin(&file.origin, range.clone())?;
        let start = (range.start % self.block_size) as u32;
        let end =
            ((data.len() as u64) < range.end - range.start).then_some(start + data.len() as u32);
        let fill = Fill {
            prefetched: false,
            from_disk: false,
            generation: seen.generation,
            keep,
        };
        Ok(self.keep(&mut self.lock(), key, Piece { start, data, end }, fill))
    }

    /// One origin read of `range`; short only at the end of the file.
    fn read_origin(&self, origin: &OriginFile, range: Range<u64>) -> io::Result<Vec<u8>> {
        let mut data = vec![0; (range.end - range.start) as usize];
        let mut done = 0;
        while done < data.len() {
            let count = origin.read_at(&mut data[done..], range.start + done as u64)?;
            if count == 0 {
                break;
            }
            done += count;
        }
        data.truncate(done);
        bump(&self.counters.origin_reads, 1);
        bump(&self.counters.origin_bytes, done as u64);
        Ok(data)
    }

    /// Adds fetched bytes to block `key` in memory, unless the file changed since the
    /// fetch began (its generation moved), the block's epoch is past, or the fill may not
    /// be kept.
    /// Returns the block as it now is (or a block of just these bytes, if not kept).
    fn keep(&self, state: &mut State, key: BlockKey, piece: Piece, fill: Fill) -> Arc<Block> {
        let Piece { start, data, end } = piece;
        let current = state
            .files
            .get(&key.file)
            .is_some_and(|file| file.epoch == key.epoch && file.generation == fill.generation);
        if !fill.keep || !current {
            return Arc::new(Block::new(start, data, end, fill.prefetched));
        }
        let block = match state.memory.peek(&key) {
            Some(old) => old.with(start, data, end, fill.prefetched),
            None => {
                if let Some(file) = state.files.get_mut(&key.file) {
                    file.blocks += 1;
                }
                Block::new(start, data, end, fill.prefetched)
            }
        };
        if fill.from_disk {
            block.mark_spilled();
        }
        let block = Arc::new(block);
        let weight = block.weight();
        let version = state.files.get_mut(&key.file).map(|file| {
            file.last_index = file.last_index.max(key.index);
            file.version
        });
        for (evicted, block) in state.memory.insert(key, Arc::clone(&block), weight) {
            self.count_unused(&block);
            if let Some(file) = state.files.get_mut(&evicted.file)
                && file.epoch == evicted.epoch
            {
                file.blocks -= 1;
            }
        }
        if !fill.prefetched
            && !fill.from_disk
            && let Some(version) = version
        {
            block.first_use();
            self.spill(state, (key.file, key.index), &block, version);
        }
        block
    }

    fn count_unused(&self, block: &Block) {
        if block.prefetched && !block.used() {
            bump(&self.counters.prefetch_unused_bytes, block.weight());
        }
    }
}

/// What a memory lookup found.
enum Held<'a> {
    /// A block holding the whole range.
    Block(Arc<Block>),
    /// Nothing; with a claim on the block if this reader now fills it for everyone.
    Nothing(Claim<'a>),
}

/// Blocks being filled by one read; others wait. Released when dropped.
struct Claim<'a> {
    cache: &'a Cache,
    keys: Vec<BlockKey>,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if self.keys.is_empty() {
            return;
        }
        let mut state = self.cache.lock();
        for key in &self.keys {
            state.inflight.remove(key);
        }
        self.cache.filled.notify_all();
    }
}

/// Prefetch ranges cut at the origin's end of file (as last known).
fn clip(ranges: Vec<Range<u64>>, size: u64) -> Vec<Range<u64>> {
    let end = size.div_ceil(block::PAGE) * block::PAGE;
    ranges
        .into_iter()
        .filter(|range| range.start < end)
        .map(|range| range.start..range.end.min(end))
        .collect()
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
