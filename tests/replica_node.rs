//! A replica node as a real process over real TCP: records sent by an authenticated
//! primary land in the volume's copy; bad input of every kind is refused, logged and
//! harmless, and the node keeps serving.

mod common;

use common::replica::{Node, key_file, peers, sample_records as records};

use std::fs;

use mirrorfs::log::Record;
use mirrorfs::replication::{
    Channel, ChannelError, ToNode, ToPrimary, VolumeKey, decode_message as decode,
    encode_message as encode, record_hash,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

async fn connect(
    node: &Node,
    volume: &str,
    key: &VolumeKey,
) -> Result<Channel<TcpStream>, ChannelError> {
    let stream = TcpStream::connect(&node.address).await.unwrap();
    Channel::connect(stream, volume, key, false).await
}

async fn ask(channel: &mut Channel<TcpStream>, message: &ToNode) -> ToPrimary {
    channel.send(&encode(message)).await.unwrap();
    decode(&channel.receive().await.unwrap()).unwrap()
}

/// A fresh volume's copy is at 0, takes the first three records, and acknowledges them.
async fn first_records_taken(node: &Node, volume: &str, key: &VolumeKey) {
    let mut channel = connect(node, volume, key).await.unwrap();
    assert_eq!(
        open(&mut channel).await,
        ToPrimary::Position {
            next: 0,
            // The primary's epoch, accepted by the copy when the session opened.
            epoch: 1,
            last: None,
            snapshot: false,
            stuck: None,
            last_epoch: None,
            needs_snapshot: false,
        }
    );
    let taken = ask(&mut channel, &batch(records(0), 0)).await;
    assert_eq!(taken, ToPrimary::Ack { next: 3 });
}

/// A batch of `records` sent with high watermark `high_watermark`.
fn batch(records: Vec<Record>, high_watermark: u64) -> ToNode {
    ToNode::Records {
        records,
        high_watermark,
    }
}

async fn open(channel: &mut Channel<TcpStream>) -> ToPrimary {
    ask(
        channel,
        &ToNode::Open {
            epoch: 1,
            log_start: 0,
            log_end: 0,
            peers: peers("r0", "127.0.0.1:1"),
        },
    )
    .await
}

#[tokio::test]
async fn records_from_an_authenticated_primary_land_in_the_copy() {
    let scratch = common::scratch();
    let (key_path, key) = key_file(scratch.path(), "demo.key");
    let node = Node::start(scratch.path(), "127.0.0.1:0", &[("demo", &key_path)]);
    first_records_taken(&node, "demo", &key).await;
    let copy = node.dir.join("demo/data/d/f");
    assert_eq!(fs::read(&copy).unwrap(), b"hello");
    // A new connection learns where the copy is.
    let mut channel = connect(&node, "demo", &key).await.unwrap();
    let last = Some(record_hash(&records(0)[2]));
    assert_eq!(
        open(&mut channel).await,
        ToPrimary::Position {
            next: 3,
            epoch: 1,
            last,
            snapshot: false,
            stuck: None,
            last_epoch: Some(1),
            needs_snapshot: false,
        }
    );
}

#[tokio::test]
async fn bad_input_is_refused_logged_and_harmless() {
    let scratch = common::scratch();
    let (key_path, key) = key_file(scratch.path(), "demo.key");
    let (other_path, other_key) = key_file(scratch.path(), "other.key");
    let node = Node::start(
        scratch.path(),
        "127.0.0.1:0",
        &[("demo", &key_path), ("other", &other_path)],
    );

    // Another volume's key, and a volume the node does not keep. Without the key nothing
    // gets past the handshake: a forged Open of a higher epoch is never read (the copy
    // accepts epoch 1 below, which it would fence had a forged epoch landed).
    let wrong = connect(&node, "demo", &other_key).await;
    assert!(
        matches!(wrong, Err(ChannelError::Authentication(_))),
        "{wrong:?}"
    );
    let unknown = connect(&node, "nobody", &key)
        .await
        .unwrap_err()
        .to_string();
    assert!(unknown.contains("not kept on this node"), "{unknown}");

    // Garbage instead of a hello.
    let mut stream = TcpStream::connect(&node.address).await.unwrap();
    stream
        .write_all(b"\x10\x00GET / HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    drop(stream);

    // A record whose path climbs out of the volume: the message does not decode.
    let mut channel = connect(&node, "demo", &key).await.unwrap();
    open(&mut channel).await;
    let mut bytes = encode(&batch(records(0), 0));
    let at = bytes.windows(3).position(|w| w == b"d/f").unwrap();
    bytes[at..at + 3].copy_from_slice(b"../");
    channel.send(&bytes).await.unwrap();
    let reply: ToPrimary = decode(&channel.receive().await.unwrap()).unwrap();
    assert!(matches!(reply, ToPrimary::Refuse { .. }), "{reply:?}");

    // An oversized message: its announced length is past the limit.
    let mut channel = connect(&node, "demo", &key).await.unwrap();
    open(&mut channel).await;
    let too_big = vec![0u8; mirrorfs::replication::MESSAGE_MAX + 1];
    assert!(
        channel.send(&too_big).await.is_err(),
        "refused before sending"
    );

    // A record from an older epoch than the copy has seen.
    let mut channel = connect(&node, "other", &other_key).await.unwrap();
    open(&mut channel).await;
    let mut newer = records(0);
    for record in &mut newer {
        record.epoch = 5;
    }
    assert_eq!(
        ask(&mut channel, &batch(newer, 0)).await,
        ToPrimary::Ack { next: 3 }
    );
    let mut older = records(3);
    for record in &mut older {
        record.epoch = 4;
    }
    let reply = ask(&mut channel, &batch(older, 0)).await;
    assert_eq!(
        reply,
        ToPrimary::Fenced { epoch: 5 },
        "the sender is fenced"
    );

    // Nothing was written outside the volumes' copies (and the node's own files), and the
    // node still serves.
    let mut entries: Vec<String> = fs::read_dir(&node.dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    assert_eq!(entries, [".node", "demo", "other"]);
    assert!(!node.dir.join("demo/f").exists() && !node.dir.join("demo/data/f").exists());
    first_records_taken(&node, "demo", &key).await;
    let log = node.log();
    for expected in [
        "authentication failed",
        "not kept on this node",
        "not a mirrorfs replication peer",
        "malformed message",
    ] {
        assert!(log.contains(expected), "{expected:?} not logged:\n{log}");
    }
}

/// `mirrorfs replica status` shows each copy's offsets and its primary's last contact,
/// from the running node or, when none runs, from the copies' files; a second node on the
/// same directory is refused.
#[tokio::test]
async fn replica_status_shows_each_copy_running_or_not() {
    let scratch = common::scratch();
    let (key_path, key) = key_file(scratch.path(), "demo.key");
    let mut node = Node::start(
        scratch.path(),
        "127.0.0.1:0",
        &[("demo", &key_path), ("idle", &key_path)],
    );
    let dir = node.dir.to_str().unwrap().to_string();
    let mut channel = connect(&node, "demo", &key).await.unwrap();
    open(&mut channel).await;
    assert_eq!(
        ask(&mut channel, &batch(records(0), 1)).await,
        ToPrimary::Ack { next: 3 }
    );
    // A high watermark past what the copy holds is kept at once (it proves the copy
    // behind); a lower one later changes nothing.
    for high_watermark in [9, 2] {
        assert_eq!(
            ask(&mut channel, &batch(Vec::new(), high_watermark)).await,
            ToPrimary::Ack { next: 3 }
        );
    }
    let status = |json: bool| {
        let mut args = vec!["replica", "status", "--dir", dir.as_str()];
        if json {
            args.push("--json");
        }
        let output = common::run(&args);
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    let report: serde_json::Value = serde_json::from_str(&status(true)).unwrap();
    let demo = &report["volumes"][0];
    assert_eq!(demo["id"], "demo");
    assert_eq!(demo["next"], 3);
    assert_eq!(demo["high_watermark"], 9);
    assert_eq!(demo["connected"], true);
    assert!(demo["last_contact"].as_f64().unwrap() > 1.7e9, "{report}");
    assert_eq!(report["volumes"][1]["id"], "idle");
    assert_eq!(report["volumes"][1]["next"], 0);
    let text = status(false);
    assert!(text.contains("connected, last heard"), "{text}");

    // A second node on the same directory would corrupt the copies: refused.
    let second = common::run(&[
        "replica",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--dir",
        &dir,
        "--volume",
        &format!("demo={}", key_path.display()),
    ]);
    assert_eq!(second.status.code(), Some(2), "{second:?}");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains("lock") && stderr.trim().lines().count() == 1,
        "{stderr}"
    );

    drop(channel);
    node.kill();
    let report: serde_json::Value = serde_json::from_str(&status(true)).unwrap();
    assert!(report["running"].is_null(), "{report}");
    assert_eq!(report["volumes"][0]["next"], 3);
    assert_eq!(report["volumes"][0]["high_watermark"], 9, "kept durably");
    let text = status(false);
    assert!(text.contains("not running"), "{text}");
}
