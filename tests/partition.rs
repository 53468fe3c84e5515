//! Replica nodes in their own network namespaces, joined by veth pairs whose links are cut
//! and restored: the in-sync set shrinks and regrows, and fsync with acks = "all" fails
//! with EIO after ack_timeout ("fail") or waits and resumes ("wait") while no replica is
//! reachable.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::Mount;
use common::netns::Link;
use common::replica::{Node, fsync_waits_until, key_file, replicated_mount};

/// Writes `name` through the mount and fsyncs it.
fn write_synced(mount: &Mount, name: &str, data: &[u8]) -> std::io::Result<()> {
    fs::write(mount.path(name), data)?;
    fs::File::open(mount.path(name))?.sync_all()
}

/// Waits until the replicas' states are `states`.
fn wait_for_states(mount: &Mount, states: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let replication = mount.status().replication.unwrap();
        let now: Vec<&str> = replication
            .replicas
            .iter()
            .map(|r| r.state.as_str())
            .collect();
        if now == states {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "replicas are {now:?}, not {states:?}: {replication:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Two nodes keeping volume "vol", each in a network namespace of its own: the links to
/// them, their directories and the nodes (declared in that order, so the nodes stop
/// before their namespaces go).
fn two_nodes_apart(scratch: &Path, key: &Path) -> ([Link; 2], [PathBuf; 2], Vec<Node>) {
    let links = [Link::new(), Link::new()];
    let node_dirs = [scratch.join("n0"), scratch.join("n1")];
    let nodes = links
        .iter()
        .zip(&node_dirs)
        .map(|(link, dir)| {
            fs::create_dir(dir).unwrap();
            let listen = format!("{}:7071", link.address);
            Node::start_in(Some(&link.name), dir, &listen, &[("vol", key)])
        })
        .collect();
    (links, node_dirs, nodes)
}

#[test]
fn the_in_sync_set_shrinks_and_regrows_with_the_links_and_fsync_fails_when_it_is_too_small() {
    let scratch = common::scratch();
    let (key_path, _) = key_file(scratch.path(), "vol.key");
    let (links, node_dirs, nodes) = two_nodes_apart(scratch.path(), &key_path);
    let mount = replicated_mount(
        "vol",
        &key_path,
        &[&nodes[0], &nodes[1]],
        "acks = \"all\"\nmin_insync = 1\nlag_max = \"1s\"\n\
         on_insufficient = \"fail\"\nack_timeout = \"2s\"\n",
    );
    write_synced(&mount, "both", b"both replicas").unwrap();
    wait_for_states(&mount, &["in sync", "in sync"]);

    // One link cut: that replica leaves the in-sync set, and fsync goes on with the other.
    links[0].cut();
    write_synced(&mount, "one", b"one replica").unwrap();
    let state = mount.status().replication.unwrap().replicas[0]
        .state
        .clone();
    assert_ne!(state, "in sync");
    wait_for_states(&mount, &["offline", "in sync"]);
    assert_eq!(
        fs::read(node_dirs[1].join("replicas/vol/data/one")).unwrap(),
        b"one replica"
    );
    assert!(!node_dirs[0].join("replicas/vol/data/one").exists());

    // Both cut: fsync fails with EIO after ack_timeout.
    links[1].cut();
    wait_for_states(&mount, &["offline", "offline"]);
    let started = Instant::now();
    let error = write_synced(&mount, "none", b"no replica").unwrap_err();
    assert_eq!(error.raw_os_error(), Some(libc::EIO), "{error}");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    // Restored: both rejoin, catch up, and hold everything, "none" included.
    for link in &links {
        link.restore();
    }
    wait_for_states(&mount, &["in sync", "in sync"]);
    write_synced(&mount, "again", b"both again").unwrap();
    let end = mount.status().log.stats.next_offset;
    let replication = mount.status().replication.unwrap();
    assert_eq!(replication.high_watermark, end, "{replication:?}");
    for dir in &node_dirs {
        let copy = dir.join("replicas/vol/data");
        assert_eq!(common::tree(&copy), common::tree(&mount.origin));
    }
}

#[test]
fn with_wait_fsync_blocks_while_no_replica_is_reachable_and_resumes_when_one_is() {
    let scratch = common::scratch();
    let (key_path, _) = key_file(scratch.path(), "vol.key");
    let link = Link::new();
    let listen = format!("{}:7071", link.address);
    let node = Node::start_in(
        Some(&link.name),
        scratch.path(),
        &listen,
        &[("vol", &key_path)],
    );
    let mount = replicated_mount(
        "vol",
        &key_path,
        &[&node],
        "acks = \"all\"\nmin_insync = 1\nlag_max = \"1s\"\non_insufficient = \"wait\"\n",
    );
    write_synced(&mount, "before", b"before the cut").unwrap();
    link.cut();
    fs::write(mount.path("during"), b"written while cut").unwrap();
    fsync_waits_until(&mount.path("during"), Duration::from_secs(3), || {
        link.restore()
    });
    assert_eq!(
        fs::read(node.dir.join("vol/data/during")).unwrap(),
        b"written while cut"
    );
}

/// acks = "quorum": fsync needs any min_insync replicas, so a replica cut off but not yet
/// out of the in-sync set (lag_max is long) does not hold it up, while acks = "all" waits
/// for that replica until it leaves the set.
#[test]
fn with_quorum_a_cut_replica_does_not_hold_fsync_up() {
    let scratch = common::scratch();
    let (key_path, _) = key_file(scratch.path(), "vol.key");
    let (links, node_dirs, nodes) = two_nodes_apart(scratch.path(), &key_path);
    let mount = replicated_mount(
        "vol",
        &key_path,
        &[&nodes[0], &nodes[1]],
        "acks = \"quorum\"\nmin_insync = 1\nlag_max = \"60s\"\n",
    );
    write_synced(&mount, "both", b"both").unwrap();
    wait_for_states(&mount, &["in sync", "in sync"]);
    links[0].cut();
    let started = Instant::now();
    write_synced(&mount, "quorum", b"one is enough").unwrap();
    // Well before the cut replica could leave the in-sync set (60 s), or even be given up
    // on as silent.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        fs::read(node_dirs[1].join("replicas/vol/data/quorum")).unwrap(),
        b"one is enough"
    );
    assert!(!node_dirs[0].join("replicas/vol/data/quorum").exists());
    links[0].restore();
    wait_for_states(&mount, &["in sync", "in sync"]);
}
