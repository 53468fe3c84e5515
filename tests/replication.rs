//! Primary and replica nodes as real processes over real TCP: replicas converge to
//! byte-identical copies of the volume, and one killed mid-stream catches up from its own
//! offset when it returns.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::time::{Duration, Instant};

use common::replica::{Node, fsync_waits_until, key_file, replicated_mount, wait_replicated};
use common::{Mount, tree, xattr_set};

/// A mount of volume "vol" replicating to `nodes`, with `extra` lines in [replication].
fn replicated_mount_vol(key: &Path, nodes: &[&Node], extra: &str) -> Mount {
    replicated_mount("vol", key, nodes, extra)
}

/// Every kind of change, through the mount.
fn make_changes(root: &Path, round: usize) {
    let dir = root.join(format!("dir{round}"));
    fs::create_dir(&dir).unwrap();
    for n in 0..20 {
        let data: Vec<u8> = (0..(n * 3001 + round)).map(|i| (i * 7 + n) as u8).collect();
        fs::write(dir.join(format!("file{n}")), &data).unwrap();
    }
    fs::set_permissions(dir.join("file1"), fs::Permissions::from_mode(0o600)).unwrap();
    symlink("file2", dir.join("link")).unwrap();
    fs::hard_link(dir.join("file3"), dir.join("hard")).unwrap();
    xattr_set(&dir.join("file4"), "user.note", b"replicated", 0).unwrap();
    fs::rename(dir.join("file5"), dir.join("renamed")).unwrap();
    fs::remove_file(dir.join("file6")).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(dir.join("file7"))
        .unwrap()
        .set_len(10)
        .unwrap();
    let mut appended = fs::OpenOptions::new()
        .append(true)
        .open(dir.join("file8"))
        .unwrap();
    appended.write_all(b" and more").unwrap();
    appended.sync_all().unwrap();
}

#[test]
fn two_replicas_converge_to_byte_identical_copies() {
    let scratch = common::scratch();
    let (key_path, _) = key_file(scratch.path(), "vol.key");
    let node_dirs = [scratch.path().join("n0"), scratch.path().join("n1")];
    for dir in &node_dirs {
        fs::create_dir(dir).unwrap();
    }
    let nodes: Vec<Node> = node_dirs
        .iter()
        .map(|dir| Node::start(dir, "127.0.0.1:0", &[("vol", &key_path)]))
        .collect();
    let mount = replicated_mount_vol(&key_path, &[&nodes[0], &nodes[1]], "acks = \"all\"\n");
    make_changes(&mount.mountpoint, 0);
    wait_replicated(&mount);
    let expected = tree(&mount.origin);
    assert!(expected.len() > 20, "{expected:?}");
    for node in &nodes {
        assert_eq!(tree(&node.dir.join("vol/data")), expected, "{}", node.log());
    }
    let status = mount.status().replication.unwrap();
    let end = mount.status().log.stats.next_offset;
    assert_eq!(status.high_watermark, end);
    assert!(
        status.replicas.iter().all(|r| r.state == "in sync"),
        "{status:?}"
    );
    // Each copy is told the high watermark (with the next batch or heartbeat, within a
    // second), so that it can later show it was in sync.
    for node in &nodes {
        let told = || node.first_volume()["high_watermark"].as_u64().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while told() < end && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert_eq!(told(), end, "{}", node.log());
    }
}

#[test]
fn a_replica_killed_mid_stream_catches_up_from_its_offset() {
    let scratch = common::scratch();
    let (key_path, _) = key_file(scratch.path(), "vol.key");
    let mut node = Node::start(scratch.path(), "127.0.0.1:0", &[("vol", &key_path)]);
    let mount = replicated_mount_vol(&key_path, &[&node], "acks = \"none\"\n");
    make_changes(&mount.mountpoint, 0);
    wait_replicated(&mount);
    let held = mount.status().log.stats.next_offset;
    node.kill();
    make_changes(&mount.mountpoint, 1);
    let status = mount.status().replication.unwrap();
    assert_eq!(status.replicas[0].acknowledged, held, "{status:?}");
    node.restart();
    wait_replicated(&mount);
    assert_eq!(tree(&node.dir.join("vol/data")), tree(&mount.origin));
    // It resumed where its copy was, rather than from the start.
    let log = node.log();
    assert!(log.contains(&format!("next={held}")), "{log}");
}

/// With acks = "all", what fsync acknowledged is on the replica: the primary is killed
/// with -9 right after, and its origin deleted, and the replica's copy has the bytes.
#[test]
fn what_fsync_acknowledged_with_acks_all_survives_losing_the_primary() {
    let scratch = common::scratch();
    let (key_path, _) = key_file(scratch.path(), "vol.key");
    let node = Node::start(scratch.path(), "127.0.0.1:0", &[("vol", &key_path)]);
    let mut mount = replicated_mount_vol(&key_path, &[&node], "acks = \"all\"\n");
    let data: Vec<u8> = (0..3_000_000u32).map(|n| (n % 253) as u8).collect();
    let mut file = fs::File::create(mount.path("precious")).unwrap();
    file.write_all(&data).unwrap();
    file.sync_all().unwrap();
    mount.crash();
    fs::remove_dir_all(&mount.origin).unwrap();
    assert_eq!(fs::read(node.dir.join("vol/data/precious")).unwrap(), data);
}

/// No replica reachable: with on_insufficient = "fail", fsync returns EIO after
/// ack_timeout; with "wait", it waits, and returns once the replica is back. And a primary
/// whose log is another history of a volume the node keeps is never taken for its primary.
#[test]
fn fsync_fails_or_waits_while_too_few_replicas_are_in_sync() {
    let scratch = common::scratch();
    let (key_path, _) = key_file(scratch.path(), "vol.key");
    let mut node = Node::start(
        scratch.path(),
        "127.0.0.1:0",
        &[("vol", &key_path), ("vol2", &key_path)],
    );
    let fail = replicated_mount_vol(
        &key_path,
        &[&node],
        "acks = \"all\"\nmin_insync = 1\non_insufficient = \"fail\"\nack_timeout = \"1s\"\n",
    );
    fs::write(fail.path("a"), b"1").unwrap();
    fs::File::open(fail.path("a")).unwrap().sync_all().unwrap();
    node.kill();
    fs::write(fail.path("b"), b"2").unwrap();
    let started = Instant::now();
    let error = fs::File::open(fail.path("b"))
        .unwrap()
        .sync_all()
        .unwrap_err();
    assert_eq!(error.raw_os_error(), Some(libc::EIO), "{error}");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    drop(fail);

    let wait = replicated_mount(
        "vol2",
        &key_path,
        &[&node],
        "acks = \"all\"\nmin_insync = 1\non_insufficient = \"wait\"\n",
    );
    fs::write(wait.path("c"), b"3").unwrap();
    fsync_waits_until(&wait.path("c"), Duration::from_millis(1500), || {
        node.restart()
    });
    assert_eq!(fs::read(node.dir.join("vol2/data/c")).unwrap(), b"3");
    drop(wait);

    // A new, empty volume under the id "vol": its log is not the one the copy follows.
    let other = replicated_mount_vol(&key_path, &[&node], "acks = \"none\"\n");
    for n in 0..20 {
        fs::write(other.path(&format!("x{n}")), b"x").unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let replica = other.status().replication.unwrap().replicas.remove(0);
        if replica
            .error
            .as_deref()
            .is_some_and(|error| error.contains("another history"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "divergence not noticed: {replica:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !node.dir.join("vol/data/x0").exists(),
        "nothing of it reached the copy"
    );
}

/// A tree with every kind of object, made directly in `root` (not through a mount).
fn older_files(root: &Path) {
    use std::os::unix::fs::FileExt;
    for d in ["a", "a/b", "a/b/c", "ro"] {
        fs::create_dir(root.join(d)).unwrap();
    }
    for n in 0..150 {
        let data: Vec<u8> = (0..n * 997).map(|i| (i * 13 + n) as u8).collect();
        fs::write(root.join(format!("a/b/f{n}")), data).unwrap();
    }
    let big: Vec<u8> = (0..24u32 << 20).map(|i| (i % 251) as u8).collect();
    fs::write(root.join("a/big"), big).unwrap();
    let sparse = fs::File::create(root.join("a/sparse")).unwrap();
    sparse.set_len(64 << 20).unwrap();
    sparse.write_all_at(b"island", 40 << 20).unwrap();
    fs::write(root.join("a/b/c/private"), b"secret").unwrap();
    fs::set_permissions(
        root.join("a/b/c/private"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    fs::hard_link(root.join("a/b/f7"), root.join("a/f7-again")).unwrap();
    symlink("b/f3", root.join("a/to-f3")).unwrap();
    let fifo = common::c_path(&root.join("a/fifo"));
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o640) }, 0);
    xattr_set(&root.join("a/b/f1"), "user.tag", b"old", 0).unwrap();
    xattr_set(&root.join("a/b"), "user.dir", b"yes", 0).unwrap();
    fs::write(root.join("ro/inside"), b"kept").unwrap();
    fs::set_permissions(root.join("ro"), fs::Permissions::from_mode(0o555)).unwrap();
    let old = fs::File::options()
        .write(true)
        .open(root.join("a/b/f2"))
        .unwrap();
    old.set_modified(std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000))
        .unwrap();
}

/// A mount of volume "vol" over an origin that already holds [`older_files`].
fn mount_over_older_files(key: &Path, node: &Node, extra: &str) -> Mount {
    let dir = common::scratch();
    let origin = dir.path().join("origin");
    fs::create_dir(&origin).unwrap();
    older_files(&origin);
    let config = dir.path().join("mount.toml");
    fs::write(
        &config,
        format!(
            "[volume]\nid = \"vol\"\n[replication]\nkey_file = \"{}\"\n{extra}\
             [[replication.replicas]]\nname = \"r0\"\naddress = \"{}\"\n",
            key.display(),
            node.address
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap().to_string();
    Mount::over(dir, origin, &["--config", &config])
}

/// An origin that held files before its log began: a replica that joins late cannot be
/// built from the log alone. It gets a snapshot, read while writes go on through the
/// mount, then the log from the snapshot's offset, and ends equal to the volume.
#[test]
fn a_replica_joining_late_gets_a_snapshot_while_writes_continue() {
    let scratch = common::scratch();
    let (key_path, _) = key_file(scratch.path(), "vol.key");
    let mut node = Node::start(scratch.path(), "127.0.0.1:0", &[("vol", &key_path)]);
    node.kill();
    let mount = mount_over_older_files(&key_path, &node, "acks = \"none\"\n");
    make_changes(&mount.mountpoint, 0);
    node.restart();
    // Writes, creates and moves go on while the snapshot is read and sent; moves wait
    // for the reading to end, the rest do not.
    let root = mount.mountpoint.clone();
    let mut during = 0;
    let mut round = 1;
    let started = Instant::now();
    loop {
        let snapshotting = mount.status().replication.unwrap().replicas[0].state == "snapshotting";
        make_changes(&root, round);
        fs::write(root.join("a/b/f9"), format!("round {round}")).unwrap();
        round += 1;
        if snapshotting && mount.status().replication.unwrap().replicas[0].state == "snapshotting" {
            during += 1;
        }
        if node.log().contains("snapshot complete") && round > 3 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{}",
            node.log()
        );
    }
    wait_replicated(&mount);
    assert!(during > 0, "no change was made while the snapshot ran");
    let copy = node.dir.join("vol/data");
    assert_eq!(tree(&copy), tree(&mount.origin), "{}", node.log());
    // Holes stay holes.
    use std::os::unix::fs::MetadataExt;
    let sparse = fs::metadata(copy.join("a/sparse")).unwrap();
    assert!(
        sparse.blocks() * 512 < 1 << 20,
        "{} blocks",
        sparse.blocks()
    );
    let log = node.log();
    assert_eq!(log.matches("snapshot begins").count(), 1, "{log}");
}

/// A replica away while more than retain_bytes_max of log was written is let go: the
/// primary deletes what it would have needed, and when it returns it gets a snapshot.
#[test]
fn a_replica_away_past_retain_bytes_max_is_resynced_on_return() {
    let scratch = common::scratch();
    let (key_path, _) = key_file(scratch.path(), "vol.key");
    let mut node = Node::start(scratch.path(), "127.0.0.1:0", &[("vol", &key_path)]);
    let mount = replicated_mount_vol(
        &key_path,
        &[&node],
        "acks = \"all\"\nretain_bytes_max = \"1MiB\"\n[log]\nsegment_bytes = \"256KiB\"\n",
    );
    make_changes(&mount.mountpoint, 0);
    wait_replicated(&mount);
    // Both sides' stored hashes take in every file, and the node saves its own at stop.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let primary = mount.status().verify;
        let copy = node.first_volume();
        if primary.pending_files == 0
            && primary.stored_files > Some(0)
            && copy["hashes_pending"] == 0
            && copy["stored_files"].as_u64() > Some(0)
        {
            break;
        }
        assert!(Instant::now() < deadline, "{primary:?} {copy}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let held = mount.status().log.stats.next_offset;
    node.stop();
    let chunk = vec![7u8; 64 << 10];
    for n in 0..64 {
        fs::write(mount.path(&format!("away{n}")), &chunk).unwrap();
    }
    // The primary cuts its log as records are appended, so writing goes on.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        fs::write(mount.path("ticker"), b"tick").unwrap();
        let status = mount.status();
        if status.log.stats.first_offset > held {
            assert!(status.log.stats.bytes <= 2 << 20, "{:?}", status.log.stats);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the log kept {:?}",
            status.log.stats
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    node.restart();
    wait_replicated(&mount);
    assert_eq!(tree(&node.dir.join("vol/data")), tree(&mount.origin));
    // Its copy still had a tree: only what differs was sent (the files written while it
    // was away), not a snapshot.
    assert!(node.log().contains("resync complete"), "{}", node.log());
    assert!(!node.log().contains("snapshot begins"), "{}", node.log());
    let said = mount.log();
    let sent = common::replica::resync_bytes(&said);
    assert!(sent <= 65 * (64 << 10), "{sent} bytes sent:\n{said}");
    // And only what no stored root vouched for was read and hashed on either side: of
    // the files both held, the ticker, written while the node was away.
    let hashed = common::replica::resync_figure(&said, "hashed");
    assert!(hashed <= 1, "{hashed} files hashed:\n{said}");
}

/// Writes through files held open while their directory is renamed back and forth: every
/// record names the file where it was when the record was appended, so the replica,
/// applying them in order, never looks for a file under a name it no longer has.
#[test]
fn records_made_during_renames_name_their_files_where_they_were() {
    let scratch = common::scratch();
    let (key_path, _) = key_file(scratch.path(), "vol.key");
    let node = Node::start(scratch.path(), "127.0.0.1:0", &[("vol", &key_path)]);
    let mount = replicated_mount_vol(&key_path, &[&node], "acks = \"none\"\n");
    fs::create_dir(mount.path("d")).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..2)
        .map(|n| {
            let mut file = fs::File::create(mount.path(&format!("d/w{n}"))).unwrap();
            let stop = std::sync::Arc::clone(&stop);
            std::thread::spawn(move || {
                let block = vec![n as u8 + 1; 512];
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    file.write_all(&block).unwrap();
                }
            })
        })
        .collect();
    for round in 0..400 {
        let (from, to) = if round % 2 == 0 {
            ("d", "e")
        } else {
            ("e", "d")
        };
        fs::rename(mount.path(from), mount.path(to)).unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for writer in writers {
        writer.join().unwrap();
    }
    wait_replicated(&mount);
    assert_eq!(
        tree(&node.dir.join("vol/data")),
        tree(&mount.origin),
        "{}",
        node.log()
    );
}

/// A stop signal while an fsync waits for an unreachable replica: the fsync gives up with
/// EIO, the file closes, and the daemon unmounts and exits rather than hanging on it.
#[test]
fn a_stop_signal_releases_an_fsync_waiting_for_replicas() {
    let scratch = common::scratch();
    let (key_path, _) = key_file(scratch.path(), "vol.key");
    let mut node = Node::start(scratch.path(), "127.0.0.1:0", &[("vol", &key_path)]);
    let mut mount = replicated_mount_vol(
        &key_path,
        &[&node],
        "acks = \"all\"\non_insufficient = \"wait\"\n",
    );
    node.kill();
    fs::write(mount.path("stuck"), b"no replica").unwrap();
    let file = fs::File::open(mount.path("stuck")).unwrap();
    let syncing = std::thread::spawn(move || file.sync_all());
    std::thread::sleep(Duration::from_millis(500));
    assert!(!syncing.is_finished());
    assert_eq!(mount.stop_with(libc::SIGTERM), Some(0), "{}", mount.log());
    let error = syncing.join().unwrap().unwrap_err();
    assert_eq!(error.raw_os_error(), Some(libc::EIO), "{error}");
    // Durable in the origin and the log all the same: the next mount streams it.
    assert_eq!(fs::read(mount.origin.join("stuck")).unwrap(), b"no replica");
}
