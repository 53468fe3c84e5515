//! Failover (issue 15): epochs fence a deposed primary. Real processes over real TCP; the
//! newer primary is played by this test speaking the replication protocol with the
//! volume's key, so that fencing is tested apart from promotion.

mod common;

use std::fs;
use std::io::Write;
use std::time::{Duration, Instant};

use common::replica::{
    Node, key_file, nodes_apart, peers, replicated_mount, resync_bytes, sample_records as records,
    wait_replicated,
};
use mirrorfs::log::{LogPath, Op, Record};
use mirrorfs::replication::{
    Channel, ToNode, ToPrimary, VolumeKey, decode_message as decode, encode_message as encode,
};
use tokio::net::TcpStream;

/// A test playing a primary of volume "vol" to one node, in its own small runtime.
struct FakePrimary {
    runtime: tokio::runtime::Runtime,
    channel: Channel<TcpStream>,
}

impl FakePrimary {
    /// Connects to `node` with the volume's key.
    fn connect(node: &Node, key: &VolumeKey) -> FakePrimary {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let channel = runtime.block_on(async {
            let stream = TcpStream::connect(&node.address).await.unwrap();
            Channel::connect(stream, "vol", key, false).await.unwrap()
        });
        FakePrimary { runtime, channel }
    }

    /// Sends `message` and returns the answer.
    fn ask(&mut self, message: &ToNode) -> ToPrimary {
        let channel = &mut self.channel;
        self.runtime.block_on(async {
            channel.send(&encode(message)).await.unwrap();
            decode(&channel.receive().await.unwrap()).unwrap()
        })
    }

    /// Opens a streaming session as a primary of `epoch` whose log ends at `log_end`.
    fn open(&mut self, node: &Node, epoch: u32, log_end: u64) -> ToPrimary {
        self.ask(&ToNode::Open {
            epoch,
            log_start: 0,
            log_end,
            peers: peers("r0", &node.address),
        })
    }
}

/// Opens a streaming session with `node` for volume "vol" as a primary of `epoch`, and
/// returns the node's answer.
fn open_as_primary(node: &Node, key: &VolumeKey, epoch: u32) -> ToPrimary {
    FakePrimary::connect(node, key).open(node, epoch, 0)
}

/// `mirrorfs promote` of volume "vol" in `node`'s directory, writing `config`, with
/// `extra` arguments.
fn promote(node: &Node, config: &std::path::Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "promote",
        "--dir",
        node.dir.to_str().unwrap(),
        "--volume",
        "vol",
        "--write-config",
        config.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    common::run(&args)
}

/// Runs `mirrorfs promote` of volume "vol" for each (node directory, config to write) at
/// once, with `extra` arguments; their outputs in order.
fn promote_at_once(
    promotions: Vec<(std::path::PathBuf, std::path::PathBuf)>,
    extra: &[&str],
) -> Vec<std::process::Output> {
    let extra: Vec<String> = extra.iter().map(|arg| arg.to_string()).collect();
    let racing: Vec<_> = promotions
        .into_iter()
        .map(|(dir, config)| {
            let extra = extra.clone();
            std::thread::spawn(move || {
                let mut args = vec![
                    "promote",
                    "--dir",
                    dir.to_str().unwrap(),
                    "--volume",
                    "vol",
                    "--write-config",
                    config.to_str().unwrap(),
                ];
                args.extend(extra.iter().map(String::as_str));
                common::run(&args)
            })
        })
        .collect();
    racing
        .into_iter()
        .map(|thread| thread.join().unwrap())
        .collect()
}

/// Two nodes apart (r1, r2) keeping "vol", and a primary replicating to both with
/// acks = "all".
fn primary_and_two_nodes(scratch: &std::path::Path) -> (Vec<Node>, common::Mount) {
    let (key_path, _) = key_file(scratch, "vol.key");
    let nodes = nodes_apart(scratch, &["r1", "r2"], &key_path);
    let primary = replicated_mount(
        "vol",
        &key_path,
        &[&nodes[0], &nodes[1]],
        "acks = \"all\"\nmin_insync = 1\n",
    );
    (nodes, primary)
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
    let told = scratch.path().join("on_fenced.out");
    let hook = format!(
        "acks = \"all\"\non_fenced = 'echo $MIRRORFS_VOLUME $MIRRORFS_EPOCH $MIRRORFS_ROLE > {}'\n",
        told.display()
    );
    let mut mount = replicated_mount("vol", &key_path, &[&node], &hook);
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
    wait_for("on_fenced", || {
        fs::read_to_string(&told).is_ok_and(|text| text == "vol 2 fenced\n")
    });
    drop(kept);

    // Restarted, it stays fenced: the mount is refused, with why, in one line.
    mount.stop_with(libc::SIGTERM);
    assert_mount_refused(&mount, "fenced by epoch 2 (node r0)");

    // The node keeps refusing epoch 1 after a restart: the epoch it accepted is durable.
    node.kill();
    node.restart();
    assert_eq!(
        open_as_primary(&node, &key, 1),
        ToPrimary::Fenced { epoch: 2 }
    );
    assert!(node.log().contains("it is fenced"), "{}", node.log());
}

/// Writes `count` files of a few KiB through `mount`, each fsynced, and returns what each
/// holds: every one of them was acknowledged.
fn acknowledged_writes(
    mount: &common::Mount,
    prefix: &str,
    count: usize,
) -> Vec<(String, Vec<u8>)> {
    (0..count)
        .map(|n| {
            let name = format!("{prefix}-{n:03}");
            let data: Vec<u8> = (0..(1000 + n * 37)).map(|i| (i * 7 + n) as u8).collect();
            let mut file = fs::File::create(mount.path(&name)).unwrap();
            file.write_all(&data).unwrap();
            file.sync_all().unwrap();
            (name, data)
        })
        .collect()
}

/// An application writing small files through a mount, each with fsync, until stopped or
/// until the mount fails it: every fsync's outcome is noted with its time.
struct Writer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    synced: std::sync::Arc<std::sync::Mutex<Vec<Synced>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// One file the writer wrote, and what its fsync said.
#[derive(Clone, Debug)]
struct Synced {
    name: String,
    data: Vec<u8>,
    at: Instant,
    ok: bool,
}

impl Writer {
    /// Starts writing `PREFIX-N` files in `root`, `pause` apart.
    fn start(root: &std::path::Path, prefix: &str, pause: Duration) -> Writer {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let synced = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let thread = {
            let (stop, synced, root, prefix) = (
                std::sync::Arc::clone(&stop),
                std::sync::Arc::clone(&synced),
                root.to_path_buf(),
                prefix.to_string(),
            );
            std::thread::spawn(move || {
                let mut n = 0usize;
                while !stop.load(Ordering::SeqCst) {
                    let name = format!("{prefix}-{n:04}");
                    let data: Vec<u8> = (0..(500 + n * 13)).map(|i| (i * 3 + n) as u8).collect();
                    let ok = fs::File::create(root.join(&name))
                        .and_then(|mut file| file.write_all(&data).and_then(|()| file.sync_all()))
                        .is_ok();
                    synced.lock().unwrap().push(Synced {
                        name,
                        data,
                        at: Instant::now(),
                        ok,
                    });
                    n += 1;
                    std::thread::sleep(pause);
                }
            })
        };
        Writer {
            stop,
            synced,
            thread: Some(thread),
        }
    }

    /// How many fsyncs returned 0 so far.
    fn acknowledged(&self) -> usize {
        self.synced.lock().unwrap().iter().filter(|s| s.ok).count()
    }

    /// Stops writing; every file written, with its fsync's outcome.
    fn stop(mut self) -> Vec<Synced> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
        self.synced.lock().unwrap().clone()
    }
}

/// Nodes keeping "vol", each in a network namespace of its own behind `links`.
fn nodes_behind(
    links: &[common::netns::Link],
    scratch: &std::path::Path,
    key: &std::path::Path,
) -> Vec<Node> {
    links
        .iter()
        .enumerate()
        .map(|(n, link)| {
            let dir = scratch.join(format!("n{n}"));
            fs::create_dir(&dir).unwrap();
            let listen = format!("{}:7071", link.address);
            Node::start_in(Some(&link.name), &dir, &listen, &[("vol", key)])
        })
        .collect()
}

/// The main failover: the primary dies (kill -9), a replica whose node is running is
/// promoted, the other replica follows it from where it is (no snapshot), every write an
/// fsync acknowledged is on both, and new writes through the new primary reach the other
/// replica. The old primary, restarted, is fenced before it takes a write.
#[test]
fn a_promoted_replica_serves_every_acknowledged_write_and_the_other_follows_it() {
    let scratch = common::scratch();
    let (key_path, _) = key_file(scratch.path(), "vol.key");
    let links = [common::netns::Link::new(), common::netns::Link::new()];
    let nodes = nodes_behind(&links, scratch.path(), &key_path);
    let told = scratch.path().join("on_promote.out");
    let settings = format!(
        "acks = \"all\"\nmin_insync = 1\non_promote = 'echo $MIRRORFS_VOLUME $MIRRORFS_EPOCH $MIRRORFS_ROLE > {}'\n",
        told.display()
    );
    let mut old = replicated_mount("vol", &key_path, &[&nodes[0], &nodes[1]], &settings);
    // Killed mid-workload: a writer is between two fsyncs, or in one.
    let writer = Writer::start(&old.mountpoint, "before", Duration::from_millis(5));
    wait_for("40 acknowledged writes", || writer.acknowledged() >= 40);
    old.crash();
    let written = writer.stop();
    let acknowledged: Vec<(String, Vec<u8>)> = written
        .iter()
        .filter(|synced| synced.ok)
        .map(|synced| (synced.name.clone(), synced.data.clone()))
        .collect();
    assert!(acknowledged.len() >= 40);

    // Promote r1 (its node runs): refused with a bad volume, then done.
    let config = scratch.path().join("promoted.toml");
    let r1 = nodes[0].dir.to_str().unwrap().to_string();
    let promote = |volume: &str| {
        common::run(&[
            "promote",
            "--dir",
            &r1,
            "--volume",
            volume,
            "--write-config",
            config.to_str().unwrap(),
        ])
    };
    let unknown = promote("nosuch");
    assert_eq!(unknown.status.code(), Some(1), "{unknown:?}");
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no copy of volume nosuch"));
    let promoted = promote("vol");
    assert!(
        promoted.status.success(),
        "{promoted:?}\n{}",
        nodes[0].log()
    );
    let said = String::from_utf8(promoted.stdout).unwrap();
    assert!(said.contains("promoted to primary at epoch 2"), "{said}");
    assert!(said.contains("on_promote ran"), "{said}");
    assert_eq!(fs::read_to_string(&told).unwrap(), "vol 2 primary\n");
    let again = promote("vol");
    assert_eq!(again.status.code(), Some(2), "the config exists: {again:?}");
    let text = fs::read_to_string(&config).unwrap();
    assert!(
        text.contains("name = \"r1\"") && !text.contains("name = \"r0\""),
        "{text}"
    );

    // A second promotion, of the other replica, before the new primary has
    // reached it, learns from r0's node that the volume has a primary.
    let second = crate::promote(&nodes[1], &scratch.path().join("second.toml"), &[]);
    assert_eq!(second.status.code(), Some(1), "{second:?}");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains("replica r0 was promoted to primary already, at epoch 2"),
        "{stderr}"
    );
    // The new primary: the copy's tree and directory, the same log at epoch 2.
    let primary_dir = common::scratch();
    let copy = nodes[0].dir.join("vol");
    let new = common::Mount::over_state(
        primary_dir,
        copy.join("data"),
        copy.clone(),
        &["--config", config.to_str().unwrap()],
    );
    for (name, data) in &acknowledged {
        assert_eq!(
            &fs::read(new.path(name)).unwrap(),
            data,
            "{name} on the new primary"
        );
    }
    let after = acknowledged_writes(&new, "after", 10);
    wait_replicated(&new);
    let status = new.status_json();
    assert_eq!(
        status["log"]["epochs"].as_array().unwrap().last().unwrap()["epoch"],
        2
    );
    let other = nodes[1].dir.join("vol/data");
    for (name, data) in acknowledged.iter().chain(&after) {
        assert_eq!(&fs::read(other.join(name)).unwrap(), data, "{name} on r2");
    }
    let log = nodes[1].log();
    assert!(
        !log.contains("snapshot begins"),
        "r2 followed without a snapshot:\n{log}"
    );

    // The old primary, restarted, learns the epoch from the replicas before it mounts,
    // and is refused.
    assert_mount_refused(&old, "fenced by epoch 2");
    assert!(old.state.join("log/fenced").exists());
}

/// Runs `mirrorfs mount` again for `mount` (stopped) and checks it is refused, exit 1,
/// with one line saying `why`.
fn assert_mount_refused(mount: &common::Mount, why: &str) {
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
    let said: Vec<&str> = stderr
        .lines()
        .filter(|line| line.starts_with("mirrorfs:"))
        .collect();
    assert!(said.len() == 1 && said[0].contains(why), "{stderr}");
    assert_eq!(
        common::mount_type(&mount.mountpoint),
        None,
        "nothing mounted"
    );
}

/// Promotion refuses what it must, with a one-line reason and exit 1, and changes nothing
/// then: a copy whose primary still streams to it, a copy behind the high watermark it
/// was told (until --unclean, which says what may be lost), a copy in the middle of a
/// snapshot, and a second promotion (exactly one epoch wins).
#[test]
fn promotion_refuses_what_it_must() {
    let scratch = common::scratch();
    let (key_path, key) = key_file(scratch.path(), "vol.key");
    let mut node = Node::start(scratch.path(), "127.0.0.1:0", &[("vol", &key_path)]);
    let config = scratch.path().join("promoted.toml");
    let refused = |output: std::process::Output, why: &str| {
        assert_eq!(output.status.code(), Some(1), "{output:?}");
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert!(
            stderr.contains(why) && stderr.trim().lines().count() == 1,
            "{stderr}"
        );
        assert!(!config.exists(), "no config written");
    };

    // A copy that never received anything holds none of the volume.
    refused(
        promote(&node, &config, &[]),
        "holds nothing of the volume yet",
    );

    // Three records held, and told that every in-sync replica holds nine.
    let mut primary = FakePrimary::connect(&node, &key);
    assert!(matches!(
        primary.open(&node, 1, 9),
        ToPrimary::Position { .. }
    ));
    let batch = ToNode::Records {
        records: records(0),
        high_watermark: 9,
    };
    assert_eq!(primary.ask(&batch), ToPrimary::Ack { next: 3 });
    refused(promote(&node, &config, &[]), "still connected");
    drop(primary);
    wait_for("the session's end", || {
        node.first_volume()["connected"] == false
    });
    refused(
        promote(&node, &config, &[]),
        "not in sync: it holds records below 3, but was told every in-sync replica holds those below 9",
    );

    // A snapshot half received, the node gone: the copy holds no whole volume.
    let mut primary = FakePrimary::connect(&node, &key);
    assert!(matches!(
        primary.open(&node, 1, 20),
        ToPrimary::Position { .. }
    ));
    let begin = ToNode::SnapshotBegin {
        offset: 20,
        epoch: 1,
        last: None,
    };
    assert!(matches!(primary.ask(&begin), ToPrimary::Ack { .. }));
    drop(primary);
    node.kill();
    refused(
        promote(&node, &config, &["--unclean"]),
        "middle of a snapshot",
    );
    node.restart();

    // Unclean: promoted anyway, saying what may be lost. Two at once: one epoch wins.
    let configs = [scratch.path().join("a.toml"), scratch.path().join("b.toml")];
    let outputs = promote_at_once(
        configs
            .iter()
            .map(|config| (node.dir.clone(), config.clone()))
            .collect(),
        &["--unclean"],
    );
    let won: Vec<_> = outputs
        .iter()
        .filter(|output| output.status.success())
        .collect();
    assert_eq!(won.len(), 1, "{outputs:?}");
    let said = String::from_utf8_lossy(&won[0].stdout);
    assert!(
        said.contains("at epoch 2") && said.contains("offsets 3 to 9 (6 records)"),
        "{said}"
    );
    let lost = outputs
        .iter()
        .find(|output| !output.status.success())
        .unwrap();
    let stderr = String::from_utf8_lossy(&lost.stderr);
    assert!(
        stderr.contains("promoted already, at epoch 2") || stderr.contains("under way"),
        "{stderr}"
    );
    assert_eq!(configs.iter().filter(|config| config.exists()).count(), 1);
    assert_eq!(
        fs::read_to_string(node.dir.join("vol/promoted"))
            .unwrap()
            .trim(),
        "2"
    );
}

/// A replica cut off from the primary (its node stopped) cannot know the others went on
/// without it: promotion asks the other replicas, and refuses the one behind, naming the
/// one to promote instead, which then holds every acknowledged write.
#[test]
fn a_replica_left_behind_is_not_promoted_over_one_that_reaches_further() {
    let scratch = common::scratch();
    let (key_path, _) = key_file(scratch.path(), "vol.key");
    let mut nodes = nodes_apart(scratch.path(), &["r1", "r2"], &key_path);
    let mut old = replicated_mount(
        "vol",
        &key_path,
        &[&nodes[0], &nodes[1]],
        "acks = \"all\"\nmin_insync = 1\n",
    );
    let mut acknowledged = acknowledged_writes(&old, "both", 5);
    wait_replicated(&old);
    nodes[0].kill();
    acknowledged.extend(acknowledged_writes(&old, "r2-only", 5));
    old.crash();
    nodes[0].restart();

    let config = scratch.path().join("promoted.toml");
    let refused = promote(&nodes[0], &config, &[]);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("replica r1 holds records up to"),
        "{stderr}"
    );
    assert!(!config.exists() && !nodes[0].dir.join("vol/promoted").exists());

    let promoted = promote(&nodes[1], &config, &[]);
    assert!(promoted.status.success(), "{promoted:?}");
    for (name, data) in &acknowledged {
        let copy = nodes[1].dir.join("vol/data").join(name);
        assert_eq!(&fs::read(copy).unwrap(), data, "{name}");
    }
}

/// A primary cut off from its replicas keeps writing while one of them is promoted: none
/// of its fsyncs returns 0 from the promotion on (with acks = "all" none can while it
/// reaches no replica), and it is fenced as soon as it reaches a node again.
#[test]
fn a_partitioned_primary_acknowledges_nothing_after_the_promotion_and_is_fenced_on_contact() {
    use common::netns::Link;

    let scratch = common::scratch();
    let (key_path, _) = key_file(scratch.path(), "vol.key");
    let links = [Link::new(), Link::new()];
    let nodes = nodes_behind(&links, scratch.path(), &key_path);
    let mount = replicated_mount(
        "vol",
        &key_path,
        &[&nodes[0], &nodes[1]],
        "acks = \"all\"\nmin_insync = 1\nlag_max = \"1s\"\nack_timeout = \"1s\"\n",
    );
    acknowledged_writes(&mount, "before", 3);
    wait_replicated(&mount);
    for link in &links {
        link.cut();
    }

    // The primary keeps writing; every fsync's end and outcome is noted.
    let writer = Writer::start(&mount.mountpoint, "during", Duration::from_millis(100));
    // A node counts a primary silent for three heartbeats as gone.
    std::thread::sleep(Duration::from_secs(4));
    let config = scratch.path().join("promoted.toml");
    let promoted = promote(&nodes[0], &config, &[]);
    assert!(promoted.status.success(), "{promoted:?}");
    let promoted_at = Instant::now();

    // The link to the promoted replica's node comes back: fenced at the next handshake.
    links[0].restore();
    wait_for("fencing", || !mount.status_json()["log"]["fence"].is_null());
    std::thread::sleep(Duration::from_millis(500));
    let outcomes = writer.stop();
    assert!(outcomes.len() >= 5, "{} fsyncs", outcomes.len());
    let acknowledged_after: Vec<_> = outcomes
        .iter()
        .filter(|synced| synced.ok && synced.at >= promoted_at)
        .collect();
    assert!(acknowledged_after.is_empty(), "{acknowledged_after:?}");
    let fence = &mount.status_json()["log"]["fence"];
    assert_eq!(fence["epoch"], 2);
    let error = fs::File::create(mount.path("late")).unwrap_err();
    assert_eq!(error.raw_os_error(), Some(libc::EROFS), "{error}");
}

/// After an unclean promotion of a replica that was behind, the other replica holds
/// records the new primary never had: it is cut back at the divergence point (where epoch
/// 2 began) and brought back by a snapshot, and then equals the new primary.
#[test]
fn a_replica_ahead_of_the_new_primary_is_cut_back_and_converges() {
    let scratch = common::scratch();
    let (key_path, _) = key_file(scratch.path(), "vol.key");
    let mut nodes = nodes_apart(scratch.path(), &["r0", "r1"], &key_path);
    let mut old = replicated_mount(
        "vol",
        &key_path,
        &[&nodes[0], &nodes[1]],
        "acks = \"all\"\nmin_insync = 1\n",
    );
    let kept = acknowledged_writes(&old, "both", 5);
    wait_replicated(&old);
    nodes[0].kill();
    acknowledged_writes(&old, "r1-only", 5);
    old.crash();
    nodes[0].restart();

    let config = scratch.path().join("promoted.toml");
    let promoted = promote(&nodes[0], &config, &["--unclean"]);
    assert!(promoted.status.success(), "{promoted:?}");
    let said = String::from_utf8_lossy(&promoted.stdout);
    assert!(said.contains("replica r1 holds records up to"), "{said}");
    let copy = nodes[0].dir.join("vol");
    let new = common::Mount::over_state(
        common::scratch(),
        copy.join("data"),
        copy.clone(),
        &["--config", config.to_str().unwrap()],
    );
    let after = acknowledged_writes(&new, "after", 3);
    wait_replicated(&new);
    let other = nodes[1].dir.join("vol/data");
    assert_eq!(common::tree(&other), common::tree(&new.origin));
    for (name, data) in kept.iter().chain(&after) {
        assert_eq!(&fs::read(other.join(name)).unwrap(), data, "{name}");
    }
    assert!(!other.join("r1-only-000").exists());
    let log = nodes[1].log();
    assert!(
        log.contains("cut back") && log.contains("resync complete"),
        "{log}"
    );
    assert!(!nodes[1].dir.join("vol/needs-snapshot").exists());
    // What it held past the divergence point is kept, and mirrorfs log reads it.
    let aside: Vec<_> = fs::read_dir(nodes[1].dir.join("vol"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            path.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("diverged-")
        })
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    let listed = common::run(&["log", "--state-dir", aside[0].to_str().unwrap()]);
    let listed = String::from_utf8(listed.stdout).unwrap();
    assert!(listed.contains("/r1-only-004"), "{listed}");
    assert!(!listed.contains("/both-"), "{listed}");
    assert!(
        log.contains("kept aside") && log.contains("/r1-only-000"),
        "{log}"
    );
}

/// The old primary, fenced, rejoins as a replica of the new one: its origin and log move
/// into a node's directory, the records it wrote that the new primary never had are cut
/// off and kept (mirrorfs log lists them), and its tree converges to the new primary's
/// (verify --content clean).
#[test]
fn a_fenced_old_primary_rejoins_as_a_replica() {
    let scratch = common::scratch();
    let (key_path, _) = key_file(scratch.path(), "vol.key");
    for dir in ["r0", "home"] {
        fs::create_dir(scratch.path().join(dir)).unwrap();
    }
    let mut node = Node::start(
        &scratch.path().join("r0"),
        "127.0.0.1:0",
        &[("vol", &key_path)],
    );
    // The old primary's machine gets a node of its own later, at this address.
    let mut home = Node::start(
        &scratch.path().join("home"),
        "127.0.0.1:0",
        &[("vol", &key_path)],
    );
    home.kill();
    fs::remove_dir_all(home.dir.join("vol")).unwrap();

    let mut old = replicated_mount("vol", &key_path, &[&node], "acks = \"all\"\n");
    let kept = acknowledged_writes(&old, "acked", 5);
    wait_replicated(&old);
    node.kill();
    // Written, never acknowledged: only the old primary's log has these.
    for n in 0..3 {
        fs::write(
            old.path(&format!("unacked-{n}")),
            b"lost with the old primary",
        )
        .unwrap();
    }
    old.crash();
    node.restart();

    let config = scratch.path().join("promoted.toml");
    let home_replica = format!("home={}", home.address);
    let primary_dir = common::scratch();
    let mountpoint = primary_dir.path().join("mnt");
    let promoted = promote(
        &node,
        &config,
        &[
            "--replica",
            &home_replica,
            "--mountpoint",
            mountpoint.to_str().unwrap(),
        ],
    );
    assert!(promoted.status.success(), "{promoted:?}");
    let copy = node.dir.join("vol");
    let new = common::Mount::over_state(
        primary_dir,
        copy.join("data"),
        copy.clone(),
        &["--config", config.to_str().unwrap()],
    );
    assert_mount_refused(&old, "fenced by epoch 2");

    // The rejoin: refused while not fenced elsewhere, done here by renames.
    let state = old.state.to_str().unwrap().to_string();
    let rejoined = common::run(&[
        "rejoin",
        "--config",
        old.dir.path().join("mount.toml").to_str().unwrap(),
        "--source",
        old.origin.to_str().unwrap(),
        "--state-dir",
        &state,
        "--dir",
        home.dir.to_str().unwrap(),
    ]);
    assert!(rejoined.status.success(), "{rejoined:?}");
    assert!(
        !old.origin.exists(),
        "the origin moved into the node's directory"
    );
    home.restart();
    let after = acknowledged_writes(&new, "after", 3);
    wait_replicated(&new);
    let mine = home.dir.join("vol/data");
    assert_eq!(common::tree(&mine), common::tree(&new.origin));
    for (name, data) in kept.iter().chain(&after) {
        assert_eq!(&fs::read(mine.join(name)).unwrap(), data, "{name}");
    }
    assert!(!mine.join("unacked-0").exists());
    let log = home.log();
    assert!(
        log.contains("kept aside") && log.contains("/unacked-0"),
        "{log}"
    );
    // And `mirrorfs replica status` shows them, with their count, bytes and paths.
    let status = common::run(&["replica", "status", "--dir", home.dir.to_str().unwrap()]);
    let status = String::from_utf8(status.stdout).unwrap();
    assert!(
        status.contains("KEPT ASIDE")
            && status.contains("/unacked-0")
            && status.contains("mirrorfs log --state-dir"),
        "{status}"
    );
    let status = common::run(&[
        "replica",
        "status",
        "--json",
        "--dir",
        home.dir.to_str().unwrap(),
    ]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let kept = &status["volumes"][0]["kept_aside"][0];
    assert_eq!(kept["data_bytes"], 3 * 25, "{status}");
    assert!(kept["records"].as_u64() >= Some(6), "{status}");
    // Only what differs was sent: no byte of a file the old primary held already (at
    // most those written through the new primary since), not a snapshot of the volume.
    let said = new.log();
    let sent = resync_bytes(&said);
    let new_bytes: u64 = after.iter().map(|(_, data)| data.len() as u64).sum();
    assert!(sent <= new_bytes, "{sent} bytes sent:\n{said}");
    let verified = common::run(&["verify", "--config", config.to_str().unwrap(), "--content"]);
    assert_eq!(verified.status.code(), Some(0), "{verified:?}");
}

/// A node keeping "vol" in `scratch`, and a primary of epoch 1 streaming to it from an
/// empty log.
fn node_streaming_from_empty(scratch: &std::path::Path) -> (Node, FakePrimary) {
    let (key_path, key) = key_file(scratch, "vol.key");
    let node = Node::start(scratch, "127.0.0.1:0", &[("vol", &key_path)]);
    let mut primary = FakePrimary::connect(&node, &key);
    assert!(matches!(
        primary.open(&node, 1, 0),
        ToPrimary::Position { .. }
    ));
    (node, primary)
}

/// A replica's copy mounted read-only while its node applies the stream: readers see what
/// the copy holds, new records show within the revalidation time, writes fail with EROFS.
#[test]
fn a_standby_mount_serves_the_copy_read_only_as_the_stream_applies() {
    let scratch = common::scratch();
    let (node, mut primary) = node_streaming_from_empty(scratch.path());
    let batch = |records, high_watermark| ToNode::Records {
        records,
        high_watermark,
    };
    let mountpoint = scratch.path().join("standby");
    fs::create_dir(&mountpoint).unwrap();
    let dir = node.dir.to_str().unwrap().to_string();
    // A copy holding nothing yet would be replaced whole by a snapshot under the mount.
    let empty = common::run(&[
        "mount",
        "--standby",
        "--dir",
        &dir,
        "--volume",
        "vol",
        mountpoint.to_str().unwrap(),
    ]);
    assert_eq!(empty.status.code(), Some(2), "{empty:?}");
    assert!(String::from_utf8_lossy(&empty.stderr).contains("holds nothing of the volume yet"));
    assert_eq!(
        primary.ask(&batch(records(0), 3)),
        ToPrimary::Ack { next: 3 }
    );

    let standby = node.mount_standby(&mountpoint, &scratch.path().join("standby.log"));
    assert_eq!(fs::read(mountpoint.join("d/f")).unwrap(), b"hello");
    let error = fs::write(mountpoint.join("d/g"), b"no").unwrap_err();
    assert_eq!(error.raw_os_error(), Some(libc::EROFS), "{error}");
    let error = fs::OpenOptions::new()
        .append(true)
        .open(mountpoint.join("d/f"))
        .and_then(|mut file| file.write_all(b" there"))
        .unwrap_err();
    assert_eq!(error.raw_os_error(), Some(libc::EROFS), "{error}");

    // The stream goes on: a new write to the file shows through the standby.
    let more = vec![Record {
        offset: 3,
        epoch: 1,
        op: Op::Write {
            path: LogPath::try_from(b"d/f".to_vec()).unwrap(),
            offset: 5,
            data: b", world".to_vec(),
        },
    }];
    assert_eq!(primary.ask(&batch(more, 4)), ToPrimary::Ack { next: 4 });
    wait_for("the standby to show the new bytes", || {
        fs::read(mountpoint.join("d/f")).is_ok_and(|bytes| bytes == b"hello, world")
    });
    drop(standby);
    assert_eq!(common::mount_type(&mountpoint), None);

    // Bad input: a volume the node does not keep, a missing --dir: one line, exit 2.
    let mnt = mountpoint.to_str().unwrap();
    for args in [
        vec![
            "mount",
            "--standby",
            "--dir",
            &dir,
            "--volume",
            "nosuch",
            mnt,
        ],
        vec!["mount", "--standby", "--volume", "vol", mnt],
    ] {
        let output = common::run(&args);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
}

/// A standby's readers see the copy as of one applied offset: a record's several steps
/// (a setattr's chown, chmod and utimes; a write's bytes) are never seen half done, however
/// often readers look while the node applies; what the node changed shows within the
/// follower's poll, not the kernel's caching time; status shows the offset served and the
/// lag.
#[test]
fn a_standby_reader_never_sees_a_record_half_applied() {
    use std::os::unix::fs::MetadataExt;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    const BYTES: usize = 16 * 1024;
    let scratch = common::scratch();
    let (node, mut primary) = node_streaming_from_empty(scratch.path());
    let path = |text: &str| LogPath::try_from(text.as_bytes().to_vec()).unwrap();
    let mut next = 0u64;
    let mut send = |ops: Vec<Op>| {
        let records: Vec<Record> = ops
            .into_iter()
            .map(|op| {
                next += 1;
                Record {
                    offset: next - 1,
                    epoch: 1,
                    op,
                }
            })
            .collect();
        let batch = ToNode::Records {
            records,
            high_watermark: next,
        };
        assert_eq!(primary.ask(&batch), ToPrimary::Ack { next });
        next
    };
    // State k: "s" owned by uid k with mode 0o400 | (k & 0o77) and mtime k s; "w" holds
    // BYTES bytes of value k.
    let state = |k: u32| {
        vec![
            Op::SetAttr {
                path: path("s"),
                mode: Some(0o400 | (k & 0o77)),
                uid: Some(k),
                gid: Some(k),
                atime: None,
                mtime: Some((i64::from(k), 0).try_into().unwrap()),
            },
            Op::Write {
                path: path("w"),
                offset: 0,
                data: vec![k as u8; BYTES],
            },
        ]
    };
    let mut first = vec![
        Op::Create {
            path: path("s"),
            mode: 0o600,
            uid: 0,
            gid: 0,
        },
        Op::Create {
            path: path("w"),
            mode: 0o644,
            uid: 0,
            gid: 0,
        },
    ];
    first.extend(state(1));
    send(first);

    let mountpoint = scratch.path().join("standby");
    fs::create_dir(&mountpoint).unwrap();
    let standby = node.mount_standby(&mountpoint, &scratch.path().join("standby.log"));

    let stop = Arc::new(AtomicBool::new(false));
    let seen_states = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..2)
        .map(|reader| {
            let (mountpoint, stop, seen_states) = (
                mountpoint.clone(),
                Arc::clone(&stop),
                Arc::clone(&seen_states),
            );
            std::thread::spawn(move || {
                let (mut looks, mut last, mut torn) = (0u64, 0u32, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    looks += 1;
                    if reader == 0 {
                        let meta = fs::metadata(mountpoint.join("s")).unwrap();
                        let k = meta.uid();
                        let whole = meta.gid() == k
                            && meta.mode() & 0o777 == 0o400 | (k & 0o77)
                            && meta.mtime() == i64::from(k);
                        if !whole {
                            torn.push(format!(
                                "uid {k} gid {} mode {:o} mtime {}",
                                meta.gid(),
                                meta.mode(),
                                meta.mtime()
                            ));
                        }
                        if k != last {
                            seen_states.fetch_add(1, Ordering::Relaxed);
                            last = k;
                        }
                    } else {
                        let bytes = fs::read(mountpoint.join("w")).unwrap();
                        if bytes.len() != BYTES || bytes.iter().any(|b| *b != bytes[0]) {
                            let values: std::collections::BTreeSet<u8> =
                                bytes.iter().copied().collect();
                            torn.push(format!("{} bytes of values {values:?}", bytes.len()));
                        }
                    }
                }
                (looks, torn)
            })
        })
        .collect();
    for k in 2..500u32 {
        send(state(k));
    }
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        let (looks, torn) = reader.join().unwrap();
        assert!(looks > 0);
        assert!(
            torn.is_empty(),
            "{} torn views, first: {}",
            torn.len(),
            torn[0]
        );
    }
    // The readers followed the stream (the kernel's caches were told), not one state.
    assert!(
        seen_states.load(Ordering::Relaxed) > 10,
        "{}",
        seen_states.load(Ordering::Relaxed)
    );

    // A new file shows within the follower's poll; status says what is served.
    let end = send(vec![Op::Create {
        path: path("new"),
        mode: 0o644,
        uid: 0,
        gid: 0,
    }]);
    let began = Instant::now();
    wait_for("the new file through the standby", || {
        mountpoint.join("new").exists()
    });
    assert!(
        began.elapsed() < Duration::from_secs(1),
        "{:?}",
        began.elapsed()
    );
    let state_dir = node.dir.join("vol/standby");
    let status = || {
        let output = common::run(&[
            "status",
            "--json",
            "--state-dir",
            state_dir.to_str().unwrap(),
        ]);
        assert!(output.status.success(), "{output:?}");
        serde_json::from_slice::<serde_json::Value>(&output.stdout).unwrap()
    };
    wait_for("status to show the offset served", || {
        status()["standby"]["served_offset"] == end
    });
    let shown = status();
    assert_eq!(shown["standby"]["lag"], 0, "{shown}");
    assert_eq!(shown["standby"]["received"], end, "{shown}");
    let text = common::run(&["status", "--state-dir", state_dir.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains(&format!("serves every record below {end}")),
        "{text}"
    );
    // A standby is not the primary: keepalived's check must not pick it.
    let check = common::run(&[
        "status",
        "--check",
        "--state-dir",
        state_dir.to_str().unwrap(),
    ]);
    assert_eq!(check.status.code(), Some(1), "{check:?}");
    drop(standby);
    assert_eq!(common::mount_type(&mountpoint), None);
}

/// Promoting a copy whose standby is mounted turns that mount into the primary without
/// unmounting it: a file open before keeps reading, opened again it takes writes, which
/// go to the copy's log at the new epoch and on to the other replica; status and
/// `status --check` say it is the primary now.
#[test]
fn a_standby_is_promoted_in_place_and_keeps_its_open_files() {
    let scratch = common::scratch();
    let (nodes, mut old) = primary_and_two_nodes(scratch.path());
    let acknowledged = acknowledged_writes(&old, "before", 10);
    wait_replicated(&old);
    let mountpoint = scratch.path().join("standby");
    fs::create_dir(&mountpoint).unwrap();
    let standby = nodes[0].mount_standby(&mountpoint, &scratch.path().join("standby.log"));
    let (name, data) = &acknowledged[3];
    let mut open = fs::File::open(mountpoint.join(name)).unwrap();
    let mut first = vec![0u8; 100];
    std::io::Read::read_exact(&mut open, &mut first).unwrap();
    assert_eq!(&first[..], &data[..100]);
    old.crash();

    let config = scratch.path().join("promoted.toml");
    let promoted = promote(&nodes[0], &config, &[]);
    assert!(promoted.status.success(), "{promoted:?}");
    let said = String::from_utf8(promoted.stdout).unwrap();
    assert!(
        said.contains(&format!(
            "the standby mounted at {} serves the volume read-write now (promoted in place at epoch 2)",
            mountpoint.display()
        )),
        "{said}"
    );
    // Still the same mount, the open file still reading.
    assert_eq!(
        common::mount_type(&mountpoint).as_deref(),
        Some("fuse.mirrorfs")
    );
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut open, &mut rest).unwrap();
    assert_eq!(&rest[..], &data[100..]);
    // Opened again, it takes writes, acknowledged by the other replica (acks = "all").
    let mut reopened = fs::OpenOptions::new()
        .append(true)
        .open(mountpoint.join(name))
        .unwrap();
    reopened.write_all(b" and more").unwrap();
    reopened.sync_all().unwrap();
    fs::write(mountpoint.join("after"), b"written after the promotion").unwrap();
    fs::File::open(mountpoint.join("after"))
        .unwrap()
        .sync_all()
        .unwrap();
    let other = nodes[1].dir.join("vol/data");
    let mut expected = data.clone();
    expected.extend_from_slice(b" and more");
    assert_eq!(fs::read(other.join(name)).unwrap(), expected);
    assert_eq!(
        fs::read(other.join("after")).unwrap(),
        b"written after the promotion"
    );
    // The promoted volume answers status at the copy's directory: the primary, epoch 2.
    let state = nodes[0].dir.join("vol");
    let status = common::run(&["status", "--json", "--state-dir", state.to_str().unwrap()]);
    assert!(status.status.success(), "{status:?}");
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(
        status["log"]["epochs"].as_array().unwrap().last().unwrap()["epoch"],
        2,
        "{status}"
    );
    assert!(status["standby"].is_null(), "{status}");
    let check = common::run(&["status", "--check", "--state-dir", state.to_str().unwrap()]);
    assert_eq!(check.status.code(), Some(0), "{check:?}");
    let log = common::run(&["log", "--json", "--state-dir", state.to_str().unwrap()]);
    let log = String::from_utf8(log.stdout).unwrap();
    let last: serde_json::Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
    assert_eq!(last["epoch"], 2, "{last}");
    drop(open);
    drop(reopened);
    drop(standby);
    assert_eq!(common::mount_type(&mountpoint), None);
}

/// Two operators promoting two in-sync copies at once: each copy's node, and the other's,
/// grants the next epoch once, so exactly one promotion goes on; the other is refused,
/// saying why, and its copy stays a replica. Three rounds, each racing afresh.
#[test]
fn two_copies_promoted_at_once_end_with_one_primary() {
    for round in 0..3 {
        let scratch = common::scratch();
        let (nodes, mut old) = primary_and_two_nodes(scratch.path());
        acknowledged_writes(&old, "both", 5);
        wait_replicated(&old);
        old.crash();
        let outputs = promote_at_once(
            nodes
                .iter()
                .enumerate()
                .map(|(n, node)| {
                    let config = scratch.path().join(format!("promoted-{n}.toml"));
                    (node.dir.clone(), config)
                })
                .collect(),
            &[],
        );
        let won: Vec<usize> = (0..2).filter(|&n| outputs[n].status.success()).collect();
        assert_eq!(won.len(), 1, "round {round}: {outputs:?}");
        let lost = &outputs[1 - won[0]];
        let stderr = String::from_utf8_lossy(&lost.stderr);
        assert!(
            stderr.contains("did not grant epoch 2")
                || stderr.contains("was promoted to primary already"),
            "round {round}: {stderr}"
        );
        let promoted: Vec<bool> = nodes
            .iter()
            .map(|node| node.dir.join("vol/promoted").exists())
            .collect();
        assert_eq!(promoted.iter().filter(|p| **p).count(), 1, "{promoted:?}");
        assert!(promoted[won[0]]);
    }
}
