//! Errors of the origin reach applications as the same errno, and the mount keeps working.

mod common;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;

use common::{KernelMount, Mount, scratch};

#[test]
fn enospc_stays_enospc_and_the_mount_recovers() {
    // Declared first, dropped last: the scratch directory outlives the tmpfs inside it.
    let holder = scratch();
    let small = KernelMount::tmpfs(&holder.path().join("small"), "1m");
    let mount = Mount::over(scratch(), small.path.clone(), &[]);

    let mut file = fs::File::create(mount.path("filler")).unwrap();
    let chunk = vec![7u8; 64 * 1024];
    let mut failure = None;
    for _ in 0..64 {
        if let Err(error) = file.write_all(&chunk) {
            failure = Some(error);
            break;
        }
    }
    let failure = failure.expect("4 MiB fit in a 1 MiB origin");
    assert_eq!(failure.raw_os_error(), Some(libc::ENOSPC), "{failure}");
    drop(file);

    fs::remove_file(mount.path("filler")).unwrap();
    // The kernel sends RELEASE asynchronously after close(2), so the daemon may hold the
    // removed file open (and tmpfs its blocks) for a moment longer; allow it that moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match fs::write(mount.path("after"), b"room again") {
            Ok(()) => break,
            Err(error)
                if error.raw_os_error() == Some(libc::ENOSPC)
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(error) => panic!("the mount did not recover: {error}"),
        }
    }
    assert_eq!(fs::read(mount.origin_path("after")).unwrap(), b"room again");
}

#[test]
fn erofs_stays_erofs_and_reads_still_work() {
    let holder = scratch();
    let data = holder.path().join("data");
    fs::create_dir(&data).unwrap();
    fs::write(data.join("kept"), b"readable").unwrap();
    let frozen = KernelMount::read_only_bind(&data, &holder.path().join("frozen"));
    let mount = Mount::over(scratch(), frozen.path.clone(), &[]);

    let error = fs::write(mount.path("new"), b"x").unwrap_err();
    assert_eq!(error.raw_os_error(), Some(libc::EROFS), "{error}");
    let error = fs::create_dir(mount.path("dir")).unwrap_err();
    assert_eq!(error.raw_os_error(), Some(libc::EROFS), "{error}");
    let error = OpenOptions::new()
        .append(true)
        .open(mount.path("kept"))
        .unwrap_err();
    assert_eq!(error.raw_os_error(), Some(libc::EROFS), "{error}");
    assert_eq!(fs::read(mount.path("kept")).unwrap(), b"readable");
}

/// Sets or clears the immutable attribute (chattr +i) of an origin file.
fn set_immutable(path: &std::path::Path, on: bool) {
    const FS_IMMUTABLE_FL: libc::c_long = 0x10;
    let file = fs::File::open(path).unwrap();
    let mut flags: libc::c_long = 0;
    // SAFETY: valid fd and a pointer to a long, as FS_IOC_GETFLAGS/SETFLAGS take.
    unsafe {
        assert_eq!(
            libc::ioctl(file.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags),
            0
        );
        flags = if on {
            flags | FS_IMMUTABLE_FL
        } else {
            flags & !FS_IMMUTABLE_FL
        };
        assert_eq!(
            libc::ioctl(file.as_raw_fd(), libc::FS_IOC_SETFLAGS, &flags),
            0
        );
    }
}

/// Clears the immutable flag even if the test fails, so the scratch directory can go.
struct Immutable(std::path::PathBuf);

impl Drop for Immutable {
    fn drop(&mut self) {
        set_immutable(&self.0, false);
    }
}

#[test]
fn eperm_from_an_immutable_origin_file_stays_eperm() {
    let mount = Mount::new();
    fs::write(mount.origin_path("locked"), b"fixed").unwrap();
    set_immutable(&mount.origin_path("locked"), true);
    let _unlock = Immutable(mount.origin_path("locked"));

    let error = OpenOptions::new()
        .write(true)
        .open(mount.path("locked"))
        .unwrap_err();
    assert_eq!(error.raw_os_error(), Some(libc::EPERM), "{error}");
    let error = fs::remove_file(mount.path("locked")).unwrap_err();
    assert_eq!(error.raw_os_error(), Some(libc::EPERM), "{error}");
    assert_eq!(fs::read(mount.path("locked")).unwrap(), b"fixed");
    fs::write(mount.path("other"), b"fine").unwrap();
}
