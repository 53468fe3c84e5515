//! The disk tier's files: blocks of origin files on a fast local disk, each page under
//! its blake3 hash, kept across mounts.
//!
//! Layout under `disk_dir`:
//!
//! ```text
//! lock                      flock: one daemon per disk tier
//! format                    "mirrorfs disk cache 1, block size N": anything else is wiped
//! blocks/<dev>-<ino>/meta   the origin file's version the blocks belong to (postcard)
//! blocks/<dev>-<ino>/<n>    block n: a header, then the block's pages at their offsets
//! ```
//!
//! A block file's header is the magic, the block's end of file (if a read saw it), a hash
//! sealing the header, and one blake3 hash per page (all zeros: page absent), padded to a
//! page. The pages present
//! follow in order, densely (the n-th present page is at `header + n * PAGE`). A block is
//! written to
//! a temporary name and renamed over the old one, so a reader always sees one whole
//! version; a torn write after a crash shows as a hash mismatch, and a page whose hash does
//! not match is never served: the block is dropped and the origin read instead.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::block::PAGE;
use crate::types::FileId;
use crate::types::{Stamp, Timestamp};

/// First bytes of every block file.
const MAGIC: &[u8; 8] = b"MFSBLK1\0";

/// Bytes before the page hashes in a header: magic, end of file, 4 zero bytes, and the
/// blake3 hash of the end of file and the page hashes, so that no bit of a header that
/// decides what is served goes unchecked.
const HEADER_FIXED: usize = 48;

/// Where the header's own hash lies.
const HEADER_HASH: std::ops::Range<usize> = 16..48;

/// `end` in a header when no read saw the end of the file in this block.
const NO_END: u32 = u32::MAX;

/// A block file's header as read: where the file ends in the block, and a hash per page.
type Header = (Option<u32>, Vec<[u8; 32]>);

/// A block of a file in the disk tier: (file, block number).
pub type DiskKey = (FileId, u64);

/// Why the disk tier cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// Another daemon uses this directory as its disk tier.
    #[error("cache.disk_dir {0} is in use by another mirrorfs mount")]
    InUse(PathBuf),
    /// The directory could not be prepared.
    #[error("cache.disk_dir {path}: {source}")]
    Io {
        /// What was being done where.
        path: PathBuf,
        /// Why it failed.
        source: io::Error,
    },
}

/// What reading a block back found.
#[derive(Debug)]
pub enum Found {
    /// The pages asked for, starting at this byte of the block (short at the end of file),
    /// and where the file ended in the block if known.
    Pages {
        /// First byte's offset in the block.
        start: u32,
        /// The bytes.
        data: Vec<u8>,
        /// The end of file within the block, if a read saw it.
        end: Option<u32>,
    },
    /// Some page asked for is not there.
    Missing,
    /// A page failed its hash: the file was removed and must not be used.
    Corrupt,
}

/// What the tier held at startup, for the index.
#[derive(Debug, Default)]
pub struct Inventory {
    /// Per file: the version its blocks belong to.
    pub versions: HashMap<FileId, Stamp>,
    /// Every block file: key, bytes on disk, last written; oldest first.
    pub blocks: Vec<(DiskKey, u64)>,
}

/// The disk tier's directory.
#[derive(Debug)]
pub struct DiskTier {
    blocks: PathBuf,
    block_size: u64,
    pages: usize,
    header_len: usize,
    _lock: File,
}

impl DiskTier {
    /// Opens (creating if needed) the tier in `dir` for blocks of `block_size`, and
    /// lists what it holds. A tier written with another block size or format is wiped.
    pub fn open(dir: &Path, block_size: u64) -> Result<(DiskTier, Inventory), DiskError> {
        let at = |path: &Path| {
            let path = path.to_path_buf();
            move |source| DiskError::Io { path, source }
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(at(dir))?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(at(&lock_path))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(DiskError::InUse(dir.to_path_buf()));
        }
        let format = format!("mirrorfs disk cache 1, block size {block_size}\n");
        let format_path = dir.join("format");
        let blocks = dir.join("blocks");
        if fs::read_to_string(&format_path).ok().as_deref() != Some(format.as_str()) {
            match fs::remove_dir_all(&blocks) {
                Err(error) if error.kind() != io::ErrorKind::NotFound => {
                    return Err(at(&blocks)(error));
                }
                _ => {}
            }
            write_replacing(&format_path, format.as_bytes()).map_err(at(&format_path))?;
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&blocks)
            .map_err(at(&blocks))?;
        let pages = (block_size / PAGE) as usize;
        let header_len = (HEADER_FIXED + pages * 32).div_ceil(PAGE as usize) * PAGE as usize;
        let tier = DiskTier {
            blocks,
            block_size,
            pages,
            header_len,
            _lock: lock,
        };
        let inventory = tier.inventory().map_err(at(&tier.blocks))?;
        Ok((tier, inventory))
    }

    /// Reads back the pages covering `range` (bytes within the block) of `key`, checking
    /// each against its hash. A corrupt block's file is removed.
    pub fn read(&self, key: DiskKey, range: std::ops::Range<u32>) -> io::Result<Found> {
        let file = match File::open(self.block_path(key)) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Found::Missing),
            Err(error) => return Err(error),
        };
        let Some((end, hashes)) = self.read_header(&file)? else {
            self.delete(key);
            return Ok(Found::Corrupt);
        };
        let stop = end.map_or(range.end, |end| end.min(range.end));
        let first = range.start as usize / PAGE as usize;
        let last = (stop.max(range.start + 1) as usize)
            .div_ceil(PAGE as usize)
            .min(self.pages);
        if first >= last || hashes[first..last].contains(&[0; 32]) {
            return Ok(Found::Missing);
        }
        let start = first as u64 * PAGE;
        let data_end = end.map_or(last as u64 * PAGE, |end| {
            (end as u64).min(last as u64 * PAGE)
        });
        let mut data = vec![0; (data_end.max(start) - start) as usize];
        file.read_exact_at(&mut data, self.slot_offset(&hashes, first))?;
        for (page, bytes) in data.chunks(PAGE as usize).enumerate() {
            if *blake3::hash(bytes).as_bytes() != hashes[first + page] {
                tracing::warn!(
                    dev = key.0.dev,
                    ino = key.0.ino,
                    block = key.1,
                    page = first + page,
                    "disk tier block failed its hash; dropped and read from the origin"
                );
                self.delete(key);
                return Ok(Found::Corrupt);
            }
        }
        Ok(Found::Pages {
            start: start as u32,
            data,
            end,
        })
    }

    /// Writes `runs` (page-aligned pieces of the block; the last may end at `end`) as
    /// block `key`, keeping the pages the old file had that `runs` do not. Returns the
    /// bytes the block's file now takes on disk (header, pages, filesystem overhead).
    pub fn store(&self, key: DiskKey, runs: &[(u32, &[u8])], end: Option<u32>) -> io::Result<u64> {
        let mut pages: Vec<(usize, Vec<u8>)> = Vec::new();
        let mut end = end;
        // The old version's pages come first; the new runs win where both have a page.
        if let Ok(old) = File::open(self.block_path(key))
            && let Some((old_end, old_hashes)) = self.read_header(&old)?
        {
            end = end.or(old_end);
            for (page, hash) in old_hashes.iter().enumerate() {
                if *hash == [0; 32] {
                    continue;
                }
                let mut bytes = vec![0; self.page_len(page, old_end)];
                let offset = self.slot_offset(&old_hashes, page);
                if old.read_exact_at(&mut bytes, offset).is_ok()
                    && *blake3::hash(&bytes).as_bytes() == *hash
                {
                    pages.push((page, bytes));
                }
            }
        }
        for (start, run) in runs {
            for (number, bytes) in run.chunks(PAGE as usize).enumerate() {
                let page = *start as usize / PAGE as usize + number;
                if page >= self.pages {
                    break;
                }
                pages.retain(|(old, _)| *old != page);
                pages.push((page, bytes.to_vec()));
            }
        }
        let directory = self.file_dir(key.0);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&directory)?;
        let temporary = directory.join(format!("{:x}.tmp", key.1));
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&temporary)?;
        // Pages in order, densely after the header: a file of one extent, which no
        // filesystem charges more for than its length.
        pages.sort_by_key(|(page, _)| *page);
        let data_len: usize = pages.iter().map(|(_, bytes)| bytes.len()).sum();
        let mut whole = Vec::with_capacity(self.header_len + data_len);
        whole.extend_from_slice(MAGIC);
        whole.extend_from_slice(&end.unwrap_or(NO_END).to_le_bytes());
        whole.resize(self.header_len, 0);
        for (page, bytes) in &pages {
            let at = HEADER_FIXED + page * 32;
            whole[at..at + 32].copy_from_slice(blake3::hash(bytes).as_bytes());
            whole.extend_from_slice(bytes);
        }
        let sealed = header_hash(&whole[..self.header_len]);
        whole[HEADER_HASH].copy_from_slice(&sealed);
        file.write_all(&whole)?;
        let held = self.footprint(data_len as u64);
        // What the filesystem charges for the file, extent blocks of a sparse file
        // included, is what counts against the budget.
        let charged = file.metadata()?.blocks() * 512;
        drop(file);
        fs::rename(&temporary, self.block_path(key))?;
        Ok(held.max(charged))
    }

    /// Removes block `key` (gone already is fine).
    pub fn delete(&self, key: DiskKey) {
        let _ = fs::remove_file(self.block_path(key));
    }

    /// Removes every block of `file`.
    pub fn forget(&self, file: FileId) {
        let _ = fs::remove_dir_all(self.file_dir(file));
    }

    /// Records the origin version `file`'s blocks belong to.
    pub fn set_version(&self, file: FileId, version: Stamp) -> io::Result<()> {
        let directory = self.file_dir(file);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&directory)?;
        let bytes = postcard::to_allocvec(&MetaStamp::from(version)).map_err(io::Error::other)?;
        write_replacing(&directory.join("meta"), &bytes)
    }

    /// The bytes a block file holding `data` bytes of pages takes.
    pub fn footprint(&self, data: u64) -> u64 {
        self.header_len as u64 + data.div_ceil(PAGE) * PAGE
    }

    fn file_dir(&self, file: FileId) -> PathBuf {
        self.blocks.join(format!("{:x}-{:x}", file.dev, file.ino))
    }

    fn block_path(&self, key: DiskKey) -> PathBuf {
        self.file_dir(key.0).join(format!("{:x}", key.1))
    }

    /// Where present page `page` lies in a block file with these page hashes: after the
    /// header and every present page before it.
    fn slot_offset(&self, hashes: &[[u8; 32]], page: usize) -> u64 {
        let before = hashes[..page]
            .iter()
            .filter(|hash| **hash != [0; 32])
            .count();
        self.header_len as u64 + before as u64 * PAGE
    }

    /// Bytes of `page` given where the file ends in the block.
    fn page_len(&self, page: usize, end: Option<u32>) -> usize {
        let start = page as u64 * PAGE;
        let stop = end.map_or(start + PAGE, |end| (end as u64).clamp(start, start + PAGE));
        (stop - start) as usize
    }

    /// The header's end of file and page hashes; `None` if it is not a header of ours.
    fn read_header(&self, file: &File) -> io::Result<Option<Header>> {
        let mut header = vec![0; self.header_len];
        match file.read_exact_at(&mut header, 0) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(error) => return Err(error),
        }
        if &header[..8] != MAGIC {
            return Ok(None);
        }
        if header[HEADER_HASH] != header_hash(&header) {
            return Ok(None);
        }
        let end = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
        let end = (end != NO_END).then_some(end);
        if end.is_some_and(|end| end as u64 > self.block_size) {
            return Ok(None);
        }
        let hashes = header[HEADER_FIXED..HEADER_FIXED + self.pages * 32]
            .chunks(32)
            .map(|hash| hash.try_into().expect("32 bytes"))
            .collect();
        Ok(Some((end, hashes)))
    }

    /// Everything the tier holds, from the directory alone (no block is read).
    fn inventory(&self) -> io::Result<Inventory> {
        let mut inventory = Inventory::default();
        let mut blocks: Vec<(SystemTime, DiskKey, u64)> = Vec::new();
        for entry in fs::read_dir(&self.blocks)? {
            let entry = entry?;
            let Some(file) = parse_file_dir(&entry.file_name().to_string_lossy()) else {
                let _ = fs::remove_dir_all(entry.path());
                continue;
            };
            let version = fs::read(entry.path().join("meta"))
                .ok()
                .and_then(|bytes| postcard::from_bytes::<MetaStamp>(&bytes).ok())
                .map(Stamp::from);
            let Some(version) = version else {
                // Blocks of unknown version cannot be trusted to match any origin file.
                let _ = fs::remove_dir_all(entry.path());
                continue;
            };
            inventory.versions.insert(file, version);
            for block in fs::read_dir(entry.path())? {
                let block = block?;
                let name = block.file_name().to_string_lossy().into_owned();
                if name == "meta" {
                    continue;
                }
                let metadata = block.metadata()?;
                match u64::from_str_radix(&name, 16) {
                    Ok(index) if metadata.is_file() => {
                        let held = (metadata.blocks() * 512).max(self.footprint(0));
                        let written = metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                        blocks.push((written, (file, index), held));
                    }
                    // A temporary file from a store cut short, or a stranger.
                    _ => {
                        let _ = fs::remove_file(block.path());
                    }
                }
            }
        }
        blocks.sort_by_key(|(written, ..)| *written);
        inventory.blocks = blocks
            .into_iter()
            .map(|(_, key, held)| (key, held))
            .collect();
        Ok(inventory)
    }
}

/// The hash that seals a header: over its end of file and page hashes.
fn header_hash(header: &[u8]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&header[8..16]);
    hasher.update(&header[HEADER_FIXED..]);
    *hasher.finalize().as_bytes()
}

fn parse_file_dir(name: &str) -> Option<FileId> {
    let (dev, ino) = name.split_once('-')?;
    Some(FileId {
        dev: u64::from_str_radix(dev, 16).ok()?,
        ino: u64::from_str_radix(ino, 16).ok()?,
    })
}

/// A file's stamp as a tier's `meta` file holds it: times in nanoseconds, as the tier has
/// always written them.
#[derive(serde::Serialize, serde::Deserialize)]
struct MetaStamp {
    size: u64,
    mtime: i128,
    ctime: i128,
}

impl From<Stamp> for MetaStamp {
    fn from(stamp: Stamp) -> MetaStamp {
        let nanos = |time: Timestamp| i128::from(time.seconds) * NANOS + i128::from(time.nanos);
        MetaStamp {
            size: stamp.size,
            mtime: nanos(stamp.mtime),
            ctime: nanos(stamp.ctime),
        }
    }
}

impl From<MetaStamp> for Stamp {
    fn from(meta: MetaStamp) -> Stamp {
        let time = |nanos: i128| Timestamp {
            seconds: nanos.div_euclid(NANOS) as i64,
            nanos: nanos.rem_euclid(NANOS) as u32,
        };
        Stamp {
            size: meta.size,
            mtime: time(meta.mtime),
            ctime: time(meta.ctime),
        }
    }
}

const NANOS: i128 = 1_000_000_000;

/// Writes `bytes` to `path` through a temporary name, so it is whole or absent.
fn write_replacing(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let temporary = path.with_extension("tmp");
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&temporary)?;
    file.write_all(bytes)?;
    drop(file);
    fs::rename(&temporary, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLOCK: u64 = 64 * 1024;

    fn key(index: u64) -> DiskKey {
        (FileId { dev: 1, ino: 2 }, index)
    }

    fn pages(found: Found) -> (u32, Vec<u8>) {
        match found {
            Found::Pages { start, data, .. } => (start, data),
            other => panic!("expected pages, found {other:?}"),
        }
    }

    #[test]
    fn blocks_round_trip_and_merge_pages() {
        let dir = tempfile::tempdir().unwrap();
        let (tier, inventory) = DiskTier::open(dir.path(), BLOCK).unwrap();
        assert!(inventory.blocks.is_empty());
        let first = vec![1u8; 8192];
        assert_eq!(
            tier.store(key(0), &[(0, &first)], None).unwrap(),
            tier.footprint(8192)
        );
        assert_eq!(
            pages(tier.read(key(0), 100..200).unwrap()),
            (0, vec![1; 4096])
        );
        assert!(matches!(
            tier.read(key(0), 8192..8200).unwrap(),
            Found::Missing
        ));
        // A later store adds pages and keeps the old ones.
        let later = vec![2u8; 4096];
        assert_eq!(
            tier.store(key(0), &[(16384, &later)], None).unwrap(),
            tier.footprint(12288)
        );
        assert_eq!(
            pages(tier.read(key(0), 16384..20480).unwrap()),
            (16384, later)
        );
        assert_eq!(pages(tier.read(key(0), 0..8192).unwrap()).1, first);
        // The end of the file shortens the last page.
        let tail = vec![3u8; 100];
        tier.store(key(1), &[(0, &tail)], Some(100)).unwrap();
        assert_eq!(pages(tier.read(key(1), 0..4096).unwrap()), (0, tail));
        assert!(matches!(tier.read(key(9), 0..1).unwrap(), Found::Missing));
    }

    #[test]
    fn a_flipped_byte_is_caught_and_the_block_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (tier, _) = DiskTier::open(dir.path(), BLOCK).unwrap();
        tier.store(key(0), &[(0, &[7u8; 8192])], None).unwrap();
        let path = tier.block_path(key(0));
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[8], tier.header_len as u64 + 5000)
            .unwrap();
        // The first page is still fine; the second is not.
        assert!(matches!(
            tier.read(key(0), 0..10).unwrap(),
            Found::Pages { .. }
        ));
        assert!(matches!(
            tier.read(key(0), 4096..4200).unwrap(),
            Found::Corrupt
        ));
        assert!(!path.exists(), "a corrupt block is removed");
        // So is a header whose end of file was changed (it decides how much is served).
        tier.store(key(2), &[(0, &[7u8; 4096])], Some(4096))
            .unwrap();
        let file = OpenOptions::new()
            .write(true)
            .open(tier.block_path(key(2)))
            .unwrap();
        file.write_all_at(&100u32.to_le_bytes(), 8).unwrap();
        assert!(matches!(tier.read(key(2), 0..10).unwrap(), Found::Corrupt));
        // A header that is not ours is corrupt too.
        tier.store(key(1), &[(0, &[7u8; 4096])], None).unwrap();
        fs::write(tier.block_path(key(1)), b"garbage").unwrap();
        assert!(matches!(tier.read(key(1), 0..10).unwrap(), Found::Corrupt));
    }

    #[test]
    fn meta_files_keep_their_format_and_times_survive_it() {
        let stamp = Stamp {
            size: 7,
            mtime: Timestamp {
                seconds: -2,
                nanos: 250_000_000,
            },
            ctime: Timestamp {
                seconds: 1_700_000_000,
                nanos: 999_999_999,
            },
        };
        let bytes = postcard::to_allocvec(&MetaStamp::from(stamp)).unwrap();
        // As the tier wrote it before stamps were shared: size, then nanoseconds.
        let before = (7u64, -1_750_000_000i128, 1_700_000_000_999_999_999i128);
        assert_eq!(bytes, postcard::to_allocvec(&before).unwrap());
        let read = postcard::from_bytes::<MetaStamp>(&bytes).unwrap();
        assert_eq!(Stamp::from(read), stamp);
    }

    #[test]
    fn the_tier_is_found_again_locked_and_wiped_on_a_new_block_size() {
        let dir = tempfile::tempdir().unwrap();
        let version = Stamp::from(MetaStamp {
            size: 1,
            mtime: 2,
            ctime: 3,
        });
        {
            let (tier, _) = DiskTier::open(dir.path(), BLOCK).unwrap();
            tier.set_version(key(0).0, version).unwrap();
            tier.store(key(0), &[(0, &[1u8; 4096])], None).unwrap();
            tier.store(key(3), &[(0, &[1u8; 4096])], None).unwrap();
            assert!(matches!(
                DiskTier::open(dir.path(), BLOCK),
                Err(DiskError::InUse(_))
            ));
        }
        let (_tier, inventory) = DiskTier::open(dir.path(), BLOCK).unwrap();
        assert_eq!(inventory.versions.get(&key(0).0), Some(&version));
        let mut keys: Vec<DiskKey> = inventory.blocks.iter().map(|(key, _)| *key).collect();
        keys.sort_by_key(|key| key.1);
        assert_eq!(keys, vec![key(0), key(3)]);
        drop(_tier);
        let (_tier, inventory) = DiskTier::open(dir.path(), 2 * BLOCK).unwrap();
        assert!(inventory.blocks.is_empty() && inventory.versions.is_empty());
    }
}
