//! How a record sits in a segment file: a frame of
//!
//! ```text
//! length: u32 LE | checksum: u32 LE | payload: `length` bytes of postcard-encoded Record
//! ```
//!
//! The checksum is CRC-32 (IEEE) over the length and the payload, so a torn or flipped
//! length is caught as surely as a flipped payload byte. A CRC, as Kafka's record batches
//! use, because every byte written through the mount passes through it: blake3 cost a
//! fifth of write-behind's time. Content hashes for verify are blake3, elsewhere.

use super::record::{LogPath, Op, Record};

/// Bytes before the payload.
pub const HEADER_LEN: usize = 4 + 4;

/// The largest payload a frame may declare: a 1 MiB write plus its path and a wide margin.
/// A larger declared length can only be damage.
pub const PAYLOAD_LEN_MAX: usize = 4 << 20;

/// What the bytes at the start of a buffer hold.
#[derive(Debug)]
pub enum Decoded {
    /// A whole, intact record, and the frame's length in bytes.
    Record(Record, usize),
    /// The start of a frame whose declared end lies beyond the buffer.
    Incomplete {
        /// The declared frame length (header and payload).
        needed: usize,
    },
    /// Bytes that are not an intact frame.
    Corrupt(FrameError),
}

/// Why bytes are not an intact frame.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The declared payload length is impossible.
    #[error("frame declares {0} payload bytes (most is {PAYLOAD_LEN_MAX})")]
    Length(u64),
    /// The checksum does not match the bytes.
    #[error("checksum mismatch")]
    Checksum,
    /// The file ends inside the frame.
    #[error("record cut short")]
    Truncated,
    /// The checksum matches but the payload is not a valid record (a bug or a format
    /// mismatch, never a torn write).
    #[error("payload is not a valid record: {0}")]
    Payload(String),
}

/// Appends `record` to `out` as one frame and returns the frame's length.
/// A record too large for a frame is refused, leaving `out` as it was.
pub fn encode(record: &Record, out: &mut Vec<u8>) -> Result<usize, FrameError> {
    encode_parts(record.offset, record.epoch, &record.op, out)
}

/// [`encode`] for a record given by its parts, so the operation (and the bytes of a write)
/// need not be moved or copied into a `Record` first. A tuple encodes as the struct does.
pub fn encode_parts(
    offset: u64,
    epoch: u32,
    op: &Op,
    out: &mut Vec<u8>,
) -> Result<usize, FrameError> {
    encode_serialized(&(offset, epoch, op), out)
}

fn encode_serialized(
    record: &impl serde::Serialize,
    out: &mut Vec<u8>,
) -> Result<usize, FrameError> {
    let start = out.len();
    out.resize(start + HEADER_LEN, 0);
    if let Err(error) = postcard::to_io(record, &mut *out) {
        out.truncate(start);
        return Err(FrameError::Payload(error.to_string()));
    }
    let payload_len = out.len() - start - HEADER_LEN;
    if payload_len > PAYLOAD_LEN_MAX {
        out.truncate(start);
        return Err(FrameError::Length(payload_len as u64));
    }
    let length = (payload_len as u32).to_le_bytes();
    let checksum = checksum(&length, &out[start + HEADER_LEN..]);
    out[start..start + 4].copy_from_slice(&length);
    out[start + 4..start + HEADER_LEN].copy_from_slice(&checksum.to_le_bytes());
    Ok(out.len() - start)
}

/// The index of `Op::Write` among `Op`'s variants, as postcard writes it.
const WRITE_VARIANT: u32 = 8;

/// The frame of a write record, encoded from borrowed bytes and without them: appends to
/// `out` the frame's header and the payload up to the data, such that `out`'s new bytes
/// followed by `data` are exactly the frame [`encode`] makes of `Op::Write`. Returns the
/// whole frame's length. So a write's bytes go from the caller's buffer to the log file
/// without being copied into an `Op` or an encoding buffer.
pub fn encode_write_head(
    offset: u64,
    epoch: u32,
    path: &LogPath,
    file_offset: u64,
    data: &[u8],
    out: &mut Vec<u8>,
) -> Result<usize, FrameError> {
    let start = out.len();
    out.resize(start + HEADER_LEN, 0);
    let head = WriteHead {
        path,
        offset: file_offset,
    };
    if let Err(error) = postcard::to_io(&(offset, epoch, head), &mut *out) {
        out.truncate(start);
        return Err(FrameError::Payload(error.to_string()));
    }
    // The data field as postcard writes bytes: a LEB128 length, then the bytes.
    let mut len = data.len();
    loop {
        let low = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            out.push(low);
            break;
        }
        out.push(low | 0x80);
    }
    let payload_len = out.len() - start - HEADER_LEN + data.len();
    if payload_len > PAYLOAD_LEN_MAX {
        out.truncate(start);
        return Err(FrameError::Length(payload_len as u64));
    }
    let length = (payload_len as u32).to_le_bytes();
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&length);
    hasher.update(&out[start + HEADER_LEN..]);
    hasher.update(data);
    out[start..start + 4].copy_from_slice(&length);
    out[start + 4..start + HEADER_LEN].copy_from_slice(&hasher.finalize().to_le_bytes());
    Ok(HEADER_LEN + payload_len)
}

/// `Op::Write` without its last field, the data.
struct WriteHead<'a> {
    path: &'a LogPath,
    offset: u64,
}

impl serde::Serialize for WriteHead<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStructVariant;
        let mut variant = serializer.serialize_struct_variant("Op", WRITE_VARIANT, "Write", 3)?;
        variant.serialize_field("path", self.path)?;
        variant.serialize_field("offset", &self.offset)?;
        variant.end()
    }
}

/// Reads the frame at the start of `bytes`.
pub fn decode(bytes: &[u8]) -> Decoded {
    if bytes.len() < HEADER_LEN {
        return Decoded::Incomplete { needed: HEADER_LEN };
    }
    let length: [u8; 4] = bytes[..4].try_into().expect("4 bytes");
    let payload_len = u32::from_le_bytes(length) as usize;
    if payload_len > PAYLOAD_LEN_MAX {
        return Decoded::Corrupt(FrameError::Length(payload_len as u64));
    }
    let needed = HEADER_LEN + payload_len;
    if bytes.len() < needed {
        return Decoded::Incomplete { needed };
    }
    let stored = u32::from_le_bytes(bytes[4..HEADER_LEN].try_into().expect("4 bytes"));
    let payload = &bytes[HEADER_LEN..needed];
    if checksum(&length, payload) != stored {
        return Decoded::Corrupt(FrameError::Checksum);
    }
    match postcard::take_from_bytes::<Record>(payload) {
        Ok((record, [])) => Decoded::Record(record, needed),
        Ok((_, rest)) => Decoded::Corrupt(FrameError::Payload(format!(
            "{} bytes after the record",
            rest.len()
        ))),
        Err(error) => Decoded::Corrupt(FrameError::Payload(error.to_string())),
    }
}

fn checksum(length: &[u8; 4], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(length);
    hasher.update(payload);
    hasher.finalize()
}
