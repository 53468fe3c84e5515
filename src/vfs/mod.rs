//! One mounted volume's POSIX semantics: the inode table, open handles, and the order of
//! operations on the origin. It knows nothing of the kernel, FUSE or errno values; its
//! errors are [`VfsError`], turned into errno only by `fuse`.
//!
//! Every operation names inodes by node id. [`Volume::locate`] turns an id into a place on
//! the origin (a cached directory fd, or a parent directory fd plus a name) and checks that
//! the object there is still the same (dev, ino) before anything is changed.

mod attr;
mod change;
mod create;
mod dir;
mod handles;
mod inodes;
mod io;
mod lookup;
mod remove;
mod repair;
mod standby;
mod xattr;

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::SystemTime;

use lru::LruCache;

pub use attr::SetAttr;
pub use dir::ListedEntry;
pub use io::Opened;

use crate::cache::Cache;
use crate::log::{LogError, LogPath, PathError};
use crate::manifest::HashStore;
use crate::origin::{At, DirFd, Origin, Stat};
use crate::types::FileId;
use crate::types::{FileKind, InodeId, Name, NameError};
use crate::write::FollowError;
use crate::write::{DurableError, Journal, WriteError};
use handles::{DirHandle, FileHandle, HandleTable, OpenCounts};
use inodes::{InodeTable, LinkHint};
pub use repair::Repairing;
pub use standby::Outside;

/// Directory fds kept open for path resolution (O_PATH, cheap). Far below RLIMIT_NOFILE,
/// so open files never starve; deep trees fall back to walking from the nearest cached one.
const DIR_FDS_CACHED: usize = 1024;

/// Names tried before an inode is declared stale (more than the hints an inode keeps).
const HINT_TRIES_MAX: usize = 16;

/// Inodes share this many turn locks (see [`Volume::inode_turn`]); two inodes on one lock
/// only wait for each other.
const INODE_TURNS: usize = 64;

/// What went wrong in a volume operation.
#[derive(Debug, thiserror::Error)]
pub enum VfsError {
    /// The origin refused; the OS error says why (ENOSPC stays ENOSPC).
    #[error("origin: {0}")]
    Origin(#[from] std::io::Error),
    /// The kernel named an inode this volume does not hold.
    #[error("unknown inode {0}")]
    UnknownInode(u64),
    /// No known name leads to the inode any more (renamed or removed outside the mount).
    #[error("stale inode {0}: no known name leads to it")]
    Stale(u64),
    /// The kernel named a handle this volume does not hold.
    #[error("unknown handle {0}")]
    UnknownHandle(u64),
    /// A name that is not a single path component.
    #[error("invalid name: {0}")]
    Name(#[from] NameError),
    /// A directory operation on something that is not a directory.
    #[error("not a directory")]
    NotDirectory,
    /// The origin holds an object of a type Linux does not define.
    #[error("unsupported file type")]
    UnsupportedKind,
    /// The change could not be recorded in the change log.
    #[error("change log: {0}")]
    Log(#[from] LogError),
    /// The object's path cannot be named in the change log (longer than PATH_MAX).
    #[error("path: {0}")]
    Path(#[from] PathError),
    /// Too few replicas hold the changes fsync was to make durable.
    #[error("replication: {0}")]
    Follow(#[from] FollowError),
    /// Changes are refused: the volume can no longer record them.
    #[error("changes are refused: {0}")]
    Refused(String),
    /// An fsync after changes began to be refused: what was recorded may be lost with the
    /// state dir, so nothing is acknowledged.
    #[error("nothing can be made durable: {0}")]
    Unrecorded(String),
    /// A directory where only a file will do (open, truncate).
    #[error("is a directory")]
    IsDirectory,
    /// A writer of a file whose reads the kernel serves itself (passthrough) until they
    /// close.
    #[error("the file is open for passthrough reads")]
    PassedThrough,
    /// A repair found another object at the path than the one it checked.
    #[error("{0} is not the object that was checked any more")]
    Replaced(LogPath),
    /// A copy from a file no name leads to: no copy of the volume holds its bytes, so the
    /// kernel must copy them through reads and writes.
    #[error("the source of the copy has no name")]
    CopyFromUnnamed,
}

impl From<WriteError> for VfsError {
    fn from(error: WriteError) -> VfsError {
        match error {
            WriteError::Origin(error) => VfsError::Origin(error),
            WriteError::Log(error) => VfsError::Log(error),
        }
    }
}

/// Result of a volume operation.
pub type Result<T> = std::result::Result<T, VfsError>;

/// Who asked: the calling process's credentials, for ownership of new objects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    /// Effective (filesystem) user id.
    pub uid: u32,
    /// Effective (filesystem) group id.
    pub gid: u32,
    /// The caller's umask, for a new object (the kernel leaves it to the daemon:
    /// FUSE_DONT_MASK), applied unless the parent directory has a default ACL.
    pub umask: u32,
}

/// Who changes a file's mode as a side effect (fallocate, an access ACL): what the kernel's
/// rules for dropping setuid and setgid need to know of the caller.
pub struct Writer<'a> {
    /// Effective (filesystem) user id.
    pub uid: u32,
    /// Effective (filesystem) group id.
    pub gid: u32,
    /// The supplementary groups, asked for only when a decision needs them (reading them
    /// costs the caller's `/proc` status file).
    pub groups: &'a dyn Fn() -> Vec<u32>,
}

impl Writer<'_> {
    /// Whether the writer is in group `gid` (the kernel's `in_group_or_capable`, root
    /// counting as capable).
    pub fn in_group(&self, gid: u32) -> bool {
        self.uid == 0 || self.gid == gid || (self.groups)().contains(&gid)
    }

    /// The setuid and setgid bits a change by this writer drops from a file of `mode`
    /// owned by group `gid` (`setattr_should_drop_suidgid`): none for root (CAP_FSETID);
    /// setuid always; setgid when the group may execute, or when the writer is not in the
    /// file's group.
    pub fn drops(&self, mode: u32, gid: u32) -> u32 {
        if self.uid == 0 {
            return 0;
        }
        let mut dropped = mode & libc::S_ISUID;
        if mode & libc::S_ISGID != 0 && (mode & libc::S_IXGRP != 0 || !self.in_group(gid)) {
            dropped |= libc::S_ISGID;
        }
        dropped
    }
}

/// An inode's attributes as the mount shows them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attr {
    /// Node id (also `st_ino`).
    pub id: InodeId,
    /// Type.
    pub kind: FileKind,
    /// Permission bits including setuid, setgid and sticky.
    pub perm: u16,
    /// Hard links.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Device number, for device nodes.
    pub rdev: u32,
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

impl Attr {
    fn new(id: InodeId, stat: &Stat) -> Result<Attr> {
        Ok(Attr {
            id,
            kind: stat.kind().ok_or(VfsError::UnsupportedKind)?,
            perm: (stat.mode & 0o7777) as u16,
            nlink: stat.nlink.min(u32::MAX as u64) as u32,
            uid: stat.uid,
            gid: stat.gid,
            rdev: stat.rdev as u32,
            size: stat.size,
            blocks: stat.blocks,
            blksize: stat.blksize,
            atime: stat.atime,
            mtime: stat.mtime,
            ctime: stat.ctime,
        })
    }
}

/// Where an inode is on the origin, checked to be the same object just now.
pub(crate) enum Located {
    /// A directory, by its own fd.
    Dir(DirFd),
    /// A non-directory, by its parent's fd and its name there.
    Entry(DirFd, Name),
}

impl Located {
    fn at(&self) -> At<'_> {
        match self {
            Located::Dir(dir) => At::Dir(dir),
            Located::Entry(parent, name) => At::Entry(parent, name),
        }
    }
}

/// Where to act on an inode: its place on the origin, or, once no name leads to it any
/// more (unlinked while open), one of its open files.
pub(crate) enum Target {
    /// Reachable by name; with the metadata seen when it was located.
    Place(Located, Stat),
    /// Reachable only through an open file.
    Open(std::sync::Arc<FileHandle>),
}

/// Credentials of the daemon itself: what a new origin object gets before any chown.
#[derive(Clone, Copy, Debug)]
struct Daemon {
    uid: u32,
    gid: u32,
}

/// One mounted volume.
#[derive(Debug)]
pub struct Volume {
    origin: Arc<Origin>,
    inodes: Mutex<InodeTable>,
    dir_fds: Mutex<LruCache<InodeId, DirFd>>,
    files: HandleTable<FileHandle>,
    dirs: HandleTable<DirHandle>,
    daemon: Daemon,
    journal: Journal,
    /// The journal a standby promoted in place took on (see [`Volume::promote_in_place`]).
    promoted: std::sync::OnceLock<Journal>,
    cache: Option<Arc<Cache>>,
    /// verify's stored hashes of the origin's files, when they are kept.
    hashes: Option<Arc<HashStore>>,
    /// Read-only opens may be passed through to the kernel.
    passthrough: AtomicBool,
    /// Opens passed through since the mount.
    passthrough_opens: AtomicU64,
    /// The kernel keeps written pages and sends them later (its writeback cache).
    writeback: AtomicBool,
    /// Opens by mode, per inode that has any.
    open_modes: Mutex<HashMap<InodeId, OpenCounts>>,
    /// Signalled when an open is counted out.
    open_closed: Condvar,
    /// Read from before a change takes its path until its record is appended; written by
    /// a change that moves or removes names. So no record carries a path that a move
    /// recorded before it has made wrong.
    names: RwLock<()>,
    /// Per inode (striped): see [`Volume::inode_turn`].
    inode_turns: Box<[Mutex<()>]>,
    /// Why changes are refused, once they are (the state dir is gone).
    refused: std::sync::OnceLock<String>,
    /// Requests whose handler panicked.
    panics: std::sync::atomic::AtomicU64,
    /// A standby's: the gate the origin is read through (see [`Volume::stand_by`]); it
    /// stops being one once `promoted` is set.
    standby: std::sync::OnceLock<crate::origin::TreeGate>,
}

impl From<DurableError> for VfsError {
    fn from(error: DurableError) -> VfsError {
        match error {
            DurableError::Origin(error) => VfsError::Origin(error),
            DurableError::Log(error) => VfsError::Log(error),
            DurableError::Follow(error) => VfsError::Follow(error),
        }
    }
}

impl Volume {
    /// A volume over an opened origin, recording its changes in `journal` (and through it
    /// to whatever follows its log), reading through `cache` when there is one.
    pub fn new(
        origin: Arc<Origin>,
        journal: Journal,
        cache: Option<Arc<Cache>>,
        hashes: Option<Arc<HashStore>>,
    ) -> Volume {
        let inodes = InodeTable::new(origin.root_stat());
        // SAFETY: geteuid and getegid cannot fail.
        let daemon = unsafe {
            Daemon {
                uid: libc::geteuid(),
                gid: libc::getegid(),
            }
        };
        Volume {
            origin,
            inodes: Mutex::new(inodes),
            dir_fds: Mutex::new(LruCache::new(
                NonZeroUsize::new(DIR_FDS_CACHED).expect("nonzero constant"),
            )),
            files: HandleTable::new(),
            dirs: HandleTable::new(),
            daemon,
            journal,
            promoted: std::sync::OnceLock::new(),
            cache,
            hashes,
            passthrough: AtomicBool::new(false),
            passthrough_opens: AtomicU64::new(0),
            writeback: AtomicBool::new(false),
            open_modes: Mutex::new(HashMap::new()),
            open_closed: Condvar::new(),
            names: RwLock::new(()),
            inode_turns: (0..INODE_TURNS).map(|_| Mutex::new(())).collect(),
            refused: std::sync::OnceLock::new(),
            panics: std::sync::atomic::AtomicU64::new(0),
            standby: std::sync::OnceLock::new(),
        }
    }

    /// Lets read-only opens of files that nothing could make differ from the origin be
    /// passed through to the kernel (`[cache] passthrough = "auto"`).
    pub fn allow_passthrough(&self) {
        self.passthrough.store(true, Ordering::Relaxed);
    }

    /// The kernel caches writes (FUSE_WRITEBACK_CACHE): it may read a page through any
    /// open it writes through, so write-only opens of the origin are made read-write.
    pub fn allow_writeback(&self) {
        self.writeback.store(true, Ordering::Relaxed);
    }

    /// Opens passed through to the kernel since the mount.
    pub fn passthrough_opens(&self) -> u64 {
        self.passthrough_opens.load(Ordering::Relaxed)
    }

    fn open_modes(&self) -> MutexGuard<'_, HashMap<InodeId, OpenCounts>> {
        self.open_modes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The daemon is stopping: fsyncs waiting for replicas give up (EIO).
    pub fn stopping(&self) {
        self.journal().stopping();
    }

    /// The read cache, if reads go through one.
    pub fn cache(&self) -> Option<&Arc<Cache>> {
        self.cache.as_ref()
    }

    /// The origin files (dev, ino) written through a handle not released yet: their
    /// modification time reaches the log only at release.
    pub fn files_being_written(&self) -> HashSet<FileId> {
        let open = self
            .files
            .all(|handle| handle.wrote.load(Ordering::Relaxed));
        let table = self.table();
        open.iter()
            .filter_map(|handle| table.get(handle.inode).map(|inode| inode.key))
            .collect()
    }

    /// The origin.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// The stored hashes of the origin's files, when they are kept.
    pub fn hashes(&self) -> Option<&Arc<HashStore>> {
        self.hashes.as_ref()
    }

    /// The change log and write policy.
    pub fn journal(&self) -> &Journal {
        self.promoted.get().unwrap_or(&self.journal)
    }

    /// Counts a request whose handler panicked (it was answered EIO).
    pub fn note_panic(&self) {
        self.panics.fetch_add(1, Ordering::Relaxed);
    }

    /// Requests whose handler panicked since mount.
    pub fn panics(&self) -> u64 {
        self.panics.load(Ordering::Relaxed)
    }

    /// Refuses every change from now on, for `reason` (the volume's state can no longer
    /// record them). Reads go on.
    pub fn refuse_changes(&self, reason: String) {
        let _ = self.refused.set(reason);
    }

    /// What a failed append means: a log file or directory gone (the state dir deleted,
    /// before the watcher said so) refuses every change from now on, as the watcher would;
    /// any other failure (a full state disk) is itself.
    fn log_failed(&self, error: LogError) -> VfsError {
        match &error {
            LogError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                let reason = format!("the volume's state is gone: {error}");
                tracing::error!(%reason, "changes are refused from now on (reads go on)");
                self.refuse_changes(reason.clone());
                VfsError::Refused(reason)
            }
            // Fenced between the check at the change's start and its append.
            LogError::Fenced(fence) => VfsError::Refused(fence.to_string()),
            _ => VfsError::Log(error),
        }
    }

    /// Err when changes are refused: the volume's state can no longer record them, a
    /// newer primary was promoted and this one is fenced, or (automatic failover) this
    /// primary does not hold its lease.
    pub(super) fn check_open(&self) -> Result<()> {
        self.check_open_but_the_lease()?;
        match self.journal().refuses() {
            Some(reason) => Err(VfsError::Refused(reason)),
            None => Ok(()),
        }
    }

    /// [`Volume::check_open`] but for the journal's follower's refusal (a primary out of
    /// its lease).
    pub(super) fn check_open_but_the_lease(&self) -> Result<()> {
        if let Some(reason) = self.refused.get() {
            return Err(VfsError::Refused(reason.clone()));
        }
        self.check_standby()?;
        let log = self.journal().log();
        match log.is_fenced().then(|| log.fence()).flatten() {
            Some(fence) => Err(VfsError::Refused(fence.to_string())),
            None => Ok(()),
        }
    }

    /// The path the log names `entry` in directory `parent` by. Taken before a change, so
    /// a change that cannot be recorded is refused before it happens.
    fn entry_path(&self, parent: InodeId, entry: &Name) -> Result<LogPath> {
        Ok(self.dir_path(parent)?.join(entry.as_bytes())?)
    }

    /// The path the log names directory `id` by.
    fn dir_path(&self, id: InodeId) -> Result<LogPath> {
        self.inode_path(id)?.ok_or(VfsError::Stale(id.0))
    }

    /// The path the log names `id` by: its newest name, or `None` once no name leads to
    /// it (an unlinked file still open, whose changes no copy of the volume can see).
    fn inode_path(&self, id: InodeId) -> Result<Option<LogPath>> {
        Ok(self.table().path_of(id).transpose()?)
    }

    /// The attributes the mount shows for `id`, whose origin metadata is `stat`: with
    /// write-behind, unflushed writes make it longer and newer than the origin says.
    fn attr(&self, id: InodeId, stat: &Stat) -> Result<Attr> {
        let mut attr = Attr::new(id, stat)?;
        if let Some((end, mtime)) = self.journal().dirty_attr(id) {
            attr.size = attr.size.max(end);
            attr.blocks = attr.blocks.max(end.div_ceil(512));
            attr.mtime = mtime;
            attr.ctime = attr.ctime.max(mtime);
        }
        Ok(attr)
    }

    fn table(&self) -> MutexGuard<'_, InodeTable> {
        // A panic while holding the lock leaves the table as consistent as any single
        // method leaves it (no method panics midway by design), so keep serving.
        self.inodes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn dir_cache(&self) -> MutexGuard<'_, LruCache<InodeId, DirFd>> {
        self.dir_fds
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// An O_PATH fd of directory `id`, from the cache or by walking its link hints.
    fn dir_fd(&self, id: InodeId) -> Result<DirFd> {
        if id == InodeId::ROOT {
            return Ok(self.origin.root().clone());
        }
        if let Some(fd) = self.dir_cache().get(&id) {
            return Ok(fd.clone());
        }
        let (kind, key, first) = self.entry_point(id)?;
        if kind != FileKind::Directory {
            return Err(VfsError::NotDirectory);
        }
        let (fd, _) = self.try_hints(id, key, first, |parent, entry| {
            let fd = self.origin.open_dir(At::Entry(parent, entry))?;
            let stat = self.origin.stat_dir(&fd)?;
            Ok((fd, stat))
        })?;
        self.dir_cache().put(id, fd.clone());
        Ok(fd)
    }

    /// Finds inode `id` on the origin and returns where it is with its current metadata.
    fn locate(&self, id: InodeId) -> Result<(Located, Stat)> {
        let (kind, key, first) = self.entry_point(id)?;
        if kind == FileKind::Directory {
            let fd = self.dir_fd(id)?;
            let stat = self.origin.stat_dir(&fd)?;
            return Ok((Located::Dir(fd), stat));
        }
        self.try_hints(id, key, first, |parent, entry| {
            let stat = self.origin.stat(At::Entry(parent, entry))?;
            Ok((Located::Entry(parent.clone(), entry.clone()), stat))
        })
    }

    /// Where to act on `id`: the open `handle` if given, else its place on the origin, else
    /// (no name leads to it any more) any of its open files.
    fn target(&self, id: InodeId, handle: Option<u64>) -> Result<Target> {
        if let Some(open) = handle.and_then(|number| self.files.get(number)) {
            return Ok(Target::Open(open));
        }
        match self.locate(id) {
            Ok((located, stat)) => Ok(Target::Place(located, stat)),
            Err(VfsError::Stale(number)) => self
                .files
                .find(|open| open.inode == id)
                .map(Target::Open)
                .ok_or(VfsError::Stale(number)),
            Err(error) => Err(error),
        }
    }

    /// The kind, origin identity and newest link hint of `id`, read under one lock.
    fn entry_point(&self, id: InodeId) -> Result<(FileKind, FileId, Option<LinkHint>)> {
        let table = self.table();
        let inode = table.get(id).ok_or(VfsError::UnknownInode(id.0))?;
        Ok((inode.kind, inode.key, inode.links.first().cloned()))
    }

    /// Runs `attempt` on the newest (parent fd, name) hint of `id`, starting with `first`,
    /// until one reaches the object `key` (checked by the stat `attempt` returns). A hint
    /// that leads elsewhere is dropped, which makes the next one the newest; the hints are
    /// never copied wholesale.
    fn try_hints<T>(
        &self,
        id: InodeId,
        key: FileId,
        first: Option<LinkHint>,
        mut attempt: impl FnMut(&DirFd, &Name) -> std::io::Result<(T, Stat)>,
    ) -> Result<(T, Stat)> {
        let mut next = first;
        // Bounded: each failed try drops a hint, and an inode keeps only a few; the bound
        // only guards against lookups re-adding a hint as fast as it fails.
        for _ in 0..HINT_TRIES_MAX {
            let Some((parent, entry)) = next.take() else {
                break;
            };
            if let Some(found) = self.try_hint(parent, &entry, key, &mut attempt)? {
                return Ok(found);
            }
            self.table().drop_hint(id, parent, &entry);
            next = self.entry_point(id)?.2;
        }
        Err(VfsError::Stale(id.0))
    }

    /// One try of `try_hints`: `None` when (parent, entry) no longer leads to `key`.
    fn try_hint<T>(
        &self,
        parent: InodeId,
        entry: &Name,
        key: FileId,
        attempt: &mut impl FnMut(&DirFd, &Name) -> std::io::Result<(T, Stat)>,
    ) -> Result<Option<(T, Stat)>> {
        let parent_fd = match self.dir_fd(parent) {
            Ok(fd) => fd,
            Err(VfsError::Stale(_) | VfsError::UnknownInode(_)) => return Ok(None),
            Err(error) => return Err(error),
        };
        match attempt(&parent_fd, entry) {
            Ok((value, stat)) if stat.id() == key => Ok(Some((value, stat))),
            Ok(_) => Ok(None),
            Err(error) if crate::origin::gone(&error) => Ok(None),
            Err(error) => Err(error.into()),
        }
    }

    /// The node id of an origin object if the kernel may hold it, without creating one.
    fn known_id(&self, stat: &Stat) -> Option<InodeId> {
        let table = self.table();
        let id = table.plain_id(stat.id())?;
        table.get(id).map(|_| id)
    }

    /// Forgets the cached fd of a directory that was removed or replaced.
    fn evict_dir_fd(&self, id: InodeId) {
        self.dir_cache().pop(&id);
    }
}

/// Validates a name the kernel sent.
fn name(name: &OsStr) -> Result<Name> {
    Ok(Name::new(name)?)
}
