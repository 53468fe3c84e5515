//! A tree that one process changes while others read it (a replica's copy under its
//! standby mount): a reader-writer lock across processes, so a reader never sees a change
//! half made, and the offset the tree holds, so readers know what they see.
//!
//! The lock is two one-byte open file description locks (`F_OFD_SETLKW`) on a small file
//! beside the tree: byte [`TURNSTILE`] and byte [`TREE`]. The kernel drops them when the
//! holder dies, so a node killed mid-change never leaves readers waiting. A writer takes the
//! turnstile, then the tree; a reader passes the turnstile (takes and drops it shared)
//! before it takes the tree shared, so readers arriving while a writer waits queue behind
//! it: a stream of readers cannot starve the applier. Bytes 0-7 of the file hold the offset
//! of the first change the tree does not hold yet (little-endian), written under the lock.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The byte a writer holds while it waits for the readers in the tree to leave.
const TURNSTILE: i64 = 8;
/// The byte that stands for the tree.
const TREE: i64 = 9;

/// The lock and offset of one shared tree. Cheap to clone (the clones share their fds).
#[derive(Clone, Debug)]
pub struct TreeGate {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    /// Descriptions not in use by a reader; each reader holding the tree needs its own
    /// (locks belong to a description, and one reader's unlock must not drop another's).
    idle: Mutex<Vec<File>>,
}

/// A change to the tree under way: readers wait until it is dropped.
#[derive(Debug)]
pub struct Changing(Held);

/// A read of the tree under way: changes wait until it is dropped.
#[derive(Debug)]
pub struct Reading(Held);

/// A description holding the tree, given back to the gate's idle ones when dropped.
#[derive(Debug)]
struct Held {
    gate: TreeGate,
    file: Option<File>,
}

fn lock(file: &File, byte: i64, kind: libc::c_int) -> io::Result<()> {
    // SAFETY: a zeroed flock is a valid value; every field that matters is set below.
    let mut range: libc::flock = unsafe { std::mem::zeroed() };
    range.l_type = kind as libc::c_short;
    range.l_whence = libc::SEEK_SET as libc::c_short;
    range.l_start = byte;
    range.l_len = 1;
    loop {
        // SAFETY: valid fd and a flock the call only reads.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLKW, &range) } == 0 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
}

impl TreeGate {
    /// Opens (or makes) the gate file at `path`.
    pub fn open(path: &Path) -> io::Result<TreeGate> {
        let first = open(path)?;
        Ok(TreeGate {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                idle: Mutex::new(vec![first]),
            }),
        })
    }

    /// Where the gate file is.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn take_file(&self) -> io::Result<File> {
        let idle = self
            .inner
            .idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pop();
        match idle {
            Some(file) => Ok(file),
            None => open(&self.inner.path),
        }
    }

    fn give_back(&self, file: File) {
        let mut idle = self
            .inner
            .idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        idle.push(file);
    }

    /// Waits until no reader is in the tree and holds it for a change.
    pub fn change(&self) -> io::Result<Changing> {
        // The turnstile is kept until the tree is held, so readers arriving meanwhile wait.
        self.hold(|file| {
            lock(file, TURNSTILE, libc::F_WRLCK)?;
            lock(file, TREE, libc::F_WRLCK)?;
            lock(file, TURNSTILE, libc::F_UNLCK)
        })
        .map(Changing)
    }

    /// Waits until no change is under way and holds the tree for reading.
    pub fn read(&self) -> io::Result<Reading> {
        // Passing the turnstile queues this reader behind a writer waiting for the tree.
        self.hold(|file| {
            lock(file, TURNSTILE, libc::F_RDLCK)?;
            lock(file, TURNSTILE, libc::F_UNLCK)?;
            lock(file, TREE, libc::F_RDLCK)
        })
        .map(Reading)
    }

    /// Takes the tree with `enter`, on a description of its own.
    fn hold(&self, enter: impl FnOnce(&File) -> io::Result<()>) -> io::Result<Held> {
        let file = self.take_file()?;
        // On failure the description is closed, which drops whatever it held.
        enter(&file)?;
        Ok(Held {
            gate: self.clone(),
            file: Some(file),
        })
    }
}

fn read_offset(file: &File) -> io::Result<Option<u64>> {
    let mut bytes = [0u8; 8];
    match file.read_at(&mut bytes, 0)? {
        8 => Ok(Some(u64::from_le_bytes(bytes))),
        _ => Ok(None),
    }
}

impl Held {
    fn file(&self) -> io::Result<&File> {
        self.file
            .as_ref()
            .ok_or_else(|| io::Error::other("the gate's description was given back"))
    }
}

impl Changing {
    /// Says the tree holds every change below `offset` (readers see it once this change
    /// is dropped). Not synced: it describes the tree as the page cache holds it.
    pub fn set_offset(&self, offset: u64) -> io::Result<()> {
        self.0.file()?.write_all_at(&offset.to_le_bytes(), 0)
    }
}

impl Reading {
    /// The offset of the first change the tree being read lacks, once a writer said it.
    pub fn offset(&self) -> io::Result<Option<u64>> {
        read_offset(self.0.file()?)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(file) = self.file.take() {
            // An unlock cannot fail on a valid range; if it did, the description goes
            // (closing it drops its locks) rather than back to the idle ones.
            if lock(&file, TREE, libc::F_UNLCK).is_ok() {
                self.gate.give_back(file);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::time::Duration;

    #[test]
    fn readers_never_see_a_change_half_made_and_the_writer_is_not_starved() {
        let dir = tempfile::tempdir().unwrap();
        let gate = TreeGate::open(&dir.path().join("gate")).unwrap();
        // Two numbers a change sets one after the other: a reader must see them equal.
        let pair = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
        let stop = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..3)
            .map(|_| {
                let (gate, pair, stop) = (gate.clone(), Arc::clone(&pair), Arc::clone(&stop));
                std::thread::spawn(move || {
                    let mut reads = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let reading = gate.read().unwrap();
                        let first = pair.0.load(Ordering::SeqCst);
                        std::thread::yield_now();
                        assert_eq!(first, pair.1.load(Ordering::SeqCst), "a torn change");
                        if let Some(offset) = reading.offset().unwrap() {
                            assert!(offset >= first, "{offset} < {first}");
                        }
                        reads += 1;
                    }
                    reads
                })
            })
            .collect();
        for value in 1..=200u64 {
            let changing = gate.change().unwrap();
            pair.0.store(value, Ordering::SeqCst);
            std::thread::sleep(Duration::from_micros(50));
            pair.1.store(value, Ordering::SeqCst);
            changing.set_offset(value).unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        let reads: u64 = readers
            .into_iter()
            .map(|reader| reader.join().unwrap())
            .sum();
        assert!(reads > 0);
        assert_eq!(gate.read().unwrap().offset().unwrap(), Some(200));
    }

    #[test]
    fn a_gate_never_written_has_no_offset() {
        let dir = tempfile::tempdir().unwrap();
        let gate = TreeGate::open(&dir.path().join("gate")).unwrap();
        assert_eq!(gate.read().unwrap().offset().unwrap(), None);
    }
}
