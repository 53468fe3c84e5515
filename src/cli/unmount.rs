//! `mirrorfs unmount MOUNTPOINT`.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{CliError, UnmountArgs, mountinfo};
use crate::fuse::FS_TYPE;

/// Unmounts a mirrorfs mount (also one whose daemon has died).
pub fn run(args: UnmountArgs) -> Result<(), CliError> {
    let path = mount_point_path(&args.mountpoint)?;
    let mounts = mountinfo::read()
        .map_err(|error| CliError::Failure(format!("cannot read the mount table: {error}")))?;
    let Some(mount) = mounts.iter().rev().find(|mount| mount.mount_point == path) else {
        return Err(CliError::Usage(format!(
            "{} is not a mount point",
            path.display()
        )));
    };
    if mount.fs_type != FS_TYPE {
        return Err(CliError::Usage(format!(
            "{} is a {} mount, not a mirrorfs one; use umount(8)",
            path.display(),
            mount.fs_type
        )));
    }
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        let path_c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| CliError::Usage("the path contains a NUL byte".to_string()))?;
        let flags = if args.lazy { libc::MNT_DETACH } else { 0 };
        // SAFETY: NUL-terminated path.
        if unsafe { libc::umount2(path_c.as_ptr(), flags) } != 0 {
            return Err(unmount_error(&path, std::io::Error::last_os_error()));
        }
        return Ok(());
    }
    let mut command = Command::new("fusermount3");
    command.arg("-u");
    if args.lazy {
        command.arg("-z");
    }
    let status = command.arg("--").arg(&path).status().map_err(|error| {
        CliError::Failure(format!(
            "cannot run fusermount3 to unmount {}: {error}",
            path.display()
        ))
    })?;
    if !status.success() {
        return Err(CliError::Failure(format!(
            "fusermount3 could not unmount {} ({status})",
            path.display()
        )));
    }
    Ok(())
}

fn unmount_error(path: &Path, error: std::io::Error) -> CliError {
    if error.kind() == std::io::ErrorKind::ResourceBusy {
        CliError::Failure(format!(
            "{} is busy: files are open there; close them, or unmount with --lazy",
            path.display()
        ))
    } else {
        CliError::Failure(format!("cannot unmount {}: {error}", path.display()))
    }
}

/// The absolute path the mount table uses for `given`, resolving symlinks in its parent
/// only: the mount point itself may be a dead FUSE mount that cannot be stat'ed.
pub fn mount_point_path(given: &Path) -> Result<PathBuf, CliError> {
    let cwd = std::env::current_dir().map_err(|error| {
        CliError::Failure(format!("cannot read the current directory: {error}"))
    })?;
    let absolute = crate::config::normalize(&cwd.join(given));
    let (Some(parent), Some(name)) = (absolute.parent(), absolute.file_name()) else {
        return Ok(absolute);
    };
    let parent = parent
        .canonicalize()
        .map_err(|error| CliError::Usage(format!("{}: {error}", parent.display())))?;
    Ok(parent.join(name))
}
