//! Regression tests for the defects issue 13 lists, one per defect, each named for it:
//! ordinary input that once broke a replica, a replay, verify or the daemon's shutdown.

mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::time::{Duration, Instant};

use common::replica::{Node, key_file, replicated_mount, wait_replicated};
use common::{Mount, c_path, tree};

/// Issue 13.1: `chown -h` of a symlink recorded a mode, which no copy can set on a
/// symlink (EOPNOTSUPP), and the replica stopped at that record for good.
#[test]
fn issue13_1_a_symlinks_chown_replicates() {
    let scratch = common::scratch();
    let (key, _) = key_file(scratch.path(), "vol.key");
    let node = Node::start(scratch.path(), "127.0.0.1:0", &[("vol", &key)]);
    let mount = replicated_mount("vol", &key, &[&node], "acks = \"all\"\n");
    symlink("target", mount.path("l")).unwrap();
    std::os::unix::fs::lchown(mount.path("l"), Some(0), Some(0)).unwrap();
    std::os::unix::fs::lchown(mount.path("l"), Some(65534), Some(65534)).unwrap();
    fs::write(mount.path("after"), b"hi").unwrap();
    fs::File::open(mount.path("after"))
        .unwrap()
        .sync_all()
        .unwrap();
    wait_replicated(&mount);
    assert_eq!(
        tree(&node.dir.join("vol/data")),
        tree(&mount.origin),
        "{}",
        node.log()
    );
}

/// Issue 13.5: the hasher opened a name for rehashing with a blocking open(2); when the
/// name had become a FIFO meanwhile, it blocked for ever, and the daemon never exited
/// after unmount.
#[test]
fn issue13_5_a_name_turned_fifo_never_blocks_the_hasher() {
    let mut mount = Mount::with_config(
        "[write]\nmode = \"write-behind\"\nflush_interval = \"2s\"\n[verify]\nstored_hashes = true\n",
    );
    for n in 0..20 {
        let name = format!("f{n}");
        fs::write(mount.path(&name), vec![n as u8; 10_000]).unwrap();
        let fifo = c_path(&mount.path(&format!("p{n}")));
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        fs::rename(mount.path(&format!("p{n}")), mount.path(&name)).unwrap();
    }
    // The hasher takes the jobs once the flush has put the writes in the origin.
    std::thread::sleep(Duration::from_secs(3));
    let started = Instant::now();
    assert_eq!(mount.stop_with(libc::SIGTERM), Some(0), "{}", mount.log());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the daemon took {:?} to exit",
        started.elapsed()
    );
}
