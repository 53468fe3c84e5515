//! The kernel's writeback cache (`[write] kernel_writeback`): small application writes reach
//! the daemon gathered into large requests, and by the time fsync returns, the log holds
//! every byte, such that replaying it rebuilds the file; without it, each write(2) is a
//! record of its own. Setuid still falls when an unprivileged user writes or truncates.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;

use common::{Mount, replay, run, sh_as};
use mirrorfs::log::Op;

/// The write records in the volume's log, as (path, offset, length).
fn writes(mount: &Mount) -> Vec<(String, u64, usize)> {
    let snapshot = mirrorfs::log::inspect(&mirrorfs::write::log_dir(&mount.state)).unwrap();
    snapshot
        .records(0)
        .unwrap()
        .filter_map(|record| match record.unwrap().op {
            Op::Write { path, offset, data } => Some((path.to_string(), offset, data.len())),
            _ => None,
        })
        .collect()
}

/// 1 MiB written 4 KiB at a time, each block a different byte, then fsync.
fn write_small_blocks(mount: &Mount, name: &str) -> Vec<u8> {
    let content: Vec<u8> = (0..256u32)
        .flat_map(|block| vec![(block * 7 % 251) as u8; 4096])
        .collect();
    let mut file = fs::File::create(mount.path(name)).unwrap();
    for block in content.chunks(4096) {
        file.write_all(block).unwrap();
    }
    file.sync_all().unwrap();
    content
}

const WRITEBACK: &str = "[cache]\nrevalidate_after = \"1d\"\n";

#[test]
fn small_writes_reach_the_log_gathered_and_whole_before_fsync_returns() {
    let mut mount = Mount::with_config(WRITEBACK);
    let content = write_small_blocks(&mount, "gathered");
    // Read before the daemon dies: what fsync acknowledged is in the log.
    let records = writes(&mount);
    mount.kill();
    let sizes: Vec<usize> = records.iter().map(|(_, _, len)| *len).collect();
    assert_eq!(sizes.iter().sum::<usize>(), content.len(), "{records:?}");
    // The kernel's pages went out together: far fewer records than write(2) calls.
    assert!(
        records.len() <= 16,
        "{} records for 256 writes",
        records.len()
    );
    assert!(*sizes.iter().max().unwrap() >= 64 * 1024, "{sizes:?}");
    // Replaying the log alone rebuilds the file.
    let copy = mount.dir.path().join("copy");
    fs::create_dir(&copy).unwrap();
    replay(&mount.state, &copy, 1);
    assert!(fs::read(copy.join("gathered")).unwrap() == content);
    assert!(fs::read(mount.origin_path("gathered")).unwrap() == content);
}

#[test]
fn without_it_each_write_is_a_record() {
    let mount = Mount::with_config(&format!("{WRITEBACK}[write]\nkernel_writeback = false\n"));
    write_small_blocks(&mount, "one-by-one");
    let records = writes(&mount);
    assert_eq!(records.len(), 256);
    assert!(records.iter().all(|(_, _, len)| *len == 4096));
}

#[test]
fn it_is_refused_where_others_write_the_origin() {
    let dir = common::scratch();
    let config = dir.path().join("mount.toml");
    fs::write(
        &config,
        "[cache]\nrevalidate_after = \"1s\"\n[write]\nkernel_writeback = true\n",
    )
    .unwrap();
    let origin = dir.path().join("origin");
    let mountpoint = dir.path().join("mnt");
    fs::create_dir(&origin).unwrap();
    fs::create_dir(&mountpoint).unwrap();
    let out = run(&[
        "mount",
        origin.to_str().unwrap(),
        mountpoint.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("write.kernel_writeback") && stderr.contains("revalidate_after"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

/// The daemon drops setuid and setgid itself (FUSE_HANDLE_KILLPRIV_V2), in the origin and
/// in the log, for a write or a truncation by a user without CAP_FSETID; root keeps them.
#[test]
fn an_unprivileged_write_or_truncation_drops_setuid_and_setgid() {
    for config in [WRITEBACK, "[write]\nmode = \"write-through\"\n"] {
        let mount = Mount::with_config(&format!("[volume]\nallow_other = true\n{config}"));
        fs::set_permissions(&mount.mountpoint, fs::Permissions::from_mode(0o777)).unwrap();
        for (name, uid_writes) in [("written", true), ("truncated", false), ("rooted", true)] {
            fs::write(mount.path(name), b"0123456789").unwrap();
            std::os::unix::fs::chown(mount.path(name), Some(65534), Some(65534)).unwrap();
            fs::set_permissions(mount.path(name), fs::Permissions::from_mode(0o6777)).unwrap();
            if name == "rooted" {
                let mut file = fs::OpenOptions::new()
                    .append(true)
                    .open(mount.path(name))
                    .unwrap();
                file.write_all(b"root").unwrap();
                continue;
            }
            let script = match uid_writes {
                true => format!("printf more >> {name}"),
                false => format!("truncate -s 3 {name}"),
            };
            let out = sh_as(65534, 65534, &mount.mountpoint, &script);
            assert!(out.status.success(), "{config}: {out:?}");
        }
        let mode = |name: &str, at: &std::path::Path| {
            fs::metadata(at.join(name)).unwrap().permissions().mode() & 0o7777
        };
        for name in ["written", "truncated"] {
            assert_eq!(mode(name, &mount.mountpoint), 0o777, "{config}: {name}");
            assert_eq!(mode(name, &mount.origin), 0o777, "{config}: {name}");
        }
        assert_eq!(mode("rooted", &mount.mountpoint), 0o6777, "{config}");
        // The copies drop them too: replaying the log gives the same modes.
        let copy = mount.dir.path().join("copy");
        fs::create_dir(&copy).unwrap();
        replay(&mount.state, &copy, 1);
        for (name, want) in [("written", 0o777), ("truncated", 0o777), ("rooted", 0o6777)] {
            assert_eq!(
                mode(name, &copy),
                want,
                "{config}: {name} in the replayed copy"
            );
        }
    }
}

/// The kernel writes back the times it kept of a file it drops after its last name is
/// gone; that write must not fail (it would be kept as the mount's writeback error, and
/// returned by the next syncfs of anything on it).
#[test]
fn a_removed_file_s_kept_times_do_not_fail_a_later_syncfs() {
    use std::os::fd::AsRawFd;
    let mount = Mount::with_config(WRITEBACK);
    fs::write(mount.path("source"), vec![3u8; 1 << 20]).unwrap();
    for n in 0..10 {
        let copy = mount.path(&format!("copy{n}"));
        let out = std::process::Command::new("cp")
            .arg(mount.path("source"))
            .arg(&copy)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let mut file = fs::OpenOptions::new().append(true).open(&copy).unwrap();
        file.write_all(b"more").unwrap();
        drop(file);
        fs::remove_file(&copy).unwrap();
    }
    let file = fs::File::open(mount.path("source")).unwrap();
    // SAFETY: a valid fd.
    let synced = unsafe { libc::syncfs(file.as_raw_fd()) };
    assert_eq!(synced, 0, "{}", std::io::Error::last_os_error());
    assert!(!mount.log().contains("WARN"), "{}", mount.log());
}
