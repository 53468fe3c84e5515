//! One file's data written through the mount but not yet in the origin (write-behind). The
//! bytes themselves stay where the write put them, in the change log: an extent says which
//! bytes of the file lie at which position of which log segment. So unflushed data costs no
//! memory beyond this map, and nothing is copied to keep it.
//!
//! Extents never overlap: a write cuts the parts of older extents it covers. Each extent is
//! unique (a log position is written once), which is how a flusher tells afterwards whether
//! an extent it wrote out is still current.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::SystemTime;

/// Bytes of the file at some position, held in a log segment.
#[derive(Clone, Debug)]
pub struct Extent {
    /// The log segment holding the bytes.
    pub source: Arc<File>,
    /// Where in the segment they start.
    pub source_position: u64,
    /// How many.
    pub len: u64,
    /// The offset of the log record that wrote them.
    pub record: u64,
}

impl Extent {
    /// Whether `other` is this very extent (not merely equal bytes).
    fn same(&self, other: &Extent) -> bool {
        Arc::ptr_eq(&self.source, &other.source)
            && self.source_position == other.source_position
            && self.len == other.len
    }

    /// The part of this extent from `skip` bytes in, `len` long.
    fn part(&self, skip: u64, len: u64) -> Extent {
        Extent {
            source: Arc::clone(&self.source),
            source_position: self.source_position + skip,
            len,
            record: self.record,
        }
    }

    /// Reads this extent's bytes from `skip` on into `buffer` (which it fills).
    pub fn read(&self, skip: u64, buffer: &mut [u8]) -> io::Result<()> {
        self.source
            .read_exact_at(buffer, self.source_position + skip)
    }
}

/// A file's unflushed writes.
#[derive(Debug)]
pub struct DirtyFile {
    /// By starting byte position in the file; never overlapping.
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

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.extents.is_empty()
    }

    /// Bytes held.
    #[cfg(test)]
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// One past the last dirty byte (0 when clean).
    pub fn end(&self) -> u64 {
        self.extents
            .last_key_value()
            .map_or(0, |(start, extent)| start + extent.len)
    }

    /// The oldest log record not yet in the origin.
    pub fn first_record(&self) -> Option<u64> {
        self.extents.values().map(|extent| extent.record).min()
    }

    /// Takes `extent`, written at `position` of the file. Returns how many bytes the file
    /// holds now minus before (new bytes minus overwritten ones).
    pub fn write(&mut self, position: u64, extent: Extent, now: SystemTime) -> i64 {
        let before = self.bytes;
        self.mtime = now;
        if extent.len > 0 {
            self.cut(position, position + extent.len);
            self.insert(position, extent);
        }
        self.bytes as i64 - before as i64
    }

    /// The extents overlapping `[position, end)`, clipped to it, by file position.
    pub fn overlapping(&self, position: u64, end: u64) -> Vec<(u64, Extent)> {
        let first = self
            .extents
            .range(..=position)
            .next_back()
            .filter(|(start, extent)| *start + extent.len > position)
            .map(|(start, _)| *start)
            .unwrap_or(position);
        self.extents
            .range(first..end)
            .map(|(start, extent)| {
                let from = (*start).max(position);
                let to = (start + extent.len).min(end);
                (from, extent.part(from - start, to - from))
            })
            .collect()
    }

    /// Every extent, for a flusher to write out.
    pub fn to_flush(&self) -> Vec<(u64, Extent)> {
        self.extents
            .iter()
            .map(|(start, extent)| (*start, extent.clone()))
            .collect()
    }

    /// Drops the extents of `written` that are still exactly as they were (no later write
    /// cut them). Returns the bytes dropped.
    pub fn forget_written(&mut self, written: &[(u64, Extent)]) -> u64 {
        let mut dropped = 0;
        for (start, extent) in written {
            if self
                .extents
                .get(start)
                .is_some_and(|current| current.same(extent))
            {
                dropped += self.take(*start).len;
            }
        }
        dropped
    }

    /// Removes the bytes in `[position, end)`, keeping the parts of extents outside it.
    fn cut(&mut self, position: u64, end: u64) {
        let hit: Vec<u64> = self
            .overlapping(position, end)
            .into_iter()
            .map(|(from, _)| from)
            .collect();
        for from in hit {
            let start = if self.extents.contains_key(&from) {
                from
            } else {
                *self
                    .extents
                    .range(..from)
                    .next_back()
                    .expect("an overlapping extent starts at or before its clipped start")
                    .0
            };
            let extent = self.take(start);
            let extent_end = start + extent.len;
            if start < position {
                self.insert(start, extent.part(0, position - start));
            }
            if extent_end > end {
                self.insert(end, extent.part(end - start, extent_end - end));
            }
        }
    }

    fn take(&mut self, start: u64) -> Extent {
        let extent = self.extents.remove(&start).expect("extent exists");
        self.bytes -= extent.len;
        extent
    }

    fn insert(&mut self, start: u64, extent: Extent) {
        self.bytes += extent.len;
        self.extents.insert(start, extent);
    }
}

impl Default for DirtyFile {
    fn default() -> DirtyFile {
        DirtyFile::new()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// A stand-in log segment: appends bytes and hands out extents over them.
    struct Source {
        file: Arc<File>,
        len: u64,
        records: u64,
        _dir: tempfile::TempDir,
    }

    impl Source {
        fn new() -> Source {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("segment");
            let file = std::fs::OpenOptions::new()
                .read(true)
                .append(true)
                .create(true)
                .open(path)
                .unwrap();
            Source {
                file: Arc::new(file),
                len: 0,
                records: 0,
                _dir: dir,
            }
        }

        fn extent(&mut self, bytes: &[u8]) -> Extent {
            (&*self.file).write_all(bytes).unwrap();
            let extent = Extent {
                source: Arc::clone(&self.file),
                source_position: self.len,
                len: bytes.len() as u64,
                record: self.records,
            };
            self.len += bytes.len() as u64;
            self.records += 1;
            extent
        }
    }

    /// The file as text of `len` bytes, unwritten bytes as `.`.
    fn render(file: &DirtyFile, len: u64) -> String {
        let mut buffer = vec![b'.'; len as usize];
        for (from, extent) in file.overlapping(0, len) {
            let at = from as usize;
            extent
                .read(0, &mut buffer[at..at + extent.len as usize])
                .unwrap();
        }
        String::from_utf8(buffer).unwrap()
    }

    fn now() -> SystemTime {
        SystemTime::now()
    }

    #[test]
    fn writes_overlay_one_another() {
        let mut log = Source::new();
        let mut file = DirtyFile::new();
        assert_eq!(file.write(2, log.extent(b"abcd"), now()), 4);
        assert_eq!(file.write(6, log.extent(b"ef"), now()), 2);
        assert_eq!(render(&file, 10), "..abcdef..");
        // Overwrite the middle of one extent: it splits around the new one.
        assert_eq!(file.write(3, log.extent(b"XY"), now()), 0);
        assert_eq!(render(&file, 10), "..aXYdef..");
        assert_eq!(file.bytes(), 6);
        assert_eq!(file.end(), 8);
        assert_eq!(file.first_record(), Some(0));
        // Across two extents and beyond.
        file.write(5, log.extent(b"1234"), now());
        assert_eq!(render(&file, 10), "..aXY1234.");
        assert_eq!(file.bytes(), 7);
        // Covering everything.
        file.write(0, log.extent(b"0123456789"), now());
        assert_eq!(render(&file, 12), "0123456789..");
        assert_eq!(file.to_flush().len(), 1);
        assert_eq!(file.first_record(), Some(4));
    }

    #[test]
    fn overlapping_clips_to_the_range() {
        let mut log = Source::new();
        let mut file = DirtyFile::new();
        file.write(100, log.extent(b"hello"), now());
        let parts = file.overlapping(102, 110);
        assert_eq!(parts.len(), 1);
        let (from, extent) = &parts[0];
        assert_eq!((*from, extent.len), (102, 3));
        let mut bytes = [0u8; 3];
        extent.read(0, &mut bytes).unwrap();
        assert_eq!(&bytes, b"llo");
        assert!(file.overlapping(0, 100).is_empty());
        assert!(file.overlapping(105, 200).is_empty());
    }

    #[test]
    fn only_extents_unchanged_since_they_were_taken_are_forgotten() {
        let mut log = Source::new();
        let mut file = DirtyFile::new();
        file.write(0, log.extent(b"aaaa"), now());
        file.write(100, log.extent(b"bbbb"), now());
        let written = file.to_flush();
        // A write lands on the first extent while the flusher is busy.
        file.write(1, log.extent(b"X"), now());
        assert_eq!(file.forget_written(&written), 4);
        assert_eq!(render(&file, 4), "aXaa");
        assert_eq!(file.first_record(), Some(0));
        let rest = file.to_flush();
        assert_eq!(file.forget_written(&rest), 4);
        assert!(file.is_empty());
        assert_eq!(file.bytes(), 0);
    }
}
