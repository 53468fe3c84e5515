//! Open files: open, read, write, flush, release, fsync, fallocate, lseek.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use crate::log::Op;
use crate::origin::{At, OriginFile, Stat};
use crate::types::Change;
use crate::types::{FileKind, InodeId};
use crate::write::WriteError;

use super::change::{Wait, set_mode};
use super::handles::{FileHandle, OpenCounts, OpenMode};
use super::{Result, VfsError, Volume, Writer};

/// An opened file as the kernel should treat it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Opened {
    /// The handle number the kernel passes back on I/O.
    pub handle: u64,
    /// True when the kernel may keep the pages it cached from an earlier open: the file
    /// has not changed since (same mtime and size).
    pub keep_cache: bool,
    /// The kernel may read the origin file directly (see [`Volume::backing_file`]).
    pub passthrough: bool,
}

/// How long a writer waits for passthrough readers of its file to be released before it
/// is refused: the kernel sends RELEASE after close(2) returns, so a reader that closed just
/// before the writer opened may not have been heard of yet.
const RELEASE_WAIT: Duration = Duration::from_millis(200);

/// The most one copy_file_range request copies (and one record describes): the names lock
/// is held alone meanwhile, and the kernel asks again for the rest.
const COPY_CHUNK_MAX: u64 = 64 << 20;

/// Open flags that may pass to the origin. O_APPEND is dropped because the kernel already
/// places every write at its offset (it serializes appends under the inode lock), and
/// replaying a write at an explicit offset is what a change log needs. O_DIRECT is dropped
/// because the kernel's buffers for our reads and writes carry no alignment promise.
/// O_CREAT and O_EXCL are done explicitly by `create`; O_TRUNC arrives as a SETATTR (the
/// kernel is not offered ATOMIC_O_TRUNC).
fn origin_flags(flags: i32) -> i32 {
    flags & (libc::O_ACCMODE | libc::O_SYNC | libc::O_DSYNC | libc::O_NOATIME)
}

impl Volume {
    /// The flags to open the origin file with for an application's open with `flags`.
    /// Under the kernel's writeback cache, a write-only open is read-write: the kernel
    /// reads the rest of a page it writes partly through the same open.
    pub(super) fn origin_access(&self, flags: i32) -> i32 {
        let access = origin_flags(flags);
        if access & libc::O_ACCMODE == libc::O_WRONLY && self.writeback.load(Ordering::Relaxed) {
            return (access & !libc::O_ACCMODE) | libc::O_RDWR;
        }
        access
    }

    /// `open(2)` of an existing regular file.
    pub fn open(&self, id: InodeId, flags: i32) -> Result<Opened> {
        let access = self.origin_access(flags);
        let (kind, key, first) = self.entry_point(id)?;
        if kind == FileKind::Directory {
            return Err(VfsError::IsDirectory);
        }
        let (file, stat) = self.try_hints(id, key, first, |parent, entry| {
            let file = self.origin.open_file(At::Entry(parent, entry), access)?;
            let stat = file.stat()?;
            Ok((file, stat))
        })?;
        let attr = self.attr(id, &stat)?;
        let keep_cache = self.keep_cache(id, attr.mtime, attr.size);
        let mode = self.open_mode(id, access)?;
        let opened = opened(keep_cache, &mode);
        let handle = self
            .files
            .insert(self.file_handle_for(id, file, Some(&stat), mode)?);
        Ok(Opened { handle, ..opened })
    }

    /// How a new open of `id` with `access` is served, counted among the inode's opens.
    /// A read-only open is passed through to the kernel when allowed and nothing could
    /// make the origin differ from what the mount shows: no unflushed bytes, no other
    /// open served by the daemon (the kernel takes an inode's opens all passed through or
    /// none). The kernel then wants every open of the inode passed through, writers too,
    /// whose writes would bypass the change log; so while passthrough readers are open,
    /// a writer is refused with ETXTBSY, as Linux refuses writers of a running program.
    pub(super) fn open_mode(&self, id: InodeId, access: i32) -> Result<OpenMode> {
        let writable = access & libc::O_ACCMODE != libc::O_RDONLY;
        let mut modes = self.open_modes();
        if writable {
            // The kernel tells of a close only afterwards (RELEASE is sent in the
            // background), so a reader that has just closed is waited for a moment.
            let passed = |modes: &mut HashMap<InodeId, OpenCounts>| {
                modes.get(&id).is_some_and(|counts| counts.passthrough > 0)
            };
            let (waited, _) = self
                .open_closed
                .wait_timeout_while(modes, RELEASE_WAIT, passed)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            modes = waited;
            if passed(&mut modes) {
                return Err(VfsError::PassedThrough);
            }
        }
        let counts = modes.entry(id).or_default();
        let passthrough = !writable
            && (counts.passthrough > 0
                || (self.passthrough.load(Ordering::Relaxed)
                    && counts.served == 0
                    && self.journal().dirty_attr(id).is_none()));
        if passthrough {
            counts.passthrough += 1;
            self.passthrough_opens.fetch_add(1, Ordering::Relaxed);
        } else {
            counts.served += 1;
        }
        Ok(OpenMode {
            passthrough: AtomicBool::new(passthrough),
        })
    }

    /// The origin file of a passthrough open, for the kernel to read directly.
    pub fn backing_file(&self, handle: u64) -> Result<Arc<OriginFile>> {
        Ok(Arc::clone(&self.file_handle(handle)?.file))
    }

    /// The kernel refused to pass `handle` through: it is served by the daemon instead,
    /// and no later open is offered passthrough.
    pub fn passthrough_refused(&self, handle: u64) {
        self.passthrough.store(false, Ordering::Relaxed);
        if let Ok(open) = self.file_handle(handle)
            && open.mode.passthrough.swap(false, Ordering::Relaxed)
            && let Some(counts) = self.open_modes().get_mut(&open.inode)
        {
            counts.passthrough -= 1;
            counts.served += 1;
            self.passthrough_opens.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Takes a closed open of `id` in `mode` out of the inode's open counts.
    pub(super) fn count_closed(&self, id: InodeId, mode: &OpenMode) {
        let mut modes = self.open_modes();
        if let Some(counts) = modes.get_mut(&id) {
            if mode.passthrough.load(Ordering::Relaxed) {
                counts.passthrough -= 1;
            } else {
                counts.served -= 1;
            }
            if counts.passthrough == 0 && counts.served == 0 {
                modes.remove(&id);
            }
            self.open_closed.notify_all();
        }
    }

    /// A handle for `file`, opened as `id`, reading through the cache. `stat` is the
    /// file's metadata if the caller has it at hand.
    pub(super) fn file_handle_for(
        &self,
        id: InodeId,
        file: OriginFile,
        stat: Option<&Stat>,
        mode: OpenMode,
    ) -> Result<FileHandle> {
        let file = Arc::new(file);
        let cached = match &self.cache {
            None => None,
            Some(cache) => {
                let stat = match stat {
                    Some(stat) => *stat,
                    None => file.stat().inspect_err(|_| self.count_closed(id, &mode))?,
                };
                let dirty = self.journal().dirty_attr(id).is_some();
                Some(cache.open(Arc::clone(&file), &stat, dirty))
            }
        };
        Ok(FileHandle {
            inode: id,
            file,
            wrote: AtomicBool::new(false),
            cached,
            mode,
        })
    }

    /// Reads up to `size` bytes at `offset` into `buffer[..n]` and returns n (short only at
    /// end of file). `buffer` is grown as needed and never shrunk, so one buffer per worker
    /// thread serves every read without allocating or zeroing again.
    pub fn read(
        &self,
        handle: u64,
        offset: u64,
        size: usize,
        buffer: &mut Vec<u8>,
    ) -> Result<usize> {
        let open = self.file_handle(handle)?;
        if buffer.len() < size {
            buffer.resize(size, 0);
        }
        // Taken before the origin is read: a byte leaves it only once the origin has it.
        let overlay = self.journal().overlay(open.inode, offset, size);
        let read = match (&self.cache, &open.cached) {
            (Some(cache), Some(cached)) => {
                let dirty = || self.journal().dirty_attr(open.inode).is_some();
                cache.read(cached, offset, &mut buffer[..size], dirty)?
            }
            _ => open.file.read_at(&mut buffer[..size], offset)?,
        };
        Ok(match overlay {
            Some(overlay) => overlay.apply(offset, &mut buffer[..size], read)?,
            None => read,
        })
    }

    /// Writes all of `data` at `offset`. With `killer` (the kernel's
    /// FUSE_WRITE_KILL_SUIDGID: a writer without CAP_FSETID), the file first loses the
    /// setuid and setgid bits that writer drops.
    pub fn write(
        &self,
        handle: u64,
        offset: u64,
        data: &[u8],
        killer: Option<&Writer<'_>>,
    ) -> Result<usize> {
        let naming = self.naming()?;
        let open = self.file_handle(handle)?;
        let written = Change::Written(offset..offset + data.len() as u64);
        let path = self.inode_path(open.inode)?;
        let change = naming.inode(open.inode, path, Wait::Nothing, Some(written))?;
        let dropped = match killer {
            Some(writer) => open.drop_privileges(writer)?,
            None => None,
        };
        // Changes the origin (or, with write-behind, the dirty map) and records the write.
        self.journal()
            .write(open.inode, &open.file, change.path().cloned(), offset, data)
            .map_err(|error| match error {
                WriteError::Log(error) => self.log_failed(error),
                WriteError::Origin(error) => VfsError::Origin(error),
            })?;
        change.made(|path| {
            dropped
                .map(|mode| set_mode(path, mode))
                .into_iter()
                .collect()
        })?;
        open.wrote.store(true, Ordering::Relaxed);
        Ok(data.len())
    }

    /// `close(2)` of one descriptor. Writes are not buffered here, so there is nothing to do.
    pub fn flush(&self, handle: u64) -> Result<()> {
        self.file_handle(handle).map(drop)
    }

    /// The last descriptor of an open is gone. A file written through this handle is left
    /// in the kernel's page cache with the content version it now has, so the next open
    /// keeps those pages instead of reading them again, and its mtime is recorded.
    pub fn release(&self, handle: u64) -> Result<()> {
        let open = self
            .files
            .remove(handle)
            .ok_or(VfsError::UnknownHandle(handle))?;
        if let (Some(cache), Some(cached)) = (&self.cache, &open.cached) {
            cache.release(cached);
        }
        self.count_closed(open.inode, &open.mode);
        if open.wrote.load(Ordering::Relaxed) {
            let naming = self.naming_to_complete()?;
            let path = self.inode_path(open.inode)?;
            let change = naming.inode(open.inode, path, Wait::Nothing, None)?;
            let mut stat = self.attr(open.inode, &open.file.stat()?)?;
            // Not the stat's: a flush under way gives the origin its own time for a moment.
            stat.mtime = self.journal().mtime(open.inode, &open.file, stat.mtime)?;
            if let Some(inode) = self.table().get_mut(open.inode) {
                inode.cached_version = Some((stat.mtime, stat.size));
            }
            // Copies apply writes later than the origin took them; this gives them the
            // origin's modification time, once per open rather than once per write.
            change.made(|path| vec![Op::set_mtime(path, stat.mtime)])?;
        }
        Ok(())
    }

    /// `copy_file_range(2)` from `length` bytes at `from_offset` of open file `from` to
    /// `offset` of open file `handle`. The bytes are copied inside the origin, never
    /// crossing into the daemon, and the log records a copy that the copies of the volume
    /// make locally. Returns how many were copied: short at the source's end, and at most
    /// [`COPY_CHUNK_MAX`].
    pub fn copy_range(
        &self,
        from: u64,
        from_offset: u64,
        handle: u64,
        offset: u64,
        length: u64,
    ) -> Result<u64> {
        // Alone: no change anywhere lies between its origin change and its record, so the
        // source in the origin is what the log says it is at the copy's record.
        let naming = self.moving()?;
        let source = self.file_handle(from)?;
        let target = self.file_handle(handle)?;
        let from_path = self
            .inode_path(source.inode)?
            .ok_or(VfsError::CopyFromUnnamed)?;
        let length = length.min(COPY_CHUNK_MAX);
        let path = self.inode_path(target.inode)?;
        let written = Change::Written(offset..offset + length);
        // Unflushed bytes of both files land first, and recovery never replays older
        // content across the copy (which it does not replay: see `recover`).
        let change = naming.inode(target.inode, path, Wait::Barrier, Some(written))?;
        let copied = source
            .file
            .copy_to(from_offset, &target.file, offset, length)?;
        if copied > 0 {
            self.journal().settle_copy(&target.file)?;
            target.wrote.store(true, Ordering::Relaxed);
        }
        change.made(|path| match copied {
            0 => Vec::new(),
            _ => vec![Op::Copy {
                from: from_path,
                from_offset,
                path,
                offset,
                length: copied,
            }],
        })?;
        Ok(copied)
    }

    /// `fsync(2)` / `fdatasync(2)`: the file durable in the origin, and its changes
    /// durable in the log.
    /// A wait for replicas gives up with EINTR once `interrupted` says the caller has a
    /// signal pending.
    pub fn fsync(
        &self,
        handle: u64,
        data_only: bool,
        interrupted: &dyn Fn() -> bool,
    ) -> Result<()> {
        // Nothing is ever written through a standby: nothing to make durable.
        if self.is_standby() {
            return Ok(());
        }
        if let Err(VfsError::Refused(reason)) = self.check_open() {
            return Err(VfsError::Unrecorded(reason));
        }
        let open = self.file_handle(handle)?;
        Ok(self.journal().durable(&open.file, data_only, interrupted)?)
    }

    /// `fallocate(2)` with the application's mode bits, by `writer`, who loses setuid and
    /// setgid as a write would lose them (the kernel leaves that to the filesystem here).
    pub fn fallocate(
        &self,
        writer: &Writer<'_>,
        handle: u64,
        offset: u64,
        length: u64,
        mode: i32,
    ) -> Result<()> {
        let naming = self.naming()?;
        let open = self.file_handle(handle)?;
        let path = self.inode_path(open.inode)?;
        // Unflushed bytes in the range must land before the range changes under them,
        // and recovery must never replay them across it (see `setattr`).
        let change = naming.inode(open.inode, path, Wait::Barrier, Some(Change::Content))?;
        open.file.allocate(offset, length, mode)?;
        let dropped = open.drop_privileges(writer)?;
        open.wrote.store(true, Ordering::Relaxed);
        change.made(|path| {
            let mut records = vec![Op::Fallocate {
                path: path.clone(),
                mode,
                offset,
                length,
            }];
            records.extend(dropped.map(|mode| set_mode(path, mode)));
            records
        })
    }

    /// `lseek(2)` for SEEK_DATA and SEEK_HOLE: the offset the origin reports.
    pub fn lseek(&self, handle: u64, offset: i64, whence: i32) -> Result<i64> {
        Ok(self.file_handle(handle)?.file.seek(offset, whence)?)
    }

    fn file_handle(&self, handle: u64) -> Result<Arc<FileHandle>> {
        self.files
            .get(handle)
            .ok_or(VfsError::UnknownHandle(handle))
    }

    /// Whether the kernel may keep cached pages of `id` at this open, and records the
    /// version it will hold from now on.
    pub(super) fn keep_cache(&self, id: InodeId, mtime: SystemTime, size: u64) -> bool {
        let mut table = self.table();
        let Some(inode) = table.get_mut(id) else {
            return false;
        };
        let version = Some((mtime, size));
        let keep = inode.cached_version == version;
        inode.cached_version = version;
        keep
    }
}

/// What the kernel is told of an open in `mode`.
pub(super) fn opened(keep_cache: bool, mode: &OpenMode) -> Opened {
    let passthrough = mode.passthrough.load(Ordering::Relaxed);
    Opened {
        handle: 0,
        // The kernel refuses to keep pages for a passthrough open: it caches none.
        keep_cache: keep_cache && !passthrough,
        passthrough,
    }
}
