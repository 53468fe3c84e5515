//! Listing a directory of the origin with `getdents64`, resumable at any returned cookie.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;

use crate::types::FileKind;

/// Bytes fetched per `getdents64` call: about 500 typical entries.
const BUFFER_BYTES: usize = 32 * 1024;

/// One directory entry as the origin lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// The entry's inode number on the origin.
    pub ino: u64,
    /// The cookie that resumes the listing just after this entry.
    pub next_offset: u64,
    /// The entry's kind, when the origin filesystem reports it in the listing.
    pub kind: Option<FileKind>,
    /// The entry's name (may be "." or "..").
    pub name: OsString,
}

/// An open directory being listed.
#[derive(Debug)]
pub struct DirStream {
    fd: OwnedFd,
    buffer: Vec<u8>,
    filled: usize,
    position: usize,
    /// The cookie of the next entry to return; 0 is the start.
    offset: u64,
    /// Where the last returned entry started (buffer position, cookie), for `unread`.
    last: Option<(usize, u64)>,
}

impl DirStream {
    pub(super) fn new(fd: OwnedFd) -> DirStream {
        DirStream {
            fd,
            buffer: vec![0; BUFFER_BYTES],
            filled: 0,
            position: 0,
            offset: 0,
            last: None,
        }
    }

    /// Metadata of the directory listed (valid even once its last name is gone).
    pub fn stat(&self) -> io::Result<super::Stat> {
        super::sys::fstat(self.fd.as_fd())
    }

    /// The cookie at which the next call to `next_entry` continues.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Continues the listing at `offset` (a cookie returned earlier, or 0 for the start).
    pub fn seek(&mut self, offset: u64) -> io::Result<()> {
        if offset == self.offset {
            return Ok(());
        }
        // SAFETY: valid fd.
        let result = unsafe { libc::lseek(self.fd.as_raw_fd(), offset as i64, libc::SEEK_SET) };
        if result < 0 {
            return Err(io::Error::last_os_error());
        }
        self.filled = 0;
        self.position = 0;
        self.offset = offset;
        self.last = None;
        Ok(())
    }

    /// The next entry, or `None` at the end of the directory.
    pub fn next_entry(&mut self) -> io::Result<Option<DirEntry>> {
        if self.position >= self.filled {
            // SAFETY: valid fd and a buffer of the given length.
            let read = unsafe {
                libc::syscall(
                    libc::SYS_getdents64,
                    self.fd.as_raw_fd(),
                    self.buffer.as_mut_ptr(),
                    self.buffer.len(),
                )
            };
            if read < 0 {
                return Err(io::Error::last_os_error());
            }
            if read == 0 {
                return Ok(None);
            }
            self.filled = read as usize;
            self.position = 0;
            self.last = None;
        }
        let entry = parse_entry(&self.buffer[self.position..self.filled])
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EIO))?;
        self.last = Some((self.position, self.offset));
        self.position += entry.0;
        self.offset = entry.1.next_offset;
        Ok(Some(entry.1))
    }

    /// Puts the entry just returned back, so the next `next_entry` returns it again
    /// (a reply that had no room for it). Only the most recent entry can be put back.
    pub fn unread(&mut self) {
        if let Some((position, offset)) = self.last.take() {
            self.position = position;
            self.offset = offset;
        }
    }
}

/// Parses one `linux_dirent64` at the start of `bytes`: (record length, entry).
fn parse_entry(bytes: &[u8]) -> Option<(usize, DirEntry)> {
    // struct linux_dirent64 { u64 d_ino; i64 d_off; u16 d_reclen; u8 d_type; char d_name[]; }
    const NAME_START: usize = 19;
    let ino = u64::from_ne_bytes(bytes.get(0..8)?.try_into().ok()?);
    let next_offset = u64::from_ne_bytes(bytes.get(8..16)?.try_into().ok()?);
    let record_len = u16::from_ne_bytes(bytes.get(16..18)?.try_into().ok()?) as usize;
    let kind = match *bytes.get(18)? {
        libc::DT_REG => Some(FileKind::Regular),
        libc::DT_DIR => Some(FileKind::Directory),
        libc::DT_LNK => Some(FileKind::Symlink),
        libc::DT_FIFO => Some(FileKind::Fifo),
        libc::DT_SOCK => Some(FileKind::Socket),
        libc::DT_CHR => Some(FileKind::CharDevice),
        libc::DT_BLK => Some(FileKind::BlockDevice),
        _ => None,
    };
    let name_field = bytes.get(NAME_START..record_len)?;
    let name_len = name_field.iter().position(|&b| b == 0)?;
    let name = OsString::from_vec(name_field[..name_len].to_vec());
    Some((
        record_len,
        DirEntry {
            ino,
            next_offset,
            kind,
            name,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(ino: u64, off: u64, kind: u8, name: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&ino.to_ne_bytes());
        bytes.extend_from_slice(&off.to_ne_bytes());
        let len = (19 + name.len() + 1).next_multiple_of(8);
        bytes.extend_from_slice(&(len as u16).to_ne_bytes());
        bytes.push(kind);
        bytes.extend_from_slice(name);
        bytes.resize(len, 0);
        bytes
    }

    #[test]
    fn parses_a_record_and_its_length() {
        let bytes = record(42, 7, libc::DT_REG, b"hello");
        let (len, entry) = parse_entry(&bytes).unwrap();
        assert_eq!(len, 32);
        assert_eq!(entry.ino, 42);
        assert_eq!(entry.next_offset, 7);
        assert_eq!(entry.kind, Some(FileKind::Regular));
        assert_eq!(entry.name, OsString::from("hello"));
    }

    #[test]
    fn rejects_truncated_or_unterminated_records() {
        let bytes = record(1, 1, libc::DT_DIR, b"abc");
        assert!(parse_entry(&bytes[..10]).is_none());
        let mut unterminated = bytes.clone();
        for byte in &mut unterminated[19..] {
            *byte = b'x';
        }
        assert!(parse_entry(&unterminated).is_none());
    }
}
