//! A file's content as fixed-size chunks, each with its blake3 hash, and a root over them
//! (a two-level Merkle tree): what verify stores per file, compares between copies, and
//! uses to name the exact byte ranges that differ. Pure logic over anything that reads
//! at an offset.

use std::io;
use std::ops::Range;

use serde::{Deserialize, Serialize};

/// Bytes per chunk: the unit a difference is named and repaired in.
pub const CHUNK_BYTES: u64 = 1 << 20;

/// Domain of the root hash, so that no chunk hash can pass for a root.
const ROOT_CONTEXT: &str = "mirrorfs 2026-11 verify file root";

/// A chunk's hash.
pub type ChunkHash = [u8; 32];

/// The hashes of one file's content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileHashes {
    /// The file's size.
    pub size: u64,
    /// blake3 of each chunk, in order; the last may be short.
    pub chunks: Vec<ChunkHash>,
}

/// What hashing reads: a file's content, where it has none (holes), and whether to go on.
pub trait Content {
    /// Fills as much of `buffer` as the content has at `offset`; returns how much.
    fn read_at(&mut self, buffer: &mut [u8], offset: u64) -> io::Result<usize>;

    /// Whether `range` holds no data (a hole, which reads as zeros), so that it need not
    /// be read. False when unsure.
    fn is_hole(&mut self, _range: Range<u64>) -> io::Result<bool> {
        Ok(false)
    }

    /// Called before each chunk: an error abandons the hashing (the file was deleted,
    /// the daemon stops).
    fn next_chunk(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Content held in memory.
impl Content for &[u8] {
    fn read_at(&mut self, buffer: &mut [u8], offset: u64) -> io::Result<usize> {
        let start = (offset as usize).min(self.len());
        let len = buffer.len().min(self.len() - start);
        buffer[..len].copy_from_slice(&self[start..start + len]);
        Ok(len)
    }
}

/// blake3 of `len` zero bytes: a hole's chunk, hashed without reading it.
fn zeros_hash(len: usize) -> ChunkHash {
    static WHOLE: std::sync::OnceLock<ChunkHash> = std::sync::OnceLock::new();
    let hash = |len| *blake3::hash(&vec![0u8; len]).as_bytes();
    match len == CHUNK_BYTES as usize {
        true => *WHOLE.get_or_init(|| hash(len)),
        false => hash(len),
    }
}

/// The hash of chunk `start..start + len` of `content`, read into `buffer` unless it is a
/// hole.
fn chunk_hash(
    content: &mut dyn Content,
    start: u64,
    len: usize,
    size: u64,
    buffer: &mut Vec<u8>,
) -> io::Result<ChunkHash> {
    content.next_chunk()?;
    if content.is_hole(start..start + len as u64)? {
        return Ok(zeros_hash(len));
    }
    buffer.resize(len, 0);
    let read = content.read_at(buffer, start)?;
    if read < len {
        // The file shrank while it was read: what is hashed is what was there.
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("content ended at {} of {size} bytes", start + read as u64),
        ));
    }
    Ok(*blake3::hash(buffer).as_bytes())
}

impl FileHashes {
    /// Hashes `size` bytes of `content`.
    pub fn of(size: u64, content: &mut dyn Content) -> io::Result<FileHashes> {
        let mut chunks = Vec::with_capacity(size.div_ceil(CHUNK_BYTES) as usize);
        let mut buffer = Vec::with_capacity(CHUNK_BYTES.min(size) as usize);
        let mut offset = 0;
        while offset < size {
            let len = (size - offset).min(CHUNK_BYTES) as usize;
            chunks.push(chunk_hash(content, offset, len, size, &mut buffer)?);
            offset += len as u64;
        }
        Ok(FileHashes { size, chunks })
    }

    /// Brings the hashes up to date with content that is now `size` bytes long, rehashing
    /// only the chunks `stale` names and those whose length changed with the size.
    pub fn update(
        &mut self,
        size: u64,
        stale: impl Fn(u64) -> bool,
        content: &mut dyn Content,
    ) -> io::Result<()> {
        let count = size.div_ceil(CHUNK_BYTES);
        let old_size = self.size;
        self.chunks.truncate(count as usize);
        let mut buffer = Vec::new();
        for n in 0..count {
            let start = n * CHUNK_BYTES;
            let len = (size - start).min(CHUNK_BYTES);
            let old_len = old_size.saturating_sub(start).min(CHUNK_BYTES);
            let known = (n as usize) < self.chunks.len();
            if known && len == old_len && !stale(n) {
                continue;
            }
            let hash = chunk_hash(content, start, len as usize, size, &mut buffer)?;
            match self.chunks.get_mut(n as usize) {
                Some(slot) => *slot = hash,
                None => self.chunks.push(hash),
            }
        }
        self.size = size;
        Ok(())
    }

    /// The root: one hash for the whole content, over the size and every chunk's hash.
    pub fn root(&self) -> ChunkHash {
        let mut hasher = blake3::Hasher::new_derive_key(ROOT_CONTEXT);
        hasher.update(&self.size.to_le_bytes());
        for chunk in &self.chunks {
            hasher.update(chunk);
        }
        *hasher.finalize().as_bytes()
    }

    /// The byte ranges of this content where `other` differs: each differing chunk, and
    /// the tail one of them has past the other's end. Adjacent ranges are merged.
    pub fn differences(&self, other: &FileHashes) -> Vec<Range<u64>> {
        let common = self.size.min(other.size);
        let mut ranges: Vec<Range<u64>> = Vec::new();
        let mut add = |range: Range<u64>| match ranges.last_mut() {
            Some(last) if last.end == range.start => last.end = range.end,
            _ => ranges.push(range),
        };
        for (n, (ours, theirs)) in self.chunks.iter().zip(&other.chunks).enumerate() {
            let start = n as u64 * CHUNK_BYTES;
            if start >= common {
                break;
            }
            // A chunk one copy cuts short differs by its hash even where its bytes agree, so
            // it is named whole, up to the shorter end.
            if ours != theirs {
                add(start..(start + CHUNK_BYTES).min(common));
            }
        }
        if self.size != other.size {
            add(common..self.size.max(other.size));
        }
        ranges
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hashes(mut content: &[u8]) -> FileHashes {
        FileHashes::of(content.len() as u64, &mut content).unwrap()
    }

    fn content(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn equal_content_has_equal_roots_and_no_differences() {
        let data = content(3 * CHUNK_BYTES as usize + 123);
        let (a, b) = (hashes(&data), hashes(&data));
        assert_eq!(a.chunks.len(), 4);
        assert_eq!(a.root(), b.root());
        assert!(a.differences(&b).is_empty());
        let empty = hashes(&[]);
        assert!(empty.chunks.is_empty());
        assert_ne!(empty.root(), a.root());
    }

    #[test]
    fn one_flipped_byte_is_named_as_its_chunk() {
        let data = content(5 * CHUNK_BYTES as usize);
        let mut flipped = data.clone();
        let at = 2 * CHUNK_BYTES as usize + 4321;
        flipped[at] ^= 1;
        let (a, b) = (hashes(&data), hashes(&flipped));
        assert_ne!(a.root(), b.root());
        assert_eq!(a.differences(&b), vec![2 * CHUNK_BYTES..3 * CHUNK_BYTES]);
    }

    #[test]
    fn a_truncated_copy_differs_in_its_last_chunk_and_the_tail() {
        let data = content(4 * CHUNK_BYTES as usize);
        let cut = 2 * CHUNK_BYTES + 100;
        let (a, b) = (hashes(&data), hashes(&data[..cut as usize]));
        // The chunk the cut falls in is named whole (its hash cannot say where in it the
        // copies part), then the tail.
        assert_eq!(a.differences(&b), vec![2 * CHUNK_BYTES..4 * CHUNK_BYTES]);
        assert_eq!(b.differences(&a), vec![2 * CHUNK_BYTES..4 * CHUNK_BYTES]);
        // A cut on a chunk boundary leaves the chunks before it alone.
        let c = hashes(&data[..2 * CHUNK_BYTES as usize]);
        assert_eq!(a.differences(&c), vec![2 * CHUNK_BYTES..4 * CHUNK_BYTES]);
        assert_eq!(
            a.differences(&hashes(&data[..CHUNK_BYTES as usize * 3])),
            vec![3 * CHUNK_BYTES..4 * CHUNK_BYTES]
        );
    }

    /// Content that records which chunks were read, with some ranges reported as holes
    /// and reads cut short after `short` bytes.
    struct Recorded<'a> {
        data: &'a [u8],
        holes: Vec<Range<u64>>,
        reads: Vec<u64>,
        short: Option<usize>,
    }

    impl<'a> Recorded<'a> {
        fn new(data: &'a [u8]) -> Recorded<'a> {
            Recorded {
                data,
                holes: Vec::new(),
                reads: Vec::new(),
                short: None,
            }
        }
    }

    impl Content for Recorded<'_> {
        fn read_at(&mut self, buffer: &mut [u8], offset: u64) -> io::Result<usize> {
            self.reads.push(offset / CHUNK_BYTES);
            let mut data = self.data;
            let read = data.read_at(buffer, offset)?;
            Ok(self.short.map_or(read, |short| read.min(short)))
        }

        fn is_hole(&mut self, range: Range<u64>) -> io::Result<bool> {
            Ok(self
                .holes
                .iter()
                .any(|hole| hole.start <= range.start && range.end <= hole.end))
        }
    }

    #[test]
    fn an_update_rehashes_only_what_changed() {
        let mut data = content(3 * CHUNK_BYTES as usize + 10);
        let mut stored = hashes(&data);
        data[CHUNK_BYTES as usize + 5] ^= 0xff;
        data.extend_from_slice(&[7; 100]);
        let mut recorded = Recorded::new(&data);
        stored
            .update(data.len() as u64, |n| n == 1, &mut recorded)
            .unwrap();
        // Chunk 1 was written; chunk 3 grew. Chunks 0 and 2 were not read.
        assert_eq!(recorded.reads, vec![1, 3]);
        assert_eq!(stored, hashes(&data));
        // Shrinking drops the chunks past the end and rehashes the new last one.
        data.truncate(CHUNK_BYTES as usize + 1);
        stored
            .update(data.len() as u64, |_| false, &mut Recorded::new(&data))
            .unwrap();
        assert_eq!(stored, hashes(&data));
    }

    #[test]
    fn holes_are_hashed_as_zeros_without_being_read() {
        let mut data = content(4 * CHUNK_BYTES as usize + 77);
        data[CHUNK_BYTES as usize..3 * CHUNK_BYTES as usize].fill(0);
        data[4 * CHUNK_BYTES as usize..].fill(0);
        let mut sparse = Recorded::new(&data);
        sparse.holes = vec![CHUNK_BYTES..3 * CHUNK_BYTES, 4 * CHUNK_BYTES..u64::MAX];
        let hashed = FileHashes::of(data.len() as u64, &mut sparse).unwrap();
        assert_eq!(sparse.reads, vec![0, 3]);
        assert_eq!(hashed, hashes(&data));
    }

    #[test]
    fn content_that_shrinks_while_it_is_read_is_an_error() {
        let data = [1u8; 10];
        let mut shrinking = Recorded::new(&data);
        shrinking.short = Some(4);
        let result = FileHashes::of(10, &mut shrinking);
        assert_eq!(result.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }
}
