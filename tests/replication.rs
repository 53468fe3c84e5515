//! Primary and replica nodes as real processes over real TCP: replicas converge to
//! byte-identical copies of the volume, and one killed mid-stream catches up from its own
//! offset when it returns.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::time::{Duration, Instant};

use common::replica::{Node, key_file};
use common::{Mount, tree, xattr_set};

/// A mount of volume "vol" replicating to `nodes`, with `extra` lines in [replication].
fn replicated_mount(key: &Path, nodes: &[&Node], extra: &str) -> Mount {
    replicated_volume("vol", key, nodes, extra)
}

/// [`replicated_mount`] of volume `id`.
fn replicated_volume(id: &str, key: &Path, nodes: &[&Node], extra: &str) -> Mount {
    let mut config = format!(
        "[volume]\nid = \"{id}\"\n[replication]\nkey_file = \"{}\"\n{extra}",
        key.display()
    );
    for (n, node) in nodes.iter().enumerate() {
        config += &format!(
            "[[replication.replicas]]\nname = \"r{n}\"\naddress = \"{}\"\n",
            node.address
        );
    }
    Mount::with_config(&config)
}

/// Waits until every replica has acknowledged the whole log.
fn wait_replicated(mount: &Mount) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = mount.status();
        let end = status.log.stats.next_offset;
        let replication = status.replication.expect("the volume has replicas");
        if replication.replicas.iter().all(|r| r.acknowledged == end) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "replicas did not catch up to {end}: {replication:?}\n{}",
            mount.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
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
    let mount = replicated_mount(&key_path, &[&nodes[0], &nodes[1]], "acks = \"all\"\n");
    make_changes(&mount.mountpoint, 0);
    wait_replicated(&mount);
    let expected = tree(&mount.origin);
    assert!(expected.len() > 20, "{expected:?}");
    for node in &nodes {
        assert_eq!(tree(&node.dir.join("vol/data")), expected, "{}", node.log());
    }
    let status = mount.status().replication.unwrap();
    assert_eq!(status.high_watermark, mount.status().log.stats.next_offset);
    assert!(
        status.replicas.iter().all(|r| r.state == "in sync"),
        "{status:?}"
    );
}

#[test]
fn a_replica_killed_mid_stream_catches_up_from_its_offset() {
    let scratch = common::scratch();
    let (key_path, _) = key_file(scratch.path(), "vol.key");
    let mut node = Node::start(scratch.path(), "127.0.0.1:0", &[("vol", &key_path)]);
    let mount = replicated_mount(&key_path, &[&node], "acks = \"none\"\n");
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
    let mut mount = replicated_mount(&key_path, &[&node], "acks = \"all\"\n");
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
    let fail = replicated_mount(
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

    let wait = replicated_volume(
        "vol2",
        &key_path,
        &[&node],
        "acks = \"all\"\nmin_insync = 1\non_insufficient = \"wait\"\n",
    );
    fs::write(wait.path("c"), b"3").unwrap();
    let file = fs::File::open(wait.path("c")).unwrap();
    let syncing = std::thread::spawn(move || file.sync_all());
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !syncing.is_finished(),
        "fsync returned with no replica in sync"
    );
    node.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !syncing.is_finished() {
        assert!(
            Instant::now() < deadline,
            "fsync still waiting after the replica returned"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    syncing.join().unwrap().unwrap();
    assert_eq!(fs::read(node.dir.join("vol2/data/c")).unwrap(), b"3");
    drop(wait);

    // A new, empty volume under the id "vol": its log is not the one the copy follows.
    let other = replicated_mount(&key_path, &[&node], "acks = \"none\"\n");
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

/// An origin that held files before its log began: a new replica cannot be built from the
/// log alone, and is told so rather than given a copy that lacks those files.
#[test]
fn a_new_replica_of_an_origin_with_older_files_is_not_fed_a_partial_copy() {
    let scratch = common::scratch();
    let (key_path, _) = key_file(scratch.path(), "vol.key");
    let node = Node::start(scratch.path(), "127.0.0.1:0", &[("vol", &key_path)]);
    let dir = common::scratch();
    let origin = dir.path().join("origin");
    fs::create_dir(&origin).unwrap();
    fs::write(origin.join("older"), b"before the log").unwrap();
    let config = dir.path().join("mount.toml");
    fs::write(
        &config,
        format!(
            "[volume]\nid = \"vol\"\n[replication]\nkey_file = \"{}\"\nacks = \"none\"\n\
             [[replication.replicas]]\nname = \"r0\"\naddress = \"{}\"\n",
            key_path.display(),
            node.address
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap().to_string();
    let mount = Mount::over(dir, origin, &["--config", &config]);
    fs::write(mount.path("newer"), b"after").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let replica = mount.status().replication.unwrap().replicas.remove(0);
        if replica.state == "snapshot needed" {
            break;
        }
        assert!(Instant::now() < deadline, "{replica:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!node.dir.join("vol/data/newer").exists());
}
