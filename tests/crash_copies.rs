//! Crash tests over the whole space of changes, with a replica attached: a random workload
//! of every kind of change (writes, truncates, renames of files and of directories over
//! directories, unlinks, mkdir and rmdir, symlinks and their chown, hard links, chmod and
//! chown, xattrs, ACLs, FIFOs, device nodes, sockets, times, fsync) is cut by kill -9 at a
//! random moment; the daemon is started again (write-behind replays its log), checks the
//! replica against the origin after the unclean stop, and then the replica's copy must
//! equal the origin exactly (an independent tree comparison) and `mirrorfs verify
//! --content` must agree. In both write policies, for many seeds.
//!
//! `MIRRORFS_CRASH_SEEDS=N` runs N seeds per policy (default 12).

mod common;

use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::replica::{replicated_mount, vol_node, wait_replicated};
use common::workload::Rng;
use common::{c_path, tree};

const DIRS: [&str; 3] = ["", "d0", "d0/d1"];
const NAMES: [&str; 5] = ["a", "b", "c", "d0", "d1"];

fn seeds() -> u64 {
    std::env::var("MIRRORFS_CRASH_SEEDS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(12)
}

/// A random path of the small namespace the workload plays in.
fn pick(rng: &mut Rng, root: &Path) -> PathBuf {
    let dir = DIRS[rng.below(DIRS.len() as u64) as usize];
    let name = NAMES[rng.below(NAMES.len() as u64) as usize];
    root.join(dir).join(name)
}

/// An access ACL (the kernel's xattr format): owner, one named user, group, mask, other.
fn acl(user: u32, perm: u16) -> Vec<u8> {
    let mut value = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (0x01u16, 7u16, u32::MAX),
        (0x02, perm, user),
        (0x04, 5, u32::MAX),
        (0x10, 7, u32::MAX),
        (0x20, perm & 4, u32::MAX),
    ] {
        value.extend_from_slice(&tag.to_le_bytes());
        value.extend_from_slice(&perm.to_le_bytes());
        value.extend_from_slice(&id.to_le_bytes());
    }
    value
}

fn lsetxattr(path: &Path, name: &str, value: &[u8]) -> std::io::Result<()> {
    let (path, name) = (c_path(path), CString::new(name).unwrap());
    // SAFETY: NUL-terminated strings and a buffer of the stated length.
    let result = unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn mknod(path: &Path, mode: u32, device: u64) -> std::io::Result<()> {
    let path = c_path(path);
    // SAFETY: a NUL-terminated path.
    if unsafe { libc::mknod(path.as_ptr(), mode, device) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// One random change. Most fail now and then (no such file, not empty, ...): that is
/// part of the workload, not a failure of it.
fn change(rng: &mut Rng, root: &Path) -> std::io::Result<()> {
    let path = pick(rng, root);
    let other = pick(rng, root);
    match rng.below(24) {
        0..=3 => {
            let file = open(&path, fs::OpenOptions::new().create(true).write(true))?;
            let data = vec![1 + rng.below(250) as u8; 1 + rng.below(96 << 10) as usize];
            std::os::unix::fs::FileExt::write_all_at(&file, &data, rng.below(128 << 10))?;
            if rng.below(3) == 0 {
                file.sync_all()?;
            }
            Ok(())
        }
        4 => open(&path, fs::OpenOptions::new().append(true))?.write_all(b"appended"),
        5 => open(&path, fs::OpenOptions::new().write(true))?.set_len(rng.below(200 << 10)),
        6 | 7 => fs::rename(&path, &other),
        8 => fs::remove_file(&path),
        9 => fs::create_dir(&path),
        10 => fs::remove_dir(&path),
        11 => symlink(format!("target-{}", rng.below(9)), &path),
        12 => std::os::unix::fs::lchown(&path, Some(65534), Some(65534)),
        13 => fs::hard_link(&path, &other),
        14 => fs::set_permissions(
            &path,
            fs::Permissions::from_mode(0o600 + rng.below(0o177) as u32),
        ),
        15 => std::os::unix::fs::chown(&path, Some(rng.below(3) as u32 * 1000), None),
        16 => lsetxattr(&path, "user.tag", format!("v{}", rng.below(99)).as_bytes()),
        17 => lsetxattr(
            &path,
            "system.posix_acl_access",
            &acl(65534, 5 + rng.below(2) as u16),
        ),
        18 => mknod(&path, libc::S_IFIFO | 0o640, 0),
        19 => mknod(&path, libc::S_IFCHR | 0o600, libc::makedev(1, 3)),
        20 => std::os::unix::net::UnixListener::bind(&path).map(drop),
        21 => {
            // A directory moved over an empty one.
            let _ = fs::create_dir(&other);
            fs::rename(&path, &other)
        }
        22 => open(&path, fs::OpenOptions::new().write(true))?.set_modified(
            std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000 + rng.below(1 << 20)),
        ),
        _ => open(&path, fs::OpenOptions::new().read(true))?.sync_all(),
    }
}

/// Opens `path` as `options` say, never blocking on a FIFO the workload made there.
fn open(path: &Path, options: &mut fs::OpenOptions) -> std::io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    options.custom_flags(libc::O_NONBLOCK).open(path)
}

/// Whether `error` says the mount is gone (the daemon was killed), as opposed to an error
/// the change itself earned.
fn mount_gone(error: &std::io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::ENOTCONN | libc::ECONNABORTED)
    )
}

fn crash_once(policy: &str, seed: u64) {
    let scratch = common::scratch();
    let (key, node) = vol_node(scratch.path());
    let mut mount = replicated_mount("vol", &key, &[&node], &format!("acks = \"all\"\n{policy}"));
    let root = mount.mountpoint.clone();
    let worker = std::thread::spawn(move || {
        let mut rng = Rng::new(seed);
        let mut done = 0u64;
        loop {
            match change(&mut rng, &root) {
                Err(error) if mount_gone(&error) => return done,
                _ => done += 1,
            }
        }
    });
    let delay = 100 + Rng::new(seed ^ 0xdead).below(900);
    std::thread::sleep(Duration::from_millis(delay));
    mount.kill();
    let done = worker.join().unwrap();
    mount.crash();
    assert!(
        done > 10,
        "seed {seed}: only {done} changes before the kill"
    );

    mount.restart();
    // The check after the unclean stop, then the copy caught up.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let log = mount.log();
        if log.contains("after the unclean stop: nothing was lost")
            || log.contains("repaired after the unclean stop")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "seed {seed}: no check after the crash\n{}",
            mount.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_replicated(&mount);
    let output = common::run(&[
        "verify",
        "--config",
        mount.full_config().to_str().unwrap(),
        "--content",
    ]);
    let report = String::from_utf8_lossy(&output.stdout).into_owned();
    // The origin holds every byte once the mount stops (write-behind flushes).
    assert_eq!(
        mount.stop_with(libc::SIGTERM),
        Some(0),
        "seed {seed}: {}",
        mount.log()
    );
    let (origin, copy) = (tree(&mount.origin), tree(&node.dir.join("vol/data")));
    let differing: Vec<_> = origin
        .iter()
        .filter(|(path, text)| copy.get(*path) != Some(*text))
        .map(|(path, text)| format!("{path}: origin {text} / copy {:?}", copy.get(path)))
        .chain(
            copy.keys()
                .filter(|path| !origin.contains_key(*path))
                .map(|path| format!("{path}: only in the copy")),
        )
        .collect();
    assert!(
        differing.is_empty(),
        "seed {seed} ({policy:?}), {done} changes: the copy differs:\n{}\n{}",
        differing.join("\n"),
        mount.log()
    );
    let repaired = mount.log().contains("repaired after the unclean stop");
    eprintln!(
        "seed {seed}: {done} changes before the kill, {} paths compared{}",
        origin.len(),
        if repaired {
            ", the check after the crash repaired the copy"
        } else {
            ""
        }
    );
    assert_eq!(
        output.status.code(),
        Some(0),
        "seed {seed}: verify disagrees:\n{report}"
    );
}

#[test]
fn write_through_copies_equal_the_origin_after_kill_9() {
    for seed in 0..seeds() {
        crash_once("", 1000 + seed);
    }
}

#[test]
fn write_behind_copies_equal_the_origin_after_kill_9() {
    for seed in 0..seeds() {
        crash_once(
            "[write]\nmode = \"write-behind\"\nflush_interval = \"100ms\"\n",
            2000 + seed,
        );
    }
}
