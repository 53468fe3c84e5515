//! The backing directory (the *origin*): the only code that makes syscalls on it.
//!
//! Every call names its target as a directory fd plus at most one validated component
//! ([`At`]), and never follows a symlink at the end, so nothing here can reach a file outside
//! the origin however the tree below it changes. It knows nothing of inodes or caching.

mod dir_stream;
mod file;
mod gate;
mod sys;

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

pub use dir_stream::{DirEntry, DirStream};
pub use file::OriginFile;
pub use gate::{Changing, Reading, TreeGate};
use sys::CName;

use crate::types::{FileId, FileKind, Name, Stamp};

/// Why the origin's lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    /// Another process holds it: a mount of the same origin under another volume.
    #[error("it is already served by another mirrorfs process{}", holder.map(|pid| format!(" (pid {pid})")).unwrap_or_default())]
    Held {
        /// The holder's pid, when known.
        holder: Option<u32>,
    },
    /// The lock could not be asked for.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// The pid holding a FLOCK on the object `dev`/`ino`, from the text of /proc/locks
/// Whether `error` means nothing by that name any more: gone (ENOENT), or a directory on
/// the way replaced by a file (ENOTDIR) or a symlink (ELOOP, as no path is followed).
pub fn gone(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP)
    )
}

/// Whether `error` means the name holds something other than a regular file now
/// (`Origin::open_regular`'s ENXIO, or EISDIR).
pub fn not_regular(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::ENXIO | libc::EISDIR))
}

/// ("1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF").
fn lock_holder(locks: &str, dev: u64, ino: u64) -> Option<u32> {
    let wanted = format!(
        "{:02x}:{:02x}:{ino}",
        libc::major(dev as libc::dev_t),
        libc::minor(dev as libc::dev_t)
    );
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let at = fields.iter().position(|field| *field == "FLOCK")?;
        let (pid, object) = (fields.get(at + 3)?, fields.get(at + 4)?);
        (*object == wanted).then(|| pid.parse().ok()).flatten()
    })
}

/// Metadata of one origin object, as `fstatat` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    /// Device the object lives on.
    pub dev: u64,
    /// Inode number on that device.
    pub ino: u64,
    /// Type and permission bits.
    pub mode: u32,
    /// Number of hard links.
    pub nlink: u64,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Device number, for device nodes.
    pub rdev: u64,
    /// Size in bytes.
    pub size: u64,
    /// Allocated 512-byte blocks.
    pub blocks: u64,
    /// Preferred I/O size.
    pub blksize: u32,
    /// Last access.
    pub atime: SystemTime,
    /// Last data change.
    pub mtime: SystemTime,
    /// Last status change.
    pub ctime: SystemTime,
}

impl Stat {
    /// What says the object is as it was: size, mtime, ctime.
    pub fn stamp(&self) -> Stamp {
        Stamp {
            size: self.size,
            mtime: self.mtime.into(),
            ctime: self.ctime.into(),
        }
    }

    /// The object's identity: device and inode number.
    pub fn id(&self) -> FileId {
        FileId {
            dev: self.dev,
            ino: self.ino,
        }
    }

    /// The object's kind; `None` only for a mode Linux does not define.
    pub fn kind(&self) -> Option<FileKind> {
        FileKind::from_mode(self.mode)
    }
}

/// A directory of the origin, held open with `O_PATH` (cheap; reads nothing).
#[derive(Clone, Debug)]
pub struct DirFd(Arc<OwnedFd>);

impl DirFd {
    fn raw(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

/// The target of an origin call: an entry of a directory, or a directory itself.
#[derive(Clone, Copy, Debug)]
pub enum At<'a> {
    /// The entry `name` inside `dir`.
    Entry(&'a DirFd, &'a Name),
    /// The directory `dir` itself.
    Dir(&'a DirFd),
}

impl<'a> At<'a> {
    fn split(self) -> (&'a DirFd, CName) {
        match self {
            At::Entry(dir, name) => (dir, CName::new(Some(name))),
            At::Dir(dir) => (dir, CName::new(None)),
        }
    }
}

/// Times to set with `utimensat`; `None` leaves one unchanged.
#[derive(Clone, Copy, Debug, Default)]
pub struct TimesUpdate {
    /// New access time.
    pub atime: Option<TimeSet>,
    /// New modification time.
    pub mtime: Option<TimeSet>,
}

/// One time to set: a given instant or "now" (the kernel's clock at the call).
#[derive(Clone, Copy, Debug)]
pub enum TimeSet {
    /// This exact time, nanoseconds included.
    At(SystemTime),
    /// The current time.
    Now,
}

/// Filesystem-wide figures for `statfs`.
#[derive(Clone, Copy, Debug)]
pub struct FsStats {
    /// Total blocks of `fragment_size`.
    pub blocks: u64,
    /// Free blocks.
    pub blocks_free: u64,
    /// Free blocks for unprivileged users.
    pub blocks_available: u64,
    /// Total inodes.
    pub files: u64,
    /// Free inodes.
    pub files_free: u64,
    /// Preferred block size.
    pub block_size: u32,
    /// Longest name.
    pub name_len_max: u32,
    /// Fundamental block size.
    pub fragment_size: u32,
}

/// The open backing directory.
#[derive(Debug)]
pub struct Origin {
    root: DirFd,
    root_stat: Stat,
    path: PathBuf,
}

impl Origin {
    /// Opens `path` as an origin: it must be a directory we can search.
    pub fn open(path: &Path) -> io::Result<Origin> {
        let path_c = sys::c_string(path.as_os_str().as_bytes())?;
        // SAFETY: NUL-terminated path; the result is checked.
        let fd = sys::owned_fd(unsafe {
            libc::open(
                path_c.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        })?;
        let root = DirFd(Arc::new(fd));
        let root_stat = sys::fstat(root.0.as_fd())?;
        Ok(Origin {
            root,
            root_stat,
            path: path.to_path_buf(),
        })
    }

    /// Takes the origin's exclusive lock (flock on its root directory, released when the
    /// returned file is closed or the process dies), so that one origin is served by one
    /// volume: changes made through a second mount would reach neither the first one's log
    /// nor its replicas. `Err(Held)` names the holder's pid when /proc/locks shows it.
    pub fn hold(&self) -> Result<std::fs::File, HoldError> {
        let fd = sys::openat(
            self.root.0.as_fd(),
            &CName::new(None),
            libc::O_RDONLY | libc::O_DIRECTORY,
            0,
        )?;
        // SAFETY: valid fd.
        if unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(std::fs::File::from(fd));
        }
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(HoldError::Io(error));
        }
        let holder = std::fs::read_to_string("/proc/locks")
            .ok()
            .and_then(|locks| lock_holder(&locks, self.root_stat.dev, self.root_stat.ino));
        Err(HoldError::Held { holder })
    }

    /// Whether the origin holds nothing at all.
    pub fn is_empty(&self) -> io::Result<bool> {
        Ok(std::fs::read_dir(&self.path)?.next().is_none())
    }

    /// The origin's path, as given when it was opened.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The root directory.
    pub fn root(&self) -> &DirFd {
        &self.root
    }

    /// The root directory's metadata when the origin was opened (its device and inode).
    pub fn root_stat(&self) -> &Stat {
        &self.root_stat
    }

    /// Metadata of `at`, not following a symlink at the end.
    pub fn stat(&self, at: At<'_>) -> io::Result<Stat> {
        let (dir, name) = at.split();
        sys::fstatat(dir.0.as_fd(), &name)
    }

    /// Opens the directory `at` with `O_PATH`; fails with ENOTDIR on anything else.
    pub fn open_dir(&self, at: At<'_>) -> io::Result<DirFd> {
        let (dir, name) = at.split();
        let fd = sys::openat(dir.0.as_fd(), &name, libc::O_PATH | libc::O_DIRECTORY, 0)?;
        Ok(DirFd(Arc::new(fd)))
    }

    /// Metadata of a directory held open.
    pub fn stat_dir(&self, dir: &DirFd) -> io::Result<Stat> {
        sys::fstat(dir.0.as_fd())
    }

    /// Opens an existing file with `flags` (O_NOFOLLOW and O_CLOEXEC are always added).
    pub fn open_file(&self, at: At<'_>, flags: i32) -> io::Result<OriginFile> {
        let (dir, name) = at.split();
        let fd = sys::openat(dir.0.as_fd(), &name, flags & !libc::O_CREAT, 0)?;
        Ok(OriginFile::new(fd))
    }

    /// Opens the regular file `at` for mirrorfs's own I/O (hashing, snapshots, repairs,
    /// replay) with `access`. Such an open never blocks and never moves the file's atime:
    /// it is made with O_NONBLOCK (cleared again) and O_NOATIME (where the caller may).
    /// Anything but a regular file there, a FIFO above all, is ENXIO, as open(2) says of a
    /// socket.
    pub fn open_regular(&self, at: At<'_>, access: i32) -> io::Result<OriginFile> {
        let (dir, name) = at.split();
        let flags = access | libc::O_NONBLOCK;
        let fd = match sys::openat(dir.0.as_fd(), &name, flags | libc::O_NOATIME, 0) {
            // O_NOATIME is only for the file's owner (or CAP_FOWNER).
            Err(error) if error.raw_os_error() == Some(libc::EPERM) => {
                sys::openat(dir.0.as_fd(), &name, flags, 0)?
            }
            other => other?,
        };
        if sys::fstat(fd.as_fd())?.kind() != Some(FileKind::Regular) {
            return Err(io::Error::from_raw_os_error(libc::ENXIO));
        }
        sys::clear_nonblocking(fd.as_fd())?;
        Ok(OriginFile::new(fd))
    }

    /// Creates and opens a regular file with `flags | O_CREAT`.
    pub fn create_file(&self, at: At<'_>, flags: i32, mode: u32) -> io::Result<OriginFile> {
        let (dir, name) = at.split();
        let fd = sys::openat(dir.0.as_fd(), &name, flags | libc::O_CREAT, mode)?;
        Ok(OriginFile::new(fd))
    }

    /// Opens the directory `at` for listing its entries.
    pub fn open_dir_stream(&self, at: At<'_>) -> io::Result<DirStream> {
        let (dir, name) = at.split();
        let fd = sys::openat(dir.0.as_fd(), &name, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
        Ok(DirStream::new(fd))
    }

    /// `mkdirat`.
    pub fn mkdir(&self, at: At<'_>, mode: u32) -> io::Result<()> {
        let (dir, name) = at.split();
        // SAFETY: valid fd and NUL-terminated name.
        sys::check(unsafe { libc::mkdirat(dir.raw(), name.as_ptr(), mode) }).map(drop)
    }

    /// `mknodat`: FIFOs, sockets, device nodes and regular files.
    pub fn mknod(&self, at: At<'_>, mode: u32, rdev: u64) -> io::Result<()> {
        let (dir, name) = at.split();
        // SAFETY: valid fd and NUL-terminated name.
        sys::check(unsafe { libc::mknodat(dir.raw(), name.as_ptr(), mode, rdev) }).map(drop)
    }

    /// `symlinkat`: creates `at` pointing to `target` (stored as given, never resolved here).
    pub fn symlink(&self, at: At<'_>, target: &OsStr) -> io::Result<()> {
        let (dir, name) = at.split();
        let target = sys::c_string(target.as_bytes())?;
        // SAFETY: NUL-terminated strings and a valid fd.
        sys::check(unsafe { libc::symlinkat(target.as_ptr(), dir.raw(), name.as_ptr()) }).map(drop)
    }

    /// `readlinkat`: the target of the symlink `at`.
    pub fn readlink(&self, at: At<'_>) -> io::Result<Vec<u8>> {
        let (dir, name) = at.split();
        let mut buffer = vec![0u8; libc::PATH_MAX as usize];
        // SAFETY: valid fd, NUL-terminated name, and a buffer of the given length.
        let length = sys::check_size(unsafe {
            libc::readlinkat(
                dir.raw(),
                name.as_ptr(),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
            )
        })?;
        buffer.truncate(length);
        Ok(buffer)
    }

    /// `linkat` without following: `to` becomes another name of `from`.
    pub fn link(&self, from: At<'_>, to: At<'_>) -> io::Result<()> {
        let (from_dir, from_name) = from.split();
        let (to_dir, to_name) = to.split();
        // SAFETY: valid fds and NUL-terminated names.
        sys::check(unsafe {
            libc::linkat(
                from_dir.raw(),
                from_name.as_ptr(),
                to_dir.raw(),
                to_name.as_ptr(),
                0,
            )
        })
        .map(drop)
    }

    /// `unlinkat` of a non-directory.
    pub fn unlink(&self, at: At<'_>) -> io::Result<()> {
        let (dir, name) = at.split();
        // SAFETY: valid fd and NUL-terminated name.
        sys::check(unsafe { libc::unlinkat(dir.raw(), name.as_ptr(), 0) }).map(drop)
    }

    /// `unlinkat(AT_REMOVEDIR)`.
    pub fn rmdir(&self, at: At<'_>) -> io::Result<()> {
        let (dir, name) = at.split();
        // SAFETY: valid fd and NUL-terminated name.
        sys::check(unsafe { libc::unlinkat(dir.raw(), name.as_ptr(), libc::AT_REMOVEDIR) })
            .map(drop)
    }

    /// `renameat2` with `flags` (RENAME_NOREPLACE, RENAME_EXCHANGE).
    pub fn rename(&self, from: At<'_>, to: At<'_>, flags: u32) -> io::Result<()> {
        let (from_dir, from_name) = from.split();
        let (to_dir, to_name) = to.split();
        // SAFETY: valid fds and NUL-terminated names.
        sys::check(unsafe {
            libc::renameat2(
                from_dir.raw(),
                from_name.as_ptr(),
                to_dir.raw(),
                to_name.as_ptr(),
                flags,
            )
        })
        .map(drop)
    }

    /// Changes permission bits without ever following a symlink (fchmodat2).
    pub fn chmod(&self, at: At<'_>, mode: u32) -> io::Result<()> {
        let (dir, name) = at.split();
        // SAFETY: valid fd and NUL-terminated name.
        let result = unsafe {
            libc::syscall(
                libc::SYS_fchmodat2,
                dir.raw(),
                name.as_ptr(),
                mode,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        sys::check(result as libc::c_int).map(drop)
    }

    /// `fchownat` without following; `None` leaves that id unchanged.
    pub fn chown(&self, at: At<'_>, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
        let (dir, name) = at.split();
        // SAFETY: valid fd and NUL-terminated name; u32::MAX is "unchanged" (-1).
        sys::check(unsafe {
            libc::fchownat(
                dir.raw(),
                name.as_ptr(),
                uid.unwrap_or(u32::MAX),
                gid.unwrap_or(u32::MAX),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })
        .map(drop)
    }

    /// `utimensat` without following, with nanosecond times.
    pub fn set_times(&self, at: At<'_>, times: TimesUpdate) -> io::Result<()> {
        let (dir, name) = at.split();
        let spec = [file::time_spec(times.atime), file::time_spec(times.mtime)];
        // SAFETY: valid fd, NUL-terminated name, and two timespecs.
        sys::check(unsafe {
            libc::utimensat(
                dir.raw(),
                name.as_ptr(),
                spec.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })
        .map(drop)
    }

    /// Sets the size of the regular file `at`.
    pub fn truncate(&self, at: At<'_>, size: u64) -> io::Result<()> {
        let file = self.open_regular(at, libc::O_WRONLY)?;
        file.set_len(size)
    }

    /// The value of extended attribute `key` of `at` (not following a final symlink).
    pub fn get_xattr(&self, at: At<'_>, key: &OsStr) -> io::Result<Vec<u8>> {
        let (dir, name) = at.split();
        let key = sys::c_string(key.as_bytes())?;
        if let Some(value) = sys::get_xattr_at(dir.raw(), &name, &key) {
            return value;
        }
        let path = sys::proc_path(dir.raw(), &name);
        sys::read_sized(|buffer, size| {
            // SAFETY: NUL-terminated strings and a buffer of `size` bytes (or null with 0).
            unsafe { libc::lgetxattr(path.as_ptr(), key.as_ptr(), buffer, size) }
        })
    }

    /// Sets extended attribute `key` of `at`; `flags` are XATTR_CREATE / XATTR_REPLACE.
    pub fn set_xattr(&self, at: At<'_>, key: &OsStr, value: &[u8], flags: i32) -> io::Result<()> {
        let (dir, name) = at.split();
        let path = sys::proc_path(dir.raw(), &name);
        let key = sys::c_string(key.as_bytes())?;
        // SAFETY: NUL-terminated strings and a value buffer of its own length.
        sys::check(unsafe {
            libc::lsetxattr(
                path.as_ptr(),
                key.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                flags,
            )
        })
        .map(drop)
    }

    /// The NUL-separated list of extended attribute names of `at`.
    pub fn list_xattr(&self, at: At<'_>) -> io::Result<Vec<u8>> {
        let (dir, name) = at.split();
        if let Some(names) = sys::list_xattr_at(dir.raw(), &name) {
            return names;
        }
        let path = sys::proc_path(dir.raw(), &name);
        sys::read_sized(|buffer, size| {
            // SAFETY: NUL-terminated path and a buffer of `size` bytes (or null with 0).
            unsafe { libc::llistxattr(path.as_ptr(), buffer.cast(), size) }
        })
    }

    /// Removes extended attribute `key` of `at`.
    pub fn remove_xattr(&self, at: At<'_>, key: &OsStr) -> io::Result<()> {
        let (dir, name) = at.split();
        let path = sys::proc_path(dir.raw(), &name);
        let key = sys::c_string(key.as_bytes())?;
        // SAFETY: NUL-terminated strings.
        sys::check(unsafe { libc::lremovexattr(path.as_ptr(), key.as_ptr()) }).map(drop)
    }

    /// Filesystem-wide figures of the filesystem holding the origin.
    pub fn statfs(&self) -> io::Result<FsStats> {
        let mut raw = std::mem::MaybeUninit::<libc::statvfs>::uninit();
        // SAFETY: valid fd and a buffer of the right type.
        sys::check(unsafe { libc::fstatvfs(self.root.raw(), raw.as_mut_ptr()) })?;
        // SAFETY: fstatvfs succeeded, so it filled the buffer.
        let raw = unsafe { raw.assume_init() };
        Ok(FsStats {
            blocks: raw.f_blocks,
            blocks_free: raw.f_bfree,
            blocks_available: raw.f_bavail,
            files: raw.f_files,
            files_free: raw.f_ffree,
            block_size: raw.f_bsize as u32,
            name_len_max: raw.f_namemax as u32,
            fragment_size: raw.f_frsize as u32,
        })
    }

    /// Makes everything written to the origin's filesystem durable (syncfs(2)): one call
    /// for all the files a flush wrote.
    pub fn sync_filesystem(&self) -> io::Result<()> {
        // The root is held as O_PATH, which syncfs refuses; open it for real.
        let (dir, name) = At::Dir(&self.root).split();
        let fd = sys::openat(dir.0.as_fd(), &name, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
        // SAFETY: valid fd.
        sys::check(unsafe { libc::syncfs(fd.as_raw_fd()) }).map(drop)
    }

    /// Makes the directory `at` (its entries) durable.
    pub fn sync_dir(&self, at: At<'_>) -> io::Result<()> {
        let (dir, name) = at.split();
        let fd = sys::openat(dir.0.as_fd(), &name, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
        // SAFETY: valid fd.
        sys::check(unsafe { libc::fsync(fd.as_raw_fd()) }).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_holder_of_a_lock_is_read_from_proc_locks() {
        let dev = libc::makedev(0xfd, 1);
        let locks = "1: POSIX  ADVISORY  WRITE 99 fd:01:5678 0 EOF\n\
                     2: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF\n\
                     2: -> FLOCK  ADVISORY  WRITE 4321 fd:01:5678 0 EOF\n";
        assert_eq!(lock_holder(locks, dev, 5678), Some(1234));
        assert_eq!(lock_holder(locks, dev, 5679), None);
    }

    /// Extended attributes read by `*xattrat` (where the kernel has it) and by the
    /// `/proc/self/fd` path agree, for an entry, a directory itself and a symlink.
    #[test]
    fn xattrs_read_the_same_either_way() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"x").unwrap();
        std::os::unix::fs::symlink("f", dir.path().join("l")).unwrap();
        let origin = Origin::open(dir.path()).unwrap();
        let name = Name::new(OsStr::new("f")).unwrap();
        let link = Name::new(OsStr::new("l")).unwrap();
        let file = At::Entry(origin.root(), &name);
        let long = vec![7u8; 3000];
        origin
            .set_xattr(file, OsStr::new("user.a"), b"1", 0)
            .unwrap();
        origin
            .set_xattr(file, OsStr::new("user.long"), &long, 0)
            .unwrap();
        origin
            .set_xattr(At::Dir(origin.root()), OsStr::new("user.d"), b"dir", 0)
            .unwrap();
        for at in [
            file,
            At::Dir(origin.root()),
            At::Entry(origin.root(), &link),
        ] {
            let (fd, cname) = at.split();
            let path = sys::proc_path(fd.raw(), &cname);
            let by_proc = sys::read_sized(|buffer, size| {
                // SAFETY: a NUL-terminated path and a buffer of `size` bytes.
                unsafe { libc::llistxattr(path.as_ptr(), buffer.cast(), size) }
            })
            .unwrap();
            assert_eq!(origin.list_xattr(at).unwrap(), by_proc);
        }
        assert_eq!(origin.get_xattr(file, OsStr::new("user.a")).unwrap(), b"1");
        assert_eq!(
            origin.get_xattr(file, OsStr::new("user.long")).unwrap(),
            long
        );
        let missing = origin.get_xattr(file, OsStr::new("user.none")).unwrap_err();
        assert_eq!(missing.raw_os_error(), Some(libc::ENODATA));
        let gone = Name::new(OsStr::new("gone")).unwrap();
        let absent = origin
            .list_xattr(At::Entry(origin.root(), &gone))
            .unwrap_err();
        assert_eq!(absent.raw_os_error(), Some(libc::ENOENT));
    }
}
