//! How a copy's stored hashes are kept on disk: a snapshot of all of them (`hashes`) and a
//! journal of the entries changed since (`hashes.journal`). A save appends what changed,
//! so its cost follows the changes, not the volume; once the journal outgrows the
//! snapshot, both are folded into a new snapshot, which keeps the bytes written per
//! change bounded (at most about twice an entry, amortized).
//!
//! The journal names the snapshot it follows by that snapshot's checksum: a crash between
//! writing a new snapshot and starting a new journal leaves a journal that names the old
//! one, and it is ignored (its entries are in the new snapshot). A torn last record is cut
//! off when the journal is opened. Stored hashes are evidence, not data: whatever cannot be
//! read is started afresh and rebuilt by hashing.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::durable;
use crate::types::FileId;

use super::entry::{Pending, Stored};

/// The snapshot's name in a state or copy directory.
pub const SNAPSHOT_NAME: &str = "hashes";

/// The journal's name in a state or copy directory.
pub const JOURNAL_NAME: &str = "hashes.journal";

/// What a snapshot starts with; a different format is started afresh.
pub const MAGIC: &[u8; 16] = b"mirrorfs-hash-2\n";

/// What a journal starts with, before the checksum of the snapshot it follows.
pub const JOURNAL_MAGIC: &[u8; 16] = b"mirrorfs-hjrn-1\n";

/// A journal is folded into a snapshot once it is larger than the snapshot and this.
const JOURNAL_BYTES_MIN: u64 = 1 << 20;

/// Each journal record: its payload's length and CRC-32, then the payload.
const RECORD_HEADER: usize = 8;

/// The largest record a journal is trusted to hold (a save of this many changed entries
/// is already far beyond what five seconds bring).
const RECORD_BYTES_MAX: usize = 1 << 30;

/// Every stored entry and pending change of a copy.
#[derive(Debug, Default, Deserialize)]
pub struct Entries {
    /// Stored hashes by file.
    pub files: HashMap<FileId, Stored>,
    /// Changes not yet in them, by file.
    pub pending: HashMap<FileId, Pending>,
}

/// [`Entries`] borrowed, as a snapshot is written (the same encoding).
#[derive(Serialize)]
struct EntriesRef<'a> {
    files: &'a HashMap<FileId, Stored>,
    pending: &'a HashMap<FileId, Pending>,
}

/// One file's entry as of a save: what is stored and what is pending for it (`None`:
/// nothing, any earlier entry is gone).
#[derive(Debug, Serialize, Deserialize)]
pub struct Changed {
    /// Which file.
    pub key: FileId,
    /// Its stored hashes.
    pub stored: Option<Stored>,
    /// Its pending change.
    pub pending: Option<Pending>,
}

/// The snapshot and journal files of one store.
#[derive(Debug)]
pub struct SavedStore {
    snapshot: PathBuf,
    journal: PathBuf,
    /// The current snapshot's checksum (zeros when there is none).
    sum: [u8; 32],
    snapshot_len: u64,
    /// Open for appending while the journal is known to follow the snapshot whole; `None`
    /// (none yet, another snapshot's, damaged, or an append failed partway) makes the
    /// next save write a snapshot.
    appending: Option<File>,
    journal_len: u64,
}

impl SavedStore {
    /// Reads what is saved in `dir`: the snapshot, then the journal's records over it.
    pub fn open(dir: &Path) -> (SavedStore, Entries) {
        let mut saved = SavedStore {
            snapshot: dir.join(SNAPSHOT_NAME),
            journal: dir.join(JOURNAL_NAME),
            sum: [0; 32],
            snapshot_len: 0,
            appending: None,
            journal_len: 0,
        };
        let mut entries = match std::fs::read(&saved.snapshot) {
            Ok(bytes) => match decode_snapshot(&bytes) {
                Some((sum, entries)) => {
                    saved.sum = sum;
                    saved.snapshot_len = bytes.len() as u64;
                    entries
                }
                None => {
                    tracing::warn!(path = %saved.snapshot.display(), "stored hashes unreadable; starting afresh");
                    return (saved, Entries::default());
                }
            },
            Err(error) => {
                if error.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(path = %saved.snapshot.display(), %error, "stored hashes unreadable; starting afresh");
                    return (saved, Entries::default());
                }
                Entries::default()
            }
        };
        if let Err(error) = saved.replay(&mut entries) {
            tracing::warn!(path = %saved.journal.display(), %error, "stored hashes' journal unreadable; what it held is hashed again");
        }
        (saved, entries)
    }

    /// Applies the journal's records to `entries`, and keeps the journal open for appending
    /// if it follows the snapshot (cut after its last whole record).
    fn replay(&mut self, entries: &mut Entries) -> io::Result<()> {
        let opened = OpenOptions::new()
            .read(true)
            .append(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&self.journal);
        let mut file = match opened {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                // None yet: the first save starts one following the snapshot.
                return Ok(());
            }
            Err(error) => return Err(error),
        };
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let Some(records) = bytes
            .strip_prefix(JOURNAL_MAGIC.as_slice())
            .and_then(|rest| rest.strip_prefix(self.sum.as_slice()))
        else {
            // It follows another snapshot (its records are in this one) or is damaged.
            return Ok(());
        };
        let mut whole = 0;
        while let Some((changed, len)) = next_record(&records[whole..]) {
            for one in changed {
                apply(entries, one);
            }
            whole += len;
        }
        let len = (JOURNAL_MAGIC.len() + self.sum.len() + whole) as u64;
        if len != bytes.len() as u64 {
            tracing::info!(path = %self.journal.display(), cut = bytes.len() as u64 - len, "the stored hashes' journal ended in a torn record; cut");
            file.set_len(len)?;
            file.sync_data()?;
        }
        self.journal_len = len;
        self.appending = Some(file);
        Ok(())
    }

    /// Whether the next save should write a snapshot rather than append.
    pub fn wants_snapshot(&self) -> bool {
        self.appending.is_none() || self.journal_len > self.snapshot_len.max(JOURNAL_BYTES_MIN)
    }

    /// Makes the next save write a snapshot (what should have been appended was lost).
    pub fn fold_next(&mut self) {
        self.appending = None;
    }

    /// Appends the entries changed since the last save, durably.
    pub fn append(&mut self, changed: &[Changed]) -> io::Result<()> {
        let result = self.try_append(changed);
        if result.is_err() {
            // Its tail cannot be trusted now.
            self.appending = None;
        }
        result
    }

    fn try_append(&mut self, changed: &[Changed]) -> io::Result<()> {
        let file = self
            .appending
            .as_mut()
            .ok_or_else(|| io::Error::other("no journal to append to"))?;
        let payload = postcard::to_allocvec(changed).map_err(io::Error::other)?;
        let mut record = Vec::with_capacity(RECORD_HEADER + payload.len());
        record.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        record.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        record.extend_from_slice(&payload);
        file.write_all(&record)?;
        file.sync_data()?;
        self.journal_len += record.len() as u64;
        Ok(())
    }

    /// The bytes of a snapshot of `files` and `pending` (made while the store is locked;
    /// written by [`SavedStore::write_snapshot`] once it is not).
    pub fn encode_snapshot(
        files: &HashMap<FileId, Stored>,
        pending: &HashMap<FileId, Pending>,
    ) -> io::Result<Vec<u8>> {
        let payload =
            postcard::to_allocvec(&EntriesRef { files, pending }).map_err(io::Error::other)?;
        let mut bytes = Vec::with_capacity(MAGIC.len() + 32 + payload.len());
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(blake3::hash(&payload).as_bytes());
        bytes.extend_from_slice(&payload);
        Ok(bytes)
    }

    /// Replaces the snapshot with `bytes` and starts an empty journal following it (a
    /// failure leaves no journal to append to, so the next save tries again).
    pub fn write_snapshot(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.appending = None;
        durable::replace(&self.snapshot, bytes)?;
        self.sum
            .copy_from_slice(&bytes[MAGIC.len()..MAGIC.len() + 32]);
        self.snapshot_len = bytes.len() as u64;
        let mut header = Vec::with_capacity(JOURNAL_MAGIC.len() + 32);
        header.extend_from_slice(JOURNAL_MAGIC);
        header.extend_from_slice(&self.sum);
        durable::replace(&self.journal, &header)?;
        let file = OpenOptions::new()
            .append(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&self.journal)?;
        self.journal_len = header.len() as u64;
        self.appending = Some(file);
        Ok(())
    }
}

/// Puts one saved entry into `entries`.
fn apply(entries: &mut Entries, changed: Changed) {
    match changed.stored {
        Some(stored) => entries.files.insert(changed.key, stored),
        None => entries.files.remove(&changed.key),
    };
    match changed.pending {
        Some(pending) => entries.pending.insert(changed.key, pending),
        None => entries.pending.remove(&changed.key),
    };
}

/// The first whole record in `bytes` and its length, if there is one and it is intact.
fn next_record(bytes: &[u8]) -> Option<(Vec<Changed>, usize)> {
    let header = bytes.get(..RECORD_HEADER)?;
    let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().ok()?);
    if len > RECORD_BYTES_MAX {
        return None;
    }
    let payload = bytes.get(RECORD_HEADER..RECORD_HEADER + len)?;
    if crc32fast::hash(payload) != crc {
        return None;
    }
    let changed = postcard::from_bytes(payload).ok()?;
    Some((changed, RECORD_HEADER + len))
}

/// A snapshot's checksum and entries, if it is whole and of this format.
fn decode_snapshot(bytes: &[u8]) -> Option<([u8; 32], Entries)> {
    let rest = bytes.strip_prefix(MAGIC.as_slice())?;
    let (sum, payload) = rest.split_at_checked(32)?;
    if blake3::hash(payload).as_bytes() != sum {
        return None;
    }
    Some((sum.try_into().ok()?, postcard::from_bytes(payload).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::FileHashes;
    use crate::types::{Stamp, Timestamp};

    fn key(ino: u64) -> FileId {
        FileId { dev: 1, ino }
    }

    fn stored(size: u64) -> Stored {
        let time = Timestamp {
            seconds: size as i64,
            nanos: 0,
        };
        let hashes = FileHashes {
            size,
            chunks: vec![[size as u8; 32]],
        };
        Stored {
            root: hashes.root(),
            hashes,
            stamp: Stamp {
                size,
                mtime: time,
                ctime: time,
            },
            verified: 0,
        }
    }

    fn changed(ino: u64, size: Option<u64>) -> Changed {
        Changed {
            key: key(ino),
            stored: size.map(stored),
            pending: None,
        }
    }

    /// A store of `count` files saved as a snapshot, and its directory.
    fn saved_with(count: u64) -> (tempfile::TempDir, SavedStore) {
        let dir = tempfile::tempdir().unwrap();
        let (mut saved, entries) = SavedStore::open(dir.path());
        assert!(entries.files.is_empty() && saved.wants_snapshot());
        let files = (0..count).map(|ino| (key(ino), stored(ino))).collect();
        let bytes = SavedStore::encode_snapshot(&files, &HashMap::new()).unwrap();
        saved.write_snapshot(&bytes).unwrap();
        (dir, saved)
    }

    #[test]
    fn a_save_appends_what_changed_and_costs_the_change_not_the_store() {
        let (dir, mut saved) = saved_with(20_000);
        let snapshot = std::fs::metadata(dir.path().join(SNAPSHOT_NAME)).unwrap();
        assert!(snapshot.len() > 1 << 20, "{}", snapshot.len());
        let journal = |dir: &tempfile::TempDir| {
            std::fs::metadata(dir.path().join(JOURNAL_NAME))
                .unwrap()
                .len()
        };
        let start = journal(&dir);
        for n in 0..100 {
            assert!(!saved.wants_snapshot());
            saved.append(&[changed(n, Some(n + 1_000_000))]).unwrap();
        }
        saved.append(&[changed(5, None)]).unwrap();
        // About an entry per save (header, key, one chunk and root, stamp).
        let per_save = (journal(&dir) - start) / 101;
        assert!(per_save < 160, "{per_save} bytes per save");
        let again = std::fs::metadata(dir.path().join(SNAPSHOT_NAME)).unwrap();
        assert_eq!(
            std::os::unix::fs::MetadataExt::ino(&again),
            std::os::unix::fs::MetadataExt::ino(&snapshot)
        );

        let (_, entries) = SavedStore::open(dir.path());
        assert_eq!(entries.files.len(), 20_000 - 1);
        assert_eq!(entries.files[&key(7)], stored(1_000_007));
        assert!(!entries.files.contains_key(&key(5)));
        assert_eq!(entries.files[&key(150)], stored(150));
    }

    #[test]
    fn a_torn_record_is_cut_and_the_journal_goes_on_after_it() {
        let (dir, mut saved) = saved_with(10);
        saved.append(&[changed(1, Some(100))]).unwrap();
        saved.append(&[changed(2, Some(200))]).unwrap();
        drop(saved);
        let path = dir.path().join(JOURNAL_NAME);
        let whole = std::fs::read(&path).unwrap();
        std::fs::write(&path, &whole[..whole.len() - 3]).unwrap();

        let (mut saved, entries) = SavedStore::open(dir.path());
        assert_eq!(entries.files[&key(1)], stored(100));
        assert_eq!(entries.files[&key(2)], stored(2));
        assert!(!saved.wants_snapshot());
        saved.append(&[changed(3, Some(300))]).unwrap();
        let (_, entries) = SavedStore::open(dir.path());
        assert_eq!(entries.files[&key(2)], stored(2));
        assert_eq!(entries.files[&key(3)], stored(300));
    }

    #[test]
    fn a_journal_that_follows_an_older_snapshot_is_not_applied() {
        let (dir, mut saved) = saved_with(10);
        saved.append(&[changed(1, Some(100))]).unwrap();
        let path = dir.path().join(JOURNAL_NAME);
        let old_journal = std::fs::read(&path).unwrap();
        // A new snapshot holds a newer entry; then a crash before its journal started.
        let files = [(key(1), stored(111))].into_iter().collect();
        let bytes = SavedStore::encode_snapshot(&files, &HashMap::new()).unwrap();
        saved.write_snapshot(&bytes).unwrap();
        drop(saved);
        std::fs::write(&path, old_journal).unwrap();

        let (saved, entries) = SavedStore::open(dir.path());
        assert_eq!(entries.files[&key(1)], stored(111));
        assert_eq!(entries.files.len(), 1);
        assert!(saved.wants_snapshot());
    }

    #[test]
    fn the_journal_is_folded_once_it_outgrows_the_snapshot() {
        let (dir, mut saved) = saved_with(10);
        let batch: Vec<Changed> = (0..2_000).map(|n| changed(n, Some(n))).collect();
        let path = dir.path().join(JOURNAL_NAME);
        let mut before = 0;
        while !saved.wants_snapshot() {
            before = std::fs::metadata(&path).unwrap().len();
            saved.append(&batch).unwrap();
        }
        // Past the least a journal grows to, by one save.
        let after = std::fs::metadata(&path).unwrap().len();
        assert!(before <= JOURNAL_BYTES_MIN && after > JOURNAL_BYTES_MIN);
        let bytes = SavedStore::encode_snapshot(&HashMap::new(), &HashMap::new()).unwrap();
        saved.write_snapshot(&bytes).unwrap();
        assert!(!saved.wants_snapshot());
        assert!(std::fs::metadata(&path).unwrap().len() < 64);
    }
}
