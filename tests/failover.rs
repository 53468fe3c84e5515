//! Failover (issue 15): epochs fence a deposed primary. Real processes over real TCP; the
//! newer primary is played by this test speaking the replication protocol with the
//! volume's key, so that fencing is tested apart from promotion.

mod common;

use std::fs;
use std::io::Write;
use std::time::{Duration, Instant};

use common::replica::{Node, key_file, peers, replicated_mount, wait_replicated};
use mirrorfs::replication::{
    Channel, ToNode, ToPrimary, VolumeKey, decode_message as decode, encode_message as encode,
};
use tokio::net::TcpStream;

/// Opens a streaming session with `node` for volume "vol" as a primary of `epoch`, and
/// returns the node's answer.
fn open_as_primary(node: &Node, key: &VolumeKey, epoch: u32) -> ToPrimary {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let stream = TcpStream::connect(&node.address).await.unwrap();
        let mut channel = Channel::connect(stream, "vol", key, false).await.unwrap();
        let open = ToNode::Open {
            epoch,
            log_start: 0,
            log_end: 0,
            peers: peers("r0", &node.address),
        };
        channel.send(&encode(&open)).await.unwrap();
        decode(&channel.receive().await.unwrap()).unwrap()
    })
}

/// Waits until `check` holds, for at most 20 s.
fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within 20 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Once a replica has accepted a newer epoch, the old primary is fenced at its next
/// contact: every change fails with EROFS, fsync with EIO, status says by whom, its log
/// takes nothing, and it stays fenced across a restart (the mount is refused). The node
/// refuses the old epoch from then on, across its own restart too.
#[test]
fn a_primary_is_fenced_once_a_replica_accepts_a_newer_epoch() {
    let scratch = common::scratch();
    let (key_path, key) = key_file(scratch.path(), "vol.key");
    let mut node = Node::start(scratch.path(), "127.0.0.1:0", &[("vol", &key_path)]);
    let mut mount = replicated_mount("vol", &key_path, &[&node], "acks = \"all\"\n");
    let mut kept = fs::File::create(mount.path("kept")).unwrap();
    kept.write_all(b"before the promotion").unwrap();
    kept.sync_all().unwrap();
    wait_replicated(&mount);
    assert_eq!(mount.status_json()["log"]["epochs"][0]["epoch"], 1);
    // The node keeps what the primary said of the volume's replication, for a promotion.
    let peers: serde_json::Value =
        serde_json::from_slice(&fs::read(node.dir.join("vol/peers.json")).unwrap()).unwrap();
    assert_eq!(peers["this"], "r0");
    assert_eq!(peers["replicas"][0]["address"], node.address.as_str());
    assert_eq!(peers["acks"], "all");
    let state = mount.state.to_str().unwrap().to_string();
    let check = common::run(&["status", "--check", "--state-dir", &state]);
    assert_eq!(
        check.status.code(),
        Some(0),
        "the unfenced primary: {check:?}"
    );
    assert!(
        check.stdout.is_empty() && check.stderr.is_empty(),
        "{check:?}"
    );

    // Another primary, promoted at epoch 2, reaches the node first.
    let answer = open_as_primary(&node, &key, 2);
    assert!(
        matches!(answer, ToPrimary::Position { epoch: 2, .. }),
        "{answer:?}"
    );
    let end = mount.status().log.stats.next_offset;

    // The old primary's session was superseded; its next handshake is refused.
    wait_for("fencing", || !mount.status_json()["log"]["fence"].is_null());
    let fence = &mount.status_json()["log"]["fence"];
    assert_eq!(
        (fence["epoch"].as_u64(), fence["by"].as_str()),
        (Some(2), Some("r0"))
    );
    let error = fs::File::create(mount.path("after")).unwrap_err();
    assert_eq!(error.raw_os_error(), Some(libc::EROFS), "{error}");
    let error = kept.write_all(b" and after").unwrap_err();
    assert_eq!(error.raw_os_error(), Some(libc::EROFS), "{error}");
    let error = kept.sync_all().unwrap_err();
    assert_eq!(error.raw_os_error(), Some(libc::EIO), "{error}");
    assert_eq!(
        mount.status().log.stats.next_offset,
        end,
        "the fenced log took no record"
    );
    let text = String::from_utf8(
        common::run(&["status", "--state-dir", mount.state.to_str().unwrap()]).stdout,
    )
    .unwrap();
    assert!(
        text.contains("FENCED       fenced by epoch 2 (node r0)"),
        "{text}"
    );
    let check = common::run(&["status", "--check", "--state-dir", &state]);
    assert_eq!(check.status.code(), Some(1), "{check:?}");
    assert!(check.stdout.is_empty());
    assert!(
        mount.log().contains("this primary is fenced"),
        "{}",
        mount.log()
    );
    drop(kept);

    // Restarted, it stays fenced: the mount is refused, with why, in one line.
    mount.stop_with(libc::SIGTERM);
    let config = mount.dir.path().join("mount.toml");
    let output = common::run(&[
        "mount",
        mount.origin.to_str().unwrap(),
        mount.mountpoint.to_str().unwrap(),
        "--state-dir",
        mount.state.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("fenced by epoch 2 (node r0)") && stderr.trim().lines().count() == 1,
        "{stderr}"
    );

    // The node keeps refusing epoch 1 after a restart: the epoch it accepted is durable.
    node.kill();
    node.restart();
    assert_eq!(
        open_as_primary(&node, &key, 1),
        ToPrimary::Fenced { epoch: 2 }
    );
    assert!(node.log().contains("it is fenced"), "{}", node.log());
}
