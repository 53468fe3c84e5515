//! Server-side copies: copy_file_range(2) through the mount (as coreutils `cp` makes it)
//! copies inside the origin, and the log records a copy, not the bytes; replicas copy
//! locally, write-behind's recovery keeps the copy as made, and a copy from a file no
//! name leads to falls back to the kernel's reads and writes.

mod common;

use std::fs;
use std::io::Write;
use std::os::fd::AsRawFd;

use common::replica::{assert_copy_equal, replicated_mount, vol_node, wait_replicated};
use common::{Mount, replay};
use mirrorfs::log::Op;

fn records(mount: &Mount) -> Vec<Op> {
    let snapshot = mirrorfs::log::inspect(&mirrorfs::write::log_dir(&mount.state)).unwrap();
    snapshot
        .records(0)
        .unwrap()
        .map(|record| record.unwrap().op)
        .collect()
}

fn content(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

/// copy_file_range(2) of `length` bytes, as many calls as it takes.
fn copy_range(from: &fs::File, from_offset: i64, to: &fs::File, offset: i64, length: usize) {
    let (mut from_at, mut to_at, mut left) = (from_offset, offset, length);
    while left > 0 {
        // SAFETY: valid fds and offsets the kernel moves.
        let n = unsafe {
            libc::copy_file_range(
                from.as_raw_fd(),
                &mut from_at,
                to.as_raw_fd(),
                &mut to_at,
                left,
                0,
            )
        };
        assert!(
            n > 0,
            "copy_file_range: {}",
            std::io::Error::last_os_error()
        );
        left -= n as usize;
    }
}

const POLICIES: [&str; 2] = [
    "[write]\nmode = \"write-through\"\n",
    "[write]\nmode = \"write-behind\"\nflush_interval = \"1h\"\n",
];

#[test]
fn cp_inside_the_mount_records_a_copy_not_the_bytes() {
    for policy in POLICIES {
        // The kernel's writeback cache too: the source's pages must reach the origin first.
        let mount = Mount::with_config(&format!("[cache]\nrevalidate_after = \"1d\"\n{policy}"));
        let data = content(5 << 20, 1);
        fs::write(mount.path("source"), &data).unwrap();
        let out = std::process::Command::new("cp")
            .arg(mount.path("source"))
            .arg(mount.path("copied"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        // Part of one file into the middle of another, at unaligned offsets.
        fs::write(mount.path("middle"), content(1 << 20, 2)).unwrap();
        let from = fs::File::open(mount.path("source")).unwrap();
        let to = fs::OpenOptions::new()
            .write(true)
            .open(mount.path("middle"))
            .unwrap();
        copy_range(&from, 1001, &to, 777, 300_000);
        to.sync_all().unwrap();
        let mut middle = content(1 << 20, 2);
        middle[777..777 + 300_000].copy_from_slice(&data[1001..1001 + 300_000]);

        assert!(fs::read(mount.path("copied")).unwrap() == data, "{policy}");
        assert!(
            fs::read(mount.path("middle")).unwrap() == middle,
            "{policy}"
        );
        let ops = records(&mount);
        let copied: u64 = ops
            .iter()
            .filter_map(|op| match op {
                Op::Copy { from, path, .. } if from.to_string() == "/source" => {
                    Some(op.length()).filter(|_| path.to_string() == "/copied")
                }
                _ => None,
            })
            .sum();
        assert_eq!(copied, data.len() as u64, "{policy}: {ops:?}");
        // No byte of the copy crossed into the daemon or the log.
        assert!(
            !ops.iter()
                .any(|op| matches!(op, Op::Write { path, .. } if path.to_string() == "/copied")),
            "{policy}"
        );
        // A copy of the volume rebuilt from the log alone has both.
        let copy = mount.dir.path().join("copy");
        fs::create_dir(&copy).unwrap();
        replay(&mount.state, &copy, 2);
        assert!(fs::read(copy.join("copied")).unwrap() == data, "{policy}");
        assert!(fs::read(copy.join("middle")).unwrap() == middle, "{policy}");
    }
}

/// Write-behind: the source's unflushed bytes are copied, and after a crash, recovery
/// neither replays the copy (the source has changed since) nor older writes over it.
#[test]
fn write_behind_copies_unflushed_bytes_and_recovery_keeps_the_copy() {
    let mut mount = Mount::with_config(POLICIES[1]);
    let first = content(3 << 20, 3);
    let second = content(3 << 20, 4);
    let mut source = fs::File::create(mount.path("source")).unwrap();
    source.write_all(&first).unwrap();
    let target = fs::File::create(mount.path("target")).unwrap();
    target.set_len(0).unwrap();
    fs::write(mount.path("target"), content(1 << 20, 5)).unwrap();
    let from = fs::File::open(mount.path("source")).unwrap();
    let to = fs::OpenOptions::new()
        .write(true)
        .open(mount.path("target"))
        .unwrap();
    copy_range(&from, 0, &to, 0, first.len());
    // The source changes after the copy, and the daemon dies before flushing it.
    use std::os::unix::fs::FileExt;
    source.write_all_at(&second, 0).unwrap();
    source.sync_all().unwrap();
    drop((source, from, to, target));
    mount.crash();
    mount.restart();
    assert!(fs::read(mount.path("target")).unwrap() == first);
    assert!(fs::read(mount.path("source")).unwrap() == second);
    assert!(fs::read(mount.origin_path("target")).unwrap() == first);
}

#[test]
fn a_replica_copies_locally_and_ends_equal() {
    let scratch = common::scratch();
    let (key, node) = vol_node(scratch.path());
    let mount = replicated_mount("vol", &key, &[&node], "acks = \"all\"\n");
    let data = content(8 << 20, 6);
    fs::write(mount.path("source"), &data).unwrap();
    for n in 0..3 {
        let out = std::process::Command::new("cp")
            .arg(mount.path("source"))
            .arg(mount.path(&format!("copy{n}")))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        // The source changes between copies: each copy must have what it had then.
        let mut file = fs::OpenOptions::new()
            .write(true)
            .open(mount.path("source"))
            .unwrap();
        file.write_all(&[n as u8 + 100; 4096]).unwrap();
    }
    wait_replicated(&mount);
    assert_copy_equal(&node, &mount);
}

#[test]
fn a_copy_from_an_unlinked_file_falls_back_to_reads_and_writes() {
    let mount = Mount::new();
    let data = content(1 << 20, 7);
    fs::write(mount.path("doomed"), &data).unwrap();
    let from = fs::File::open(mount.path("doomed")).unwrap();
    fs::remove_file(mount.path("doomed")).unwrap();
    let to = fs::File::create(mount.path("saved")).unwrap();
    copy_range(&from, 0, &to, 0, data.len());
    to.sync_all().unwrap();
    assert!(fs::read(mount.path("saved")).unwrap() == data);
    let copy = mount.dir.path().join("copy");
    fs::create_dir(&copy).unwrap();
    replay(&mount.state, &copy, 1);
    assert!(fs::read(copy.join("saved")).unwrap() == data);
}
