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
    let mut config = format!(
        "[volume]\nid = \"vol\"\n[replication]\nkey_file = \"{}\"\n{extra}",
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
