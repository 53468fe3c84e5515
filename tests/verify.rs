//! `mirrorfs verify` against a real mount replicating to a real node: one test per kind of
//! divergence, each planted on the replica's copy (or, for rot, beneath the primary's
//! filesystem), checking that it is found at its exact place, repaired from the right copy,
//! and gone on a second run; and the exit codes, fsck's.

mod common;

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::replica::{Node, key_file, replicated_mount};
use common::{Mount, xattr_get, xattr_set};
use serde_json::Value;

const MIB: u64 = 1 << 20;

/// A volume mounted with one replica node, and a full config naming it.
struct Volume {
    node: Node,
    mount: Mount,
    config: PathBuf,
    _scratch: tempfile::TempDir,
}

impl Volume {
    fn new() -> Volume {
        Volume::over(None, "")
    }

    /// With `origin` (already made) as the origin, if given, and `extra` config lines.
    fn over(origin: Option<(tempfile::TempDir, PathBuf)>, extra: &str) -> Volume {
        let scratch = common::scratch();
        let (key, _) = key_file(scratch.path(), "key");
        let node = Node::start(scratch.path(), "127.0.0.1:0", &[("vt", &key)]);
        let config = format!(
            "[volume]\nid = \"vt\"\n[replication]\nkey_file = \"{}\"\nacks = \"all\"\n\
             [[replication.replicas]]\nname = \"r0\"\naddress = \"{}\"\n{extra}",
            key.display(),
            node.address
        );
        let mount = match origin {
            None => replicated_mount("vt", &key, &[&node], &format!("acks = \"all\"\n{extra}")),
            Some((dir, origin)) => {
                fs::write(dir.path().join("mount.toml"), &config).unwrap();
                let file = dir.path().join("mount.toml");
                Mount::over(dir, origin, &["--config", file.to_str().unwrap()])
            }
        };
        let config = mount.full_config();
        Volume {
            node,
            mount,
            config,
            _scratch: scratch,
        }
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.mount.path(relative)
    }

    /// Runs `plant` on the replica's copy, then gives the copy's directories back the
    /// mtimes they had, so that only the planted difference differs.
    fn planting(&self, plant: impl FnOnce()) {
        let root = self.replica("");
        let dirs: Vec<(PathBuf, fs::Metadata)> = walkdir_dirs(&root)
            .into_iter()
            .map(|dir| {
                let meta = fs::metadata(&dir).unwrap();
                (dir, meta)
            })
            .collect();
        plant();
        for (dir, meta) in dirs {
            if dir.is_dir() {
                set_mtime(&dir, meta.mtime(), meta.mtime_nsec());
            }
        }
    }

    fn replica(&self, relative: &str) -> PathBuf {
        self.node.dir.join("vt/data").join(relative)
    }

    /// Makes everything written so far durable on the replica (acks = all: fsync returns
    /// once the node has applied it).
    fn settle(&self) {
        let marker = self.path(".settle");
        fs::write(&marker, b"x").unwrap();
        fs::File::open(&marker).unwrap().sync_all().unwrap();
        fs::remove_file(&marker).unwrap();
        fs::File::open(self.path("")).unwrap().sync_all().unwrap();
    }

    /// `mirrorfs verify --config ... --json ARGS`: its exit code and report.
    fn verify(&self, args: &[&str]) -> (i32, Value) {
        let output = Command::new(common::binary())
            .arg("verify")
            .arg("--config")
            .arg(&self.config)
            .arg("--json")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let code = output.status.code().expect("exited");
        let report = serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
            panic!(
                "no report ({error}), exit {code}: {}\n{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )
        });
        (code, report)
    }

    /// Waits until a quick check finds every file's stored hashes current on both sides
    /// (the hashers have caught up), and nothing to report.
    fn hashed(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (code, report) = self.verify(&[]);
            if code == 0 && report["figures"]["unhashed"] == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "stored hashes never became current: exit {code}, {report:#}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Finds `planted` (the kinds of finding, in order, on `path`), repairs it, and checks
    /// it is gone.
    fn found_and_repaired(&self, args: &[&str], planted: &[(&str, &str)]) -> Value {
        let (code, report) = self.verify(args);
        assert_eq!(code, 4, "differences left unrepaired: {report:#}");
        assert_eq!(kinds(&report), owned(planted), "{report:#}");
        let mut repair = args.to_vec();
        repair.push("--repair");
        let (code, repaired) = self.verify(&repair);
        assert_eq!(code, 1, "all repaired: {repaired:#}");
        assert_eq!(kinds(&repaired), owned(planted), "{repaired:#}");
        for finding in repaired["findings"].as_array().unwrap() {
            assert_eq!(finding["action"]["done"], "repaired", "{finding:#}");
        }
        let (code, again) = self.verify(args);
        assert_eq!(code, 0, "nothing left after the repair: {again:#}");
        report
    }
}

/// `root` and every directory under it.
fn walkdir_dirs(root: &Path) -> Vec<PathBuf> {
    let mut found = vec![root.to_path_buf()];
    let mut at = 0;
    while at < found.len() {
        let dir = found[at].clone();
        for entry in fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                found.push(entry.path());
            }
        }
        at += 1;
    }
    found
}

fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(kind, path)| (kind.to_string(), path.to_string()))
        .collect()
}

/// (kind, path) of each finding.
fn kinds(report: &Value) -> Vec<(String, String)> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|finding| {
            (
                finding["kind"].as_str().unwrap().to_string(),
                finding["path"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// A volume holding a small tree: a directory with files, a symlink, a hard link.
fn populated() -> Volume {
    let volume = Volume::new();
    fs::create_dir(volume.path("dir")).unwrap();
    fs::write(volume.path("dir/a.txt"), b"alpha\n").unwrap();
    fs::write(volume.path("dir/b.txt"), b"bravo\n").unwrap();
    fs::write(volume.path("file"), vec![7u8; 3 * MIB as usize + 5]).unwrap();
    std::os::unix::fs::symlink("dir/a.txt", volume.path("link")).unwrap();
    fs::hard_link(volume.path("dir/b.txt"), volume.path("second")).unwrap();
    xattr_set(&volume.path("file"), "user.colour", b"blue", 0).unwrap();
    volume.settle();
    let (code, report) = volume.verify(&[]);
    assert_eq!(code, 0, "a fresh copy has no differences: {report:#}");
    volume
}

#[test]
fn a_missing_file_is_found_and_sent_again() {
    let volume = populated();
    volume.planting(|| fs::remove_file(volume.replica("dir/a.txt")).unwrap());
    volume.found_and_repaired(&[], &[("missing", "/dir/a.txt")]);
    assert_eq!(fs::read(volume.replica("dir/a.txt")).unwrap(), b"alpha\n");
}

#[test]
fn an_extra_file_is_found_and_removed() {
    let volume = populated();
    volume.planting(|| fs::write(volume.replica("dir/stray"), b"not on the primary").unwrap());
    volume.found_and_repaired(&[], &[("extra", "/dir/stray")]);
    assert!(!volume.replica("dir/stray").exists());
}

#[test]
fn a_missing_directory_is_one_finding_and_comes_back_whole() {
    let volume = populated();
    volume.planting(|| fs::remove_dir_all(volume.replica("dir")).unwrap());
    // The hard link's other name stays on the replica, as a file of its own now.
    let report = volume.found_and_repaired(&[], &[("missing", "/dir"), ("hard links", "/second")]);
    assert_eq!(report["findings"][0]["actual"], "nothing");
    assert_eq!(fs::read(volume.replica("dir/a.txt")).unwrap(), b"alpha\n");
    assert_eq!(fs::read(volume.replica("dir/b.txt")).unwrap(), b"bravo\n");
}

#[test]
fn a_size_change_is_found_with_its_place_and_repaired() {
    let volume = populated();
    let mut file = fs::OpenOptions::new()
        .append(true)
        .open(volume.replica("dir/a.txt"))
        .unwrap();
    file.write_all(b"more").unwrap();
    drop(file);
    same_mtime(&volume.replica("dir/a.txt"), &volume.path("dir/a.txt"));
    let report = volume.found_and_repaired(&[], &[("size", "/dir/a.txt")]);
    assert_eq!(report["findings"][0]["expected"], "6");
    assert_eq!(report["findings"][0]["actual"], "10");
    assert_eq!(fs::read(volume.replica("dir/a.txt")).unwrap(), b"alpha\n");
}

#[test]
fn a_mode_change_is_found_and_repaired() {
    let volume = populated();
    fs::set_permissions(
        volume.replica("dir/a.txt"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let report = volume.found_and_repaired(&[], &[("mode", "/dir/a.txt")]);
    assert_eq!(report["findings"][0]["expected"], "644");
    assert_eq!(report["findings"][0]["actual"], "600");
    let mode = fs::metadata(volume.replica("dir/a.txt")).unwrap().mode();
    assert_eq!(mode & 0o7777, 0o644);
}

#[test]
fn an_owner_change_is_found_and_repaired() {
    let volume = populated();
    std::os::unix::fs::chown(volume.replica("dir/b.txt"), Some(4321), Some(4321)).unwrap();
    // Both names of the hard-linked file are the one changed inode.
    volume.found_and_repaired(&[], &[("owner", "/dir/b.txt"), ("owner", "/second")]);
    assert_eq!(fs::metadata(volume.replica("dir/b.txt")).unwrap().uid(), 0);
}

#[test]
fn an_mtime_change_is_found_and_repaired() {
    let volume = populated();
    set_mtime(&volume.replica("dir/a.txt"), 1_000_000_000, 0);
    let report = volume.found_and_repaired(&[], &[("mtime", "/dir/a.txt")]);
    assert_eq!(report["findings"][0]["actual"], "1000000000.000000000");
    let primary = fs::metadata(volume.path("dir/a.txt")).unwrap().mtime();
    assert_eq!(
        fs::metadata(volume.replica("dir/a.txt")).unwrap().mtime(),
        primary
    );
}

#[test]
fn an_xattr_change_is_found_and_repaired() {
    let volume = populated();
    xattr_set(&volume.replica("file"), "user.colour", b"red", 0).unwrap();
    xattr_set(&volume.replica("file"), "user.extra", b"1", 0).unwrap();
    volume.found_and_repaired(&[], &[("xattrs", "/file")]);
    assert_eq!(
        xattr_get(&volume.replica("file"), "user.colour").unwrap(),
        b"blue"
    );
    assert!(xattr_get(&volume.replica("file"), "user.extra").is_err());
}

#[test]
fn a_retargeted_symlink_is_found_and_repaired() {
    let volume = populated();
    volume.planting(|| {
        fs::remove_file(volume.replica("link")).unwrap();
        std::os::unix::fs::symlink("elsewhere", volume.replica("link")).unwrap();
    });
    same_mtime(&volume.replica("link"), &volume.path("link"));
    let report = volume.found_and_repaired(&[], &[("symlink target", "/link")]);
    assert_eq!(report["findings"][0]["expected"], "dir/a.txt");
    assert_eq!(report["findings"][0]["actual"], "elsewhere");
    assert_eq!(
        fs::read_link(volume.replica("link")).unwrap(),
        Path::new("dir/a.txt")
    );
}

#[test]
fn a_hard_link_broken_into_two_files_is_found_and_linked_again() {
    let volume = populated();
    volume.planting(|| {
        fs::remove_file(volume.replica("second")).unwrap();
        fs::write(volume.replica("second"), b"bravo\n").unwrap();
    });
    same_mtime(&volume.replica("second"), &volume.path("second"));
    volume.found_and_repaired(&[], &[("hard links", "/second")]);
    let (a, b) = (
        fs::metadata(volume.replica("dir/b.txt")).unwrap(),
        fs::metadata(volume.replica("second")).unwrap(),
    );
    assert_eq!(a.ino(), b.ino(), "one file again");
}

#[test]
fn a_truncated_file_is_found_and_its_tail_sent_again() {
    let volume = populated();
    let original = fs::read(volume.path("file")).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(volume.replica("file"))
        .unwrap()
        .set_len(MIB + 10)
        .unwrap();
    same_mtime(&volume.replica("file"), &volume.path("file"));
    let report = volume.found_and_repaired(&[], &[("size", "/file")]);
    assert_eq!(report["findings"][0]["actual"], (MIB + 10).to_string());
    assert_eq!(fs::read(volume.replica("file")).unwrap(), original);
}

#[test]
fn one_flipped_byte_in_a_1gib_file_is_named_by_its_chunk() {
    let volume = Volume::new();
    let big = volume.path("big");
    let file = fs::File::create(&big).unwrap();
    file.set_len(1 << 30).unwrap();
    // Real data in places, holes elsewhere: the check reads all 1 GiB either way.
    for at in [0, 300 * MIB, (1 << 30) - MIB] {
        file.write_all_at(&pattern(MIB as usize, at), at).unwrap();
    }
    drop(file);
    volume.settle();
    volume.hashed();
    let at = 700 * MIB + 12_345;
    let replica = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(volume.replica("big"))
        .unwrap();
    let mut byte = [0u8];
    replica.read_exact_at(&mut byte, at).unwrap();
    byte[0] ^= 0x20;
    replica.write_all_at(&byte, at).unwrap();
    drop(replica);
    let (code, report) = volume.verify(&["--content"]);
    assert_eq!(code, 4, "{report:#}");
    let content: Vec<&Value> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|finding| finding["kind"] == "content")
        .collect();
    assert_eq!(content.len(), 1, "{report:#}");
    assert_eq!(content[0]["path"], "/big");
    assert_eq!(content[0]["copy"], "r0");
    assert_eq!(
        content[0]["range"],
        serde_json::json!([700 * MIB, 701 * MIB]),
        "{report:#}"
    );
    assert!(report["figures"]["bytes_hashed"].as_u64().unwrap() >= 1 << 30);
    let before = report["as_of"].as_u64().unwrap();
    let (code, repaired) = volume.verify(&["--content", "--repair"]);
    assert_eq!(code, 1, "{repaired:#}");
    // Only the differing chunk crossed: the repair's records carry 1 MiB of data.
    let sent = written_since(&volume, before);
    assert_eq!(sent, MIB, "bytes in the repair's write records");
    let (code, again) = volume.verify(&["--content"]);
    assert_eq!(code, 0, "{again:#}");
    let mut byte = [0u8];
    fs::File::open(volume.replica("big"))
        .unwrap()
        .read_exact_at(&mut byte, at)
        .unwrap();
    assert_eq!(byte[0], 0, "the hole's zero is back");
}

/// Rot planted beneath the primary's filesystem (its file's times do not move) is found by
/// the primary's own stored hashes, and repaired from the replica whose chunk matches them;
/// the rot never reaches the replica.
#[test]
fn a_rotted_chunk_on_the_primary_is_repaired_from_the_replica() {
    let disk = Ext4::new();
    let volume = Volume::over(Some((common::scratch(), disk.mountpoint.clone())), "");
    let original = pattern(4 * MIB as usize, 99);
    fs::write(volume.path("data"), &original).unwrap();
    volume.settle();
    volume.hashed();
    let before = fs::metadata(disk.mountpoint.join("data")).unwrap();
    disk.rot(&disk.mountpoint.join("data"), 2 * MIB + 77);
    let after = fs::metadata(disk.mountpoint.join("data")).unwrap();
    assert_eq!(
        (before.mtime_nsec(), before.ctime_nsec()),
        (after.mtime_nsec(), after.ctime_nsec())
    );
    let (code, report) = volume.verify(&["--content"]);
    assert_eq!(code, 4, "{report:#}");
    assert_eq!(kinds(&report), owned(&[("rot", "/data")]), "{report:#}");
    let rot = &report["findings"][0];
    assert_eq!(rot["copy"], "primary");
    assert_eq!(rot["range"], serde_json::json!([2 * MIB, 3 * MIB]));
    assert!(
        rot["trusted"].as_str().unwrap().starts_with("r0"),
        "{rot:#}"
    );
    let (code, repaired) = volume.verify(&["--content", "--repair"]);
    assert_eq!(code, 1, "{repaired:#}");
    assert_eq!(fs::read(disk.mountpoint.join("data")).unwrap(), original);
    assert_eq!(fs::read(volume.path("data")).unwrap(), original);
    assert_eq!(fs::read(volume.replica("data")).unwrap(), original);
    let (code, again) = volume.verify(&["--content"]);
    assert_eq!(code, 0, "{again:#}");
}

/// With the same chunk rotted on the primary and changed on the replica, no copy can be
/// trusted: the finding names both hashes, and nothing is overwritten.
#[test]
fn a_chunk_rotted_on_both_copies_is_unrecoverable_and_left_alone() {
    let disk = Ext4::new();
    let volume = Volume::over(Some((common::scratch(), disk.mountpoint.clone())), "");
    fs::write(volume.path("data"), pattern(3 * MIB as usize, 7)).unwrap();
    volume.settle();
    volume.hashed();
    disk.rot(&disk.mountpoint.join("data"), MIB + 5);
    let replica = fs::OpenOptions::new()
        .write(true)
        .open(volume.replica("data"))
        .unwrap();
    replica.write_all_at(b"also wrong", MIB + 4000).unwrap();
    drop(replica);
    same_mtime(&volume.replica("data"), &volume.path("data"));
    let primary_bytes = fs::read(disk.mountpoint.join("data")).unwrap();
    let replica_bytes = fs::read(volume.replica("data")).unwrap();
    let (code, report) = volume.verify(&["--content", "--repair"]);
    assert_eq!(code, 4, "{report:#}");
    assert_eq!(
        kinds(&report),
        owned(&[("unrecoverable", "/data")]),
        "{report:#}"
    );
    let lost = &report["findings"][0];
    assert_eq!(lost["action"]["done"], "unrecoverable");
    assert_eq!(lost["range"], serde_json::json!([MIB, 2 * MIB]));
    // The stored hash, the primary's and the replica's: three different hashes.
    let (expected, actual) = (
        lost["expected"].as_str().unwrap(),
        lost["actual"].as_str().unwrap(),
    );
    assert!(actual.contains("r0: "), "{lost:#}");
    assert!(!actual.contains(expected), "{lost:#}");
    assert_eq!(
        fs::read(disk.mountpoint.join("data")).unwrap(),
        primary_bytes
    );
    assert_eq!(fs::read(volume.replica("data")).unwrap(), replica_bytes);
}

/// A verify run under a sustained write load finds nothing: what changes while it runs is
/// compared again, never reported.
#[test]
fn a_busy_volume_gives_no_false_alarms() {
    busy_without_false_alarms(populated());
}

/// The same with write-behind: the origin takes content later than the log.
#[test]
fn a_busy_write_behind_volume_gives_no_false_alarms() {
    let volume = Volume::over(
        None,
        "[write]\nmode = \"write-behind\"\nflush_interval = \"300ms\"\n",
    );
    fs::create_dir(volume.path("dir")).unwrap();
    fs::write(volume.path("dir/a.txt"), b"alpha\n").unwrap();
    volume.settle();
    busy_without_false_alarms(volume);
}

fn busy_without_false_alarms(volume: Volume) {
    let root = volume.mount.mountpoint.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut round = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let name = root.join(format!("busy-{}", round % 8));
                let mut file = fs::File::create(&name).unwrap();
                file.write_all(&pattern(256 << 10, round)).unwrap();
                if round % 4 == 0 {
                    file.sync_all().unwrap();
                }
                drop(file);
                fs::rename(&name, root.join(format!("moved-{}", round % 8))).unwrap();
                fs::write(root.join("dir/a.txt"), format!("alpha {round}\n")).unwrap();
                round += 1;
            }
            round
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let runs = [vec![], vec!["--content"], vec![], vec!["--content"]];
    for args in runs {
        let (code, report) = volume.verify(&args);
        assert_eq!(
            code, 0,
            "no false alarm under writes ({args:?}): {report:#}"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rounds = writer.join().unwrap();
    assert!(rounds > 10, "the writer kept writing ({rounds} rounds)");
    volume.settle();
    let (code, report) = volume.verify(&["--content"]);
    assert_eq!(code, 0, "{report:#}");
}

/// Runs asked for one after another are never refused as "already under way": the daemon
/// ends a run before its client hears the report (a full suite run once saw the next run
/// refused, the first still holding the run's lock after answering).
#[test]
fn runs_back_to_back_are_never_refused() {
    let volume = populated();
    for run in 0..25 {
        let (code, report) = volume.verify(&[]);
        assert_eq!(code, 0, "run {run}: {report:#}");
    }
}

/// A content run cut short (here by its time limit) leaves the files it did not read for
/// the next one, which reads those first.
#[test]
fn an_interrupted_content_run_resumes_where_it_stopped() {
    let volume = Volume::new();
    let files = 20;
    for n in 0..files {
        fs::write(
            volume.path(&format!("f{n:02}")),
            pattern(4 * MIB as usize, n),
        )
        .unwrap();
    }
    volume.settle();
    volume.hashed();
    // Planted in the last file in path order, which a run from the start reads last.
    let last = volume.replica(&format!("f{:02}", files - 1));
    let mut file = fs::OpenOptions::new().write(true).open(&last).unwrap();
    file.seek(SeekFrom::Start(MIB)).unwrap();
    file.write_all(b"planted").unwrap();
    drop(file);
    same_mtime(&last, &volume.path(&format!("f{:02}", files - 1)));
    let (code, first) =
        volume.verify(&["--content", "--max-rate", "16MiB", "--max-duration", "1s"]);
    let read = first["figures"]["files_hashed"].as_u64().unwrap();
    assert!(
        read >= 1 && read < files,
        "the first run was cut short: {first:#}"
    );
    assert_eq!(code, 0, "it did not get to the planted file: {first:#}");
    assert_eq!(
        first["figures"]["files_left"].as_u64().unwrap(),
        files - read
    );
    // Exactly as many bytes as the unread files hold: a run from the start would read
    // the first files again and miss the planted one.
    let rest = format!("{}MiB", 4 * (files - read));
    let (code, second) = volume.verify(&["--content", "--max-bytes", &rest]);
    assert_eq!(
        second["figures"]["files_hashed"].as_u64().unwrap(),
        files - read
    );
    assert_eq!(code, 4, "{second:#}");
    assert_eq!(
        kinds(&second),
        owned(&[("content", &format!("/f{:02}", files - 1))])
    );
}

/// `--path` checks one subtree, `--sample` a share of the files, `--replica` one replica.
#[test]
fn a_run_can_check_part_of_the_volume() {
    let volume = populated();
    fs::set_permissions(
        volume.replica("dir/a.txt"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    set_mtime(&volume.replica("file"), 1_000_000_000, 0);
    let (code, under) = volume.verify(&["--path", "/dir"]);
    assert_eq!(code, 4, "{under:#}");
    assert_eq!(kinds(&under), owned(&[("mode", "/dir/a.txt")]));
    let (code, elsewhere) = volume.verify(&["--path", "/second", "--replica", "r0"]);
    assert_eq!(code, 0, "{elsewhere:#}");
    let (_, sampled) = volume.verify(&["--content", "--sample", "50"]);
    // Four regular files (dir/a.txt, dir/b.txt, file, second): half of them.
    assert_eq!(sampled["figures"]["files_hashed"], 2, "{sampled:#}");
    assert_eq!(sampled["figures"]["files_left"], 2, "{sampled:#}");
    let output = Command::new(common::binary())
        .arg("verify")
        .arg("--config")
        .arg(&volume.config)
        .args(["--replica", "nobody"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(16), "{output:?}");
}

#[test]
fn an_unreachable_replica_is_an_operational_error() {
    let mut volume = populated();
    volume.node.kill();
    let (code, report) = volume.verify(&[]);
    assert_eq!(code, 8, "{report:#}");
    assert!(report["replicas"][0]["error"].is_string(), "{report:#}");
    // The primary alone can still be checked for rot.
    let (code, report) = volume.verify(&["--content", "--primary-only"]);
    assert_eq!(code, 0, "{report:#}");
}

/// `[verify] quick_every` runs quick checks inside the mount daemon; status shows the last.
#[test]
fn the_daemon_runs_scheduled_checks_and_status_shows_them() {
    let volume = Volume::over(None, "[verify]\nquick_every = \"1s\"\n");
    fs::write(volume.path("f"), b"data").unwrap();
    volume.settle();
    fs::set_permissions(volume.replica("f"), fs::Permissions::from_mode(0o600)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let last = loop {
        let status = volume.mount.status_json();
        let last = &status["verify"]["last_run"];
        if last["exit_code"] == 4 {
            break last.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no scheduled run found it: {status:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(last["scheduled"], true);
    assert_eq!(last["findings"], 1);
    assert!(
        volume
            .mount
            .log()
            .contains("scheduled verify run found differences")
    );
    let shown = common::run(&["status", "--config", volume.config.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(text.contains("last verify  scheduled, exit 4"), "{text}");
}

#[test]
fn usage_errors_exit_16() {
    let volume = populated();
    for args in [
        vec!["--sample", "0"],
        vec!["--max-bytes", "lots"],
        vec!["--path", "../etc"],
        vec!["--quick", "--content"],
        vec!["--no-such-flag"],
    ] {
        let output = Command::new(common::binary())
            .arg("verify")
            .arg("--config")
            .arg(&volume.config)
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(16), "{args:?}: {output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    }
}

/// Sets `path`'s modification time (not following a symlink).
fn set_mtime(path: &Path, seconds: i64, nanos: i64) {
    let times = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: seconds,
            tv_nsec: nanos,
        },
    ];
    let c_path = common::c_path(path);
    // SAFETY: a valid path and two timespecs; no symlink followed.
    let done = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c_path.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(done, 0, "utimensat {}", path.display());
}

/// Gives `copy` the modification time `primary` has, so that what was planted differs
/// in the one way it was meant to.
fn same_mtime(copy: &Path, primary: &Path) {
    let meta = fs::symlink_metadata(primary).unwrap();
    set_mtime(copy, meta.mtime(), meta.mtime_nsec());
}

/// Bytes that differ from chunk to chunk and file to file.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// An ext4 filesystem on a loop device of its own, so that rot can be planted beneath it;
/// unmounted and detached when dropped.
struct Ext4 {
    mountpoint: PathBuf,
    device: String,
    _dir: tempfile::TempDir,
}

impl Ext4 {
    fn new() -> Ext4 {
        let dir = common::scratch();
        let image = dir.path().join("disk.img");
        fs::File::create(&image).unwrap().set_len(64 * MIB).unwrap();
        let made = Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&image)
            .status()
            .unwrap();
        assert!(made.success(), "mkfs.ext4");
        let output = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&image)
            .output()
            .unwrap();
        assert!(output.status.success(), "losetup: {output:?}");
        let device = String::from_utf8(output.stdout).unwrap().trim().to_string();
        let mountpoint = dir.path().join("origin");
        fs::create_dir(&mountpoint).unwrap();
        // The guard first, so the device is detached even if mounting fails.
        let disk = Ext4 {
            mountpoint,
            device,
            _dir: dir,
        };
        let mounted = Command::new("mount")
            .arg(&disk.device)
            .arg(&disk.mountpoint)
            .status()
            .unwrap();
        assert!(mounted.success(), "mount {}", disk.device);
        disk
    }

    /// Flips a bit of byte `offset` of `file` on the device itself: the filesystem does
    /// not know, and the file's times do not move. The file's cached pages are dropped,
    /// so the next read sees the rot.
    fn rot(&self, file: &Path, offset: u64) {
        let opened = fs::File::open(file).unwrap();
        opened.sync_all().unwrap();
        let physical = physical_offset(&opened, offset);
        let block = physical / 4096 * 4096;
        let device = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&self.device)
            .unwrap();
        let mut buffer = Aligned::new();
        device.read_exact_at(buffer.bytes(), block).unwrap();
        buffer.bytes()[(physical - block) as usize] ^= 0x10;
        device.write_all_at(buffer.bytes(), block).unwrap();
        device.sync_all().unwrap();
        // SAFETY: advice on an open descriptor.
        unsafe { libc::posix_fadvise(opened.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        let mut byte = [0u8];
        fs::File::open(file)
            .unwrap()
            .read_exact_at(&mut byte, offset)
            .unwrap();
        let mut raw = Aligned::new();
        device.read_exact_at(raw.bytes(), block).unwrap();
        assert_eq!(
            byte[0],
            raw.bytes()[(physical - block) as usize],
            "the rot is what is read"
        );
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mountpoint).status();
        let _ = Command::new("losetup").arg("-d").arg(&self.device).status();
    }
}

/// One 4 KiB block at a 4 KiB-aligned address, for O_DIRECT.
struct Aligned {
    storage: Vec<u8>,
}

impl Aligned {
    fn new() -> Aligned {
        Aligned {
            storage: vec![0u8; 8192],
        }
    }

    fn bytes(&mut self) -> &mut [u8] {
        let start = self.storage.as_ptr().align_offset(4096);
        &mut self.storage[start..start + 4096]
    }
}

/// Where byte `offset` of `file` lies on its device (FIEMAP).
fn physical_offset(file: &fs::File, offset: u64) -> u64 {
    #[repr(C)]
    #[derive(Default)]
    struct Extent {
        logical: u64,
        physical: u64,
        length: u64,
        reserved64: [u64; 2],
        flags: u32,
        reserved: [u32; 3],
    }
    #[repr(C)]
    #[derive(Default)]
    struct Fiemap {
        start: u64,
        length: u64,
        flags: u32,
        mapped: u32,
        count: u32,
        reserved: u32,
        extents: [Extent; 1],
    }
    const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
    const FIEMAP_FLAG_SYNC: u32 = 1;
    let mut map = Fiemap {
        start: offset,
        length: 1,
        flags: FIEMAP_FLAG_SYNC,
        count: 1,
        ..Fiemap::default()
    };
    // SAFETY: FIEMAP with room for the one extent asked for.
    let done = unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_FIEMAP, &mut map) };
    assert_eq!(done, 0, "FIEMAP");
    assert_eq!(map.mapped, 1, "the byte is on disk");
    let extent = &map.extents[0];
    extent.physical + (offset - extent.logical)
}

/// Bytes the write records of the volume's log carry from offset `from` on.
fn written_since(volume: &Volume, from: u64) -> u64 {
    let output = Command::new(common::binary())
        .args(["log", "--json", "--from", &from.to_string(), "--config"])
        .arg(&volume.config)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .filter(|record| record["op"] == "write")
        .map(|record| record["length"].as_u64().unwrap_or(0))
        .sum()
}

/// Makes a file immutable (chattr +i) until dropped: a copy cannot apply a record to it.
struct Immutable(PathBuf);

impl Immutable {
    fn set(path: &Path) -> Immutable {
        let status = Command::new("chattr").arg("+i").arg(path).status().unwrap();
        assert!(status.success(), "chattr +i {}", path.display());
        Immutable(path.to_path_buf())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

/// The mount's view of replica r0 once `wanted` holds of it.
fn replica_state(volume: &Volume, wanted: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let replica = volume.mount.status_json()["replication"]["replicas"][0].clone();
        if wanted(&replica) {
            return replica;
        }
        assert!(
            Instant::now() < deadline,
            "{replica}\n{}",
            volume.node.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Issue 13.2: a replica stuck on a record it could not apply passed `verify --content`
/// with exit 0 ("changing throughout"). A stuck copy is a finding of its own, with its
/// own exit bit; the primary's status shows it stuck, not in sync; the node logs it once,
/// not once a second; and once the cause is gone it applies what it held.
#[test]
fn issue13_2_a_stuck_replica_is_a_finding_and_is_loud() {
    let volume = Volume::over(None, "on_insufficient = \"fail\"\nack_timeout = \"1s\"\n");
    fs::write(volume.path("f"), b"first").unwrap();
    volume.settle();
    let frozen = Immutable::set(&volume.replica("f"));
    fs::write(volume.path("f"), b"second").unwrap();
    fs::write(volume.path("after"), b"more").unwrap();
    let error = fs::File::open(volume.path("after"))
        .unwrap()
        .sync_all()
        .unwrap_err();
    assert_eq!(error.raw_os_error(), Some(libc::EIO), "{error}");

    let replica = replica_state(&volume, |replica| replica["state"] == "stuck");
    assert!(
        replica["stuck"]["error"]
            .as_str()
            .unwrap()
            .contains("Operation not permitted"),
        "{replica}"
    );
    let stuck_at = replica["stuck"]["offset"].as_u64().unwrap();
    let output = Command::new(common::binary())
        .args(["replica", "status", "--json", "--dir"])
        .arg(&volume.node.dir)
        .output()
        .unwrap();
    let node: Value = serde_json::from_slice(&output.stdout).unwrap();
    let copy = &node["running"]["volumes"][0];
    assert_eq!(copy["stuck"]["offset"], stuck_at, "{node}");
    assert!(copy["applied"].as_u64().unwrap() <= stuck_at, "{node}");
    let state = volume.mount.state.to_str().unwrap().to_string();
    let node_dir = volume.node.dir.to_str().unwrap().to_string();
    for args in [
        vec!["status", "--state-dir", &state],
        vec!["replica", "status", "--dir", &node_dir],
    ] {
        let output = common::run(&args);
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(
            text.contains(&format!("STUCK on record {stuck_at}")),
            "{args:?}: {text}"
        );
    }

    for args in [&[][..], &["--content"][..]] {
        let (code, report) = volume.verify(args);
        assert_ne!(code & 64, 0, "exit {code}: {report}");
        let findings = report["findings"].as_array().unwrap();
        assert!(
            findings
                .iter()
                .any(|f| f["kind"] == "stuck" && f["copy"] == "r0"),
            "{report}"
        );
        assert_eq!(report["figures"]["busy"], 0, "{report}");
    }
    // The primary retries every second or two; the node said it once.
    std::thread::sleep(Duration::from_secs(4));
    let log = volume.node.log();
    assert_eq!(log.matches("the copy is stuck").count(), 1, "{log}");
    assert!(!log.contains("replication connection closed"), "{log}");

    drop(frozen);
    replica_state(&volume, |replica| replica["state"] == "in sync");
    volume.settle();
    assert_eq!(fs::read(volume.replica("f")).unwrap(), b"second");
    assert_eq!(fs::read(volume.replica("after")).unwrap(), b"more");
    let (code, report) = volume.verify(&["--content"]);
    assert_eq!(code, 0, "{report}");
}
