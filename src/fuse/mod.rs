//! The FUSE boundary: the only code that uses `fuser` or errno. Each operation converts its
//! arguments, calls one `Volume` method, and replies. No POSIX logic lives here.

mod attr;
mod errno;
mod interrupt;
mod passthrough;
mod session;
mod standby;

use std::cell::RefCell;
use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, BsdFileFlags, CopyFileRangeFlags, Errno, FileHandle, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, IoctlFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry,
    ReplyIoctl, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow,
    WriteFlags,
};

/// A log filter directive leaving out fuser's "Failed to send FUSE reply": the kernel
/// refuses a reply to a request it has already given up (an interrupted waiter), which is
/// normal, and was one ERROR line each.
pub const QUIET_LOG_FILTER: &str = "fuser::reply=off";

pub use session::{Atime, FS_TYPE, MountError, MountFlags, MountOptions, serve};
pub use standby::{Followed, Standby};

use crate::origin::TimeSet;
use crate::types::InodeId;
use crate::vfs::{Caller, Opened, SetAttr, Volume, Writer};

/// The largest write the kernel sends in one request (also the read-ahead unit).
const MAX_WRITE_BYTES: u32 = 1024 * 1024;

/// Capabilities asked of the kernel where it has them. AUTO_INVAL_DATA drops cached
/// pages when a file's mtime or size changes under us; READDIRPLUS_AUTO answers `ls -l`
/// without a LOOKUP per entry. ATOMIC_O_TRUNC is deliberately not asked for: with it, an
/// open(O_RDONLY|O_TRUNC) of a running binary reaches the daemon (which would truncate the
/// origin) before the kernel refuses it with ETXTBSY; without it, the kernel checks first and
/// sends the truncation as a SETATTR.
const WANTED_CAPABILITIES: [InitFlags; 8] = [
    InitFlags::FUSE_AUTO_INVAL_DATA,
    InitFlags::FUSE_DO_READDIRPLUS,
    InitFlags::FUSE_READDIRPLUS_AUTO,
    InitFlags::FUSE_PARALLEL_DIROPS,
    InitFlags::FUSE_CACHE_SYMLINKS,
    // The kernel checks ACLs as well as mode bits, and drops its cached attributes after
    // an ACL changes them.
    InitFlags::FUSE_POSIX_ACL,
    // The caller's umask comes to the daemon, which applies it only where no default ACL
    // decides (see `Volume::new_mode`).
    InitFlags::FUSE_DONT_MASK,
    // The daemon drops setuid and setgid when a write or truncation by an unprivileged
    // caller asks it to; the kernel then need not ask for security.capability (a
    // GETXATTR round trip) before every write(2) of a file.
    InitFlags::FUSE_HANDLE_KILLPRIV_V2,
];

thread_local! {
    /// Each worker's read buffer, reused so a read neither allocates nor zeroes.
    static READ_BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// A `Volume` served to the kernel.
#[derive(Debug)]
pub struct MirrorFs {
    volume: Arc<Volume>,
    /// Fault injection for the tests: a lookup of this name panics
    /// (`MIRRORFS_FAULT_PANIC_LOOKUP`).
    panic_lookup: Option<std::ffi::OsString>,
    /// How long the kernel may trust entries and attributes without asking again.
    ttl: Duration,
    /// Whether to ask the kernel for FUSE passthrough.
    passthrough: bool,
    /// Whether to ask the kernel for its writeback cache.
    writeback: bool,
    backings: passthrough::Backings,
    /// Where each request's latency is counted, if metrics are served.
    pub(crate) request_times: Option<crate::metrics::RequestTimes>,
}

/// Counts a request's latency when it ends, however it ends.
struct TimedRequest<'a> {
    times: Option<&'a crate::metrics::RequestTimes>,
    operation: &'static str,
    started: Option<std::time::Instant>,
}

impl Drop for TimedRequest<'_> {
    fn drop(&mut self) {
        if let (Some(times), Some(started)) = (self.times, self.started) {
            times.observe(self.operation, started.elapsed());
        }
    }
}

impl MirrorFs {
    /// Runs one request's work. A panic in it is caught, so the worker thread lives on:
    /// the reply it dropped unsent answers the kernel with EIO (fuser does that), and the
    /// panic is logged and counted in status.
    /// On a standby, the work runs holding the copy's tree (its node's changes wait); if
    /// the tree cannot be held, the work is dropped with its reply (EIO).
    fn guarded(&self, operation: &'static str, work: impl FnOnce()) {
        let started = self
            .request_times
            .as_ref()
            .map(|_| std::time::Instant::now());
        let _timed = TimedRequest {
            times: self.request_times.as_ref(),
            operation,
            started,
        };
        let _holding = match self.volume.hold_tree() {
            Ok(holding) => holding,
            Err(error) => {
                tracing::error!(operation, %error, "cannot hold the standby's tree; answered EIO");
                return;
            }
        };
        let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)) else {
            return;
        };
        let message = panic
            .downcast_ref::<&str>()
            .map(|text| text.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        self.volume.note_panic();
        tracing::error!(operation, %message, "a request handler panicked; it was answered EIO");
    }

    /// Serves `volume`, letting the kernel cache names and attributes for `ttl`, passing
    /// read-only opens through to the kernel if `passthrough` and it can, and letting it
    /// cache writes if `writeback`.
    pub fn new(volume: Arc<Volume>, ttl: Duration, passthrough: bool, writeback: bool) -> MirrorFs {
        MirrorFs {
            volume,
            panic_lookup: std::env::var_os("MIRRORFS_FAULT_PANIC_LOOKUP"),
            ttl,
            passthrough,
            writeback,
            backings: passthrough::Backings::default(),
            request_times: None,
        }
    }

    fn entry(&self, reply: ReplyEntry, result: crate::vfs::Result<crate::vfs::Attr>) {
        match result {
            Ok(found) => reply.entry(&self.ttl, &attr::file_attr(&found), Generation(0)),
            Err(error) => reply.error(fail("entry", &error)),
        }
    }
}

fn caller(request: &Request, umask: u32) -> Caller {
    Caller {
        uid: request.uid(),
        gid: request.gid(),
        umask,
    }
}

/// The caller of `request` as a writer whose changes may drop setuid and setgid.
fn writer<'a>(request: &Request, groups: &'a dyn Fn() -> Vec<u32>) -> Writer<'a> {
    Writer {
        uid: request.uid(),
        gid: request.gid(),
        groups,
    }
}

/// The supplementary groups of thread `pid`, from `/proc/PID/status` (none if the process
/// is gone: the stricter answer).
fn groups_of(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|line| line.starts_with("Groups:"))?;
            Some(
                line["Groups:".len()..]
                    .split_whitespace()
                    .filter_map(|group| group.parse().ok())
                    .collect(),
            )
        })
        .unwrap_or_default()
}

fn id(ino: INodeNo) -> InodeId {
    InodeId(ino.0)
}

fn time_set(time: TimeOrNow) -> TimeSet {
    match time {
        TimeOrNow::SpecificTime(at) => TimeSet::At(at),
        TimeOrNow::Now => TimeSet::Now,
    }
}

fn open_flags(opened: &Opened) -> FopenFlags {
    // Flush on close has nothing to do: writes are never held back in the daemon.
    let mut flags = FopenFlags::FOPEN_NOFLUSH;
    if opened.keep_cache {
        flags |= FopenFlags::FOPEN_KEEP_CACHE;
    }
    flags
}

/// The errno for `error`, logging it first when it is unexpected.
fn fail(operation: &str, error: &crate::vfs::VfsError) -> Errno {
    if errno::is_notable(error) {
        tracing::warn!(operation, %error, "operation failed");
    } else {
        tracing::debug!(operation, %error, "operation failed");
    }
    errno::errno(error)
}

fn empty(reply: ReplyEmpty, operation: &str, result: crate::vfs::Result<()>) {
    match result {
        Ok(()) => reply.ok(),
        Err(error) => reply.error(fail(operation, &error)),
    }
}

/// Replies to getxattr/listxattr: the size when asked with 0, ERANGE when it won't fit.
fn xattr_value(reply: ReplyXattr, size: u32, result: crate::vfs::Result<Vec<u8>>) {
    match result {
        Ok(value) if size == 0 => reply.size(value.len() as u32),
        Ok(value) if value.len() > size as usize => reply.error(Errno::ERANGE),
        Ok(value) => reply.data(&value),
        Err(error) => reply.error(fail("xattr", &error)),
    }
}

#[allow(clippy::too_many_arguments)]
impl Filesystem for MirrorFs {
    fn init(&mut self, _request: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        if let Err(nearest) = config.set_max_write(MAX_WRITE_BYTES) {
            let _ = config.set_max_write(nearest);
        }
        if let Err(nearest) = config.set_max_readahead(MAX_WRITE_BYTES) {
            let _ = config.set_max_readahead(nearest);
        }
        let _ = config.set_max_background(64);
        for capability in WANTED_CAPABILITIES {
            if config.add_capabilities(capability).is_err() {
                tracing::info!(?capability, "kernel lacks capability");
            }
        }
        // Small writes reach the daemon gathered into page-cache-sized requests, and the
        // kernel keeps each file's size and times meanwhile: right only while nothing else
        // changes the origin, which the config checks.
        if self.writeback {
            if config
                .add_capabilities(InitFlags::FUSE_WRITEBACK_CACHE)
                .is_ok()
            {
                self.volume.allow_writeback();
            } else {
                tracing::warn!("the kernel lacks the FUSE writeback cache; writes go one by one");
            }
        }
        if self.passthrough {
            // Depth 1: the origin must not itself be a stacked filesystem.
            let offered = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
                && config.set_max_stack_depth(1).is_ok();
            if offered {
                self.volume.allow_passthrough();
            } else {
                tracing::warn!("the kernel lacks FUSE passthrough; reads go through the daemon");
            }
        }
        Ok(())
    }

    fn lookup(&self, _request: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.guarded("lookup", || {
            if self.panic_lookup.as_deref() == Some(name) {
                panic!("fault injection: lookup of {name:?}");
            }
            match self.volume.lookup(id(parent), name) {
                Ok(found) => reply.entry(&self.ttl, &attr::file_attr(&found), Generation(0)),
                // A negative entry: the kernel remembers the absence for the TTL too.
                Err(crate::vfs::VfsError::Origin(error))
                    if error.raw_os_error() == Some(libc::ENOENT) =>
                {
                    let absent = fuser::FileAttr {
                        ino: INodeNo(0),
                        size: 0,
                        blocks: 0,
                        atime: SystemTime::UNIX_EPOCH,
                        mtime: SystemTime::UNIX_EPOCH,
                        ctime: SystemTime::UNIX_EPOCH,
                        crtime: SystemTime::UNIX_EPOCH,
                        kind: fuser::FileType::RegularFile,
                        perm: 0,
                        nlink: 0,
                        uid: 0,
                        gid: 0,
                        rdev: 0,
                        blksize: 0,
                        flags: 0,
                    };
                    reply.entry(&self.ttl, &absent, Generation(0));
                }
                Err(error) => reply.error(fail("lookup", &error)),
            }
        });
    }

    fn forget(&self, _request: &Request, ino: INodeNo, count: u64) {
        self.guarded("forget", || {
            self.volume.forget(id(ino), count);
        });
    }

    fn getattr(&self, _request: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        self.guarded("getattr", || {
            match self.volume.getattr(id(ino), fh.map(|handle| handle.0)) {
                Ok(found) => reply.attr(&self.ttl, &attr::file_attr(&found)),
                Err(error) => reply.error(fail("getattr", &error)),
            }
        });
    }

    fn setattr(
        &self,
        request: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        self.guarded("setattr", || {
            let changes = SetAttr {
                mode,
                uid,
                gid,
                size,
                atime: atime.map(time_set),
                mtime: mtime.map(time_set),
            };
            let groups = || groups_of(request.pid());
            let writer = writer(request, &groups);
            match self
                .volume
                .setattr(&writer, id(ino), fh.map(|handle| handle.0), changes)
            {
                Ok(changed) => reply.attr(&self.ttl, &attr::file_attr(&changed)),
                Err(error) => reply.error(fail("setattr", &error)),
            }
        });
    }

    fn readlink(&self, _request: &Request, ino: INodeNo, reply: ReplyData) {
        self.guarded("readlink", || match self.volume.readlink(id(ino)) {
            Ok(target) => reply.data(&target),
            Err(error) => reply.error(fail("readlink", &error)),
        });
    }

    fn mknod(
        &self,
        request: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        self.guarded("mknod", || {
            let result =
                self.volume
                    .mknod(caller(request, umask), id(parent), name, mode, rdev as u64);
            self.entry(reply, result);
        });
    }

    fn mkdir(
        &self,
        request: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        self.guarded("mkdir", || {
            let result = self
                .volume
                .mkdir(caller(request, umask), id(parent), name, mode);
            self.entry(reply, result);
        });
    }

    fn unlink(&self, _request: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.guarded("unlink", || {
            empty(reply, "unlink", self.volume.unlink(id(parent), name));
        });
    }

    fn rmdir(&self, _request: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.guarded("rmdir", || {
            empty(reply, "rmdir", self.volume.rmdir(id(parent), name));
        });
    }

    fn symlink(
        &self,
        request: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        self.guarded("symlink", || {
            let result = self.volume.symlink(
                caller(request, 0),
                id(parent),
                link_name,
                target.as_os_str(),
            );
            self.entry(reply, result);
        });
    }

    fn rename(
        &self,
        _request: &Request,
        parent: INodeNo,
        name: &OsStr,
        new_parent: INodeNo,
        new_name: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        self.guarded("rename", || {
            let result =
                self.volume
                    .rename(id(parent), name, id(new_parent), new_name, flags.bits());
            empty(reply, "rename", result);
        });
    }

    fn link(
        &self,
        _request: &Request,
        ino: INodeNo,
        new_parent: INodeNo,
        new_name: &OsStr,
        reply: ReplyEntry,
    ) {
        self.guarded("link", || {
            let result = self.volume.link(id(ino), id(new_parent), new_name);
            self.entry(reply, result);
        });
    }

    fn open(&self, _request: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.guarded("open", || match self.volume.open(id(ino), flags.0) {
            Ok(opened) if opened.passthrough => {
                match self
                    .backings
                    .open(&self.volume, &reply, ino.0, opened.handle)
                {
                    Some(backing) => reply.opened_passthrough(
                        FileHandle(opened.handle),
                        open_flags(&opened),
                        &backing,
                    ),
                    None => {
                        self.volume.passthrough_refused(opened.handle);
                        reply.opened(FileHandle(opened.handle), open_flags(&opened));
                    }
                }
            }
            Ok(opened) => reply.opened(FileHandle(opened.handle), open_flags(&opened)),
            Err(error) => reply.error(fail("open", &error)),
        });
    }

    fn read(
        &self,
        _request: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.guarded("read", || {
            READ_BUFFER.with_borrow_mut(|buffer| {
                match self.volume.read(fh.0, offset, size as usize, buffer) {
                    Ok(read) => reply.data(&buffer[..read]),
                    Err(error) => reply.error(fail("read", &error)),
                }
            });
        });
    }

    fn write(
        &self,
        request: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        self.guarded("write", || {
            let groups = || groups_of(request.pid());
            let writer = writer(request, &groups);
            let killer = write_flags
                .contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID)
                .then_some(&writer);
            match self.volume.write(fh.0, offset, data, killer) {
                Ok(written) => reply.written(written as u32),
                Err(error) => reply.error(fail("write", &error)),
            }
        });
    }

    fn flush(
        &self,
        _request: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.guarded("flush", || match self.volume.flush(fh.0) {
            // Nothing is held back in the daemon for a close to wait for: ENOSYS tells the
            // kernel to send no FLUSH again (it sends one at each close(2) under its
            // writeback cache, after writing back the file's dirty pages).
            Ok(()) => reply.error(Errno::ENOSYS),
            Err(error) => reply.error(fail("flush", &error)),
        });
    }

    fn release(
        &self,
        _request: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.guarded("release", || {
            self.backings.release(fh.0);
            empty(reply, "release", self.volume.release(fh.0));
        });
    }

    fn fsync(
        &self,
        request: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.guarded("fsync", || {
            let pid = request.pid();
            let interrupted = || interrupt::signal_pending(pid);
            empty(
                reply,
                "fsync",
                self.volume.fsync(fh.0, datasync, &interrupted),
            );
        });
    }

    fn opendir(&self, _request: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.guarded("opendir", || match self.volume.opendir(id(ino)) {
            Ok(handle) => reply.opened(FileHandle(handle), FopenFlags::empty()),
            Err(error) => reply.error(fail("opendir", &error)),
        });
    }

    fn readdir(
        &self,
        _request: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        self.guarded("readdir", || {
            let result = self.volume.readdir(fh.0, offset, |entry| {
                let full = reply.add(
                    INodeNo(entry.ino),
                    entry.next_offset,
                    attr::file_type(entry.kind),
                    entry.name,
                );
                !full
            });
            match result {
                Ok(()) => reply.ok(),
                Err(error) => reply.error(fail("readdir", &error)),
            }
        });
    }

    fn readdirplus(
        &self,
        _request: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        self.guarded("readdirplus", || {
            let result = self.volume.readdirplus(fh.0, offset, |entry, found| {
                let full = reply.add(
                    INodeNo(entry.ino),
                    entry.next_offset,
                    entry.name,
                    &self.ttl,
                    &attr::file_attr(found),
                    Generation(0),
                );
                !full
            });
            match result {
                Ok(()) => reply.ok(),
                Err(error) => reply.error(fail("readdirplus", &error)),
            }
        });
    }

    fn releasedir(
        &self,
        _request: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.guarded("releasedir", || {
            empty(reply, "releasedir", self.volume.releasedir(fh.0));
        });
    }

    fn fsyncdir(
        &self,
        _request: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.guarded("fsyncdir", || {
            empty(reply, "fsyncdir", self.volume.fsyncdir(id(ino)));
        });
    }

    fn statfs(&self, _request: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.guarded("statfs", || match self.volume.statfs() {
            Ok(stats) => reply.statfs(
                stats.blocks,
                stats.blocks_free,
                stats.blocks_available,
                stats.files,
                stats.files_free,
                stats.block_size,
                stats.name_len_max,
                stats.fragment_size,
            ),
            Err(error) => reply.error(fail("statfs", &error)),
        });
    }

    fn setxattr(
        &self,
        request: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        self.guarded("setxattr", || {
            let groups = || groups_of(request.pid());
            let writer = writer(request, &groups);
            empty(
                reply,
                "setxattr",
                self.volume.setxattr(&writer, id(ino), name, value, flags),
            );
        });
    }

    fn getxattr(
        &self,
        _request: &Request,
        ino: INodeNo,
        name: &OsStr,
        size: u32,
        reply: ReplyXattr,
    ) {
        self.guarded("getxattr", || {
            xattr_value(reply, size, self.volume.getxattr(id(ino), name));
        });
    }

    fn listxattr(&self, _request: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.guarded("listxattr", || {
            xattr_value(reply, size, self.volume.listxattr(id(ino)));
        });
    }

    fn removexattr(&self, _request: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.guarded("removexattr", || {
            empty(reply, "removexattr", self.volume.removexattr(id(ino), name));
        });
    }

    fn access(&self, _request: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        self.guarded("access", || {
            empty(reply, "access", self.volume.access(id(ino)));
        });
    }

    fn create(
        &self,
        request: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        self.guarded("create", || {
            match self
                .volume
                .create(caller(request, umask), id(parent), name, mode, flags)
            {
                Ok((created, opened)) => reply.created(
                    &self.ttl,
                    &attr::file_attr(&created),
                    Generation(0),
                    FileHandle(opened.handle),
                    open_flags(&opened),
                ),
                Err(error) => reply.error(fail("create", &error)),
            }
        });
    }

    fn fallocate(
        &self,
        request: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        self.guarded("fallocate", || {
            let groups = || groups_of(request.pid());
            let writer = writer(request, &groups);
            empty(
                reply,
                "fallocate",
                self.volume.fallocate(&writer, fh.0, offset, length, mode),
            );
        });
    }

    fn copy_file_range(
        &self,
        _request: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        self.guarded("copy_file_range", || {
            match self
                .volume
                .copy_range(fh_in.0, offset_in, fh_out.0, offset_out, len)
            {
                Ok(copied) => reply.written(copied as u32),
                Err(error) => reply.error(fail("copy_file_range", &error)),
            }
        });
    }

    fn lseek(
        &self,
        _request: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        self.guarded("lseek", || match self.volume.lseek(fh.0, offset, whence) {
            Ok(position) => reply.offset(position),
            Err(error) => reply.error(fail("lseek", &error)),
        });
    }

    /// No ioctl is passed on (an ioctl names no path the log could record). ENOTTY is what
    /// a filesystem without one answers; tools such as lsattr and cp's reflink probe ask
    /// routinely, so the refusal is not logged.
    fn ioctl(
        &self,
        _request: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }
}
