//! Write-behind through a real mount: reads see what the origin has not received yet,
//! fsync waits only for the log, writers wait (never fail) at the dirty limit, a failing
//! origin loses nothing, and kill -9 at any point loses nothing acknowledged. The same
//! crash test runs for write-through, and both policies must leave the same origin.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::time::Duration;

use common::workload::{self, Model, Rng, Step};
use common::{KernelMount, Mount};

fn write_behind(flush_interval: &str, dirty_bytes_max: &str) -> String {
    format!(
        "[write]\nmode = \"write-behind\"\nflush_interval = \"{flush_interval}\"\n\
         dirty_bytes_max = \"{dirty_bytes_max}\"\n"
    )
}

/// Reads a file with O_DIRECT, so the daemon (not the kernel's page cache) answers.
fn read_direct(path: &Path) -> Vec<u8> {
    let mut file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .unwrap();
    let mut data = Vec::new();
    file.read_to_end(&mut data).unwrap();
    data
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

#[test]
fn reads_see_unflushed_writes_through_rename_link_truncate_and_other_processes() {
    let mut mount = Mount::with_config(&write_behind("1h", "256MiB"));
    let data = pattern(300_000, 1);
    fs::write(mount.path("a"), &data).unwrap();
    // Created at once, contents not yet flushed.
    assert_eq!(fs::metadata(mount.origin_path("a")).unwrap().len(), 0);
    assert_eq!(fs::metadata(mount.path("a")).unwrap().len(), 300_000);
    assert_eq!(read_direct(&mount.path("a")), data);
    let other = std::process::Command::new("cat")
        .arg(mount.path("a"))
        .output()
        .unwrap();
    assert_eq!(other.stdout, data, "another process reads the same");

    // Past the origin's end, with a hole between.
    let file = fs::OpenOptions::new()
        .write(true)
        .open(mount.path("a"))
        .unwrap();
    file.write_all_at(b"tail", 1 << 20).unwrap();
    let mut expected = data.clone();
    expected.resize(1 << 20, 0);
    expected.extend_from_slice(b"tail");
    assert_eq!(read_direct(&mount.path("a")), expected);
    assert_eq!(fs::metadata(mount.path("a")).unwrap().len(), (1 << 20) + 4);

    fs::rename(mount.path("a"), mount.path("b")).unwrap();
    assert_eq!(read_direct(&mount.path("b")), expected);

    // A hard link is the same file: unflushed bytes written through one name show
    // through the other.
    fs::hard_link(mount.path("b"), mount.path("c")).unwrap();
    file.write_all_at(b"via a", 0).unwrap();
    expected[..5].copy_from_slice(b"via a");
    assert_eq!(read_direct(&mount.path("c")), expected);
    assert_ne!(
        fs::read(mount.origin_path("c")).unwrap().get(..5),
        Some(&b"via a"[..]),
        "still unflushed"
    );

    let cut = fs::OpenOptions::new()
        .write(true)
        .open(mount.path("c"))
        .unwrap();
    cut.set_len(100).unwrap();
    expected.truncate(100);
    assert_eq!(read_direct(&mount.path("b")), expected);
    file.write_all_at(b"after", 200).unwrap();
    expected.resize(200, 0);
    expected.extend_from_slice(b"after");
    assert_eq!(read_direct(&mount.path("b")), expected);

    // An open file whose names are all gone still reads its unflushed bytes.
    let mut reader = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(mount.path("b"))
        .unwrap();
    fs::write(mount.path("d"), b"kept").unwrap();
    fs::remove_file(mount.path("b")).unwrap();
    fs::remove_file(mount.path("c")).unwrap();
    let mut seen = Vec::new();
    reader.read_to_end(&mut seen).unwrap();
    assert_eq!(seen, expected);
    drop((file, cut, reader));

    assert_eq!(mount.stop_with(libc::SIGTERM), Some(0), "{}", mount.log());
    assert_eq!(fs::read(mount.origin_path("d")).unwrap(), b"kept");
    assert!(!mount.origin_path("b").exists());
}

#[test]
fn fsync_waits_for_the_log_not_the_origin_and_survives_kill_9() {
    let mut mount = Mount::with_config(&write_behind("1h", "256MiB"));
    let data = pattern(2 << 20, 7);
    let mut file = fs::File::create(mount.path("precious")).unwrap();
    file.write_all(&data).unwrap();
    file.sync_all().unwrap();
    assert_eq!(
        fs::metadata(mount.origin_path("precious")).unwrap().len(),
        0
    );
    mount.crash();
    drop(file);
    assert_eq!(
        fs::metadata(mount.origin_path("precious")).unwrap().len(),
        0
    );

    mount.restart();
    assert_eq!(
        fs::read(mount.origin_path("precious")).unwrap(),
        data,
        "replayed at mount"
    );
    assert!(mount.log().contains("replayed"), "{}", mount.log());
    assert_eq!(fs::read(mount.path("precious")).unwrap(), data);
    mount.stop_with(libc::SIGTERM);
}

#[test]
fn writers_wait_at_dirty_bytes_max_and_the_flusher_keeps_up() {
    let mut mount = Mount::with_config(&write_behind("1h", "2MiB"));
    let data = pattern(40 << 20, 3);
    fs::write(mount.path("big"), &data).unwrap();
    // Far beyond 2 MiB went through, so the flusher ran long before its interval.
    let flushed = fs::metadata(mount.origin_path("big")).unwrap().len();
    assert!(flushed >= 38 << 20, "only {flushed} bytes in the origin");
    assert_eq!(mount.stop_with(libc::SIGTERM), Some(0), "{}", mount.log());
    assert_eq!(fs::read(mount.origin_path("big")).unwrap(), data);
}

#[test]
fn a_failing_origin_keeps_the_data_and_the_flusher_retries() {
    let dir = common::scratch();
    let origin = dir.path().join("origin");
    let tmpfs = KernelMount::tmpfs(&origin, "1m");
    let config = dir.path().join("mount.toml");
    fs::write(&config, write_behind("100ms", "64MiB")).unwrap();
    let config = config.to_str().unwrap().to_string();
    let mut mount = Mount::over(dir, origin.clone(), &["--config", &config]);

    let data = pattern(4 << 20, 9);
    fs::write(mount.path("large"), &data).unwrap();
    // The writer was told yes: the bytes are in the log. The origin cannot take them.
    std::thread::sleep(Duration::from_millis(600));
    assert!(
        mount.log().contains("No space left on device"),
        "{}",
        mount.log()
    );
    assert_eq!(read_direct(&mount.path("large")), data, "still served");

    let status = mount.status_json();
    let behind = &status["write_behind"];
    assert!(
        behind["flush_error"]
            .as_str()
            .is_some_and(|error| error.contains("No space left")),
        "{status}"
    );
    assert!(behind["dirty_bytes"].as_u64().unwrap() > 0, "{status}");

    let grown = std::process::Command::new("mount")
        .args(["-o", "remount,size=16m"])
        .arg(&origin)
        .status()
        .unwrap();
    assert!(grown.success());
    // The flusher retries by itself, while still mounted.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let status = mount.status_json();
        let behind = &status["write_behind"];
        if behind["dirty_bytes"] == 0 && behind["flush_error"].is_null() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never recovered: {status}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(fs::read(origin.join("large")).unwrap(), data);
    assert_eq!(mount.stop_with(libc::SIGTERM), Some(0), "{}", mount.log());
    assert_eq!(fs::read(origin.join("large")).unwrap(), data);
    // The tmpfs goes before the scratch directory holding it (which the mount guard owns),
    // or removing the directory would fail on the mounted origin and leave it behind.
    drop(tmpfs);
    drop(mount);
}

/// Seeds per crash test; `MIRRORFS_CRASH_SEEDS` runs more.
fn crash_seeds() -> u64 {
    std::env::var("MIRRORFS_CRASH_SEEDS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(12)
}

/// Runs the workload for `seed` on a mount made with `config`, kills the daemon with
/// SIGKILL at a random moment, remounts, unmounts, and checks the origin against the
/// model: everything acknowledged is there, and the one step in flight is either wholly
/// there or not at all.
fn crash_once(config: &str, seed: u64) {
    let mut mount = Mount::with_config(config);
    workload::prepare(&mount.mountpoint);
    let steps = workload::steps(seed, 2_000);
    let root = mount.mountpoint.clone();
    let worker = {
        let steps = steps.clone();
        std::thread::spawn(move || {
            steps
                .iter()
                .take_while(|step| workload::perform(&root, step).is_ok())
                .count()
        })
    };
    let delay = 20 + Rng::new(seed).below(400);
    std::thread::sleep(Duration::from_millis(delay));
    // The worker must see the dead mount fail before the mount point is cleared, or it
    // would go on in the bare directory underneath.
    mount.kill();
    let done = worker.join().unwrap();
    mount.crash();
    assert!(
        done < steps.len(),
        "seed {seed}: the workload finished before the kill"
    );

    mount.restart();
    assert_eq!(mount.stop_with(libc::SIGTERM), Some(0), "seed {seed}");
    let mut before = Model::new();
    for step in &steps[..done] {
        workload::model(&mut before, step);
    }
    let mut after = before.clone();
    workload::model(&mut after, &steps[done]);
    let actual = workload::contents(&mount.origin);
    let in_flight = touched(&steps[done]);
    for name in before.keys().chain(after.keys()).chain(actual.keys()) {
        let found = actual.get(name);
        let fine = if in_flight.contains(&name.as_str()) {
            found == before.get(name)
                || found == after.get(name)
                || partly_written(before.get(name), after.get(name), found)
        } else {
            found == before.get(name)
        };
        assert!(
            fine,
            "seed {seed}, {done} steps done, {:?} in flight: {name}: expected {:?} bytes, found {:?}",
            steps[done],
            before.get(name).map(Vec::len),
            found.map(Vec::len),
        );
    }
}

/// Whether `found` is what a write(2) cut short by the kill leaves: the kernel may split
/// one write into several requests, so each byte is either as before or as after, and
/// the length lies between.
fn partly_written(
    before: Option<&Vec<u8>>,
    after: Option<&Vec<u8>>,
    found: Option<&Vec<u8>>,
) -> bool {
    let (Some(after), Some(found)) = (after, found) else {
        return false;
    };
    let empty = Vec::new();
    let before = before.unwrap_or(&empty);
    found.len() >= before.len().min(after.len())
        && found.len() <= before.len().max(after.len())
        && found.iter().enumerate().all(|(i, byte)| {
            Some(byte) == after.get(i) || *byte == before.get(i).copied().unwrap_or(0)
        })
}

/// Names a step may change.
fn touched(step: &Step) -> Vec<&'static str> {
    match step {
        Step::Write { name, .. }
        | Step::Append { name, .. }
        | Step::Truncate { name, .. }
        | Step::Unlink { name }
        | Step::Fsync { name } => vec![name],
        Step::Rename { from, to } => vec![from, to],
    }
}

#[test]
fn kill_9_at_random_points_loses_nothing_acknowledged_in_write_behind() {
    for seed in 0..crash_seeds() {
        // Some runs flush often (crashes land mid-flush), some never (all in the log).
        let interval = ["20ms", "200ms", "1h"][seed as usize % 3];
        let dirty = ["1MiB", "64MiB"][seed as usize % 2];
        crash_once(&write_behind(interval, dirty), seed);
    }
}

#[test]
fn kill_9_at_random_points_loses_nothing_acknowledged_in_write_through() {
    for seed in 0..crash_seeds() {
        crash_once("[write]\nmode = \"write-through\"\n", 1000 + seed);
    }
}

#[test]
fn write_through_and_write_behind_leave_the_same_origin() {
    for seed in 0..4 {
        let steps = workload::steps(500 + seed, 600);
        let mut origins = Vec::new();
        for config in [
            "[write]\nmode = \"write-through\"\n".to_string(),
            write_behind("50ms", "1MiB"),
        ] {
            let mut mount = Mount::with_config(&config);
            workload::prepare(&mount.mountpoint);
            for (i, step) in steps.iter().enumerate() {
                if let Err(error) = workload::perform(&mount.mountpoint, step) {
                    panic!(
                        "seed {seed}, {config:?}: step {i} {step:?}: {error}\n{}",
                        mount.log()
                    );
                }
            }
            assert_eq!(mount.stop_with(libc::SIGTERM), Some(0), "{}", mount.log());
            origins.push(workload::contents(&mount.origin));
        }
        let mut model = Model::new();
        for step in &steps {
            workload::model(&mut model, step);
        }
        assert_eq!(
            workload::difference(&model, &origins[0]),
            None,
            "seed {seed}"
        );
        assert_eq!(
            workload::difference(&origins[0], &origins[1]),
            None,
            "seed {seed}"
        );
    }
}
