//! The change log of a real mount: every change made through it is recorded, in order,
//! such that applying the log to an empty directory rebuilds the origin; `mirrorfs log`
//! shows it; fsync makes it durable.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileExt, PermissionsExt};

use common::{Mount, c_path, rename2, replay, run, tree, xattr_remove, xattr_set};

/// Every kind of change, through the mount.
fn change_everything(mount: &Mount) {
    let p = |name: &str| mount.path(name);
    fs::create_dir(p("docs")).unwrap();
    fs::create_dir_all(p("docs/deep/er")).unwrap();
    fs::write(p("docs/a.txt"), b"first version").unwrap();
    let mut file = fs::OpenOptions::new()
        .append(true)
        .open(p("docs/a.txt"))
        .unwrap();
    file.write_all(b", appended").unwrap();
    drop(file);
    let sparse = fs::File::create(p("sparse.bin")).unwrap();
    sparse.write_all_at(b"far out", 5 << 20).unwrap();
    sparse.set_len(6 << 20).unwrap();
    drop(sparse);
    fs::write(p("docs/b.txt"), vec![7u8; 300_000]).unwrap();
    fs::write(p("docs/trunc.txt"), b"0123456789").unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(p("docs/trunc.txt"))
        .unwrap()
        .set_len(4)
        .unwrap();
    fs::write(p("cut.txt"), b"to be cut short").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let status = std::process::Command::new("truncate")
        .args(["-s", "6"])
        .arg(p("cut.txt"))
        .status()
        .unwrap();
    assert!(status.success());
    fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(p("docs/b.txt"))
        .unwrap()
        .write_all(b"rewritten")
        .unwrap();
    fs::hard_link(p("docs/a.txt"), p("docs/deep/a-link.txt")).unwrap();
    std::os::unix::fs::symlink("../docs/a.txt", p("docs/deep/er/sym")).unwrap();
    let fifo = c_path(&p("fifo"));
    // SAFETY: valid path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o640) }, 0);
    fs::set_permissions(p("docs/trunc.txt"), fs::Permissions::from_mode(0o604)).unwrap();
    std::os::unix::fs::lchown(p("docs/b.txt"), Some(65534), Some(65534)).unwrap();
    xattr_set(&p("docs/a.txt"), "user.colour", b"blue", 0).unwrap();
    xattr_set(&p("docs/a.txt"), "user.gone", b"soon", 0).unwrap();
    xattr_remove(&p("docs/a.txt"), "user.gone").unwrap();
    fs::File::options()
        .write(true)
        .open(p("docs/trunc.txt"))
        .unwrap()
        .set_times(
            fs::FileTimes::new()
                .set_modified(std::time::UNIX_EPOCH + std::time::Duration::new(1_000_000, 123)),
        )
        .unwrap();
    fs::rename(p("docs/deep"), p("moved-deep")).unwrap();
    fs::write(p("x.txt"), b"x").unwrap();
    fs::write(p("y.txt"), b"yy").unwrap();
    rename2(&p("x.txt"), &p("y.txt"), libc::RENAME_EXCHANGE).unwrap();
    rename2(&p("y.txt"), &p("z.txt"), libc::RENAME_NOREPLACE).unwrap();
    fs::write(p("doomed.txt"), b"bye").unwrap();
    fs::remove_file(p("doomed.txt")).unwrap();
    fs::create_dir(p("empty")).unwrap();
    fs::remove_dir(p("empty")).unwrap();
    let allocated = fs::File::create(p("allocated.bin")).unwrap();
    // SAFETY: a valid open fd.
    let result =
        unsafe { libc::fallocate(std::os::fd::AsRawFd::as_raw_fd(&allocated), 0, 0, 65536) };
    assert_eq!(result, 0, "fallocate: {}", std::io::Error::last_os_error());
}

#[test]
fn replaying_the_log_into_an_empty_directory_rebuilds_the_origin() {
    let mut mount = Mount::new();
    change_everything(&mount);
    assert_eq!(mount.stop_with(libc::SIGTERM), Some(0), "{}", mount.log());

    let copy = mount.dir.path().join("copy");
    fs::create_dir(&copy).unwrap();
    // Each record applied twice in a row, as a crash between applying a record and
    // noting it would make a replica or recovery do: the second time changes nothing.
    let applied = replay(&mount.state, &copy, 2);
    assert!(applied > 30, "only {applied} records");
    let (origin, rebuilt) = (tree(&mount.origin), tree(&copy));
    for (path, expected) in &origin {
        assert_eq!(rebuilt.get(path), Some(expected), "{path}");
    }
    assert_eq!(origin.len(), rebuilt.len(), "{rebuilt:#?}");
}

/// `mirrorfs mount` of `mount`'s origin and state again (it is stopped), expected to exit.
fn mount_again(mount: &Mount) -> std::process::Output {
    common::run_expecting_exit(
        &[
            "mount".as_ref(),
            mount.origin.as_os_str(),
            mount.mountpoint.as_os_str(),
            "--state-dir".as_ref(),
            mount.state.as_os_str(),
        ],
        None,
    )
}

#[test]
fn log_and_status_commands_show_the_volume() {
    let mut mount = Mount::new();
    fs::write(mount.path("one.txt"), b"12345").unwrap();
    // The kernel sends a close's RELEASE in the background: wait for its record (the
    // file's mtime, the fourth) so the rename's come after it, as this test expects.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while mount.status().log.stats.next_offset < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "the close was never recorded"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    fs::rename(mount.path("one.txt"), mount.path("two.txt")).unwrap();
    let state = mount.state.to_str().unwrap().to_string();

    // While mounted: the log is read without taking the volume's lock.
    let output = run(&["log", "--state-dir", &state, "--json"]);
    assert!(output.status.success(), "{output:?}");
    let lines: Vec<serde_json::Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let ops: Vec<&str> = lines.iter().map(|v| v["op"].as_str().unwrap()).collect();
    // Each change of names is followed by its directory's new mtime, for the copies.
    assert_eq!(
        ops,
        ["create", "setattr", "write", "setattr", "rename", "setattr"]
    );
    assert_eq!(lines[1]["path"], "/");
    assert_eq!(lines[2]["path"], "/one.txt");
    assert_eq!(lines[2]["length"], 5);
    assert_eq!(lines[4]["new_path"], "/two.txt");
    let offsets: Vec<u64> = lines
        .iter()
        .map(|v| v["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, [0, 1, 2, 3, 4, 5]);
    // Each record says when it was taken (to the second, in UTC), today.
    let today = String::from_utf8(
        std::process::Command::new("date")
            .args(["-u", "+%Y-%m-%d"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    for line in &lines {
        let time = line["time"].as_str().unwrap_or_default();
        assert!(
            time.starts_with(today.trim()) && time.ends_with('Z'),
            "{line}"
        );
    }

    let output = run(&["log", "--state-dir", &state, "--from", "4"]);
    let text = String::from_utf8(output.stdout).unwrap();
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(
        text.contains("rename") && text.contains("/one.txt -> /two.txt"),
        "{text}"
    );

    let output = run(&["log", "--state-dir", &state, "--stats", "--json"]);
    let stats: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(stats["first_offset"], 0);
    assert_eq!(stats["next_offset"], 6);
    assert_eq!(stats["segments"], 1);
    assert!(stats["bytes"].as_u64().unwrap() > 16);
    assert_eq!(
        stats["epochs"],
        serde_json::json!([{"epoch": 1, "start": 0}]),
        "a new volume's log begins in epoch 1"
    );
    let output = run(&["log", "--state-dir", &state, "--stats"]);
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("epochs        1 from 0"), "{text}");

    // Bad input: one line and exit 2.
    for args in [
        vec!["log"],
        vec!["log", "--state-dir", &state, "--from", "x"],
        vec!["log", "--state-dir", &state, "--from", "99"],
        vec!["log", "--state-dir", "/nonexistent/state"],
        vec!["log", "--state-dir", &state, "--stats", "--from", "1"],
    ] {
        let output = run(&args);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {output:?}");
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
    }
    let output = run(&["status", "--state-dir", &state]);
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(
        text.contains("write-through")
            && text.contains("first offset 0, next offset 6 (6 record(s) kept)"),
        "{text}"
    );
    mount.stop_with(libc::SIGTERM);

    // Not mounted: one line, exit 1.
    let output = run(&["status", "--state-dir", &state]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("not mounted") && stderr.lines().count() == 1,
        "{stderr}"
    );

    // A damaged epoch history: one line naming the file, exit 1.
    let epochs = mount.state.join("log/epochs");
    fs::write(&epochs, "mirrorfs-epochs 1\n1 0\n2 1").unwrap();
    let output = run(&["log", "--state-dir", &state, "--stats"]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains(&epochs.display().to_string()) && stderr.lines().count() == 1,
        "{stderr}"
    );
    // And the volume is not served on it: the mount is refused, naming the file.
    let output = mount_again(&mount);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8(output.stderr).unwrap();
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.contains(&epochs.display().to_string()), "{stderr}");
    assert!(common::mount_type(&mount.mountpoint).is_none());
}

#[test]
fn fsync_makes_the_change_durable_in_the_log_before_the_daemon_dies() {
    let mut mount = Mount::new();
    let mut file = fs::File::create(mount.path("precious")).unwrap();
    file.write_all(b"acknowledged").unwrap();
    file.sync_all().unwrap();
    mount.kill();
    drop(file);

    let snapshot = mirrorfs::log::inspect(&mirrorfs::write::log_dir(&mount.state)).unwrap();
    let records: Vec<_> = snapshot.records(0).unwrap().map(|r| r.unwrap()).collect();
    assert!(records.iter().any(|record| matches!(
        &record.op,
        mirrorfs::log::Op::Write { data, .. } if data == b"acknowledged"
    )));
    assert_eq!(
        fs::read(mount.origin_path("precious")).unwrap(),
        b"acknowledged"
    );
}

/// The active segment file of a stopped volume's log.
fn active_segment(state: &std::path::Path) -> std::path::PathBuf {
    let mut segments: Vec<_> = fs::read_dir(mirrorfs::write::log_dir(state))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "log"))
        .collect();
    segments.sort();
    segments.pop().unwrap()
}

#[test]
fn a_torn_tail_is_cut_at_mount_and_said_how_many_bytes() {
    let mut mount =
        Mount::with_config("[write]\nmode = \"write-behind\"\nflush_interval = \"1h\"\n");
    fs::write(mount.path("kept"), b"acknowledged").unwrap();
    mount.crash();
    // What a crash in the middle of an append leaves: the start of a frame.
    let segment = active_segment(&mount.state);
    let mut file = fs::OpenOptions::new().append(true).open(&segment).unwrap();
    file.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7])
        .unwrap();
    drop(file);

    mount.restart();
    assert!(
        mount.log().contains("cut a torn record") && mount.log().contains("bytes=11"),
        "{}",
        mount.log()
    );
    assert_eq!(fs::read(mount.path("kept")).unwrap(), b"acknowledged");
    assert_eq!(mount.stop_with(libc::SIGTERM), Some(0), "{}", mount.log());
    assert_eq!(
        fs::read(mount.origin_path("kept")).unwrap(),
        b"acknowledged"
    );
}

#[test]
fn a_damaged_record_before_the_tail_stops_the_mount_with_its_place() {
    let mut mount =
        Mount::with_config("[write]\nmode = \"write-behind\"\nflush_interval = \"1h\"\n");
    fs::write(mount.path("first"), vec![1u8; 10_000]).unwrap();
    fs::write(mount.path("second"), b"later").unwrap();
    mount.crash();
    let segment = active_segment(&mount.state);
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&segment)
        .unwrap();
    // A byte inside the first file's data, which is followed by more records.
    let at = 16 + 200;
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, at).unwrap();
    file.write_all_at(&[byte[0] ^ 0xff], at).unwrap();
    drop(file);

    let output = mount_again(&mount);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8(output.stderr).unwrap();
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("bad record at offset") && last.contains(&*segment.to_string_lossy()),
        "{stderr}"
    );
    assert!(common::mount_type(&mount.mountpoint).is_none());
    // Nothing after the damage reached the origin.
    assert_eq!(fs::metadata(mount.origin_path("second")).unwrap().len(), 0);
}
