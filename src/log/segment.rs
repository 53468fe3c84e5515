//! One segment file of the log: its name, header, scan, and sparse index.
//!
//! A segment is `<first offset, 20 digits>.log`: a 16-byte header (magic, format version,
//! first offset) followed by frames. A sealed segment also has `<first>.index`: every
//! [`INDEX_INTERVAL`] bytes, the offset and position of the next frame, then a trailer of
//! the segment's end offset, length and a checksum. The index is only a shortcut: when it
//! is missing or does not match the segment, the segment is scanned instead.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::frame::{self, Decoded, FrameError};
use super::record::Record;

/// Identifies a segment file.
const MAGIC: &[u8; 6] = b"MFSLOG";

/// The record encoding this build writes and reads.
pub const FORMAT_VERSION: u16 = 1;

/// Bytes before the first frame.
pub const HEADER_LEN: u64 = 16;

/// An index entry is kept for every this many bytes of frames.
pub const INDEX_INTERVAL: u64 = 64 * 1024;

/// Where the frame holding an offset starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    /// A record's offset.
    pub offset: u64,
    /// Its frame's byte position in the segment file.
    pub position: u64,
}

/// What is known of one segment.
#[derive(Clone, Debug)]
pub struct Segment {
    /// Its file.
    pub path: PathBuf,
    /// Offset of its first record.
    pub first: u64,
    /// One past the offset of its last record (`first` when empty).
    pub next: u64,
    /// Bytes of the file that hold header and intact frames.
    pub len: u64,
    /// Sparse index, ascending.
    pub index: Vec<IndexEntry>,
}

impl Segment {
    /// A new empty segment's description (the file is made by the caller).
    pub fn empty(dir: &Path, first: u64) -> Segment {
        Segment {
            path: dir.join(file_name(first)),
            first,
            next: first,
            len: HEADER_LEN,
            index: Vec::new(),
        }
    }

    /// Notes a frame of `frame_len` bytes holding `offset`, just appended at `self.len`.
    pub fn note_appended(&mut self, offset: u64, frame_len: u64) {
        let last_indexed = self.index.last().map_or(0, |entry| entry.position);
        if self.index.is_empty() || self.len - last_indexed >= INDEX_INTERVAL {
            self.index.push(IndexEntry {
                offset,
                position: self.len,
            });
        }
        self.len += frame_len;
        self.next = offset + 1;
    }

    /// Where to start reading to find `offset`: the last indexed frame at or before it.
    pub fn start_for(&self, offset: u64) -> IndexEntry {
        let at = self.index.partition_point(|entry| entry.offset <= offset);
        at.checked_sub(1).map_or(
            IndexEntry {
                offset: self.first,
                position: HEADER_LEN,
            },
            |i| self.index[i],
        )
    }

    /// The file name of the segment's index.
    pub fn index_path(&self) -> PathBuf {
        self.path.with_extension("index")
    }
}

/// The file name of the segment starting at `first`.
pub fn file_name(first: u64) -> String {
    format!("{first:020}.log")
}

/// The first offset a segment file name stands for, if it is one.
pub fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The header of a segment starting at `first`.
pub fn header(first: u64) -> [u8; HEADER_LEN as usize] {
    let mut bytes = [0; HEADER_LEN as usize];
    bytes[..6].copy_from_slice(MAGIC);
    bytes[6..8].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    bytes[8..].copy_from_slice(&first.to_le_bytes());
    bytes
}

/// How a scan of a segment ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Tail {
    /// At the end of the file, after an intact frame (or the header).
    Clean,
    /// In a frame cut short by a crash: the file ends inside it, or only zeros follow.
    Torn {
        /// Bytes from the end of the last intact frame to the end of the file.
        bytes: u64,
    },
    /// At damage with more data after it: not explainable by a crash mid-append.
    Corrupt {
        /// The offset the damaged record should have had.
        offset: u64,
        /// Its byte position.
        position: u64,
        /// What is wrong.
        error: ScanError,
    },
}

/// What is wrong with a segment's bytes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    /// The segment's header is not this format's.
    #[error("not a mirrorfs log segment of format {FORMAT_VERSION}")]
    Header,
    /// The header's first offset differs from the file name's.
    #[error("header says the segment starts at offset {0}")]
    FirstOffset(u64),
    /// A frame is damaged.
    #[error("{0}")]
    Frame(#[from] FrameError),
    /// A record has another offset than the one after its predecessor.
    #[error("record has offset {found}")]
    Gap {
        /// What the record says.
        found: u64,
    },
}

/// Reads a segment file from the header to the first frame that is not intact.
pub fn scan(path: &Path, first: u64) -> io::Result<(Segment, Tail)> {
    let mut file = File::open(path)?;
    let file_len = file.metadata()?.len();
    let mut segment = Segment {
        path: path.to_path_buf(),
        first,
        next: first,
        len: HEADER_LEN,
        index: Vec::new(),
    };
    let mut head = [0; HEADER_LEN as usize];
    let got = read_full(&mut file, &mut head)?;
    if got < head.len() {
        // Only a crash while the segment was being made leaves a short header.
        segment.len = 0;
        return Ok((segment, Tail::Torn { bytes: got as u64 }));
    }
    if head[..8] != header(first)[..8] {
        return Ok((segment, corrupt_at(first, HEADER_LEN, ScanError::Header)));
    }
    let stated = u64::from_le_bytes(head[8..].try_into().expect("8 bytes"));
    if stated != first {
        return Ok((
            segment,
            corrupt_at(first, HEADER_LEN, ScanError::FirstOffset(stated)),
        ));
    }
    let mut frames = FrameReader::new(file, HEADER_LEN);
    loop {
        let position = frames.position;
        let outcome = match frames.next_frame()? {
            None => return Ok((segment, Tail::Clean)),
            Some(outcome) => outcome,
        };
        match outcome {
            Decoded::Record(record, len) if record.offset == segment.next => {
                segment.note_appended(record.offset, len as u64);
            }
            Decoded::Record(record, _) => {
                let error = ScanError::Gap {
                    found: record.offset,
                };
                let tail = corrupt_at(segment.next, position, error);
                return Ok((segment, tail));
            }
            Decoded::Incomplete { .. } => {
                let bytes = file_len - position;
                return Ok((segment, Tail::Torn { bytes }));
            }
            Decoded::Corrupt(error) => {
                let torn = !matches!(error, FrameError::Payload(_))
                    && zeros_from(&mut frames.into_inner(), position)?;
                let tail = if torn {
                    Tail::Torn {
                        bytes: file_len - position,
                    }
                } else {
                    corrupt_at(segment.next, position, error.into())
                };
                return Ok((segment, tail));
            }
        }
    }
}

fn corrupt_at(offset: u64, position: u64, error: ScanError) -> Tail {
    Tail::Corrupt {
        offset,
        position,
        error,
    }
}

/// Whether the file holds only zero bytes from `position` on.
fn zeros_from(file: &mut File, position: u64) -> io::Result<bool> {
    file.seek(SeekFrom::Start(position))?;
    let mut chunk = vec![0; 64 * 1024];
    loop {
        let got = file.read(&mut chunk)?;
        if got == 0 {
            return Ok(true);
        }
        if chunk[..got].iter().any(|&b| b != 0) {
            return Ok(false);
        }
    }
}

/// Reads into `buf` until it is full or the reader ends; returns the bytes read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match reader.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(got)
}

/// Frames read one after another from a segment file.
pub struct FrameReader {
    reader: BufReader<File>,
    buf: Vec<u8>,
    /// Byte position of the next frame.
    pub position: u64,
}

impl FrameReader {
    /// Reads frames from `file`, which is positioned at byte `position`.
    pub fn new(file: File, position: u64) -> FrameReader {
        FrameReader {
            reader: BufReader::with_capacity(256 * 1024, file),
            buf: Vec::new(),
            position,
        }
    }

    /// Opens `path` and positions it at `position`.
    pub fn open(path: &Path, position: u64) -> io::Result<FrameReader> {
        let mut file = File::open(path)?;
        file.seek(SeekFrom::Start(position))?;
        Ok(FrameReader::new(file, position))
    }

    /// The next frame, or `None` at a clean end of file. Advances past intact frames only.
    pub fn next_frame(&mut self) -> io::Result<Option<Decoded>> {
        self.buf.resize(frame::HEADER_LEN, 0);
        let got = read_full(&mut self.reader, &mut self.buf)?;
        if got == 0 {
            return Ok(None);
        }
        let outcome = match frame::decode(&self.buf[..got]) {
            Decoded::Incomplete { needed } if got == frame::HEADER_LEN => {
                self.buf.resize(needed, 0);
                let more = read_full(&mut self.reader, &mut self.buf[frame::HEADER_LEN..])?;
                frame::decode(&self.buf[..frame::HEADER_LEN + more])
            }
            other => other,
        };
        if let Decoded::Record(_, len) = &outcome {
            self.position += *len as u64;
        }
        Ok(Some(outcome))
    }

    /// The next record, with damage and gaps as errors.
    pub fn next_record(&mut self) -> io::Result<Option<Result<Record, FrameError>>> {
        Ok(match self.next_frame()? {
            None => None,
            Some(Decoded::Record(record, _)) => Some(Ok(record)),
            Some(Decoded::Incomplete { .. }) => Some(Err(FrameError::Truncated)),
            Some(Decoded::Corrupt(error)) => Some(Err(error)),
        })
    }

    fn into_inner(self) -> File {
        self.reader.into_inner()
    }
}

/// Writes the index file of a sealed segment.
pub fn write_index(segment: &Segment) -> io::Result<()> {
    let mut bytes = Vec::with_capacity(segment.index.len() * 16 + 24);
    for entry in &segment.index {
        bytes.extend_from_slice(&entry.offset.to_le_bytes());
        bytes.extend_from_slice(&entry.position.to_le_bytes());
    }
    bytes.extend_from_slice(&segment.next.to_le_bytes());
    bytes.extend_from_slice(&segment.len.to_le_bytes());
    let sum = blake3::hash(&bytes);
    bytes.extend_from_slice(&sum.as_bytes()[..8]);
    crate::durable::replace(&segment.index_path(), bytes)
}

/// The sealed segment at `path` from its index file, if that exists and matches the
/// segment file's length.
pub fn read_index(path: &Path, first: u64) -> Option<Segment> {
    let file_len = std::fs::metadata(path).ok()?.len();
    let bytes = std::fs::read(path.with_extension("index")).ok()?;
    if bytes.len() < 24 || (bytes.len() - 24) % 16 != 0 {
        return None;
    }
    let (body, sum) = bytes.split_at(bytes.len() - 8);
    if blake3::hash(body).as_bytes()[..8] != *sum {
        return None;
    }
    let word = |at: usize| u64::from_le_bytes(body[at..at + 8].try_into().expect("8 bytes"));
    let entries = (body.len() - 16) / 16;
    let index = (0..entries)
        .map(|i| IndexEntry {
            offset: word(i * 16),
            position: word(i * 16 + 8),
        })
        .collect();
    let (next, len) = (word(entries * 16), word(entries * 16 + 8));
    (len == file_len && next >= first).then(|| Segment {
        path: path.to_path_buf(),
        first,
        next,
        len,
        index,
    })
}
