//! Voters for automatic failover (issue 16) as real processes over real TCP: a witness and
//! a replica node grant each epoch once, hold to the leases they granted (across a kill -9
//! and restart too), and refuse what the rules refuse, saying why.

mod common;

use std::fs;
use std::time::{Duration, Instant};

use common::replica::{Node, key_file, peers, sample_records as records};
use mirrorfs::replication::{
    Channel, ChannelError, Standing, ToNode, ToPrimary, VolumeKey, decode_message as decode,
    encode_message as encode,
};
use tokio::net::TcpStream;

async fn connect(node: &Node, key: &VolumeKey) -> Result<Channel<TcpStream>, ChannelError> {
    let stream = TcpStream::connect(&node.address).await.unwrap();
    Channel::connect(stream, "vol", key, false).await
}

/// One question on a connection of its own; the answer.
async fn ask(node: &Node, key: &VolumeKey, message: ToNode) -> ToPrimary {
    let mut channel = connect(node, key).await.unwrap();
    channel.send(&encode(&message)).await.unwrap();
    decode(&channel.receive().await.unwrap()).unwrap()
}

fn standing(epoch: u32, next: u64) -> Standing {
    Standing { epoch, next }
}

fn elect(epoch: u32, candidate: &str, reach: Standing) -> ToNode {
    ToNode::Elect {
        epoch,
        candidate: candidate.to_string(),
        standing: reach,
    }
}

fn lease(epoch: u32, holder: &str, length: Duration) -> ToNode {
    ToNode::Lease {
        epoch,
        holder: holder.to_string(),
        standing: standing(epoch, 10),
        length_ms: length.as_millis() as u64,
    }
}

/// The reason of a refusal; panics on anything else.
fn refused(answer: ToPrimary) -> String {
    match answer {
        ToPrimary::Refuse { reason } => reason,
        other => panic!("not refused: {other:?}"),
    }
}

#[tokio::test]
async fn a_witness_grants_each_epoch_once_and_holds_to_its_leases_across_a_restart() {
    const LEASE: Duration = Duration::from_secs(2);
    let scratch = common::scratch();
    let (key_path, key) = key_file(scratch.path(), "vol.key");
    let mut witness = Node::witness(None, scratch.path(), "127.0.0.1:0", &[("vol", &key_path)]);

    // p, primary of epoch 1, takes a lease and renews it on one connection.
    let mut channel = connect(&witness, &key).await.unwrap();
    for _ in 0..2 {
        channel.send(&encode(&lease(1, "p", LEASE))).await.unwrap();
        let answer: ToPrimary = decode(&channel.receive().await.unwrap()).unwrap();
        assert_eq!(answer, ToPrimary::Leased);
    }
    drop(channel);
    // While it runs, no election.
    let why = refused(ask(&witness, &key, elect(2, "r1", standing(1, 10))).await);
    assert!(why.contains("lease of p (epoch 1)"), "{why}");

    // Killed and restarted: it remembers the epoch it granted, and waits a whole lease
    // before it grants a new one (it cannot know when the one it granted ends).
    witness.kill();
    witness.restart();
    let why = refused(ask(&witness, &key, lease(1, "q", LEASE)).await);
    assert!(why.contains("granted to p"), "{why}");
    let why = refused(ask(&witness, &key, elect(2, "r1", standing(1, 10))).await);
    assert!(why.contains("restarted"), "{why}");
    let restarted = Instant::now();

    // Then: epoch 2 to r1; not to r2, no further; the old primary's renewal is refused.
    let voted = loop {
        match ask(&witness, &key, elect(2, "r1", standing(1, 10))).await {
            ToPrimary::Voted => break restarted.elapsed(),
            answer => {
                let why = refused(answer);
                assert!(why.contains("restarted"), "{why}");
                assert!(restarted.elapsed() < LEASE * 3, "{why}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert!(voted >= LEASE / 2, "voted {voted:?} after the restart");
    let why = refused(ask(&witness, &key, elect(2, "r2", standing(1, 10))).await);
    assert!(why.contains("epoch 2 was granted to r1"), "{why}");
    // The old primary, renewing, is told it is deposed, as a replica tells it (fenced).
    assert_eq!(
        ask(&witness, &key, lease(1, "p", LEASE)).await,
        ToPrimary::Fenced { epoch: 2 }
    );
    assert_eq!(
        ask(&witness, &key, lease(2, "r1", LEASE)).await,
        ToPrimary::Leased
    );
    let status = common::run(&["replica", "status", "--dir", witness.dir.to_str().unwrap()]);
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.contains("a witness: votes only")
            && status.contains("votes: epoch 2 granted to r1; lease of r1 (epoch 2) runs"),
        "{status}"
    );

    // It wrote nothing but its own files and the volume's ballot.
    let mut entries: Vec<String> = fs::read_dir(&witness.dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    assert_eq!(entries, [".node", "vol"]);
    let ballot = fs::read_to_string(witness.dir.join("vol/ballot")).unwrap();
    assert!(
        ballot.contains("\"epoch\":2") && ballot.contains("\"to\":\"r1\""),
        "{ballot}"
    );
}

#[tokio::test]
async fn a_witness_refuses_what_is_not_a_vote_and_anyone_without_the_key() {
    let scratch = common::scratch();
    let (key_path, key) = key_file(scratch.path(), "vol.key");
    let (_, other_key) = key_file(scratch.path(), "other.key");
    let witness = Node::witness(None, scratch.path(), "127.0.0.1:0", &[("vol", &key_path)]);
    let wrong = connect(&witness, &other_key).await;
    assert!(
        matches!(wrong, Err(ChannelError::Authentication(_))),
        "{wrong:?}"
    );
    let open = ToNode::Open {
        epoch: 1,
        log_start: 0,
        log_end: 0,
        peers: peers("r0", "127.0.0.1:1"),
    };
    let why = refused(ask(&witness, &key, open).await);
    assert!(why.contains("only Elect and Lease"), "{why}");
    let why = refused(ask(&witness, &key, ToNode::Inspect).await);
    assert!(why.contains("only Elect and Lease"), "{why}");
    // Still voting.
    assert_eq!(
        ask(&witness, &key, elect(1, "r1", standing(0, 0))).await,
        ToPrimary::Voted
    );
}

/// A replica node votes too, and refuses a candidate whose copy is behind its own.
#[tokio::test]
async fn a_replica_node_votes_only_for_a_candidate_as_far_as_its_own_copy() {
    let scratch = common::scratch();
    let (key_path, key) = key_file(scratch.path(), "vol.key");
    let node = Node::start(scratch.path(), "127.0.0.1:0", &[("vol", &key_path)]);
    let mut primary = connect(&node, &key).await.unwrap();
    let open = ToNode::Open {
        epoch: 1,
        log_start: 0,
        log_end: 0,
        peers: peers("r0", "127.0.0.1:1"),
    };
    primary.send(&encode(&open)).await.unwrap();
    let _position: ToPrimary = decode(&primary.receive().await.unwrap()).unwrap();
    let batch = ToNode::Records {
        records: records(0),
        high_watermark: 3,
    };
    primary.send(&encode(&batch)).await.unwrap();
    let acked: ToPrimary = decode(&primary.receive().await.unwrap()).unwrap();
    assert_eq!(acked, ToPrimary::Ack { next: 3 });
    drop(primary);

    let why = refused(ask(&node, &key, elect(2, "r9", standing(1, 2))).await);
    assert!(why.contains("behind this voter's"), "{why}");
    assert_eq!(
        ask(&node, &key, elect(2, "r9", standing(1, 3))).await,
        ToPrimary::Voted
    );
    assert!(node.dir.join("vol/ballot").exists());
    assert_eq!(
        node.first_volume()["votes"]["granted_to"],
        "r9",
        "replica status --json shows the node's votes"
    );
}

/// Writes `name` through `mount`, with fsync if `synced`: Ok, or the errno of the step
/// that failed.
fn write(mount: &common::Mount, name: &str, synced: bool) -> Result<(), i32> {
    use std::io::Write;
    let mut file = fs::File::create(mount.path(name)).map_err(|e| e.raw_os_error().unwrap())?;
    file.write_all(b"leased")
        .map_err(|e| e.raw_os_error().unwrap())?;
    match synced {
        true => file.sync_all().map_err(|e| e.raw_os_error().unwrap()),
        false => Ok(()),
    }
}

/// With automatic failover, the primary (P) takes changes only while a majority of the
/// voters (P, its replica R1, a witness W) grants its lease: with R1 cut off P and W are
/// two of three and it goes on taking changes (an fsync waits for R1, which must hold
/// every acknowledged write: see `failover::check_durability`); with W cut off too its
/// lease runs out within the lease's length and changes fail with EROFS (fsync EIO); once
/// W is back it holds the lease again.
#[test]
fn a_primary_takes_changes_only_while_a_majority_grants_its_lease() {
    use common::netns::Link;
    let scratch = common::scratch();
    let (key_path, _) = key_file(scratch.path(), "vol.key");
    let links = [Link::new(), Link::new()];
    for dir in ["r1", "w"] {
        fs::create_dir(scratch.path().join(dir)).unwrap();
    }
    let replica = Node::start_in(
        Some(&links[0].name),
        &scratch.path().join("r1"),
        &format!("{}:7071", links[0].address),
        &[("vol", &key_path)],
    );
    let witness = Node::witness(
        Some(&links[1].name),
        &scratch.path().join("w"),
        &format!("{}:7080", links[1].address),
        &[("vol", &key_path)],
    );
    let settings = format!(
        "acks = \"all\"\n[failover]\nmode = \"auto\"\nlease = \"2s\"\nname = \"p\"\n\
         [[failover.witnesses]]\nname = \"w\"\naddress = \"{}\"\n",
        witness.address
    );
    let mount = common::replica::replicated_mount("vol", &key_path, &[&replica], &settings);
    assert_eq!(write(&mount, "all-up", true), Ok(()));
    let check = common::run(&[
        "status",
        "--check",
        "--state-dir",
        mount.state.to_str().unwrap(),
    ]);
    assert!(check.status.success(), "{check:?}");
    let lease = |mount: &common::Mount| mount.status_json()["replication"]["lease"].clone();
    let held = lease(&mount);
    assert!(held["held_for_ms"].as_u64().is_some(), "{held}");
    assert_eq!(
        (
            &held["name"],
            &held["granted"],
            &held["majority"],
            &held["voters"]
        ),
        (&"p".into(), &3.into(), &2.into(), &3.into()),
        "{held}"
    );

    links[0].cut();
    for n in 0..5 {
        assert_eq!(
            write(&mount, &format!("r1-away-{n}"), false),
            Ok(()),
            "{}",
            mount.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let held = lease(&mount);
    assert!(
        held["held_for_ms"].as_u64().is_some() && held["granted"] == 2,
        "{held}"
    );

    // Alone: the lease (2 s, counted as 2 s / 1.1² here) runs out, and P says why.
    let mut open = fs::OpenOptions::new()
        .append(true)
        .open(mount.path("all-up"))
        .unwrap();
    // Written under the lease, closed without it: the close still records its mtime, or
    // the replica would keep its own for good.
    let mut early = fs::File::create(mount.path("closed-without-lease")).unwrap();
    std::io::Write::write_all(&mut early, b"written under the lease").unwrap();
    links[1].cut();
    let cut = Instant::now();
    let refused = loop {
        match write(&mount, "alone", false) {
            Err(errno) => break errno,
            Ok(()) => {
                assert!(
                    cut.elapsed() < Duration::from_secs(4),
                    "still taking changes"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    eprintln!("changes refused {:?} after the cut", cut.elapsed());
    assert_eq!(refused, libc::EROFS);
    assert!(
        cut.elapsed() < Duration::from_secs(4),
        "{:?}",
        cut.elapsed()
    );
    drop(early);
    let error = std::io::Write::write_all(&mut open, b"x")
        .and_then(|()| open.sync_all())
        .unwrap_err();
    assert!(
        matches!(error.raw_os_error(), Some(libc::EROFS | libc::EIO)),
        "{error}"
    );
    assert!(
        mount.log().contains("lease was not renewed"),
        "{}",
        mount.log()
    );
    let lost = lease(&mount);
    assert!(
        lost["held_for_ms"].is_null() && lost["why_not"].is_string(),
        "{lost}"
    );
    let text = common::run(&["status", "--state-dir", mount.state.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("LEASE        not held by p"), "{text}");
    // keepalived's check fails too: a primary out of its lease must not hold a VIP.
    let check = common::run(&[
        "status",
        "--check",
        "--state-dir",
        mount.state.to_str().unwrap(),
    ]);
    assert_eq!(check.status.code(), Some(1));
    let said = String::from_utf8_lossy(&check.stderr);
    assert!(said.contains("does not hold its lease"), "{said}");

    // W back: P and W are a majority again.
    links[1].restore();
    let back = Instant::now();
    while write(&mount, "w-back", false).is_err() {
        assert!(back.elapsed() < Duration::from_secs(10), "{}", mount.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    links[0].restore();
    let back = Instant::now();
    while write(&mount, "r1-back", true).is_err() {
        assert!(back.elapsed() < Duration::from_secs(30), "{}", mount.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    common::replica::wait_replicated(&mount);
    let mtime = |path: std::path::PathBuf| fs::metadata(path).unwrap().modified().unwrap();
    assert_eq!(
        mtime(replica.dir.join("vol/data/closed-without-lease")),
        mtime(mount.origin_path("closed-without-lease")),
        "the replica's mtime is its own"
    );
}
