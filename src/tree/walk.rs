//! One depth-first walk of a tree, for everything that reads a whole tree or a part of it:
//! verify's quick check lists entries, a snapshot turns objects into operations.
//!
//! Names are sorted bytewise within each directory, so two walks of equal trees visit in
//! the same order. Objects removed while the walk runs are left out; names no log path can
//! hold (over PATH_MAX) are left out too, since no record could change them on a copy
//! either. Hard links are told: a second name of a file comes with the first name the walk
//! saw it by.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;

use crate::log::LogPath;
use crate::origin::{At, DirFd, Origin, Stat};
use crate::types::{FileId, FileKind, Name};

use super::place::place;

/// Why a walk stopped.
#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    /// The tree refused a read.
    #[error("reading {path}: {source}")]
    Read {
        /// The object.
        path: LogPath,
        /// Why.
        source: io::Error,
    },
    /// The visitor wants no more.
    #[error("stopped")]
    Stopped,
}

impl WalkError {
    /// A failed read of `path`.
    pub fn read(path: &LogPath) -> impl FnOnce(io::Error) -> WalkError + '_ {
        move |source| WalkError::Read {
            path: path.clone(),
            source,
        }
    }
}

/// What a walk tells as it goes.
pub trait Visitor {
    /// An object at `path` (reachable as `at`) with metadata `stat`, directories before
    /// what they hold. `link_of` is the first path this walk saw the same file by, for a
    /// second (third, ...) name of a file that is not a directory.
    fn object(
        &mut self,
        at: At<'_>,
        path: &LogPath,
        stat: &Stat,
        link_of: Option<&LogPath>,
    ) -> Result<(), WalkError>;

    /// Directory `path`, open as `dir`, whose entries have all been visited.
    fn dir_done(&mut self, dir: &DirFd, path: &LogPath, stat: &Stat) -> Result<(), WalkError> {
        let _ = (dir, path, stat);
        Ok(())
    }

    /// `name` in directory `parent` was left out: no log path can name it.
    fn unnameable(&mut self, parent: &LogPath, name: &Name) {
        let _ = (parent, name);
    }
}

/// Walks `tree` from `under` (the root path for all of it): the object at `under` first,
/// then, if it is a directory, all it holds. Nothing when `under` does not exist.
pub fn walk(tree: &Origin, under: &LogPath, visitor: &mut dyn Visitor) -> Result<(), WalkError> {
    Walker {
        tree,
        visitor,
        first_names: HashMap::new(),
    }
    .walk(under)
}

/// Every extended attribute of `at`, names and values, sorted by name: none where the
/// filesystem keeps none (ENOTSUP) or the object is gone (ENOENT), and any removed while
/// they were read left out.
pub fn xattrs(tree: &Origin, at: At<'_>) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let listed = match tree.list_xattr(at) {
        Ok(listed) => listed,
        Err(error) if matches!(error.raw_os_error(), Some(libc::ENOTSUP | libc::ENOENT)) => {
            return Ok(Vec::new());
        }
        Err(error) => return Err(error),
    };
    let mut xattrs = Vec::new();
    for name in listed
        .split(|byte| *byte == 0)
        .filter(|name| !name.is_empty())
    {
        match tree.get_xattr(at, OsStr::from_bytes(name)) {
            Ok(value) => xattrs.push((name.to_vec(), value)),
            Err(error) if error.raw_os_error() == Some(libc::ENODATA) => {}
            Err(error) => return Err(error),
        }
    }
    xattrs.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    Ok(xattrs)
}

struct Walker<'a> {
    tree: &'a Origin,
    visitor: &'a mut dyn Visitor,
    /// The first path of each file with more than one name.
    first_names: HashMap<FileId, LogPath>,
}

/// A directory being walked: its fd, its path and stat, and its names not yet visited.
struct Frame {
    dir: DirFd,
    path: LogPath,
    stat: Stat,
    names: std::vec::IntoIter<Name>,
}

impl Walker<'_> {
    fn walk(&mut self, under: &LogPath) -> Result<(), WalkError> {
        let Some(frame) = self.start(under)? else {
            return Ok(());
        };
        let mut stack = vec![frame];
        while let Some(frame) = stack.last_mut() {
            let Some(name) = frame.names.next() else {
                let done = stack.pop().expect("a frame was just looked at");
                self.visitor.dir_done(&done.dir, &done.path, &done.stat)?;
                continue;
            };
            let Ok(path) = frame.path.join(name.as_bytes()) else {
                self.visitor.unnameable(&frame.path, &name);
                continue;
            };
            let dir = frame.dir.clone();
            if let Some(child) = self.visit(At::Entry(&dir, &name), path)? {
                stack.push(child);
            }
        }
        Ok(())
    }

    /// Visits the object at `under`; the frame to walk when it is a directory.
    fn start(&mut self, under: &LogPath) -> Result<Option<Frame>, WalkError> {
        if under.components().next().is_none() {
            let root = self.tree.root().clone();
            return self.visit(At::Dir(&root), under.clone());
        }
        match place(self.tree, under) {
            Ok((dir, name)) => self.visit(At::Entry(&dir, &name), under.clone()),
            // Not there, or a component on the way is not a directory in this tree.
            Err(error) if matches!(error.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
                Ok(None)
            }
            Err(error) => Err(WalkError::read(under)(error)),
        }
    }

    /// Visits the object at `at`, named `path`; the frame to walk when it is a directory.
    /// `None` for anything else, and for an object removed since it was listed.
    fn visit(&mut self, at: At<'_>, path: LogPath) -> Result<Option<Frame>, WalkError> {
        let stat = match self.tree.stat(at) {
            Ok(stat) => stat,
            Err(error) if error.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(error) => return Err(WalkError::read(&path)(error)),
        };
        let directory = stat.kind() == Some(FileKind::Directory);
        let link_of = match directory || stat.nlink < 2 {
            true => None,
            false => match self.first_names.get(&stat.id()) {
                Some(first) => Some(first.clone()),
                None => {
                    self.first_names.insert(stat.id(), path.clone());
                    None
                }
            },
        };
        self.visitor.object(at, &path, &stat, link_of.as_ref())?;
        if !directory {
            return Ok(None);
        }
        let dir = match at {
            At::Dir(dir) => dir.clone(),
            at => match self.tree.open_dir(at) {
                Ok(dir) => dir,
                Err(error) if error.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
                Err(error) => return Err(WalkError::read(&path)(error)),
            },
        };
        let names = self.names(&dir, &path)?;
        Ok(Some(Frame {
            dir,
            path,
            stat,
            names: names.into_iter(),
        }))
    }

    /// The names in `dir`, sorted bytewise.
    fn names(&self, dir: &DirFd, path: &LogPath) -> Result<Vec<Name>, WalkError> {
        let mut stream = self
            .tree
            .open_dir_stream(At::Dir(dir))
            .map_err(WalkError::read(path))?;
        let mut names = Vec::new();
        while let Some(entry) = stream.next_entry().map_err(WalkError::read(path))? {
            if let Ok(name) = Name::new(&entry.name) {
                names.push(name);
            }
        }
        names.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what the walk tells, as text.
    #[derive(Default)]
    struct Told(Vec<String>);

    impl Visitor for Told {
        fn object(
            &mut self,
            _at: At<'_>,
            path: &LogPath,
            stat: &Stat,
            link_of: Option<&LogPath>,
        ) -> Result<(), WalkError> {
            let kind = if stat.kind() == Some(FileKind::Directory) {
                "dir"
            } else {
                "obj"
            };
            let link = link_of.map_or(String::new(), |first| format!(" = {first}"));
            self.0.push(format!("{kind} {path}{link}"));
            Ok(())
        }

        fn dir_done(
            &mut self,
            _dir: &DirFd,
            path: &LogPath,
            _stat: &Stat,
        ) -> Result<(), WalkError> {
            self.0.push(format!("end {path}"));
            Ok(())
        }
    }

    fn path(text: &str) -> LogPath {
        LogPath::try_from(text.as_bytes().to_vec()).unwrap()
    }

    #[test]
    fn depth_first_sorted_with_hard_links_told() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("b/inner")).unwrap();
        std::fs::write(root.join("b/inner/f"), b"x").unwrap();
        std::fs::hard_link(root.join("b/inner/f"), root.join("a")).unwrap();
        std::fs::hard_link(root.join("b/inner/f"), root.join("c")).unwrap();
        std::os::unix::fs::symlink("b", root.join("d")).unwrap();
        let tree = Origin::open(root).unwrap();
        let mut told = Told::default();
        walk(&tree, &LogPath::root(), &mut told).unwrap();
        assert_eq!(
            told.0,
            [
                "dir /",
                "obj /a",
                "dir /b",
                "dir /b/inner",
                "obj /b/inner/f = /a",
                "end /b/inner",
                "end /b",
                "obj /c = /a",
                "obj /d",
                "end /",
            ]
        );

        // From a directory inside; from a file; through a symlink (not followed); nothing.
        let mut told = Told::default();
        walk(&tree, &path("b/inner"), &mut told).unwrap();
        assert_eq!(told.0, ["dir /b/inner", "obj /b/inner/f", "end /b/inner"]);
        for (under, expected) in [("a", vec!["obj /a"]), ("d/inner", vec![]), ("gone", vec![])] {
            let mut told = Told::default();
            walk(&tree, &path(under), &mut told).unwrap();
            assert_eq!(told.0, expected, "from {under}");
        }
    }

    #[test]
    fn xattrs_come_sorted_with_their_values() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"").unwrap();
        let tree = Origin::open(dir.path()).unwrap();
        let name = Name::new(OsStr::new("f")).unwrap();
        let at = At::Entry(tree.root(), &name);
        for (key, value) in [("user.b", "2"), ("user.a", "1")] {
            tree.set_xattr(at, OsStr::new(key), value.as_bytes(), 0)
                .unwrap();
        }
        assert_eq!(
            xattrs(&tree, at).unwrap(),
            [
                (b"user.a".to_vec(), b"1".to_vec()),
                (b"user.b".to_vec(), b"2".to_vec())
            ]
        );
        let gone = Name::new(OsStr::new("gone")).unwrap();
        assert!(
            xattrs(&tree, At::Entry(tree.root(), &gone))
                .unwrap()
                .is_empty()
        );
    }
}
