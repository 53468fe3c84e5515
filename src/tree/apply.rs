//! Applying a log record to a tree: the origin (write-behind's flusher, crash recovery)
//! or a replica's copy. One code path for all of them, so that what
//! recovery does is what was tested.
//!
//! Every record sets state, and a record whose effect is already there is not an error
//! (a create that finds its file, an unlink that finds nothing), so applying a stretch of
//! the log again after a crash leaves the same tree. Paths are resolved one component at a
//! time without following symlinks, so no record can reach outside the copy.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;

use crate::log::{LogPath, Op, Record};
use crate::origin::{At, DirFd, Origin, TimeSet, TimesUpdate};
use crate::types::{FileKind, Name};

use super::place::{open_regular, place};

/// A record that could not be applied.
#[derive(Debug, thiserror::Error)]
#[error("applying record {offset} ({op} {path}): {source}")]
pub struct ApplyError {
    /// The record's offset.
    pub offset: u64,
    /// Its operation.
    pub op: &'static str,
    /// The path it names.
    pub path: LogPath,
    /// What the copy said.
    pub source: io::Error,
}

/// Applies `record` to `copy`.
pub fn apply(copy: &Origin, record: &Record, as_root: bool) -> Result<(), ApplyError> {
    apply_op(copy, record.offset, &record.op, as_root)
}

/// Applies `op`, which belongs to offset `offset` (a record's, or a snapshot's).
pub fn apply_op(copy: &Origin, offset: u64, op: &Op, as_root: bool) -> Result<(), ApplyError> {
    effect(copy, op, as_root).map_err(|source| ApplyError {
        offset,
        op: op.kind(),
        path: op.path().clone(),
        source,
    })
}

fn effect(copy: &Origin, op: &Op, as_root: bool) -> io::Result<()> {
    match op {
        Op::Create {
            path,
            mode,
            uid,
            gid,
        } => {
            let owner = Owner::new(*mode, *uid, *gid, as_root);
            make_new(copy, path, owner, |at| {
                copy.create_file(at, libc::O_WRONLY | libc::O_EXCL, *mode)
                    .map(drop)
            })
        }
        Op::Mkdir {
            path,
            mode,
            uid,
            gid,
        } => {
            let owner = Owner::new(*mode, *uid, *gid, as_root);
            make_new(copy, path, owner, |at| copy.mkdir(at, *mode))
        }
        Op::Mknod {
            path,
            mode,
            rdev,
            uid,
            gid,
        } => {
            let owner = Owner::new(*mode, *uid, *gid, as_root);
            make_new(copy, path, owner, |at| copy.mknod(at, *mode, *rdev))
        }
        Op::Symlink {
            path,
            target,
            uid,
            gid,
        } => {
            // A symlink's mode means nothing on Linux; only its owner is set.
            let owner = Owner {
                mode: None,
                ..Owner::new(0, *uid, *gid, as_root)
            };
            make_new(copy, path, owner, |at| {
                copy.symlink(at, OsStr::from_bytes(target))
            })
        }
        Op::Link { path, new_path } => {
            let (dir, name) = place(copy, path)?;
            let (new_dir, new_name) = place(copy, new_path)?;
            already(
                copy.link(At::Entry(&dir, &name), At::Entry(&new_dir, &new_name)),
                libc::EEXIST,
            )
        }
        Op::Unlink { path } => {
            let (dir, name) = place(copy, path)?;
            already(copy.unlink(At::Entry(&dir, &name)), libc::ENOENT)
        }
        Op::Rmdir { path } => {
            let (dir, name) = place(copy, path)?;
            already(copy.rmdir(At::Entry(&dir, &name)), libc::ENOENT)
        }
        Op::Rename { from, to, flags } => {
            let (dir, name) = place(copy, from)?;
            let (new_dir, new_name) = place(copy, to)?;
            // A missing source means the rename already happened.
            already(
                copy.rename(
                    At::Entry(&dir, &name),
                    At::Entry(&new_dir, &new_name),
                    *flags,
                ),
                libc::ENOENT,
            )
        }
        Op::Write { path, offset, data } => {
            let Some(file) = open(copy, path, libc::O_WRONLY)? else {
                return Ok(());
            };
            file.write_at(data, *offset)
        }
        Op::Copy {
            from,
            from_offset,
            path,
            offset,
            length,
        } => {
            // In log order the source holds what it held when the record was made (a copy
            // stores its applied offset right after a copy record, so none is applied
            // again after later records changed the source).
            let Some(source) = open(copy, from, libc::O_RDONLY)? else {
                return Ok(());
            };
            let Some(file) = open(copy, path, libc::O_WRONLY)? else {
                return Ok(());
            };
            source
                .copy_to(*from_offset, &file, *offset, *length)
                .map(drop)
        }
        Op::Truncate { path, size } => {
            let (dir, name) = place(copy, path)?;
            already(copy.truncate(At::Entry(&dir, &name), *size), libc::ENOENT)
        }
        Op::Fallocate {
            path,
            mode,
            offset,
            length,
        } => {
            let Some(file) = open(copy, path, libc::O_WRONLY)? else {
                return Ok(());
            };
            file.allocate(*offset, *length, *mode)
        }
        Op::SetAttr {
            path,
            mode,
            uid,
            gid,
            atime,
            mtime,
        } => {
            let target = Target::of(copy, path)?;
            let at = target.at(copy);
            let result = (|| {
                if as_root && (uid.is_some() || gid.is_some()) {
                    copy.chown(at, *uid, *gid)?;
                }
                if let Some(mode) = mode {
                    chmod(copy, at, *mode)?;
                }
                if atime.is_some() || mtime.is_some() {
                    copy.set_times(
                        at,
                        TimesUpdate {
                            atime: atime.map(|time| TimeSet::At(time.into())),
                            mtime: mtime.map(|time| TimeSet::At(time.into())),
                        },
                    )?;
                }
                Ok(())
            })();
            already(result, libc::ENOENT)
        }
        Op::SetXattr { path, name, value } => {
            let target = Target::of(copy, path)?;
            already(
                copy.set_xattr(target.at(copy), OsStr::from_bytes(name), value, 0),
                libc::ENOENT,
            )
        }
        Op::RemoveXattr { path, name } => {
            let target = Target::of(copy, path)?;
            match copy.remove_xattr(target.at(copy), OsStr::from_bytes(name)) {
                Err(error) if matches!(error.raw_os_error(), Some(libc::ENODATA)) => Ok(()),
                other => already(other, libc::ENOENT),
            }
        }
    }
}

/// Sets the mode of `at`. A symlink has no mode to set on Linux (EOPNOTSUPP); logs
/// written before the mount stopped recording one for a symlink's chown still carry it,
/// and it is skipped rather than wedging the copy.
fn chmod(copy: &Origin, at: At<'_>, mode: u32) -> io::Result<()> {
    match copy.chmod(at, mode) {
        Err(error)
            if error.raw_os_error() == Some(libc::EOPNOTSUPP)
                && copy.stat(at)?.kind() == Some(FileKind::Symlink) =>
        {
            Ok(())
        }
        other => other,
    }
}

/// `result`, with the errno that means "already done" turned into success.
fn already(result: io::Result<()>, done: i32) -> io::Result<()> {
    match result {
        Err(error) if error.raw_os_error() == Some(done) => Ok(()),
        other => other,
    }
}

/// The owner and exact mode a new object gets (the copy's umask and setgid rules aside).
struct Owner {
    mode: Option<u32>,
    /// Only a copy written by root can give objects away.
    ids: Option<(u32, u32)>,
}

impl Owner {
    fn new(mode: u32, uid: u32, gid: u32, as_root: bool) -> Owner {
        Owner {
            mode: Some(mode & 0o7777),
            ids: as_root.then_some((uid, gid)),
        }
    }
}

/// Makes a new object at `path` with `make` (already done if something is there), then
/// gives it its owner and, after the chown that clears setuid and setgid, its mode.
fn make_new(
    copy: &Origin,
    path: &LogPath,
    owner: Owner,
    make: impl FnOnce(At<'_>) -> io::Result<()>,
) -> io::Result<()> {
    let (dir, name) = place(copy, path)?;
    let at = At::Entry(&dir, &name);
    already(make(at), libc::EEXIST)?;
    if let Some((uid, gid)) = owner.ids {
        copy.chown(at, Some(uid), Some(gid))?;
    }
    match owner.mode {
        Some(mode) => copy.chmod(at, mode),
        None => Ok(()),
    }
}

/// What a record that may name the volume root (the empty path) changes.
enum Target {
    Root,
    Entry(DirFd, Name),
}

impl Target {
    fn of(copy: &Origin, path: &LogPath) -> io::Result<Target> {
        if path.components().next().is_none() {
            return Ok(Target::Root);
        }
        let (dir, name) = place(copy, path)?;
        Ok(Target::Entry(dir, name))
    }

    fn at<'a>(&'a self, copy: &'a Origin) -> At<'a> {
        match self {
            Target::Root => At::Dir(copy.root()),
            Target::Entry(dir, name) => At::Entry(dir, name),
        }
    }
}

/// `path` opened with `flags`, or `None` when it no longer exists (a later record removed
/// it, so what this record wrote is gone on the primary too).
fn open(
    copy: &Origin,
    path: &LogPath,
    flags: i32,
) -> io::Result<Option<crate::origin::OriginFile>> {
    match open_regular(copy, path, flags) {
        Ok(file) => Ok(Some(file)),
        // ENXIO: the name holds something else now, as a later record made it.
        Err(error) if matches!(error.raw_os_error(), Some(libc::ENOENT | libc::ENXIO)) => Ok(None),
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 13.1: logs written before the mount stopped stating a mode for a symlink's
    /// chown still hold such records; applying one must not wedge the copy.
    #[test]
    fn a_mode_stated_for_a_symlink_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("target", dir.path().join("l")).unwrap();
        let copy = Origin::open(dir.path()).unwrap();
        let op = Op::SetAttr {
            path: LogPath::try_from(b"l".to_vec()).unwrap(),
            mode: Some(0o777),
            uid: None,
            gid: None,
            atime: None,
            mtime: None,
        };
        apply_op(&copy, 7, &op, false).unwrap();
        // A mode for a file that is not a symlink is still set.
        std::fs::write(dir.path().join("f"), b"").unwrap();
        let op = Op::SetAttr {
            path: LogPath::try_from(b"f".to_vec()).unwrap(),
            mode: Some(0o640),
            uid: None,
            gid: None,
            atime: None,
            mtime: None,
        };
        apply_op(&copy, 8, &op, false).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("f"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o640);
    }
}
