//! The stored hashes of one copy (the primary's origin, or a replica's tree): per file, the
//! chunk hashes of its content and the stat stamp it had when they were taken, kept current
//! as changes are made, and saved in one file (`hashes` in the state or copy directory).
//!
//! A stored entry is *evidence* of what a file held only while the file's stamp (size,
//! mtime, ctime) is unchanged and no change to it is pending. Every write moves ctime, so
//! content that no longer matches a current entry was changed by nothing that writes:
//! that is rot. Changes made through mirrorfs are marked here before they reach the
//! file ([`HashStore::changing`]), and the hasher ([`super::hasher`]) rehashes what they
//! touched once they are in; anything else that changes a file (another program writing
//! the origin) leaves a stamp that no longer matches, and the entry is merely unknown.
//!
//! What is saved, and how a save writes only what changed, is [`super::saved`]'s.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::Path;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::log::LogPath;
use crate::types::{Change, FileId, Stamp};

use super::chunks::{CHUNK_BYTES, ChunkHash, FileHashes};
use super::entry::{Pending, Stored};
use super::saved::{Changed, SavedStore};

/// The stored hashes of one copy and the changes not yet in them.
#[derive(Debug)]
pub struct HashStore {
    /// Taken before `state` by a save, and held while it writes.
    saved: Mutex<SavedStore>,
    state: Mutex<State>,
    /// Signalled when there is work for the hasher, or it should stop.
    work: Condvar,
}

#[derive(Debug, Default)]
struct State {
    files: HashMap<FileId, Stored>,
    pending: HashMap<FileId, Pending>,
    /// Changes under way, not yet in the file: the hasher leaves these files alone.
    changing: HashMap<FileId, u32>,
    /// Files the hasher is hashing now.
    hashing: HashSet<FileId>,
    /// Something changed since the last save.
    unsaved: bool,
    /// The files whose entries changed since the last save.
    dirty: HashSet<FileId>,
    /// The hasher sleeps, waiting for work.
    idle: bool,
    stopping: bool,
}

/// A piece of work for the hasher: a file to bring up to date.
#[derive(Debug)]
pub struct Job {
    /// Which file.
    pub key: FileId,
    /// What changed.
    pub pending: Pending,
    /// What is stored for it now.
    pub stored: Option<Stored>,
}

/// A change under way (see [`HashStore::changing`]); dropping it says the change is in
/// the file.
pub struct Changing<'a, F: Fn() -> u64> {
    store: &'a HashStore,
    key: FileId,
    /// The offset the change's record will be below once appended.
    after: F,
}

impl<F: Fn() -> u64> Drop for Changing<'_, F> {
    fn drop(&mut self) {
        let after = (self.after)();
        let mut state = self.store.lock();
        if let Some(pending) = state.pending.get_mut(&self.key) {
            pending.after = pending.after.max(after);
            state.touch(self.key);
        }
        match state.changing.get_mut(&self.key) {
            Some(count) if *count > 1 => *count -= 1,
            _ => {
                state.changing.remove(&self.key);
            }
        }
        self.store.wake_idle(state);
    }
}

impl<F: Fn() -> u64> std::fmt::Debug for Changing<'_, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Changing").field("key", &self.key).finish()
    }
}

impl HashStore {
    /// Opens the store saved at `dir/hashes`. A missing, damaged or older file starts an
    /// empty store: stored hashes are evidence, not data, and are rebuilt by hashing.
    pub fn open(dir: &Path) -> HashStore {
        let (saved, entries) = SavedStore::open(dir);
        let state = State {
            files: entries.files,
            pending: entries.pending,
            ..State::default()
        };
        HashStore {
            saved: Mutex::new(saved),
            state: Mutex::new(state),
            work: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Marks a change to file `key` (named `path`) that is about to be made. The file is
    /// not rehashed until the returned guard is dropped and the copy holds every record
    /// below what `after` then says.
    pub fn changing<F: Fn() -> u64>(
        &self,
        key: FileId,
        path: Option<&LogPath>,
        change: &Change,
        after: F,
    ) -> Changing<'_, F> {
        let mut state = self.lock();
        *state.changing.entry(key).or_insert(0) += 1;
        state.touch(key);
        let pending = state.pending.entry(key).or_default();
        pending.unchecked += 1;
        if let Some(path) = path
            && pending.path.as_ref() != Some(path)
        {
            pending.path = Some(path.clone());
        }
        match change {
            Change::Written(range) if range.start < range.end => {
                let first = range.start / CHUNK_BYTES;
                let last = (range.end - 1) / CHUNK_BYTES;
                if last - first > 4096 {
                    pending.whole = true;
                } else {
                    pending.chunks.extend(first..=last);
                }
            }
            Change::Written(_) | Change::Attributes => {}
            Change::Truncated(_) => pending.resized = true,
            Change::Content => pending.whole = true,
        }
        drop(state);
        Changing {
            store: self,
            key,
            after,
        }
    }

    /// Says that file `key`, just marked as changing, had stamp `before` just before the
    /// change: if that is not the stamp its stored hashes were taken at, something else
    /// changed the file too, and it is rehashed whole.
    pub fn seen_before(&self, key: FileId, before: &Stamp) {
        let mut state = self.lock();
        let stale = state
            .files
            .get(&key)
            .is_some_and(|stored| stored.stamp != *before);
        if let Some(pending) = state.pending.get_mut(&key) {
            pending.unchecked = pending.unchecked.saturating_sub(1);
            pending.whole |= stale;
            state.touch(key);
        }
    }

    /// Asks for file `key` (named `path`) to be hashed whole in the background, unless a
    /// change to it is pending already (a walk found no current stored hashes for it).
    pub fn request(&self, key: FileId, path: &LogPath) {
        let mut state = self.lock();
        if state.pending.contains_key(&key)
            || state.changing.contains_key(&key)
            || state.hashing.contains(&key)
        {
            return;
        }
        state.pending.insert(
            key,
            Pending {
                path: Some(path.clone()),
                whole: true,
                ..Pending::default()
            },
        );
        state.touch(key);
        self.wake_idle(state);
    }

    /// The stored hashes of `key`, if they describe the file as it is: its stamp is
    /// `stamp` and no change to it is pending.
    pub fn current(&self, key: FileId, stamp: &Stamp) -> Option<Stored> {
        current_in(&self.lock(), key, stamp).cloned()
    }

    /// The root of `key`'s stored hashes, if they are current (see [`HashStore::current`]).
    pub fn current_root(&self, key: FileId, stamp: &Stamp) -> Option<ChunkHash> {
        current_in(&self.lock(), key, stamp).map(|stored| stored.root)
    }

    /// What is stored for `key`, current or not.
    pub fn stored(&self, key: FileId) -> Option<Stored> {
        self.lock().files.get(&key).cloned()
    }

    /// Stores hashes taken of `key` with the file at `stamp` (the same before and after
    /// they were read), unless a change to it was marked meanwhile (then they may already
    /// be out of date). Returns whether they were kept.
    pub fn put(&self, key: FileId, hashes: FileHashes, stamp: Stamp) -> bool {
        let mut state = self.lock();
        state.hashing.remove(&key);
        if state.pending.contains_key(&key) || state.changing.contains_key(&key) {
            return false;
        }
        let verified = state.files.get(&key).map_or(0, |old| old.verified);
        state.files.insert(
            key,
            Stored {
                root: hashes.root(),
                hashes,
                stamp,
                verified,
            },
        );
        state.touch(key);
        true
    }

    /// Records that a content check found `key` matching its stored hashes now.
    pub fn verified(&self, key: FileId) {
        let now = unix_now();
        let mut state = self.lock();
        if let Some(stored) = state.files.get_mut(&key) {
            stored.verified = now;
            state.touch(key);
        }
    }

    /// Forgets what is stored for files not in `live` (a full walk saw every file there is).
    pub fn retain(&self, live: &HashSet<FileId>) {
        let mut state = self.lock();
        let gone: Vec<FileId> = (state.files.keys())
            .chain(state.pending.keys())
            .filter(|key| !live.contains(key))
            .copied()
            .collect();
        for key in gone {
            state.files.remove(&key);
            state.pending.remove(&key);
            state.touch(key);
        }
    }

    /// Takes up to `limit` files ready to rehash: marked, no change under way, and every
    /// record they wait for below `applied`.
    pub fn take(&self, applied: u64, limit: usize) -> Vec<Job> {
        let mut state = self.lock();
        let ready: Vec<FileId> = state
            .pending
            .iter()
            .filter(|(key, pending)| pending.after <= applied && !state.changing.contains_key(key))
            .map(|(key, _)| *key)
            .take(limit)
            .collect();
        ready
            .into_iter()
            .map(|key| {
                let pending = state.pending.remove(&key).expect("found above");
                state.hashing.insert(key);
                Job {
                    key,
                    stored: state.files.get(&key).cloned(),
                    pending,
                }
            })
            .collect()
    }

    /// Puts back a job that could not be finished, merged with what was marked since.
    pub fn put_back(&self, job: Job) {
        let mut state = self.lock();
        state.hashing.remove(&job.key);
        state.touch(job.key);
        let pending = state.pending.entry(job.key).or_default();
        pending.chunks.extend(job.pending.chunks);
        pending.whole |= job.pending.whole;
        pending.resized |= job.pending.resized;
        pending.unchecked += job.pending.unchecked;
        pending.after = pending.after.max(job.pending.after);
        if pending.path.is_none() {
            pending.path = job.pending.path;
        }
    }

    /// Drops what is stored for `key`: the file it named is gone or cannot be read.
    pub fn forget(&self, key: FileId) {
        let mut state = self.lock();
        state.hashing.remove(&key);
        state.files.remove(&key);
        state.touch(key);
    }

    /// How many files have pending changes.
    pub fn pending_files(&self) -> usize {
        self.lock().pending.len()
    }

    /// How many files have stored hashes.
    pub fn stored_files(&self) -> usize {
        self.lock().files.len()
    }

    /// Waits up to `timeout` for work or a stop; returns false once stopping.
    pub fn wait(&self, timeout: Duration) -> bool {
        let mut state = self.lock();
        if state.stopping {
            return false;
        }
        state.idle = true;
        let (mut state, _) = self
            .work
            .wait_timeout(state, timeout)
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        state.idle = false;
        !state.stopping
    }

    /// Wakes the hasher if it sleeps: a change is ready for it. Only then, so that a
    /// write through the mount pays no wake-up while the hasher is busy anyway.
    fn wake_idle(&self, mut state: MutexGuard<'_, State>) {
        let idle = std::mem::take(&mut state.idle);
        drop(state);
        if idle {
            self.work.notify_all();
        }
    }

    /// Whether the hasher has been told to stop.
    pub fn is_stopping(&self) -> bool {
        self.lock().stopping
    }

    /// Tells the hasher to stop.
    pub fn stop(&self) {
        self.lock().stopping = true;
        self.work.notify_all();
    }

    /// Saves what changed since the last save: appended to the journal, or, once that has
    /// outgrown the snapshot, folded into a new one.
    pub fn save(&self) -> io::Result<()> {
        let mut saved = self
            .saved
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Only the entries are taken under the lock; the disk is written without it.
        let work = {
            let mut state = self.lock();
            if !state.unsaved {
                return Ok(());
            }
            state.unsaved = false;
            let dirty = std::mem::take(&mut state.dirty);
            if saved.wants_snapshot() {
                SavedStore::encode_snapshot(&state.files, &state.pending).map(Save::Snapshot)
            } else {
                let changed = dirty
                    .into_iter()
                    .map(|key| Changed {
                        key,
                        stored: state.files.get(&key).cloned(),
                        pending: state.pending.get(&key).cloned(),
                    })
                    .collect();
                Ok(Save::Append(changed))
            }
        };
        let result = match work {
            Ok(Save::Snapshot(bytes)) => saved.write_snapshot(&bytes),
            Ok(Save::Append(changed)) => saved.append(&changed),
            Err(error) => Err(error),
        };
        if result.is_err() {
            // What was taken is not on disk: the next save writes everything.
            saved.fold_next();
            self.lock().unsaved = true;
        }
        result
    }
}

/// What one save writes.
enum Save {
    Snapshot(Vec<u8>),
    Append(Vec<Changed>),
}

impl State {
    /// Notes that `key`'s entry changed since the last save.
    fn touch(&mut self, key: FileId) {
        self.unsaved = true;
        self.dirty.insert(key);
    }
}

/// What `state` stores for `key`, if it is current with the file at `stamp`.
fn current_in<'s>(state: &'s State, key: FileId, stamp: &Stamp) -> Option<&'s Stored> {
    if state.pending.contains_key(&key) || state.changing.contains_key(&key) {
        return None;
    }
    state
        .files
        .get(&key)
        .filter(|stored| stored.stamp == *stamp)
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::saved::{JOURNAL_NAME, SNAPSHOT_NAME as FILE_NAME};
    use crate::types::Timestamp;

    fn id(dev: u64, ino: u64) -> FileId {
        FileId { dev, ino }
    }

    fn stamp(size: u64, ctime: i64) -> Stamp {
        let time = Timestamp {
            seconds: ctime,
            nanos: 0,
        };
        Stamp {
            size,
            mtime: time,
            ctime: time,
        }
    }

    fn hashes(size: u64) -> FileHashes {
        FileHashes {
            size,
            chunks: vec![[size as u8; 32]],
        }
    }

    #[test]
    fn an_entry_is_current_only_with_its_stamp_and_nothing_pending() {
        let dir = tempfile::tempdir().unwrap();
        let store = HashStore::open(dir.path());
        assert!(store.put(id(1, 2), hashes(5), stamp(5, 10)));
        assert!(store.current(id(1, 2), &stamp(5, 10)).is_some());
        // Another program wrote it: ctime moved.
        assert!(store.current(id(1, 2), &stamp(5, 11)).is_none());
        let guard = store.changing(id(1, 2), None, &Change::Written(0..5), || 3);
        assert!(store.current(id(1, 2), &stamp(5, 10)).is_none());
        // Under way: not for the hasher yet.
        assert!(store.take(u64::MAX, 1).is_empty());
        drop(guard);
        // Waits for the record below offset 3.
        assert!(store.take(2, 1).is_empty());
        let job = store.take(3, 1).pop().unwrap();
        assert_eq!(
            job.pending.chunks.iter().copied().collect::<Vec<_>>(),
            vec![0]
        );
        assert!(store.put(job.key, hashes(6), stamp(6, 12)));
        assert!(store.current(id(1, 2), &stamp(6, 12)).is_some());
    }

    #[test]
    fn hashes_taken_across_a_change_are_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = HashStore::open(dir.path());
        drop(store.changing(id(1, 2), None, &Change::Content, || 0));
        let job = store.take(0, 1).pop().unwrap();
        drop(store.changing(id(1, 2), None, &Change::Written(0..1), || 0));
        assert!(!store.put(job.key, hashes(1), stamp(1, 1)));
        store.put_back(job);
        let again = store.take(0, 1).pop().unwrap();
        assert!(again.pending.whole);
        assert!(store.put(again.key, hashes(1), stamp(1, 1)));
    }

    #[test]
    fn the_store_survives_a_reopen_and_a_damaged_file_starts_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let store = HashStore::open(dir.path());
        assert!(store.put(id(1, 2), hashes(5), stamp(5, 10)));
        drop(store.changing(id(3, 4), None, &Change::Content, || 7));
        store.save().unwrap();
        let reopened = HashStore::open(dir.path());
        assert!(reopened.current(id(1, 2), &stamp(5, 10)).is_some());
        assert_eq!(
            reopened
                .take(7, 9)
                .iter()
                .map(|job| job.key)
                .collect::<Vec<_>>(),
            vec![id(3, 4)]
        );
        let path = dir.path().join(FILE_NAME);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert!(HashStore::open(dir.path()).stored(id(1, 2)).is_none());
    }

    #[test]
    fn a_later_save_appends_the_changed_entries_and_a_reopen_replays_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = HashStore::open(dir.path());
        for ino in 0..1000 {
            assert!(store.put(id(1, ino), hashes(ino), stamp(ino, 1)));
        }
        store.save().unwrap();
        let snapshot = std::fs::read(dir.path().join(FILE_NAME)).unwrap();
        let journal = || {
            std::fs::metadata(dir.path().join(JOURNAL_NAME))
                .unwrap()
                .len()
        };
        let empty = journal();

        assert!(store.put(id(1, 3), hashes(33), stamp(33, 2)));
        drop(store.changing(id(1, 4), None, &Change::Content, || 9));
        store.forget(id(1, 5));
        store.save().unwrap();
        // Nothing changed: nothing written.
        let after = journal();
        store.save().unwrap();
        assert_eq!(journal(), after);
        assert!(
            after - empty < 400,
            "{} bytes for three changes",
            after - empty
        );
        assert_eq!(std::fs::read(dir.path().join(FILE_NAME)).unwrap(), snapshot);

        let reopened = HashStore::open(dir.path());
        assert_eq!(reopened.stored_files(), 999);
        assert!(reopened.current(id(1, 3), &stamp(33, 2)).is_some());
        assert!(reopened.current(id(1, 4), &stamp(4, 1)).is_none());
        assert!(reopened.stored(id(1, 5)).is_none());
        let jobs = reopened.take(9, 9);
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].key, id(1, 4));
        assert!(jobs[0].pending.whole);
    }
}
