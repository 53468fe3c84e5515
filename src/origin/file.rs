//! An open regular file of the origin.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;

use super::{Stat, TimeSet, TimesUpdate, sys};

/// A regular file of the origin, open for I/O. Reads and writes are positional.
#[derive(Debug)]
pub struct OriginFile(File);

impl OriginFile {
    pub(super) fn new(fd: OwnedFd) -> OriginFile {
        OriginFile(File::from(fd))
    }

    /// Reads up to `buffer.len()` bytes at `offset`; fewer only at end of file.
    pub fn read_at(&self, buffer: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut filled = 0;
        while filled < buffer.len() {
            match self
                .0
                .read_at(&mut buffer[filled..], offset + filled as u64)
            {
                Ok(0) => break,
                Ok(read) => filled += read,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            }
        }
        Ok(filled)
    }

    /// Writes all of `data` at `offset`.
    pub fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(data, offset)
    }

    /// Metadata of the open file (valid even after its last name is gone).
    pub fn stat(&self) -> io::Result<Stat> {
        sys::fstat(self.0.as_fd())
    }

    /// Makes data (and, unless `data_only`, metadata) durable.
    pub fn sync(&self, data_only: bool) -> io::Result<()> {
        if data_only {
            self.0.sync_data()
        } else {
            self.0.sync_all()
        }
    }

    /// Sets the file size.
    pub fn set_len(&self, size: u64) -> io::Result<()> {
        self.0.set_len(size)
    }

    /// `fchmod`.
    pub fn chmod(&self, mode: u32) -> io::Result<()> {
        // SAFETY: valid fd.
        sys::check(unsafe { libc::fchmod(self.0.as_raw_fd(), mode) }).map(drop)
    }

    /// `fchown`; `None` leaves that id unchanged.
    pub fn chown(&self, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
        // SAFETY: valid fd; u32::MAX is "unchanged" (-1).
        sys::check(unsafe {
            libc::fchown(
                self.0.as_raw_fd(),
                uid.unwrap_or(u32::MAX),
                gid.unwrap_or(u32::MAX),
            )
        })
        .map(drop)
    }

    /// `futimens` with nanosecond times.
    pub fn set_times(&self, times: TimesUpdate) -> io::Result<()> {
        let spec = [time_spec(times.atime), time_spec(times.mtime)];
        // SAFETY: valid fd and two timespecs.
        sys::check(unsafe { libc::futimens(self.0.as_raw_fd(), spec.as_ptr()) }).map(drop)
    }

    /// `fallocate` with the given mode bits (0, FALLOC_FL_KEEP_SIZE, PUNCH_HOLE, ...).
    pub fn allocate(&self, offset: u64, length: u64, mode: i32) -> io::Result<()> {
        // SAFETY: valid fd.
        sys::check(unsafe {
            libc::fallocate(self.0.as_raw_fd(), mode, offset as i64, length as i64)
        })
        .map(drop)
    }

    /// Copies up to `length` bytes at `from_offset` of this file to `offset` of `to`
    /// inside the kernel (copy_file_range(2)), until done or this file ends; returns how
    /// many were copied.
    pub fn copy_to(
        &self,
        from_offset: u64,
        to: &OriginFile,
        offset: u64,
        length: u64,
    ) -> io::Result<u64> {
        let (mut from_at, mut to_at) = (from_offset as i64, offset as i64);
        let mut copied = 0;
        while copied < length {
            let asked = (length - copied).min(1 << 30) as usize;
            // SAFETY: valid fds; the kernel moves the offsets it is given.
            let n = sys::check_size(unsafe {
                libc::copy_file_range(
                    self.0.as_raw_fd(),
                    &mut from_at,
                    to.0.as_raw_fd(),
                    &mut to_at,
                    asked,
                    0,
                )
            })?;
            if n == 0 {
                break;
            }
            copied += n as u64;
        }
        Ok(copied)
    }

    /// The value of extended attribute `key`.
    pub fn get_xattr(&self, key: &OsStr) -> io::Result<Vec<u8>> {
        let key = sys::c_string(key.as_bytes())?;
        let fd = self.0.as_raw_fd();
        sys::read_sized(|buffer, size| {
            // SAFETY: valid fd, NUL-terminated key, a buffer of `size` bytes (or null with 0).
            unsafe { libc::fgetxattr(fd, key.as_ptr(), buffer, size) }
        })
    }

    /// Sets extended attribute `key`; `flags` are XATTR_CREATE / XATTR_REPLACE.
    pub fn set_xattr(&self, key: &OsStr, value: &[u8], flags: i32) -> io::Result<()> {
        let key = sys::c_string(key.as_bytes())?;
        // SAFETY: valid fd, NUL-terminated key, and a value of its own length.
        sys::check(unsafe {
            libc::fsetxattr(
                self.0.as_raw_fd(),
                key.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                flags,
            )
        })
        .map(drop)
    }

    /// The NUL-separated list of extended attribute names.
    pub fn list_xattr(&self) -> io::Result<Vec<u8>> {
        let fd = self.0.as_raw_fd();
        sys::read_sized(|buffer, size| {
            // SAFETY: valid fd and a buffer of `size` bytes (or null with 0).
            unsafe { libc::flistxattr(fd, buffer.cast(), size) }
        })
    }

    /// Removes extended attribute `key`.
    pub fn remove_xattr(&self, key: &OsStr) -> io::Result<()> {
        let key = sys::c_string(key.as_bytes())?;
        // SAFETY: valid fd and NUL-terminated key.
        sys::check(unsafe { libc::fremovexattr(self.0.as_raw_fd(), key.as_ptr()) }).map(drop)
    }

    /// `lseek` for SEEK_DATA / SEEK_HOLE (and the others): the resulting offset.
    /// Where the first data at or after `offset` begins; `None` when only a hole follows
    /// (SEEK_DATA's ENXIO). A filesystem that cannot tell says there is data everywhere.
    pub fn next_data(&self, offset: u64) -> io::Result<Option<u64>> {
        match self.seek(i64::try_from(offset).unwrap_or(i64::MAX), libc::SEEK_DATA) {
            Ok(data) => Ok(Some(data as u64)),
            Err(error) if error.raw_os_error() == Some(libc::ENXIO) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Where the first hole at or after `offset` begins (the end of the file counts).
    pub fn next_hole(&self, offset: u64) -> io::Result<u64> {
        self.seek(i64::try_from(offset).unwrap_or(i64::MAX), libc::SEEK_HOLE)
            .map(|hole| hole as u64)
    }

    /// `lseek(2)` with `whence`, for SEEK_DATA and SEEK_HOLE asked through the mount.
    pub fn seek(&self, offset: i64, whence: i32) -> io::Result<i64> {
        // The descriptor's own position is never used for I/O (all I/O is positional),
        // so moving it here cannot disturb a concurrent read or write.
        // SAFETY: valid fd.
        let result = unsafe { libc::lseek(self.0.as_raw_fd(), offset, whence) };
        if result < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(result)
        }
    }
}

/// A `TimeSet` as the timespec `utimensat` wants (UTIME_OMIT when unchanged).
pub(super) fn time_spec(time: Option<TimeSet>) -> libc::timespec {
    match time {
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Some(TimeSet::Now) => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Some(TimeSet::At(time)) => sys::timespec(time),
    }
}

impl AsFd for OriginFile {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.0.as_fd()
    }
}
