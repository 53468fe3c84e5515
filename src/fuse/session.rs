//! Mounting, serving until unmounted, and unmounting on SIGINT/SIGTERM/SIGHUP.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fuser::{Config, MountOption, Session, SessionACL};

use crate::signals::StopSignals;
use crate::vfs::Volume;

use super::MirrorFs;
use super::standby::{Standby, follow};

/// How a volume is presented to the kernel.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// Shown as the mount's source in /proc/mounts (the origin path).
    pub fs_name: String,
    /// Let other users in; the kernel still checks permissions (default_permissions).
    pub allow_other: bool,
    /// Worker threads taking requests from the kernel.
    pub threads: usize,
    /// How long the kernel may cache entries and attributes.
    pub ttl: Duration,
    /// Ask the kernel for FUSE passthrough of read-only opens.
    pub passthrough: bool,
    /// Ask the kernel to cache writes and send them in large requests (its writeback
    /// cache); only where nothing else changes the origin.
    pub writeback: bool,
    /// The mount's own flags (mount(8)'s ro, nosuid, nodev, noexec, atime options).
    pub flags: MountFlags,
    /// Where each request's latency is counted, if metrics are served.
    pub request_times: Option<crate::metrics::RequestTimes>,
}

/// The flags a mount is made with, as mount(8)'s options set them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MountFlags {
    /// `ro`: the kernel refuses every change with EROFS.
    pub read_only: bool,
    /// `nosuid` (the default; `suid` lets set-user-ID programs on the volume work).
    pub nosuid: bool,
    /// `nodev` (the default; `dev` lets device nodes on the volume be opened).
    pub nodev: bool,
    /// `noexec`.
    pub noexec: bool,
    /// How access times are kept.
    pub atime: Atime,
}

/// mount(8)'s access-time options.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Atime {
    /// `relatime`, the kernel's default.
    #[default]
    Relative,
    /// `noatime`.
    Never,
    /// `strictatime`.
    Always,
}

impl Default for MountFlags {
    /// As mirrorfs always mounted: nosuid and nodev, which a volume of someone else's
    /// files needs unless the administrator says otherwise.
    fn default() -> MountFlags {
        MountFlags {
            read_only: false,
            nosuid: true,
            nodev: true,
            noexec: false,
            atime: Atime::Relative,
        }
    }
}

impl MountFlags {
    /// The flags for mount(2).
    fn bits(&self) -> libc::c_ulong {
        let mut bits = 0;
        for (set, bit) in [
            (self.read_only, libc::MS_RDONLY),
            (self.nosuid, libc::MS_NOSUID),
            (self.nodev, libc::MS_NODEV),
            (self.noexec, libc::MS_NOEXEC),
            (self.atime == Atime::Never, libc::MS_NOATIME),
            (self.atime == Atime::Always, libc::MS_STRICTATIME),
        ] {
            if set {
                bits |= bit;
            }
        }
        bits
    }

    /// The same for fusermount3.
    fn options(&self) -> Vec<MountOption> {
        let mut options = vec![if self.read_only {
            MountOption::RO
        } else {
            MountOption::RW
        }];
        options.push(if self.nosuid {
            MountOption::NoSuid
        } else {
            MountOption::Suid
        });
        options.push(if self.nodev {
            MountOption::NoDev
        } else {
            MountOption::Dev
        });
        options.push(if self.noexec {
            MountOption::NoExec
        } else {
            MountOption::Exec
        });
        match self.atime {
            Atime::Relative => {}
            Atime::Never => options.push(MountOption::NoAtime),
            Atime::Always => options.push(MountOption::CUSTOM("strictatime".to_string())),
        }
        options
    }
}

/// Why serving a mount failed.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// Signals could not be routed to the unmount thread.
    #[error("cannot set up signal handling: {0}")]
    Signals(io::Error),
    /// The kernel refused the mount.
    #[error("cannot mount at {path}: {source}")]
    Mount {
        /// The mount point.
        path: String,
        /// Why.
        source: io::Error,
    },
    /// The standby's follower thread could not be started.
    #[error("cannot start the standby's follower: {0}")]
    Follower(io::Error),
    /// The request loop ended with an error.
    #[error("serving the mount failed: {0}")]
    Serve(io::Error),
}

/// The mount type in /proc/mounts, so mirrorfs mounts can be told from others.
pub const FS_TYPE: &str = "fuse.mirrorfs";

/// Mounts `volume` at `mountpoint` and serves it until it is unmounted, either from outside
/// (`mirrorfs unmount`, umount) or by a signal; `mounted` is called once the mount is in
/// place, before the first request is read. Returns once the kernel has let go.
pub fn serve(
    volume: Arc<Volume>,
    mountpoint: &Path,
    options: &MountOptions,
    signals: StopSignals,
    standby: Option<Standby>,
    mounted: &mut dyn FnMut(),
) -> Result<(), MountError> {
    let path = CString::new(mountpoint.as_os_str().as_bytes()).unwrap_or_default();
    let mount_error = |source| MountError::Mount {
        path: mountpoint.display().to_string(),
        source,
    };

    let mut config = Config::default();
    config.acl = if options.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(options.threads.max(1));
    config.clone_fd = true;
    let stopping = Arc::clone(&volume);
    let following = Arc::clone(&volume);
    let mut filesystem = MirrorFs::new(volume, options.ttl, options.passthrough, options.writeback);
    filesystem.request_times = options.request_times.clone();

    // SAFETY: geteuid cannot fail.
    let session = if unsafe { libc::geteuid() } == 0 {
        let device = mount_directly(&path, options).map_err(mount_error)?;
        Session::from_fd(filesystem, device, config.acl, config.clone())
    } else {
        // Unprivileged: fusermount3 mounts for us (and keeps the subtype).
        config.mount_options = vec![
            MountOption::FSName(options.fs_name.clone()),
            MountOption::Subtype("mirrorfs".to_string()),
            MountOption::DefaultPermissions,
        ];
        config.mount_options.extend(options.flags.options());
        Session::new(filesystem, mountpoint, &config)
    }
    .map_err(mount_error)?;
    tracing::info!(mountpoint = %mountpoint.display(), "mounted");

    let waiter_path = path.clone();
    std::thread::Builder::new()
        .name("signals".to_string())
        .spawn(move || unmount_on_signal(signals, waiter_path, &stopping))
        .map_err(MountError::Signals)?;
    let stop_following = Arc::new(AtomicBool::new(false));
    let follower = match standby {
        None => None,
        Some(standby) => {
            let (notifier, stop) = (session.notifier(), Arc::clone(&stop_following));
            let spawned = std::thread::Builder::new()
                .name("standby".to_string())
                .spawn(move || follow(&standby, &notifier, &following, &stop));
            match spawned {
                Ok(thread) => Some(thread),
                Err(error) => {
                    // The mount is up: take it down rather than serve it unfollowed.
                    // SAFETY: NUL-terminated path.
                    unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
                    return Err(MountError::Follower(error));
                }
            }
        }
    };
    mounted();
    let ran = session.run();
    stop_following.store(true, Ordering::Relaxed);
    if let Some(follower) = follower {
        let _ = follower.join();
    }
    match ran {
        Ok(()) => {}
        // The kernel ended the connection as the mount went (the last open file of a
        // lazily unmounted volume closed): the same end as ENODEV, which fuser takes for one.
        Err(error) if error.raw_os_error() == Some(libc::ECONNABORTED) => {}
        Err(error) => {
            // The request loop broke while the kernel still has the mount: detach it, so
            // applications get ENOTCONN promptly rather than hanging on a daemon that is
            // gone.
            // SAFETY: NUL-terminated path.
            unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
            return Err(MountError::Serve(error));
        }
    }
    tracing::info!(mountpoint = %mountpoint.display(), "unmounted");
    Ok(())
}

/// mount(2) of a new FUSE connection with type `fuse.mirrorfs`, the flags asked for, and the
/// kernel's own permission checks (default_permissions). Returns the /dev/fuse descriptor.
fn mount_directly(path: &CString, options: &MountOptions) -> io::Result<OwnedFd> {
    // SAFETY: NUL-terminated path; the result is checked.
    let fd = unsafe { libc::open(c"/dev/fuse".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor was just returned to us and nothing else owns it.
    let device = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut root = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: NUL-terminated path and a buffer of the right type.
    if unsafe { libc::stat(path.as_ptr(), root.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: stat succeeded.
    let root_mode = unsafe { root.assume_init() }.st_mode & libc::S_IFMT;
    let mut data = format!(
        "fd={},rootmode={root_mode:o},user_id=0,group_id=0,default_permissions",
        device.as_raw_fd()
    );
    if options.allow_other {
        data.push_str(",allow_other");
    }
    let source = CString::new(options.fs_name.replace(',', "_")).unwrap_or_default();
    let fs_type = CString::new(FS_TYPE).unwrap_or_default();
    let data = CString::new(data).unwrap_or_default();
    // SAFETY: NUL-terminated strings.
    let result = unsafe {
        libc::mount(
            source.as_ptr(),
            path.as_ptr(),
            fs_type.as_ptr(),
            options.flags.bits(),
            data.as_ptr().cast(),
        )
    };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(device)
}

/// Waits for a stop signal, then unmounts. If files are still open (EBUSY), the mount is
/// detached instead: new opens fail at once, and the session ends when the last open file
/// is closed, so nothing in flight is cut off.
fn unmount_on_signal(signals: StopSignals, path: CString, volume: &Volume) {
    let Some(signal) = signals.wait() else {
        return;
    };
    tracing::info!(signal, "stop signal received: unmounting");
    // An fsync blocked on replicas would hold its file open, and the mount, for as long
    // as none is reachable.
    volume.stopping();
    if let Err(error) = unmount(&path) {
        tracing::error!(%error, "cannot unmount");
    }
    // Later signals are ignored: the unmount is under way.
    while let Some(signal) = signals.wait() {
        tracing::info!(signal, "already unmounting");
    }
}

/// Unmounts `path`: root directly, anyone else through fusermount3; lazily if busy.
fn unmount(path: &CString) -> io::Result<()> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        let status = std::process::Command::new("fusermount3")
            .args(["-u", "-z", "--"])
            .arg(std::ffi::OsStr::from_bytes(path.as_bytes()))
            .status()?;
        return if status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!("fusermount3 failed ({status})")))
        };
    }
    // SAFETY: NUL-terminated path.
    if unsafe { libc::umount2(path.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    let error = io::Error::last_os_error();
    if error.raw_os_error() != Some(libc::EBUSY) {
        return Err(error);
    }
    tracing::warn!("mount busy: detaching it; the daemon exits when the last open file closes");
    // SAFETY: NUL-terminated path.
    if unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
