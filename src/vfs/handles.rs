//! Open file and directory handles: the numbers the kernel passes back on every I/O call.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::cache::CachedFile;
use crate::origin::{DirStream, OriginFile};
use crate::types::InodeId;

use super::Writer;

/// An open regular file.
#[derive(Debug)]
pub(crate) struct FileHandle {
    /// The inode it was opened as.
    pub(crate) inode: InodeId,
    /// The origin file, open for the access the application asked for.
    pub(crate) file: Arc<OriginFile>,
    /// Set by the first write: release then records the content version the kernel holds.
    pub(crate) wrote: AtomicBool,
    /// The file as the read cache knows it, when reads go through one.
    pub(crate) cached: Option<Arc<CachedFile>>,
    /// How the kernel was told to treat this open.
    pub(crate) mode: OpenMode,
}

impl FileHandle {
    /// Drops the setuid and setgid bits a change by `writer` drops (its content changing
    /// under a writer without CAP_FSETID), returning the new permission bits if any fell.
    /// Root drops nothing: no stat for it.
    pub(crate) fn drop_privileges(&self, writer: &Writer<'_>) -> std::io::Result<Option<u32>> {
        if writer.uid == 0 {
            return Ok(None);
        }
        let stat = self.file.stat()?;
        let dropped = writer.drops(stat.mode, stat.gid);
        if dropped == 0 {
            return Ok(None);
        }
        let mode = stat.mode & 0o7777 & !dropped;
        self.file.chmod(mode)?;
        Ok(Some(mode))
    }
}

/// How an open file is served, and what that means for other opens of the same inode.
#[derive(Debug, Default)]
pub(crate) struct OpenMode {
    /// Reads go from the kernel straight to the origin file (FUSE passthrough); cleared
    /// if the kernel refuses.
    pub(crate) passthrough: AtomicBool,
}

/// Opens of one inode by how they are served, to decide how a new open may be: the
/// kernel takes an inode's opens either all passed through or none.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct OpenCounts {
    pub(crate) passthrough: u32,
    pub(crate) served: u32,
}

/// An open directory being listed.
#[derive(Debug)]
pub(crate) struct DirHandle {
    /// The directory's inode.
    pub(crate) inode: InodeId,
    /// The listing; one reader at a time (the kernel serializes readdir per handle anyway).
    pub(crate) stream: Mutex<DirStream>,
}

/// Handles of one kind, numbered from 1 and never reused while mounted.
#[derive(Debug)]
pub(crate) struct HandleTable<T> {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Arc<T>>>,
}

impl<T> HandleTable<T> {
    pub(crate) fn new() -> HandleTable<T> {
        HandleTable {
            next: AtomicU64::new(1),
            open: Mutex::new(HashMap::new()),
        }
    }

    fn open(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<T>>> {
        self.open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Stores `value` and returns its handle number.
    pub(crate) fn insert(&self, value: T) -> u64 {
        let number = self.next.fetch_add(1, Ordering::Relaxed);
        self.open().insert(number, Arc::new(value));
        number
    }

    /// The handle `number`, if open.
    pub(crate) fn get(&self, number: u64) -> Option<Arc<T>> {
        self.open().get(&number).cloned()
    }

    /// Some open handle that satisfies `wanted` (a scan: for rare fallbacks only).
    pub(crate) fn find(&self, wanted: impl Fn(&T) -> bool) -> Option<Arc<T>> {
        self.open().values().find(|value| wanted(value)).cloned()
    }

    /// Every open handle that satisfies `wanted`.
    pub(crate) fn all(&self, wanted: impl Fn(&T) -> bool) -> Vec<Arc<T>> {
        self.open()
            .values()
            .filter(|value| wanted(value))
            .cloned()
            .collect()
    }

    /// Closes the handle `number`, returning what it held.
    pub(crate) fn remove(&self, number: u64) -> Option<Arc<T>> {
        self.open().remove(&number)
    }
}
