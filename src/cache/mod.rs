//! The read cache: blocks of origin files kept in memory (and, with issue 4's disk tier,
//! on a fast local disk) between `vfs` and the origin, with read-ahead.
//!
//! `vfs` opens a [`CachedFile`] per open file and reads through [`Cache::read`]; it tells
//! the cache of every change it makes ([`Cache::changed`]). The cache holds origin content
//! only: write-behind's unflushed bytes are laid over by `vfs` afterwards, and a block is
//! never filled while its file has unflushed bytes, so a flush can never leave a stale
//! block behind. Coherence rests on two numbers per file:
//!
//! - the *epoch*, part of every block's key: when the origin changed under the cache
//!   (another program wrote it: its size, mtime or ctime moved and no change of ours
//!   explains that) the epoch moves on and the old blocks are never asked for again;
//! - the *generation*, bumped by every change made through the mount: a fill that began
//!   before a change is not kept, so a reader racing a writer cannot cache old bytes.

pub mod block;
pub mod policy;
mod prefetch;
pub mod readahead;
pub mod stats;

use std::collections::{HashMap, HashSet};
use std::io;
use std::ops::Range;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::CacheConfig;
use crate::origin::{OriginFile, Stat};
use block::{Block, BlockKey, FileKey, Version, page_aligned};
use policy::TwoQ;
use readahead::Readahead;
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

/// A change made through the mount, as the cache must hear of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// These bytes were written.
    Written(Range<u64>),
    /// The file was cut or extended to this size.
    Truncated(u64),
    /// The content may have changed anywhere (fallocate, the file unlinked).
    Content,
    /// Only attributes changed (chmod, xattr, a new link): the content stays valid, but
    /// the file's ctime moved because of us.
    Attributes,
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
    jobs: prefetch::Queue,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

#[derive(Debug)]
struct State {
    memory: TwoQ<BlockKey, Arc<Block>>,
    files: HashMap<FileKey, FileState>,
    /// Blocks an origin read is filling now; readers of them wait instead of reading too.
    inflight: HashSet<BlockKey>,
    next_epoch: u64,
}

/// What the cache knows of one origin file.
#[derive(Debug)]
struct FileState {
    epoch: u64,
    /// The origin's version the cached blocks belong to.
    version: Version,
    /// When the version was last compared with the origin's.
    checked: Instant,
    generation: u64,
    /// A change through the mount moved the origin's version since it was last checked.
    changed_locally: bool,
    /// The block a read found the end of the file in.
    eof_block: Option<u64>,
    /// Blocks held under the current epoch.
    blocks: usize,
    /// The highest block number filled under the current epoch.
    last_index: u64,
    /// Open files reading through the cache.
    opens: usize,
}

/// One open file reading through the cache.
#[derive(Debug)]
pub struct CachedFile {
    key: FileKey,
    origin: Arc<OriginFile>,
    readahead: Mutex<Readahead>,
}

/// What a read needs to know of its file, taken under the lock once.
#[derive(Clone, Copy, Debug)]
struct Snapshot {
    epoch: u64,
    generation: u64,
    size: u64,
}

impl CachedFile {
    /// The origin file's identity.
    pub fn key(&self) -> FileKey {
        self.key
    }
}

impl Cache {
    /// The cache `config` describes, with its read-ahead threads running; `None` when the
    /// config turns caching off.
    pub fn start(config: &CacheConfig) -> io::Result<Option<Arc<Cache>>> {
        if !config.enabled() {
            return Ok(None);
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
            }),
            filled: Condvar::new(),
            counters: Counters::default(),
            jobs: prefetch::Queue::new(PREFETCH_QUEUE_MAX),
            workers: Mutex::new(Vec::new()),
        });
        let mut workers = Vec::new();
        for number in 0..PREFETCH_THREADS {
            let worker = Arc::clone(&cache);
            workers.push(
                std::thread::Builder::new()
                    .name(format!("prefetch-{number}"))
                    .spawn(move || worker.prefetch_worker())?,
            );
        }
        *lock(&cache.workers) = workers;
        Ok(Some(cache))
    }

    /// Stops the read-ahead threads (queued read-ahead is dropped).
    pub fn shutdown(&self) {
        self.jobs.stop();
        for worker in std::mem::take(&mut *lock(&self.workers)) {
            if worker.join().is_err() {
                tracing::error!("a read-ahead thread panicked");
            }
        }
    }

    /// Starts reading `origin` (whose metadata is `stat`) through the cache. `dirty`: the
    /// file has unflushed writes, so a changed origin version may be ours.
    pub fn open(&self, origin: Arc<OriginFile>, stat: &Stat, dirty: bool) -> Arc<CachedFile> {
        let key = FileKey::of(stat);
        let mut state = self.lock();
        let State {
            files, next_epoch, ..
        } = &mut *state;
        let file = file_state(files, next_epoch, key, Version::of(stat));
        file.opens += 1;
        self.revalidate(key, file, Version::of(stat), dirty, next_epoch);
        Arc::new(CachedFile {
            key,
            origin,
            readahead: Mutex::new(Readahead::new(self.readahead.0, self.readahead.1)),
        })
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
        let (due, mut snapshot) = self.snapshot(file)?;
        let dirty = dirty();
        if due {
            let version = Version::of(&file.origin.stat()?);
            let mut state = self.lock();
            let State {
                files, next_epoch, ..
            } = &mut *state;
            let known = file_state(files, next_epoch, file.key, version);
            self.revalidate(file.key, known, version, dirty, next_epoch);
            // Fills keep the generation noted before `dirty` was asked (see above).
            snapshot = Snapshot {
                epoch: known.epoch,
                size: known.version.size,
                ..snapshot
            };
        }
        if !dirty && !advice.prefetch.is_empty() {
            self.jobs.push(prefetch::Job {
                file: Arc::clone(file),
                epoch: snapshot.epoch,
                generation: snapshot.generation,
                ranges: self.clip(advice.prefetch, snapshot.size),
            });
        }
        let mut done = 0u64;
        while done < len {
            let position = offset + done;
            let within = position % self.block_size;
            let piece = (len - done).min(self.block_size - within);
            let key = BlockKey {
                file: file.key,
                epoch: snapshot.epoch,
                index: position / self.block_size,
            };
            let slot = &mut into[done as usize..(done + piece) as usize];
            let count = match self.held(
                key,
                within as u32..(within + piece) as u32,
                advice.streaming,
            ) {
                Held::Block(block) => {
                    bump(&self.counters.memory_hits, 1);
                    if block.first_use() && block.prefetched {
                        bump(&self.counters.prefetch_used_bytes, block.weight());
                    }
                    block
                        .read(within as u32, slot)
                        .expect("the block covers the range")
                }
                Held::Nothing { claimed } => {
                    bump(&self.counters.memory_misses, 1);
                    // Only what was asked for: read-ahead fetches the rest of a stream,
                    // and a random reader must pay for nothing more.
                    let fetch = page_aligned(position..position + piece);
                    let fetched =
                        self.fill(file, key, fetch.clone(), claimed, !dirty, snapshot, false);
                    let data = fetched?;
                    let from = ((position - fetch.start) as usize).min(data.len());
                    let count = (data.len() - from).min(slot.len());
                    slot[..count].copy_from_slice(&data[from..from + count]);
                    count
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
    pub fn changed(&self, key: FileKey, change: Change) {
        let mut state = self.lock();
        let state = &mut *state;
        let Some(file) = state.files.get_mut(&key) else {
            return;
        };
        file.changed_locally = true;
        let (first, last) = match change {
            Change::Attributes => return,
            Change::Written(range) => (
                range.start / self.block_size,
                range.end.saturating_sub(1) / self.block_size,
            ),
            Change::Truncated(size) => (size / self.block_size, file.last_index),
            Change::Content => (0, u64::MAX),
        };
        file.generation += 1;
        if last.saturating_sub(first) >= DROP_ONE_BY_ONE_MAX {
            new_epoch(file, &mut state.next_epoch);
            return;
        }
        let epoch = file.epoch;
        let doomed = (first..=last).chain(file.eof_block.take());
        let mut dropped = 0;
        for index in doomed {
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

    /// What the cache did since it started.
    pub fn stats(&self) -> CacheStats {
        let state = self.lock();
        let memory = TierStats {
            bytes: state.memory.bytes(),
            budget: state.memory.budget(),
            blocks: state.memory.len() as u64,
            evictions: state.memory.stats.evictions,
            promotions: state.memory.stats.promotions,
            ..TierStats::default()
        };
        drop(state);
        self.counters.snapshot(memory, None)
    }

    /// The block size.
    pub fn block_size(&self) -> u64 {
        self.block_size
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// The file's epoch and generation now, and whether its version is due for a check.
    fn snapshot(&self, file: &CachedFile) -> io::Result<(bool, Snapshot)> {
        let mut state = self.lock();
        let State {
            files, next_epoch, ..
        } = &mut *state;
        // Forgotten while open cannot happen (`opens` holds it); a new file otherwise.
        let known = match files.contains_key(&file.key) {
            true => files.get_mut(&file.key).expect("present"),
            false => file_state(
                files,
                next_epoch,
                file.key,
                Version::of(&file.origin.stat()?),
            ),
        };
        let due = known.checked.elapsed() >= self.revalidate_after;
        Ok((
            due,
            Snapshot {
                epoch: known.epoch,
                generation: known.generation,
                size: known.version.size,
            },
        ))
    }

    /// Compares the origin's `version` of `key` with the cached one. A difference that no
    /// change of ours explains makes the cached blocks stale: the epoch moves on.
    fn revalidate(
        &self,
        key: FileKey,
        file: &mut FileState,
        version: Version,
        dirty: bool,
        next_epoch: &mut u64,
    ) {
        if version != file.version {
            if !file.changed_locally && !dirty {
                tracing::debug!(
                    dev = key.dev,
                    ino = key.ino,
                    "origin file changed; its cached blocks are dropped"
                );
                bump(&self.counters.invalidations, 1);
                new_epoch(file, next_epoch);
                file.generation += 1;
            }
            file.version = version;
        }
        file.checked = Instant::now();
        if !dirty {
            file.changed_locally = false;
        }
    }

    /// Prefetch ranges cut at the origin's end of file (as last seen).
    fn clip(&self, ranges: Vec<Range<u64>>, size: u64) -> Vec<Range<u64>> {
        let end = size.div_ceil(block::PAGE) * block::PAGE;
        ranges
            .into_iter()
            .filter(|range| range.start < end)
            .map(|range| range.start..range.end.min(end))
            .collect()
    }

    /// Looks `key` up for `range`, waiting while another thread fills it. On a miss, a
    /// streaming reader claims the block so others wait for its fill.
    fn held(&self, key: BlockKey, range: Range<u32>, streaming: bool) -> Held {
        let mut state = self.lock();
        loop {
            if let Some(block) = state.memory.get(&key)
                && block.covers(range.clone())
            {
                return Held::Block(Arc::clone(block));
            }
            if !state.inflight.contains(&key) {
                let claimed = streaming && state.inflight.insert(key);
                return Held::Nothing { claimed };
            }
            state = self
                .filled
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    /// Reads `range` (within one block) of the origin and keeps it if `keep` and nothing
    /// changed the file since `snapshot`; releases the claim on `key` either way.
    #[allow(clippy::too_many_arguments)]
    fn fill(
        &self,
        file: &CachedFile,
        key: BlockKey,
        range: Range<u64>,
        claimed: bool,
        keep: bool,
        snapshot: Snapshot,
        prefetched: bool,
    ) -> io::Result<Vec<u8>> {
        let read = self.read_origin(&file.origin, range.clone());
        let mut state = self.lock();
        if claimed {
            state.inflight.remove(&key);
            self.filled.notify_all();
        }
        let data = read?;
        if keep {
            let hit_end = (data.len() as u64) < range.end - range.start;
            let start = (range.start % self.block_size) as u32;
            self.keep(
                &mut state,
                key,
                start,
                data.clone(),
                hit_end,
                snapshot.generation,
                prefetched,
            );
        }
        Ok(data)
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

    /// Puts fetched bytes into the memory tier, unless the file changed since the fetch
    /// began (its generation moved) or the block belongs to an old epoch.
    #[allow(clippy::too_many_arguments)]
    fn keep(
        &self,
        state: &mut State,
        key: BlockKey,
        start: u32,
        data: Vec<u8>,
        hit_end: bool,
        generation: u64,
        prefetched: bool,
    ) {
        let Some(file) = state.files.get_mut(&key.file) else {
            return;
        };
        if file.epoch != key.epoch || file.generation != generation {
            return;
        }
        let end = hit_end.then_some(start + data.len() as u32);
        if hit_end {
            file.eof_block = Some(key.index);
        }
        file.last_index = file.last_index.max(key.index);
        let block = match state.memory.peek(&key) {
            Some(old) => old.with(start, data, end, prefetched),
            None => {
                file.blocks += 1;
                Block::new(start, data, end, prefetched)
            }
        };
        let weight = block.weight();
        for (evicted, block) in state.memory.insert(key, Arc::new(block), weight) {
            self.count_unused(&block);
            if let Some(file) = state.files.get_mut(&evicted.file)
                && file.epoch == evicted.epoch
            {
                file.blocks -= 1;
            }
        }
    }

    fn count_unused(&self, block: &Block) {
        if block.prefetched && !block.used() {
            bump(&self.counters.prefetch_unused_bytes, block.weight());
        }
    }
}

/// What a lookup found.
enum Held {
    /// A block holding the whole range.
    Block(Arc<Block>),
    /// Nothing; `claimed` if this reader now fills the block for everyone.
    Nothing { claimed: bool },
}

/// Makes every cached block of `file` unreachable: they age out of the tiers unasked.
fn new_epoch(file: &mut FileState, next_epoch: &mut u64) {
    file.epoch = *next_epoch;
    *next_epoch += 1;
    file.blocks = 0;
    file.last_index = 0;
    file.eof_block = None;
}

/// The state of `key`, created at `version` if the cache knew nothing of it.
fn file_state<'a>(
    files: &'a mut HashMap<FileKey, FileState>,
    next_epoch: &mut u64,
    key: FileKey,
    version: Version,
) -> &'a mut FileState {
    files.entry(key).or_insert_with(|| {
        let epoch = *next_epoch;
        *next_epoch += 1;
        FileState {
            epoch,
            version,
            checked: Instant::now(),
            generation: 0,
            changed_locally: false,
            eof_block: None,
            blocks: 0,
            last_index: 0,
            opens: 0,
        }
    })
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
