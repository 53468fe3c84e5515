//! A volume's state directory: created private, and locked so one daemon serves a volume.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::types::FileId;

/// Why the state directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// It could not be created or opened.
    #[error("cannot use state_dir {path}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Another process holds the volume.
    #[error("volume is in use: another mirrorfs process{holder} holds {path}")]
    Locked {
        /// The lock file.
        path: PathBuf,
        /// " (pid N)" when known.
        holder: String,
    },
}

/// Present while a daemon serves the volume; found at start, it says the last one died.
const SERVING: &str = "serving";

/// The locked state directory; the lock is released when this is dropped (or the process
/// dies, which is what makes a restart after kill -9 possible without cleanup).
#[derive(Debug)]
pub struct StateDir {
    path: PathBuf,
    lock: File,
    /// The directory's identity when it was opened.
    identity: FileId,
}

impl StateDir {
    /// Creates `path` (mode 0700, parents as needed) and takes its exclusive lock.
    pub fn open(path: &Path) -> Result<StateDir, StateError> {
        let io = |source| StateError::Io {
            path: path.to_path_buf(),
            source,
        };
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(io)?;
        let lock_path = path.join("lock");
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io)?;
        // SAFETY: valid fd.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() == std::io::ErrorKind::WouldBlock {
                let holder = std::fs::read_to_string(&lock_path)
                    .ok()
                    .map(|text| text.trim().to_string())
                    .filter(|pid| !pid.is_empty())
                    .map(|pid| format!(" (pid {pid})"))
                    .unwrap_or_default();
                return Err(StateError::Locked {
                    path: lock_path,
                    holder,
                });
            }
            return Err(io(error));
        }
        lock.set_len(0).map_err(io)?;
        writeln!(lock, "{}", std::process::id()).map_err(io)?;
        let meta = std::fs::metadata(path).map_err(io)?;
        Ok(StateDir {
            path: path.to_path_buf(),
            lock,
            identity: id_of(&meta),
        })
    }

    /// Why the directory is no longer the one opened, if it is not: removed, moved or
    /// replaced under the daemon (its lock file gone, or another directory at its path).
    /// Records written then would go to files no one will find.
    pub fn lost(&self) -> Option<String> {
        let locked = self.lock.metadata().map(|meta| meta.nlink() > 0);
        let here = std::fs::metadata(&self.path).map(|meta| id_of(&meta));
        let log = self.path.join("log");
        match (locked, here) {
            (Ok(true), Ok(identity)) if identity == self.identity => match log.try_exists() {
                Ok(false) => Some(format!("{}: deleted", log.display())),
                _ => None,
            },
            (Ok(false), _) => Some(format!(
                "state_dir {}: its lock file was deleted",
                self.path.display()
            )),
            (_, Ok(_)) => Some(format!(
                "state_dir {} was replaced by another directory",
                self.path.display()
            )),
            (_, Err(error)) => Some(format!("state_dir {}: {error}", self.path.display())),
        }
    }

    /// Marks the volume as being served, and says whether the last daemon to serve it
    /// stopped without clearing that mark (it was killed, or the machine went down).
    pub fn begin_serving(&self) -> std::io::Result<bool> {
        let mark = self.path.join(SERVING);
        let unclean = mark.try_exists()?;
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&mark)?;
        writeln!(file, "{}", std::process::id())?;
        file.sync_all()?;
        File::open(&self.path)?.sync_all()?;
        Ok(unclean)
    }

    /// Clears the mark [`StateDir::begin_serving`] made: the daemon stopped cleanly.
    pub fn end_serving(&self) -> std::io::Result<()> {
        std::fs::remove_file(self.path.join(SERVING))?;
        File::open(&self.path)?.sync_all()
    }

    /// Watches the directory and its `log/` for names removed or moved and for the
    /// directory itself going, so that [`StateDir::lost`] is asked at once, not only on a
    /// timer.
    pub fn watch(&self) -> std::io::Result<Watch> {
        // SAFETY: plain syscall; the result is checked.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a new descriptor this function owns.
        let watch = Watch(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
        let events = libc::IN_DELETE
            | libc::IN_DELETE_SELF
            | libc::IN_MOVE_SELF
            | libc::IN_MOVED_FROM
            | libc::IN_ATTRIB;
        for dir in [self.path.clone(), self.path.join("log")] {
            let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
                continue;
            };
            // SAFETY: valid fd and NUL-terminated path. A directory that is not there yet
            // (no log) is simply not watched.
            unsafe { libc::inotify_add_watch(fd, path.as_ptr(), events) };
        }
        Ok(watch)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Events about a state dir (see [`StateDir::watch`]).
#[derive(Debug)]
pub struct Watch(std::os::fd::OwnedFd);

impl Watch {
    /// Waits up to `timeout` for something to happen to the directory; drains what did.
    pub fn wait(&self, timeout: std::time::Duration) {
        let mut poll = libc::pollfd {
            fd: self.0.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let millis = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut poll, 1, millis) } > 0 {
            let mut buffer = [0u8; 4096];
            // SAFETY: a buffer of the stated length; the fd is non-blocking.
            while unsafe {
                libc::read(self.0.as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len())
            } > 0
            {}
        }
    }
}

/// The identity of what `meta` describes.
fn id_of(meta: &std::fs::Metadata) -> FileId {
    FileId {
        dev: meta.dev(),
        ino: meta.ino(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/state");
        let first = StateDir::open(&path).unwrap();
        let error = StateDir::open(&path).unwrap_err().to_string();
        assert!(
            error.contains("in use") && error.contains(&std::process::id().to_string()),
            "{error}"
        );
        drop(first);
        StateDir::open(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }
}
