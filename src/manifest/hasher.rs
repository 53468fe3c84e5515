//! The hasher: a thread that keeps a copy's stored hashes current, rehashing the chunks
//! changes touched once the copy holds them, and saving the store now and then.

use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::log::LogPath;
use crate::origin::OriginFile;
use crate::throttled::Throttled;
use crate::types::{FileKind, Stamp};

use super::chunks::FileHashes;
use super::content::FileContent;
use super::store::{HashStore, Job};

/// How often the store is saved while it changes.
const SAVE_EVERY: Duration = Duration::from_secs(5);

/// Files taken from the store at a time.
const BATCH: usize = 256;

/// Files larger than this keep no stored hashes (a 16 TiB sparse file would need 512 MiB
/// of them): verify's content check reads such a file afresh, and a quick check compares
/// its size and times only.
pub const HASHED_SIZE_MAX: u64 = 1 << 40;

/// A file that keeps changing while it is hashed is tried again this much later.
const RETRY_AFTER: Duration = Duration::from_millis(200);

/// A copy's stored hashes with the hasher thread that keeps them current.
#[derive(Debug)]
pub struct Hashing {
    store: Arc<HashStore>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Hashing {
    /// Opens the store in `dir` and starts its hasher, which reads files through `open`
    /// (by path in the copy); `applied` says below which offset the copy holds every
    /// record.
    pub fn start(
        dir: &Path,
        open: impl Fn(&LogPath) -> io::Result<OriginFile> + Send + 'static,
        applied: impl Fn() -> u64 + Send + 'static,
    ) -> io::Result<Hashing> {
        let store = Arc::new(HashStore::open(dir));
        let thread = {
            let store = Arc::clone(&store);
            std::thread::Builder::new()
                .name("hasher".to_string())
                .spawn(move || run(&store, &open, &applied))?
        };
        Ok(Hashing {
            store,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// The store.
    pub fn store(&self) -> &Arc<HashStore> {
        &self.store
    }

    /// Stops the hasher and saves the store (what is still pending is saved as pending).
    pub fn stop(&self) {
        self.store.stop();
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(thread) = thread
            && thread.join().is_err()
        {
            tracing::error!("the hasher thread panicked");
        }
    }
}

/// Opens files for the hasher.
type Opener<'a> = &'a dyn Fn(&LogPath) -> io::Result<OriginFile>;

fn run(store: &HashStore, copy: Opener<'_>, applied: &dyn Fn() -> u64) {
    // Stored hashes serve verify, never a request: the hasher runs only on a CPU nothing
    // else wants (SCHED_IDLE), so rehashing what a writer just wrote does not slow it.
    let idle = libc::sched_param { sched_priority: 0 };
    // SAFETY: sets this thread's policy; `idle` outlives the call.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &idle) } != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "the hasher keeps its priority");
    }
    let mut saved = Instant::now();
    // A state dir that is gone fails every save: say so once in a while, not every time.
    let mut unsaved = Throttled::new(
        "cannot save stored hashes; they stay in memory",
        Duration::from_secs(60),
    );
    while !store.is_stopping() {
        let jobs = store.take(applied(), BATCH);
        let idle = jobs.is_empty();
        let mut unsettled = false;
        for job in jobs {
            unsettled |= !rehash(store, copy, job);
        }
        if saved.elapsed() >= SAVE_EVERY {
            save(store, &mut unsaved);
            saved = Instant::now();
        }
        let pause = if unsettled {
            RETRY_AFTER
        } else if idle {
            SAVE_EVERY
        } else {
            continue;
        };
        if !store.wait(pause) {
            break;
        }
    }
    save(store, &mut unsaved);
}

fn save(store: &HashStore, unsaved: &mut Throttled) {
    if let Err(error) = store.save() {
        unsaved.warn(&error);
    }
}

/// Brings one file's stored hashes up to date. Returns false when the file changed while
/// it was read (the job is put back).
fn rehash(store: &HashStore, copy: Opener<'_>, job: Job) -> bool {
    let Some(file) = open(copy, &job) else {
        store.forget(job.key);
        return true;
    };
    match hash(store, &file, &job) {
        Ok(Some((hashes, stamp))) => {
            // A change marked meanwhile is pending again: the next round takes it.
            store.put(job.key, hashes, stamp);
            true
        }
        Ok(None) => {
            store.put_back(job);
            false
        }
        // Stopping: what is pending is saved as pending.
        Err(error) if error.kind() == io::ErrorKind::Interrupted => {
            store.put_back(job);
            true
        }
        // Deleted while it was read, or too large to keep hashes of: nothing to keep.
        Err(error)
            if matches!(
                error.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::FileTooLarge
            ) =>
        {
            store.forget(job.key);
            true
        }
        Err(error) => {
            tracing::warn!(key = ?job.key, %error, "cannot hash a file; its stored hashes are dropped");
            store.forget(job.key);
            true
        }
    }
}

/// The file the job names, if its newest known name still leads to it.
fn open(copy: Opener<'_>, job: &Job) -> Option<OriginFile> {
    let file = copy(job.pending.path.as_ref()?).ok()?;
    let stat = file.stat().ok()?;
    (stat.id() == job.key && stat.kind() == Some(FileKind::Regular)).then_some(file)
}

/// The file's hashes and the stamp they hold for, or `None` when it changed meanwhile.
fn hash(
    store: &HashStore,
    file: &OriginFile,
    job: &Job,
) -> io::Result<Option<(FileHashes, Stamp)>> {
    let before = file.stat()?.stamp();
    if before.size > HASHED_SIZE_MAX {
        return Err(io::ErrorKind::FileTooLarge.into());
    }
    let stopping = || store.is_stopping();
    let read = &mut FileContent::new(file).stopping_when(&stopping);
    let hashes = match &job.stored {
        // Only attributes changed, or these chunks: the rest still holds.
        Some(stored) if !job.pending.whole => {
            let mut hashes = stored.hashes.clone();
            // Only attributes changed, by marks that did not check the stamp before: a
            // size or mtime that moved says another program changed the content too.
            let unexplained = job.pending.chunks.is_empty()
                && !job.pending.resized
                && (stored.hashes.size != before.size
                    || (job.pending.unchecked > 0 && stored.stamp.mtime != before.mtime));
            match unexplained {
                true => FileHashes::of(before.size, read)?,
                false => {
                    hashes.update(before.size, |n| job.pending.chunks.contains(&n), read)?;
                    hashes
                }
            }
        }
        _ => FileHashes::of(before.size, read)?,
    };
    let after = file.stat()?.stamp();
    Ok((before == after).then_some((hashes, after)))
}
