//! Thin, safe wrappers over the libc calls `origin` makes. Each takes a directory fd and at
//! most one validated path component, so no call here can resolve a multi-component path.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::types::{NAME_LEN_MAX, Name};

use super::Stat;

/// A NUL-terminated copy of a `Name` (or of "."), on the stack: no allocation per syscall.
pub(super) struct CName {
    bytes: [u8; NAME_LEN_MAX + 1],
}

impl CName {
    /// `name`, or "." (the directory itself) when `None`.
    pub(super) fn new(name: Option<&Name>) -> CName {
        let mut bytes = [0u8; NAME_LEN_MAX + 1];
        let source: &[u8] = name.map_or(b".", Name::as_bytes);
        // A Name is at most NAME_LEN_MAX bytes and holds no NUL, so the copy is a C string.
        bytes[..source.len()].copy_from_slice(source);
        CName { bytes }
    }

    pub(super) fn as_ptr(&self) -> *const libc::c_char {
        self.bytes.as_ptr().cast()
    }

    pub(super) fn as_bytes(&self) -> &[u8] {
        let end = self
            .bytes
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(NAME_LEN_MAX);
        &self.bytes[..end]
    }
}

/// Turns a -1 return into the thread's errno.
pub(super) fn check(result: libc::c_int) -> io::Result<libc::c_int> {
    if result == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result)
    }
}

/// Turns a -1 return of a size-returning call into the thread's errno.
pub(super) fn check_size(result: libc::ssize_t) -> io::Result<usize> {
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result as usize)
    }
}

/// Takes ownership of a freshly returned descriptor.
pub(super) fn owned_fd(fd: libc::c_int) -> io::Result<OwnedFd> {
    let fd = check(fd)?;
    // SAFETY: the kernel just returned this descriptor to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(super) fn openat(
    dir: BorrowedFd<'_>,
    name: &CName,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> io::Result<OwnedFd> {
    // SAFETY: valid fd and NUL-terminated name; the result is checked.
    owned_fd(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            mode as libc::c_uint,
        )
    })
}

/// Clears O_NONBLOCK on an open file.
pub(super) fn clear_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: valid fd; F_GETFL and F_SETFL take and return plain flags.
    let flags = check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    // SAFETY: as above.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK) })
        .map(drop)
}

pub(super) fn fstatat(dir: BorrowedFd<'_>, name: &CName) -> io::Result<Stat> {
    let mut raw = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: valid fd, NUL-terminated name, and a buffer of the right type.
    check(unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            raw.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    // SAFETY: fstatat succeeded, so it filled the buffer.
    Ok(stat_from_raw(&unsafe { raw.assume_init() }))
}

pub(super) fn fstat(fd: BorrowedFd<'_>) -> io::Result<Stat> {
    let mut raw = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: valid fd and a buffer of the right type.
    check(unsafe { libc::fstat(fd.as_raw_fd(), raw.as_mut_ptr()) })?;
    // SAFETY: fstat succeeded, so it filled the buffer.
    Ok(stat_from_raw(&unsafe { raw.assume_init() }))
}

fn stat_from_raw(raw: &libc::stat) -> Stat {
    Stat {
        dev: raw.st_dev,
        ino: raw.st_ino,
        mode: raw.st_mode,
        nlink: raw.st_nlink,
        uid: raw.st_uid,
        gid: raw.st_gid,
        rdev: raw.st_rdev,
        size: raw.st_size as u64,
        blocks: raw.st_blocks as u64,
        blksize: raw.st_blksize as u32,
        atime: system_time(raw.st_atime, raw.st_atime_nsec),
        mtime: system_time(raw.st_mtime, raw.st_mtime_nsec),
        ctime: system_time(raw.st_ctime, raw.st_ctime_nsec),
    }
}

/// A `timespec` as a `SystemTime`, including times before 1970.
fn system_time(secs: i64, nanos: i64) -> SystemTime {
    let nanos = nanos.clamp(0, 999_999_999) as u32;
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nanos)
    } else {
        UNIX_EPOCH - Duration::new(secs.unsigned_abs(), 0) + Duration::new(0, nanos)
    }
}

/// A `SystemTime` as a `timespec`.
pub(super) fn timespec(time: SystemTime) -> libc::timespec {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => libc::timespec {
            tv_sec: after.as_secs() as i64,
            tv_nsec: after.subsec_nanos() as i64,
        },
        Err(before) => {
            let before = before.duration();
            let mut secs = -(before.as_secs() as i64);
            let mut nanos = before.subsec_nanos() as i64;
            if nanos > 0 {
                secs -= 1;
                nanos = 1_000_000_000 - nanos;
            }
            libc::timespec {
                tv_sec: secs,
                tv_nsec: nanos,
            }
        }
    }
}

/// "/proc/self/fd/N/name": the only way to reach xattrs of an entry below an O_PATH fd
/// without following a symlink at the end (the l*xattr calls then act on the entry itself).
pub(super) fn proc_path(dir: RawFd, name: &CName) -> CString {
    let mut path = format!("/proc/self/fd/{dir}/").into_bytes();
    path.extend_from_slice(name.as_bytes());
    // The name holds no NUL (CName), and the prefix is ASCII.
    CString::new(path).unwrap_or_default()
}

/// Bytes a variable-size value is first read into: most values and name lists fit, so one
/// call reads them.
const SIZED_FIRST: usize = 1024;

/// Reads a variable-size value: into a buffer that holds most in one call, else with the
/// usual "ask for the size, then fetch" protocol.
pub(super) fn read_sized(
    mut call: impl FnMut(*mut libc::c_void, usize) -> libc::ssize_t,
) -> io::Result<Vec<u8>> {
    let mut buffer = vec![0u8; SIZED_FIRST];
    match check_size(call(buffer.as_mut_ptr().cast(), buffer.len())) {
        Ok(read) => {
            buffer.truncate(read);
            return Ok(buffer);
        }
        Err(error) if error.raw_os_error() == Some(libc::ERANGE) => {}
        Err(error) => return Err(error),
    }
    loop {
        let size = check_size(call(std::ptr::null_mut(), 0))?;
        let mut buffer = vec![0u8; size];
        match check_size(call(buffer.as_mut_ptr().cast(), buffer.len())) {
            Ok(read) => {
                buffer.truncate(read);
                return Ok(buffer);
            }
            // It grew between the two calls: ask again.
            Err(error) if error.raw_os_error() == Some(libc::ERANGE) => continue,
            Err(error) => return Err(error),
        }
    }
}

/// The `*xattrat` system calls (Linux 6.13), where this build knows their numbers: an
/// xattr of `dir`'s entry `name` without walking a `/proc/self/fd` path first.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod xattrat {
    pub(super) const LIST: libc::c_long = 465;
    pub(super) const GET: libc::c_long = 464;
}

/// Set once the kernel says it has no `*xattrat` calls.
static NO_XATTRAT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// What `getxattrat` takes besides the name.
#[repr(C)]
struct XattrArgs {
    value: u64,
    size: u32,
    flags: u32,
}

/// Runs an `*xattrat` read through [`read_sized`]; `None` when the kernel (or this build)
/// has no such call, and the caller takes the `/proc` path.
fn xattrat(
    call: impl FnMut(*mut libc::c_void, usize) -> libc::ssize_t,
) -> Option<io::Result<Vec<u8>>> {
    if !cfg!(any(target_arch = "x86_64", target_arch = "aarch64"))
        || NO_XATTRAT.load(std::sync::atomic::Ordering::Relaxed)
    {
        return None;
    }
    match read_sized(call) {
        Err(error) if error.raw_os_error() == Some(libc::ENOSYS) => {
            NO_XATTRAT.store(true, std::sync::atomic::Ordering::Relaxed);
            None
        }
        other => Some(other),
    }
}

/// The xattr names of `dir`'s entry `name` (not following a final symlink), by
/// `listxattrat`; `None` without it.
pub(super) fn list_xattr_at(dir: RawFd, name: &CName) -> Option<io::Result<Vec<u8>>> {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    {
        xattrat(|buffer, size| {
            // SAFETY: a valid fd, a NUL-terminated name, and a buffer of `size` bytes.
            unsafe {
                libc::syscall(
                    xattrat::LIST,
                    dir,
                    name.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                    buffer,
                    size,
                ) as libc::ssize_t
            }
        })
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = (dir, name);
        None
    }
}

/// The value of xattr `key` of `dir`'s entry `name` (not following a final symlink), by
/// `getxattrat`; `None` without it.
pub(super) fn get_xattr_at(dir: RawFd, name: &CName, key: &CString) -> Option<io::Result<Vec<u8>>> {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    {
        xattrat(|buffer, size| {
            let mut args = XattrArgs {
                value: buffer as u64,
                size: size.min(u32::MAX as usize) as u32,
                flags: 0,
            };
            // SAFETY: a valid fd, NUL-terminated strings, and args naming a buffer of
            // `size` bytes, with their own size.
            unsafe {
                libc::syscall(
                    xattrat::GET,
                    dir,
                    name.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                    key.as_ptr(),
                    &mut args as *mut XattrArgs,
                    std::mem::size_of::<XattrArgs>(),
                ) as libc::ssize_t
            }
        })
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = (dir, name, key);
        None
    }
}

/// A C string from bytes that must not contain NUL (EINVAL if they do).
pub(super) fn c_string(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}
