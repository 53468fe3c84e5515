//! One file's data written through the mount but not yet in the origin (write-behind):
//! non-overlapping extents, merged as they are written so the flusher issues large writes.
//!
//! Extent data is shared (`Arc`) with a flusher that is writing it out; a later write to
//! the same bytes makes a new extent instead of changing the shared one, so the flusher can
//! tell afterwards which extents it wrote are still current and drop only those.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

/// Extents are not merged past this size, so a long sequential writer does not copy an
/// ever-growing buffer, and the flusher's writes stay a sensible size.
const EXTENT_BYTES_MAX: usize = 8 << 20;

/// Written bytes at a position in the file, with the oldest log offset they carry.
#[derive(Clone, Debug)]
pub struct Extent {
    /// The bytes.
    pub data: Arc<Vec<u8>>,
    /// The offset of the oldest log record whose bytes are in `data`.
    pub first_record: u64,
}

/// A file's unflushed writes.
#[derive(Debug)]
pub struct DirtyFile {
    /// By starting byte position; never overlapping.
    extents: BTreeMap<u64, Extent>,
    bytes: u64,
    /// The time of the newest write: the file's mtime as the mount shows it.
    pub mtime: SystemTime,
}

impl DirtyFile {
    /// A file with nothing dirty yet.
    pub fn new() -> DirtyFile {
        DirtyFile {
            extents: BTreeMap::new(),
            bytes: 0,
            mtime: SystemTime::UNIX_EPOCH,
        }
    }

    /// Bytes held.
    #[cfg(test)]
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.extents.is_empty()
    }

    /// One past the last dirty byte (0 when clean).
    pub fn end(&self) -> u64 {
        self.extents
            .last_key_value()
            .map_or(0, |(start, extent)| start + extent.data.len() as u64)
    }

    /// The oldest log record not yet in the origin.
    pub fn first_record(&self) -> Option<u64> {
        self.extents
            .values()
            .map(|extent| extent.first_record)
            .min()
    }

    /// Takes `data` written at `position` by log record `record`. Returns how many bytes
    /// the file holds now minus before (new bytes minus overwritten ones).
    pub fn write(&mut self, position: u64, data: Vec<u8>, record: u64, now: SystemTime) -> i64 {
        let before = self.bytes;
        self.mtime = now;
        if data.is_empty() {
            return 0;
        }
        let end = position + data.len() as u64;
        self.cut(position, end);
        let mut start = position;
        let mut bytes = data;
        let mut first_record = record;
        // Join the extent ending exactly here, and the one starting exactly at the end.
        if let Some((&left, extent)) = self.extents.range(..position).next_back()
            && left + extent.data.len() as u64 == position
            && extent.data.len() + bytes.len() <= EXTENT_BYTES_MAX
        {
            let extent = self.take(left);
            let mut joined = Arc::unwrap_or_clone(extent.data);
            joined.extend_from_slice(&bytes);
            bytes = joined;
            start = left;
            first_record = first_record.min(extent.first_record);
        }
        if let Some(extent) = self.extents.get(&end)
            && extent.data.len() + bytes.len() <= EXTENT_BYTES_MAX
        {
            let extent = self.take(end);
            bytes.extend_from_slice(&extent.data);
            first_record = first_record.min(extent.first_record);
        }
        self.insert(start, bytes, first_record);
        self.bytes as i64 - before as i64
    }

    /// Copies the dirty bytes within `[position, position + buffer.len())` into `buffer`
    /// and returns one past the last byte position any of them covers (0 if none).
    #[cfg(test)]
    pub fn patch(&self, position: u64, buffer: &mut [u8]) -> u64 {
        let end = position + buffer.len() as u64;
        lay(self.overlapping(position, end), position, buffer)
    }

    /// The extents overlapping `[position, end)`, shared.
    pub fn overlapping_snapshot(&self, position: u64, end: u64) -> Vec<(u64, Extent)> {
        self.overlapping(position, end)
            .map(|(start, extent)| (start, extent.clone()))
            .collect()
    }

    /// Every extent, for a flusher to write out.
    pub fn snapshot(&self) -> Vec<(u64, Extent)> {
        self.extents
            .iter()
            .map(|(start, extent)| (*start, extent.clone()))
            .collect()
    }

    /// Drops the extents of `written` that are still exactly as they were (no later write
    /// replaced them). Returns the bytes dropped.
    pub fn forget_written(&mut self, written: &[(u64, Extent)]) -> u64 {
        let mut dropped = 0;
        for (start, extent) in written {
            if self
                .extents
                .get(start)
                .is_some_and(|current| Arc::ptr_eq(&current.data, &extent.data))
            {
                dropped += self.take(*start).data.len() as u64;
            }
        }
        dropped
    }

    fn overlapping(&self, position: u64, end: u64) -> impl Iterator<Item = (u64, &Extent)> {
        let first = self
            .extents
            .range(..=position)
            .next_back()
            .filter(|(start, extent)| *start + extent.data.len() as u64 > position)
            .map(|(start, _)| *start)
            .unwrap_or(position);
        self.extents
            .range(first..end)
            .map(|(start, extent)| (*start, extent))
    }

    /// Removes the bytes in `[position, end)`, keeping the parts of extents outside it.
    fn cut(&mut self, position: u64, end: u64) {
        let hit: Vec<u64> = self
            .overlapping(position, end)
            .map(|(start, _)| start)
            .collect();
        for start in hit {
            let extent = self.take(start);
            let extent_end = start + extent.data.len() as u64;
            if start < position {
                let keep = extent.data[..(position - start) as usize].to_vec();
                self.insert(start, keep, extent.first_record);
            }
            if extent_end > end {
                let keep = extent.data[(end - start) as usize..].to_vec();
                self.insert(end, keep, extent.first_record);
            }
        }
    }

    fn take(&mut self, start: u64) -> Extent {
        let extent = self.extents.remove(&start).expect("extent exists");
        self.bytes -= extent.data.len() as u64;
        extent
    }

    fn insert(&mut self, start: u64, data: Vec<u8>, first_record: u64) {
        self.bytes += data.len() as u64;
        self.extents.insert(
            start,
            Extent {
                data: Arc::new(data),
                first_record,
            },
        );
    }
}

/// Copies the parts of `extents` within `[position, position + buffer.len())` into
/// `buffer`; returns one past the last byte position they cover (0 if none).
pub fn lay<'a>(
    extents: impl IntoIterator<Item = (u64, &'a Extent)>,
    position: u64,
    buffer: &mut [u8],
) -> u64 {
    let end = position + buffer.len() as u64;
    let mut covered = 0;
    for (start, extent) in extents {
        let from = start.max(position);
        let to = (start + extent.data.len() as u64).min(end);
        if from < to {
            buffer[(from - position) as usize..(to - position) as usize]
                .copy_from_slice(&extent.data[(from - start) as usize..(to - start) as usize]);
            covered = to;
        }
    }
    covered
}

impl Default for DirtyFile {
    fn default() -> DirtyFile {
        DirtyFile::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The file as a byte vector of `len`, unwritten bytes as `.`.
    fn render(file: &DirtyFile, len: usize) -> String {
        let mut buffer = vec![b'.'; len];
        file.patch(0, &mut buffer);
        String::from_utf8(buffer).unwrap()
    }

    fn now() -> SystemTime {
        SystemTime::now()
    }

    #[test]
    fn writes_overlay_and_merge() {
        let mut file = DirtyFile::new();
        assert_eq!(file.write(2, b"abcd".to_vec(), 10, now()), 4);
        assert_eq!(file.write(6, b"ef".to_vec(), 11, now()), 2);
        assert_eq!(file.snapshot().len(), 1, "adjacent writes are one extent");
        assert_eq!(render(&file, 10), "..abcdef..");
        // Overwrite the middle: bytes held stay the same.
        assert_eq!(file.write(3, b"XY".to_vec(), 12, now()), 0);
        assert_eq!(render(&file, 10), "..aXYdef..");
        assert_eq!(file.bytes(), 6);
        assert_eq!(file.end(), 8);
        assert_eq!(file.first_record(), Some(10));
        // A separate extent further out.
        file.write(12, b"zz".to_vec(), 13, now());
        assert_eq!(render(&file, 16), "..aXYdef....zz..");
        assert_eq!(file.end(), 14);
        // Bridging the gap joins at most the neighbours it touches exactly.
        file.write(8, b"1234".to_vec(), 14, now());
        assert_eq!(render(&file, 16), "..aXYdef1234zz..");
        assert_eq!(file.bytes(), 12);
    }

    #[test]
    fn patch_reports_how_far_dirty_data_reaches() {
        let mut file = DirtyFile::new();
        file.write(100, b"hello".to_vec(), 1, now());
        let mut buffer = [0u8; 10];
        assert_eq!(file.patch(98, &mut buffer), 105);
        assert_eq!(&buffer, b"\0\0hello\0\0\0");
        assert_eq!(file.patch(0, &mut [0u8; 50]), 0);
        let mut tail = [0u8; 3];
        assert_eq!(file.patch(103, &mut tail), 105);
        assert_eq!(&tail[..2], b"lo");
    }

    #[test]
    fn only_extents_unchanged_since_the_snapshot_are_forgotten() {
        let mut file = DirtyFile::new();
        file.write(0, b"aaaa".to_vec(), 1, now());
        file.write(100, b"bbbb".to_vec(), 2, now());
        let written = file.snapshot();
        // A write lands on the first extent while the flusher is busy.
        file.write(1, b"X".to_vec(), 3, now());
        assert_eq!(file.forget_written(&written), 4);
        assert_eq!(render(&file, 4), "aXaa");
        assert_eq!(file.first_record(), Some(1));
        let rest = file.snapshot();
        assert_eq!(file.forget_written(&rest), 4);
        assert!(file.is_empty());
        assert_eq!(file.bytes(), 0);
    }

    #[test]
    fn extents_stop_growing_at_the_cap() {
        let mut file = DirtyFile::new();
        let chunk = vec![1u8; 1 << 20];
        for i in 0..20u64 {
            file.write(i << 20, chunk.clone(), i, now());
        }
        assert_eq!(file.bytes(), 20 << 20);
        assert!(
            file.snapshot()
                .iter()
                .all(|(_, e)| e.data.len() <= EXTENT_BYTES_MAX)
        );
        assert_eq!(file.snapshot().len(), 3);
    }
}
