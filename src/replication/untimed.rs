//! The objects of a copy whose mtime no record has set since a record last moved it.
//!
//! A copy takes a file's mtime from the primary's records: applying a write moves the
//! copy's mtime to the time it applies it, and the primary records the origin's mtime when
//! the file is released (a directory's after each change of its entries; docs/design.md
//! 7.1). A primary lost between the two leaves every copy with a time of its own. So a copy
//! notes what each record moves and what each sets, and a copy promoted to primary records
//! the times its tree has for whatever is still untimed: the other copies then end where
//! it does. A superset is harmless (a record of the time the tree already has changes
//! nothing there); what matters is missing nothing.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};

use crate::durable;
use crate::log::{LogPath, Op};
use crate::manifest::parent_of;

/// The file in a copy's directory holding the set, as of the stored applied offset.
pub(super) const UNTIMED_FILE: &str = "untimed";

/// The untimed objects, by path.
#[derive(Debug, Default)]
pub(super) struct Untimed {
    paths: HashSet<LogPath>,
    /// Changed since last saved.
    unsaved: bool,
}

impl Untimed {
    /// The set saved in `root` (empty when none was).
    pub(super) fn load(root: &Path) -> io::Result<Untimed> {
        let path = root.join(UNTIMED_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Untimed::default()),
            Err(error) => return Err(error),
        };
        let paths: Vec<LogPath> = serde_json::from_slice(&bytes)
            .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?;
        Ok(Untimed {
            paths: paths.into_iter().collect(),
            unsaved: false,
        })
    }

    /// Saves the set in `root`, durably, if it changed.
    pub(super) fn save(&mut self, root: &Path) -> io::Result<()> {
        if !self.unsaved {
            return Ok(());
        }
        let paths: Vec<&LogPath> = self.paths.iter().collect();
        let bytes = serde_json::to_vec(&paths).map_err(io::Error::other)?;
        durable::replace(&root.join(UNTIMED_FILE), bytes)?;
        self.unsaved = false;
        Ok(())
    }

    /// Takes in what applying `op` did to the copy's times.
    pub(super) fn note(&mut self, op: &Op) {
        match op {
            Op::Write { path, .. }
            | Op::Truncate { path, .. }
            | Op::Fallocate { path, .. }
            | Op::Copy { path, .. } => {
                self.insert(path.clone());
            }
            Op::Create { path, .. }
            | Op::Mkdir { path, .. }
            | Op::Mknod { path, .. }
            | Op::Symlink { path, .. } => {
                self.insert(path.clone());
                self.insert(parent_of(path));
            }
            Op::Link { path, new_path } => {
                if self.paths.contains(path) {
                    self.insert(new_path.clone());
                }
                self.insert(parent_of(new_path));
            }
            Op::Unlink { path } | Op::Rmdir { path } => {
                self.remove_under(path);
                self.insert(parent_of(path));
            }
            Op::Rename { from, to, .. } => {
                self.rename(from, to);
                self.insert(parent_of(from));
                self.insert(parent_of(to));
            }
            Op::SetAttr {
                path,
                mtime: Some(_),
                ..
            } => {
                self.unsaved |= self.paths.remove(path);
            }
            Op::SetAttr { .. } | Op::SetXattr { .. } | Op::RemoveXattr { .. } => {}
        }
    }

    /// Forgets everything: the whole tree was brought to the primary's, times included.
    pub(super) fn clear(&mut self) {
        self.unsaved |= !self.paths.is_empty();
        self.paths.clear();
    }

    /// The untimed paths, in no order.
    pub(super) fn paths(&self) -> impl Iterator<Item = &LogPath> {
        self.paths.iter()
    }

    fn insert(&mut self, path: LogPath) {
        self.unsaved |= self.paths.insert(path);
    }

    fn remove_under(&mut self, path: &LogPath) {
        let before = self.paths.len();
        self.paths.retain(|kept| !is_under(kept, path));
        self.unsaved |= self.paths.len() != before;
    }

    fn rename(&mut self, from: &LogPath, to: &LogPath) {
        // The old entries at `to` are replaced.
        self.remove_under(to);
        let moved: Vec<LogPath> = self
            .paths
            .iter()
            .filter(|kept| is_under(kept, from))
            .cloned()
            .collect();
        for old in moved {
            self.paths.remove(&old);
            let mut bytes = to.as_bytes().to_vec();
            bytes.extend_from_slice(&old.as_bytes()[from.as_bytes().len()..]);
            if let Ok(new) = LogPath::try_from(bytes) {
                self.paths.insert(new);
            }
            self.unsaved = true;
        }
    }
}

/// Whether `path` is `top` or inside it.
fn is_under(path: &LogPath, top: &LogPath) -> bool {
    let (path, top) = (path.as_bytes(), top.as_bytes());
    path.starts_with(top) && (path.len() == top.len() || path[top.len()] == b'/')
}

/// Where the set of the copy in `root` is kept.
pub(super) fn file(root: &Path) -> PathBuf {
    root.join(UNTIMED_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(text: &str) -> LogPath {
        LogPath::try_from(text.as_bytes().to_vec()).unwrap()
    }

    fn set(untimed: &Untimed) -> Vec<String> {
        let mut paths: Vec<String> = untimed
            .paths()
            .map(|p| String::from_utf8_lossy(p.as_bytes()).into_owned())
            .collect();
        paths.sort();
        paths
    }

    #[test]
    fn what_records_move_stays_untimed_until_a_record_sets_it() {
        let mut untimed = Untimed::default();
        untimed.note(&Op::Mkdir {
            path: path("d"),
            mode: 0o755,
            uid: 0,
            gid: 0,
        });
        untimed.note(&Op::Create {
            path: path("d/f"),
            mode: 0o644,
            uid: 0,
            gid: 0,
        });
        untimed.note(&Op::Write {
            path: path("d/f"),
            offset: 0,
            data: b"x".to_vec(),
        });
        assert_eq!(set(&untimed), ["", "d", "d/f"]);
        let timed = |name: &str| Op::SetAttr {
            path: path(name),
            mode: None,
            uid: None,
            gid: None,
            atime: None,
            mtime: Some(std::time::UNIX_EPOCH.into()),
        };
        untimed.note(&timed(""));
        untimed.note(&timed("d"));
        assert_eq!(set(&untimed), ["d/f"]);
        // A mode change sets no time.
        untimed.note(&Op::SetAttr {
            path: path("d/f"),
            mode: Some(0o600),
            uid: None,
            gid: None,
            atime: None,
            mtime: None,
        });
        assert_eq!(set(&untimed), ["d/f"]);
        // Renamed with its directory, it stays untimed under its new name; both parents
        // moved.
        untimed.note(&Op::Rename {
            from: path("d"),
            to: path("e"),
            flags: 0,
        });
        assert_eq!(set(&untimed), ["", "e/f"]);
        untimed.note(&Op::Unlink { path: path("e/f") });
        assert_eq!(set(&untimed), ["", "e"]);
        untimed.note(&timed(""));
        untimed.note(&timed("e"));
        assert!(set(&untimed).is_empty());
    }

    #[test]
    fn the_set_is_saved_and_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let mut untimed = Untimed::default();
        untimed.note(&Op::Truncate {
            path: path("a b"),
            size: 3,
        });
        untimed.save(dir.path()).unwrap();
        assert!(file(dir.path()).exists());
        assert_eq!(set(&Untimed::load(dir.path()).unwrap()), ["a b"]);
        assert!(set(&Untimed::load(&dir.path().join("none")).unwrap()).is_empty());
    }
}
