//! Automatic failover end to end (docs/design.md 9.8): real replica nodes, a witness, a
//! primary mount and standby mounts, as separate processes. The replicas elect a new
//! primary when the old one is lost, and only when a majority of the voters can.

mod common;

use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use common::replica::{Node, key_file, nodes_apart, replicated_mount, wait_replicated};

/// Writes `name` with fsync under `dir`: whether every step returned 0.
fn synced_write(dir: &Path, name: &str) -> bool {
    let written = fs::File::create(dir.join(name)).and_then(|mut file| {
        file.write_all(name.as_bytes())?;
        file.sync_all()
    });
    written.is_ok()
}

/// A volume's key file, replica nodes named `names` and a witness "w", each in a
/// directory of its own under `scratch`.
fn voters(scratch: &Path, names: &[&str]) -> (std::path::PathBuf, Vec<Node>, Node) {
    let (key_path, _) = key_file(scratch, "vol.key");
    let nodes = nodes_apart(scratch, names, &key_path);
    fs::create_dir(scratch.join("w")).unwrap();
    let witness = Node::witness(
        None,
        &scratch.join("w"),
        "127.0.0.1:0",
        &[("vol", &key_path)],
    );
    (key_path, nodes, witness)
}

/// The `[replication]` lines (`replication` after `acks = "all"`) and the `[failover]`
/// section (`failover` after its mode and name) of a primary "p" with automatic failover
/// and `witness` as its witness "w".
fn auto_failover(replication: &str, failover: &str, witness: &Node) -> String {
    format!(
        "acks = \"all\"\n{replication}[failover]\nmode = \"auto\"\nname = \"p\"\n{failover}\
         [[failover.witnesses]]\nname = \"w\"\naddress = \"{}\"\n",
        witness.address
    )
}

/// A node's first volume, as `replica status --json` shows it.
fn election(node: &Node) -> serde_json::Value {
    node.first_volume()["election"].clone()
}

/// The primary (p) replicates to r0 and r1 with a witness w, each copy mounted as a
/// standby. Killed with SIGKILL, p is replaced without anyone's help: one replica wins
/// the next epoch, its standby turns read-write in place, it holds every write p
/// acknowledged, the other replica follows it, `on_promote` is told the config written,
/// and both nodes' status tells the election.
#[test]
fn a_replica_is_elected_when_the_primary_is_killed_and_serves_every_acknowledged_write() {
    let scratch = common::scratch();
    let (key_path, nodes, witness) = voters(scratch.path(), &["r0", "r1"]);
    let promoted_log = scratch.path().join("promoted");
    let hook = format!(
        "min_insync = 1\non_promote = \"echo $MIRRORFS_EPOCH $MIRRORFS_CONFIG >> {}\"\n",
        promoted_log.display()
    );
    let settings = auto_failover(&hook, "lease = \"2s\"\n", &witness);
    let mut primary = replicated_mount("vol", &key_path, &[&nodes[0], &nodes[1]], &settings);
    let mut acknowledged = Vec::new();
    for n in 0..20 {
        let name = format!("before-{n}");
        assert!(synced_write(&primary.path(""), &name), "{}", primary.log());
        acknowledged.push(name);
    }
    wait_replicated(&primary);
    let standbys: Vec<common::MountedChild> = nodes
        .iter()
        .enumerate()
        .map(|(n, node)| {
            let mountpoint = scratch.path().join(format!("standby{n}"));
            fs::create_dir(&mountpoint).unwrap();
            node.mount_standby(&mountpoint, &scratch.path().join(format!("standby{n}.log")))
        })
        .collect();
    for node in &nodes {
        let deadline = Instant::now() + Duration::from_secs(5);
        while election(node)["now"] != "following p" {
            assert!(Instant::now() < deadline, "{}", node.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    let killed = Instant::now();
    primary.crash();
    // The first write acknowledged after the kill, on whichever standby was promoted.
    let winner = 'elected: loop {
        for (n, standby) in standbys.iter().enumerate() {
            if synced_write(&standby.mountpoint, "after") {
                break 'elected n;
            }
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "no replica took over:\n{}\n{}",
            nodes[0].log(),
            nodes[1].log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!(
        "failover: first acknowledged write {:?} after the kill",
        killed.elapsed()
    );
    let loser = 1 - winner;
    let served = &standbys[winner].mountpoint;
    for name in &acknowledged {
        assert_eq!(
            fs::read(served.join(name)).unwrap(),
            name.as_bytes(),
            "{name} lost"
        );
    }
    // The winner stood, and says why and with what votes.
    let won = election(&nodes[winner]);
    let last = &won["last"];
    assert_eq!(last["won"], true, "{won}");
    // Epoch 2, unless both replicas stood at once and split the first votes.
    let epoch = last["epoch"].as_u64().unwrap();
    assert!(epoch >= 2, "{won}");
    let reason = last["reason"].as_str().unwrap();
    assert!(reason.contains("primary p not heard"), "{won}");
    assert_eq!(nodes[winner].first_volume()["promoted"], epoch);
    // The other follows the new primary: the write after the kill reaches its copy.
    let follower = nodes[loser].dir.join("vol/data/after");
    let deadline = Instant::now() + Duration::from_secs(20);
    while fs::read(&follower).ok().as_deref() != Some(&b"after"[..]) {
        assert!(
            Instant::now() < deadline,
            "the other replica does not follow:\n{}\n{}",
            nodes[loser].log(),
            standbys[winner].log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let text = common::run(&[
        "replica",
        "status",
        "--dir",
        nodes[winner].dir.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains(&format!("last election: epoch {epoch}")) && text.contains("won"),
        "{text}"
    );
    // on_promote was told the epoch and the config the node wrote, which keeps automatic
    // failover for the next time under the winner's name.
    let hook = fs::read_to_string(&promoted_log).unwrap();
    let config_path = nodes[winner].dir.join("vol/primary.toml");
    assert_eq!(hook.trim(), format!("{epoch} {}", config_path.display()));
    let config: toml::Value = toml::from_str(&fs::read_to_string(&config_path).unwrap()).unwrap();
    assert_eq!(config["failover"]["mode"].as_str(), Some("auto"));
    assert_eq!(
        config["failover"]["name"].as_str(),
        Some(format!("r{winner}").as_str())
    );
    // The new primary holds its lease from the voters left: itself, the other, w.
    let status = common::run(&[
        "status",
        "--json",
        "--state-dir",
        nodes[winner].dir.join("vol").to_str().unwrap(),
    ]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let lease = &status["replication"]["lease"];
    assert!(lease["held_for_ms"].as_u64().is_some(), "{status}");
    assert_eq!(lease["voters"], 3, "{status}");
    // And the election that made it, with its reason.
    assert_eq!(status["role"], "primary", "{status}");
    assert_eq!(status["election"]["epoch"], epoch, "{status}");
    assert!(
        status["election"]["reason"]
            .as_str()
            .unwrap()
            .contains("primary p not heard"),
        "{status}"
    );
    let text = common::run(&[
        "status",
        "--state-dir",
        nodes[winner].dir.join("vol").to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains(&format!("elected      epoch {epoch}")),
        "{text}"
    );
    assert!(text.contains("lease        held as r"), "{text}");
    assert!(text.contains("role         primary"), "{text}");
}

/// Two machines and no witness: the primary says automatic failover is off (two voters
/// keep no majority when one is lost), and the replica never promotes itself when the
/// primary is killed.
#[test]
fn two_voters_never_elect_and_say_why() {
    let scratch = common::scratch();
    let (key_path, _) = key_file(scratch.path(), "vol.key");
    let nodes = nodes_apart(scratch.path(), &["r0"], &key_path);
    let settings = "acks = \"all\"\n[failover]\nmode = \"auto\"\nlease = \"1s\"\nname = \"p\"\n";
    let mut primary = replicated_mount("vol", &key_path, &[&nodes[0]], settings);
    assert!(synced_write(&primary.path(""), "acknowledged"));
    wait_replicated(&primary);
    assert!(
        primary
            .log()
            .contains("automatic failover is off: 2 voter(s)"),
        "{}",
        primary.log()
    );
    primary.crash();
    // Far past when an election would have been won with three voters (see above).
    std::thread::sleep(Duration::from_secs(8));
    let volume = nodes[0].first_volume();
    assert!(volume["promoted"].is_null(), "{volume}");
    assert!(
        volume["election"]["last"].is_null(),
        "it stood for election: {volume}"
    );
    assert!(!nodes[0].dir.join("vol/primary.toml").exists());
    assert!(nodes[0].dir.join("vol/data/acknowledged").exists());
}

/// The primary (p, `unclean` as given) with replicas r0 and r1 and a witness; some writes
/// acknowledged; p killed; then both replicas made stale, as replicas that fell out of the
/// in-sync set are: each node is stopped and its copy told a high watermark past what it
/// holds, and started again. Returns the nodes (and the witness, kept running).
fn stale_replicas(scratch: &Path, unclean: bool) -> (Vec<Node>, Node) {
    let (key_path, mut nodes, witness) = voters(scratch, &["r0", "r1"]);
    let failover = format!("lease = \"1s\"\nunclean = {unclean}\n");
    let settings = auto_failover("", &failover, &witness);
    let mut primary = replicated_mount("vol", &key_path, &[&nodes[0], &nodes[1]], &settings);
    for n in 0..5 {
        assert!(synced_write(&primary.path(""), &format!("f{n}")));
    }
    wait_replicated(&primary);
    primary.crash();
    for node in &mut nodes {
        node.stop();
        let copy = node.dir.join("vol");
        let next = node.first_volume()["next"].as_u64().unwrap();
        fs::write(copy.join("high-watermark"), format!("{}\n", next + 10)).unwrap();
        node.restart();
    }
    (nodes, witness)
}

/// Every replica stale and `unclean = false` (the default): nobody is elected, and each
/// node says why it does not stand.
#[test]
fn with_every_replica_stale_nobody_is_elected_and_each_says_why() {
    let scratch = common::scratch();
    let (nodes, _witness) = stale_replicas(scratch.path(), false);
    std::thread::sleep(Duration::from_secs(6));
    for node in &nodes {
        let volume = node.first_volume();
        assert!(volume["promoted"].is_null(), "{volume}");
        let now = volume["election"]["now"].as_str().unwrap_or_default();
        assert!(now.contains("not in sync"), "{volume}");
        assert!(now.contains("unclean = true"), "{volume}");
    }
}

/// Every replica stale and `unclean = true`: the most advanced is elected anyway, and
/// the election logs what may be lost.
#[test]
fn with_every_replica_stale_unclean_elects_one_and_says_what_may_be_lost() {
    let scratch = common::scratch();
    let (nodes, _witness) = stale_replicas(scratch.path(), true);
    let deadline = Instant::now() + Duration::from_secs(20);
    let winner = loop {
        if let Some(winner) = nodes
            .iter()
            .find(|node| node.first_volume()["promoted"].as_u64().is_some())
        {
            break winner;
        }
        assert!(
            Instant::now() < deadline,
            "nobody elected:\n{}\n{}",
            nodes[0].log(),
            nodes[1].log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let log = winner.log();
    assert!(log.contains("unclean election"), "{log}");
    assert!(winner.dir.join("vol/data/f4").exists());
}

/// A free TCP port on loopback (bound and let go: a node binds it next).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The primary is killed between changing its origin and recording the change (planted
/// here: a file in its origin that no record names), and replaced by election. Rejoined
/// as a replica where its config's `[failover] address` says, it is listed by the new
/// primary, which resyncs it: the unrecorded file goes, though its log matches the new
/// primary's, and its copy verifies clean.
#[test]
fn a_killed_primary_rejoins_without_what_it_never_recorded() {
    let scratch = common::scratch();
    let (key_path, nodes, witness) = voters(scratch.path(), &["r0"]);
    let home = format!("127.0.0.1:{}", free_port());
    let failover = format!("lease = \"1s\"\naddress = \"{home}\"\n");
    let settings = auto_failover("", &failover, &witness);
    let mut primary = replicated_mount("vol", &key_path, &[&nodes[0]], &settings);
    for n in 0..5 {
        assert!(synced_write(&primary.path(""), &format!("f{n}")));
    }
    wait_replicated(&primary);
    let config = primary.full_config();
    primary.crash();
    fs::write(primary.origin_path("unrecorded"), b"never in any log").unwrap();

    // r0 is elected; its config (no standby here) is mounted (elsewhere than p's
    // mount point, which p's own config tries below).
    let elected = nodes[0].dir.join("vol/primary.toml");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !elected.exists() {
        assert!(Instant::now() < deadline, "{}", nodes[0].log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let mountpoint = scratch.path().join("new-mnt");
    fs::create_dir(&mountpoint).unwrap();
    let data = nodes[0].dir.join("vol/data");
    let new = common::MountedChild::start(
        &[
            "--config",
            elected.to_str().unwrap(),
            data.to_str().unwrap(),
            mountpoint.to_str().unwrap(),
        ],
        &mountpoint,
        &scratch.path().join("new.log"),
    );
    // Taken (r0 and w hold the lease), not yet acknowledged: p is its one replica.
    fs::write(new.mountpoint.join("after"), b"after").unwrap();

    // p: fenced at its first contact, then rejoined and served by a node at its address.
    let refused = common::run(&["mount", "--config", config.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("fenced"), "{refused:?}");
    let dir = scratch.path().join("p-node");
    let missing = common::run(&[
        "rejoin",
        "--config",
        config.to_str().unwrap(),
        "--dir",
        dir.join("replicas").to_str().unwrap(),
    ]);
    let said = String::from_utf8_lossy(&missing.stderr);
    assert!(said.contains("is not a directory"), "{said}");
    assert_eq!(said.lines().count(), 1, "{said}");
    fs::create_dir_all(dir.join("replicas")).unwrap();
    let rejoined = common::run(&[
        "rejoin",
        "--config",
        config.to_str().unwrap(),
        "--dir",
        dir.join("replicas").to_str().unwrap(),
    ]);
    assert!(rejoined.status.success(), "{rejoined:?}");
    let node = Node::start(&dir, &home, &[("vol", &key_path)]);
    let copy = node.dir.join("vol/data");
    let deadline = Instant::now() + Duration::from_secs(20);
    while copy.join("unrecorded").exists() || !copy.join("after").exists() {
        assert!(
            Instant::now() < deadline,
            "the rejoined copy keeps what no record names:\n{}\n{}",
            node.log(),
            new.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let verified = common::run(&["verify", "--content", "--config", elected.to_str().unwrap()]);
    assert_eq!(verified.status.code(), Some(0), "{verified:?}");
}
