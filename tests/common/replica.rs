//! Replica nodes for tests: real `mirrorfs replica serve` processes, and their keys.

use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mirrorfs::config::{Acks, OnInsufficient, Replica};
use mirrorfs::log::{LogPath, Op, Record};
use mirrorfs::replication::{Peers, VolumeKey};

/// A running `mirrorfs replica serve`, stopped (by its pid) when dropped.
pub struct Node {
    child: Option<Child>,
    /// Where it listens.
    pub address: String,
    log: PathBuf,
    /// Its directory: one copy per volume, `DIR/<id>/data`.
    pub dir: PathBuf,
    scratch: PathBuf,
    volumes: Vec<(String, PathBuf)>,
    /// The network namespace it runs in, if not this one.
    netns: Option<String>,
    /// "replica", or "witness" for a witness (votes only).
    role: &'static str,
}

impl Node {
    /// Starts a node listening on `listen` ("127.0.0.1:0" for any port) with its files
    /// in `scratch` (its copies under `replicas/`), keeping `volumes` (id, key file).
    pub fn start(scratch: &Path, listen: &str, volumes: &[(&str, &Path)]) -> Node {
        Node::start_in(None, scratch, listen, volumes)
    }

    /// [`Node::start`] inside network namespace `netns` (`ip netns exec` execs the node,
    /// so the pid is the node's own).
    pub fn start_in(
        netns: Option<&str>,
        scratch: &Path,
        listen: &str,
        volumes: &[(&str, &Path)],
    ) -> Node {
        Node::start_configured(netns, scratch, listen, volumes, "")
    }

    /// A witness (`mirrorfs witness serve`) inside `netns`, if given, voting for `volumes`.
    pub fn witness(
        netns: Option<&str>,
        scratch: &Path,
        listen: &str,
        volumes: &[(&str, &Path)],
    ) -> Node {
        Node::spawn("witness", netns, scratch, listen, volumes, "")
    }

    /// [`Node::start_in`] with `settings` (lines of a node config file) as well.
    pub fn start_configured(
        netns: Option<&str>,
        scratch: &Path,
        listen: &str,
        volumes: &[(&str, &Path)],
        settings: &str,
    ) -> Node {
        Node::spawn("replica", netns, scratch, listen, volumes, settings)
    }

    fn spawn(
        role: &'static str,
        netns: Option<&str>,
        scratch: &Path,
        listen: &str,
        volumes: &[(&str, &Path)],
        settings: &str,
    ) -> Node {
        let dir = scratch.join("replicas");
        let log = scratch.join("node.log");
        let mut command = match netns {
            Some(netns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", netns, super::binary()]);
                command
            }
            None => Command::new(super::binary()),
        };
        command
            .args([role, "serve", "--listen", listen, "--dir"])
            .arg(&dir);
        for (id, key) in volumes {
            command
                .arg("--volume")
                .arg(format!("{id}={}", key.display()));
        }
        if !settings.is_empty() {
            let config = scratch.join("node.toml");
            fs::write(&config, settings).unwrap();
            command.arg("--config").arg(config);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        // The guard first, so a node that fails to start is still stopped.
        let mut node = Node {
            child: Some(child),
            address: String::new(),
            log,
            dir,
            scratch: scratch.to_path_buf(),
            volumes: volumes
                .iter()
                .map(|(id, key)| (id.to_string(), key.to_path_buf()))
                .collect(),
            netns: netns.map(str::to_string),
            role,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = node.log();
            // The node's own line, not its metrics endpoint's.
            if let Some(at) = text.rfind("serving address=") {
                node.address = text[at + 16..]
                    .split_whitespace()
                    .next()
                    .unwrap()
                    .to_string();
                return node;
            }
            assert!(Instant::now() < deadline, "the node did not start:\n{text}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `mirrorfs replica status --json` of this node: its first volume's entry.
    pub fn first_volume(&self) -> serde_json::Value {
        let output = super::run(&[
            "replica",
            "status",
            "--json",
            "--dir",
            self.dir.to_str().unwrap(),
        ]);
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        report["volumes"][0].clone()
    }

    /// Mounts the standby of this node's copy of "vol" at `mountpoint`, its log in `log`.
    pub fn mount_standby(&self, mountpoint: &Path, log: &Path) -> super::MountedChild {
        super::MountedChild::start(
            &[
                "--standby",
                "--dir",
                self.dir.to_str().unwrap(),
                "--volume",
                "vol",
                mountpoint.to_str().unwrap(),
            ],
            mountpoint,
            log,
        )
    }

    /// The node's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills the node with SIGKILL (its files stay).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on the pid of the child this guard started.
            unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
            let _ = child.wait();
        }
    }

    /// Stops the node with SIGTERM, as an operator would (it saves its stored hashes).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on the pid of the child this guard started.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
    }

    /// Starts a killed node again, on the same address, directory and volumes.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "still running");
        let volumes: Vec<(String, PathBuf)> = self.volumes.clone();
        let borrowed: Vec<(&str, &Path)> = volumes
            .iter()
            .map(|(id, key)| (id.as_str(), key.as_path()))
            .collect();
        let mut again = Node::spawn(
            self.role,
            self.netns.as_deref(),
            &self.scratch,
            &self.address,
            &borrowed,
            "",
        );
        self.child = again.child.take();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on the pid of the child this guard started.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
    }
}

/// A new key in `dir/name`, mode 0600, and the key.
pub fn key_file(dir: &Path, name: &str) -> (PathBuf, VolumeKey) {
    let key = VolumeKey::generate().unwrap();
    let path = dir.join(name);
    let mut file = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&path)
        .unwrap();
    std::io::Write::write_all(&mut file, format!("{}\n", key.to_hex()).as_bytes()).unwrap();
    (path, key)
}

/// Three records of epoch 1 from offset `from`: a directory, a file in it, its bytes.
pub fn sample_records(from: u64) -> Vec<Record> {
    let path = |text: &str| LogPath::try_from(text.as_bytes().to_vec()).unwrap();
    [
        Op::Mkdir {
            path: path("d"),
            mode: 0o755,
            uid: 0,
            gid: 0,
        },
        Op::Create {
            path: path("d/f"),
            mode: 0o644,
            uid: 0,
            gid: 0,
        },
        Op::Write {
            path: path("d/f"),
            offset: 0,
            data: b"hello".to_vec(),
        },
    ]
    .into_iter()
    .enumerate()
    .map(|(n, op)| Record {
        offset: from + n as u64,
        epoch: 1,
        op,
    })
    .collect()
}

/// What a test playing a primary tells a node it is: replica `this` of one.
pub fn peers(this: &str, address: &str) -> Box<Peers> {
    Box::new(Peers {
        this: this.to_string(),
        replicas: vec![Replica {
            name: this.to_string(),
            address: address.to_string(),
        }],
        acks: Acks::All,
        min_insync: 1,
        on_insufficient: OnInsufficient::Fail,
        plaintext: false,
        on_promote: None,
        on_fenced: None,
        failover: None,
        ack_timeout_ms: None,
        lag_max_ms: None,
        compression: Default::default(),
        rate_bytes_max: None,
    })
}

/// A mount of volume `id` replicating to `nodes`, with `extra` lines in [replication].
pub fn replicated_mount(id: &str, key: &Path, nodes: &[&Node], extra: &str) -> super::Mount {
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
    super::Mount::with_config(&config)
}

/// Starts an fsync of the file at `path` in a thread, checks it is still waiting after
/// `blocked_for`, runs `release`, and checks the fsync then succeeds within 30 s.
pub fn fsync_waits_until(path: &Path, blocked_for: Duration, release: impl FnOnce()) {
    let file = fs::File::open(path).unwrap();
    let syncing = std::thread::spawn(move || file.sync_all());
    std::thread::sleep(blocked_for);
    assert!(
        !syncing.is_finished(),
        "fsync returned while it had to wait"
    );
    release();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !syncing.is_finished() {
        assert!(
            Instant::now() < deadline,
            "fsync still waiting after release"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    syncing.join().unwrap().unwrap();
}

/// Waits until every replica has acknowledged the whole log.
pub fn wait_replicated(mount: &super::Mount) {
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

/// Nodes keeping volume "vol" (key file `key`), each in a directory of its own under
/// `scratch`, named `names`.
pub fn nodes_apart(scratch: &Path, names: &[&str], key: &Path) -> Vec<Node> {
    names
        .iter()
        .map(|name| {
            let dir = scratch.join(name);
            fs::create_dir(&dir).unwrap();
            Node::start(&dir, "127.0.0.1:0", &[("vol", key)])
        })
        .collect()
}

/// The bytes of data the first resync a primary's `log` tells of sent.
pub fn resync_bytes(log: &str) -> u64 {
    resync_figure(log, "bytes")
}

/// The figure `name` (`bytes`, `hashed`, `operations`) of the resync a primary's `log`
/// says completed.
pub fn resync_figure(log: &str, name: &str) -> u64 {
    let line = log
        .lines()
        .find(|line| line.contains("resync complete"))
        .unwrap_or_else(|| panic!("no resync in the log:\n{log}"));
    let figure = line
        .split(&format!("{name}="))
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_default();
    figure.parse().unwrap_or_else(|_| panic!("{line}"))
}

/// A key for volume "vol" in `scratch`, and a node keeping that volume: the start of most
/// replication tests.
pub fn vol_node(scratch: &Path) -> (PathBuf, Node) {
    let (key, _) = key_file(scratch, "vol.key");
    let node = Node::start(scratch, "127.0.0.1:0", &[("vol", &key)]);
    (key, node)
}

/// Asserts that `node`'s copy of volume "vol" equals `mount`'s origin (`tree()`), naming
/// only the paths that differ.
pub fn assert_copy_equal(node: &Node, mount: &super::Mount) {
    let copy = super::tree(&node.dir.join("vol/data"));
    let origin = super::tree(&mount.origin);
    let mut differences = Vec::new();
    for path in origin
        .keys()
        .chain(copy.keys().filter(|path| !origin.contains_key(*path)))
    {
        let (ours, theirs) = (origin.get(path), copy.get(path));
        if ours != theirs {
            differences.push(format!("{path}\n  origin: {ours:?}\n  copy:   {theirs:?}"));
        }
    }
    assert!(
        differences.is_empty(),
        "{} path(s) differ:\n{}\n{}\n{}",
        differences.len(),
        differences.join("\n"),
        mount.log(),
        node.log()
    );
}
