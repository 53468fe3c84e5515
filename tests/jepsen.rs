//! Automatic failover under faults, Jepsen-style (issue 16): a primary P, replicas R1 and
//! R2 (each with a standby mount of its copy) and a witness W, each in a network namespace
//! of its own on one bridge, all real processes. A client writes small files with fsync
//! through whichever mount takes them and notes every fsync that returned 0; a nemesis,
//! driven by a seed, kills the primary's machine, partitions machines, restarts what it
//! killed (an old primary rejoins as a replica) and heals. At the end (all healed, one
//! primary) a checker asserts that
//!
//! - every acknowledged write is on the final primary and on every replica's copy;
//! - no two primaries held leases that overlap (from the daemons' logs), and each write
//!   was acknowledged under its primary's lease;
//! - every replica's copy verifies clean against the primary (`verify --content`);
//! - every record an old primary held past the divergence point was kept (in the final
//!   tree or kept aside).
//!
//! Seeds: `JEPSEN_SEEDS` ("1,2,3" by default; "1-200" for a range), nemesis time per seed
//! `JEPSEN_SECONDS` (30); `JEPSEN_KEEP` / `JEPSEN_KEEP_FAILED` keep the directories.
//! `scripts/jepsen.sh` runs many.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use common::cluster::{Daemon, Lan};
use common::replica::key_file;

/// The machines, by index on the LAN.
const NAMES: [&str; 4] = ["p", "r1", "r2", "w"];
const WITNESS: usize = 3;
/// Machines that keep data: the primary and the replicas, whichever is which now.
const DATA: [usize; 3] = [0, 1, 2];
const NODE_PORT: u16 = 7071;

/// A small deterministic generator (xorshift64*): the nemesis's choices from a seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// An fsync that returned 0.
#[derive(Clone, Debug)]
struct Ack {
    name: String,
    machine: usize,
    /// When the write began and when fsync returned, in Unix milliseconds.
    began_ms: u64,
    acked_ms: u64,
}

/// One machine: its directory, its processes, and what it is now.
struct Machine {
    index: usize,
    dir: PathBuf,
    ns: String,
    ip: String,
    node: Option<Daemon>,
    mount: Option<Daemon>,
    down: bool,
}

impl Machine {
    fn name(&self) -> &'static str {
        NAMES[self.index]
    }
    fn node_dir(&self) -> PathBuf {
        self.dir.join("node")
    }
    fn copy(&self) -> PathBuf {
        self.node_dir().join("vol")
    }
    fn mountpoint(&self) -> PathBuf {
        self.dir.join("mnt")
    }
    fn log(&self, what: &str) -> PathBuf {
        self.dir.join(format!("{what}.log"))
    }
    /// Whether it is P with its own state still (which moves into the node's directory
    /// when it rejoins).
    fn own_state(&self) -> bool {
        self.dir.join("p.toml").exists() && !self.copy().join("log").exists()
    }

    /// The epoch it became primary at: P's own is 1; a copy's is in its `promoted` marker.
    fn primary_epoch(&self) -> u32 {
        match fs::read_to_string(self.copy().join("promoted")) {
            Ok(text) if !self.own_state() => text.trim().parse().unwrap_or(0),
            _ => 1,
        }
    }

    /// The config it serves the volume with as primary, if it is one by its files: P's own
    /// until it rejoins, or the config its node wrote when its copy was elected.
    fn primary_config(&self) -> Option<PathBuf> {
        let own = self.dir.join("p.toml");
        if self.own_state() {
            return Some(own);
        }
        let elected = self.copy().join("primary.toml");
        (self.copy().join("promoted").exists() && elected.exists()).then_some(elected)
    }
}

/// What mount daemons log: their leases too.
const MOUNT_LOG: &str = "info,mirrorfs::replication::lease=debug";

struct Cluster {
    lan: Lan,
    machines: Vec<Machine>,
    key: PathBuf,
    /// Paths each old primary's log held when it rejoined, by machine.
    rejoined_paths: Vec<(usize, BTreeSet<String>)>,
    events: Vec<String>,
    started: Instant,
    /// The failover lease.
    lease: String,
}

impl Cluster {
    fn new(scratch: &Path, lease: &str) -> Cluster {
        let lan = Lan::new(NAMES.len());
        let (key, _) = key_file(scratch, "vol.key");
        let machines = (0..NAMES.len())
            .map(|index| {
                let dir = scratch.join(NAMES[index]);
                fs::create_dir_all(dir.join("mnt")).unwrap();
                Machine {
                    index,
                    dir,
                    ns: lan.hosts[index].ns.clone(),
                    ip: lan.hosts[index].ip.clone(),
                    node: None,
                    mount: None,
                    down: false,
                }
            })
            .collect();
        let mut cluster = Cluster {
            lan,
            machines,
            key,
            rejoined_paths: Vec::new(),
            events: Vec::new(),
            started: Instant::now(),
            lease: lease.to_string(),
        };
        cluster.start_witness();
        for replica in [1, 2] {
            cluster.start_node(replica);
        }
        cluster.start_primary_p();
        cluster
    }

    fn note(&mut self, event: String) {
        let line = format!("{:6.1}s {event}", self.started.elapsed().as_secs_f64());
        eprintln!("{line}");
        self.events.push(line);
    }

    fn address(&self, index: usize) -> String {
        let port = if index == WITNESS { 7080 } else { NODE_PORT };
        format!("{}:{port}", self.machines[index].ip)
    }

    fn start_witness(&mut self) {
        self.serve(WITNESS, "witness");
    }

    fn start_node(&mut self, index: usize) {
        self.serve(index, "replica");
    }

    /// Runs `mirrorfs ROLE serve` on machine `index` for the volume.
    fn serve(&mut self, index: usize, role: &str) {
        let m = &self.machines[index];
        let (address, dir) = (self.address(index), m.node_dir());
        let volume = format!("vol={}", self.key.display());
        let args = [
            role,
            "serve",
            "--listen",
            &address,
            "--dir",
            dir.to_str().unwrap(),
            "--volume",
            &volume,
        ];
        let log = m.log("node");
        let before = fs::metadata(&log).map_or(0, |meta| meta.len() as usize);
        let daemon = Daemon::start(&m.ns, &args, &[], &log);
        self.machines[index].node = Some(daemon);
        wait_listening(&log, before);
    }

    /// A standby mount of the machine's copy, if it holds anything yet.
    fn start_standby(&mut self, index: usize) {
        let m = &self.machines[index];
        let (mountpoint, dir) = (m.mountpoint(), m.node_dir());
        let args = [
            "mount",
            "--standby",
            "--dir",
            dir.to_str().unwrap(),
            "--volume",
            "vol",
            mountpoint.to_str().unwrap(),
        ];
        let env = [("MIRRORFS_LOG", MOUNT_LOG)];
        match Daemon::mount(&m.ns, &args, &env, &mountpoint, &m.log("mount")) {
            Ok(daemon) => self.machines[index].mount = Some(daemon),
            Err(why) => {
                let name = self.machines[index].name();
                self.note(format!("{name}: no standby ({})", first_line(&why)));
            }
        }
    }

    fn start_primary_p(&mut self) {
        let m = &self.machines[0];
        for dir in ["src", "state"] {
            fs::create_dir_all(m.dir.join(dir)).unwrap();
        }
        let config = format!(
            "[volume]\nid = \"vol\"\nsource = \"{src}\"\nstate_dir = \"{state}\"\n\
             mountpoint = \"{mnt}\"\n\
             [replication]\nkey_file = \"{key}\"\nacks = \"all\"\nmin_insync = 1\n\
             on_insufficient = \"fail\"\nack_timeout = \"3s\"\nlag_max = \"2s\"\n\
             [[replication.replicas]]\nname = \"r1\"\naddress = \"{r1}\"\n\
             [[replication.replicas]]\nname = \"r2\"\naddress = \"{r2}\"\n\
             [failover]\nmode = \"auto\"\nname = \"p\"\naddress = \"{p}\"\nlease = \"{lease}\"\n\
             [[failover.witnesses]]\nname = \"w\"\naddress = \"{w}\"\n",
            src = m.dir.join("src").display(),
            state = m.dir.join("state").display(),
            mnt = m.mountpoint().display(),
            key = self.key.display(),
            r1 = self.address(1),
            r2 = self.address(2),
            p = self.address(0),
            w = self.address(WITNESS),
            lease = self.lease,
        );
        fs::write(m.dir.join("p.toml"), config).unwrap();
        assert!(self.start_primary(0), "P did not start");
    }

    /// Mounts machine `index` as primary with its config; whether it mounted.
    fn start_primary(&mut self, index: usize) -> bool {
        let m = &self.machines[index];
        let config = m.primary_config().unwrap();
        let args = ["mount", "--config", config.to_str().unwrap()];
        let env = [("MIRRORFS_LOG", MOUNT_LOG)];
        match Daemon::mount(&m.ns, &args, &env, &m.mountpoint(), &m.log("mount")) {
            Ok(daemon) => {
                self.machines[index].mount = Some(daemon);
                true
            }
            Err(why) => {
                let name = self.machines[index].name();
                self.note(format!(
                    "{name}: not mounted as primary ({})",
                    first_line(&why)
                ));
                false
            }
        }
    }

    /// Kills every process of machine `index` with SIGKILL: a machine lost.
    fn kill(&mut self, index: usize) {
        let m = &mut self.machines[index];
        for daemon in [&mut m.mount, &mut m.node].into_iter().flatten() {
            daemon.kill();
        }
        m.mount = None;
        m.node = None;
        m.down = true;
    }

    /// Brings machine `index` back: a replica with its node and standby; an old primary
    /// rejoins as a replica once it is fenced, or serves again if nobody took over.
    fn restart(&mut self, index: usize) {
        self.machines[index].down = false;
        if index == WITNESS {
            self.start_witness();
            return;
        }
        if let Some(config) = self.machines[index].primary_config() {
            if !self.rejoin(index, &config) {
                if self.start_primary(index) {
                    return;
                }
                // Refused: fenced at its first contact, so it can rejoin now.
                assert!(
                    self.rejoin(index, &config),
                    "{} can neither serve nor rejoin",
                    NAMES[index]
                );
            }
        }
        self.start_node(index);
        self.start_standby(index);
    }

    /// Whether machine `index`'s primary mount says it is fenced.
    fn fenced(&self, index: usize) -> bool {
        let Some(config) = self.machines[index].primary_config() else {
            return false;
        };
        let output = common::run(&["status", "--json", "--config", config.to_str().unwrap()]);
        let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
        !status["log"]["fence"].is_null()
    }

    /// Machine `index`, an old primary (fenced, or soon), stops serving and rejoins as a
    /// replica: its mount stops, and its node too (which left the copy alone once it was
    /// promoted there), then both start again over the copy; if it cannot rejoin yet (not
    /// fenced), it serves again.
    fn retire(&mut self, index: usize) {
        let Some(config) = self.machines[index].primary_config() else {
            return;
        };
        let m = &mut self.machines[index];
        for daemon in [&mut m.mount, &mut m.node] {
            if let Some(mut daemon) = daemon.take() {
                daemon.stop_with(libc::SIGTERM);
            }
        }
        if self.rejoin(index, &config) {
            self.start_node(index);
            self.start_standby(index);
        } else {
            if self.machines[index].copy().join("log").exists() {
                self.start_node(index);
            }
            self.start_primary(index);
        }
    }

    /// `mirrorfs rejoin` of machine `index`'s old primary state (config `config`) into its
    /// node directory; whether it rejoined. What its log held is noted first.
    fn rejoin(&mut self, index: usize, config: &Path) -> bool {
        let m = &self.machines[index];
        let state = if m.own_state() {
            m.dir.join("state")
        } else {
            m.copy()
        };
        let paths = log_paths(&state);
        fs::create_dir_all(m.node_dir()).unwrap();
        let output = common::run(&[
            "rejoin",
            "--config",
            config.to_str().unwrap(),
            "--dir",
            m.node_dir().to_str().unwrap(),
        ]);
        let name = m.name();
        if output.status.success() {
            self.note(format!("{name}: rejoined as a replica"));
            self.rejoined_paths.push((index, paths));
            true
        } else {
            let why = String::from_utf8_lossy(&output.stderr).trim().to_string();
            self.note(format!("{name}: no rejoin ({why})"));
            false
        }
    }

    /// The data machines serving as primary, by their files and a live mount, newest
    /// epoch first: the first is the primary; any other is an old one, fenced or soon.
    fn primaries(&mut self) -> Vec<usize> {
        let live: Vec<usize> = DATA
            .into_iter()
            .filter(|&i| {
                let m = &mut self.machines[i];
                !m.down
                    && m.primary_config().is_some()
                    && m.mount.as_mut().is_some_and(Daemon::running)
            })
            .collect();
        let mut primaries: Vec<(u32, usize)> = live
            .into_iter()
            .map(|i| (self.machines[i].primary_epoch(), i))
            .collect();
        primaries.sort_by(|a, b| b.cmp(a));
        primaries.into_iter().map(|(_, i)| i).collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Mounts first (a promoted standby renews its lease with the nodes), then nodes;
        // the LAN last, once nothing runs in it.
        for m in &mut self.machines {
            m.mount = None;
        }
        for m in &mut self.machines {
            m.node = None;
        }
    }
}

fn first_line(text: &str) -> &str {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
}

/// Waits until the node logging to `log` past its first `before` bytes listens.
fn wait_listening(log: &Path, before: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = fs::read(log).unwrap_or_default();
        let new = String::from_utf8_lossy(&text[before.min(text.len())..]).into_owned();
        if new.contains("serving address=") {
            return;
        }
        assert!(Instant::now() < deadline, "node did not start:\n{new}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The paths of the records in the log of state directory `state`.
fn log_paths(state: &Path) -> BTreeSet<String> {
    let output = Command::new(common::binary())
        .args(["log", "--json", "--state-dir"])
        .arg(state)
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter_map(|record| record["path"].as_str().map(str::to_string))
        .collect()
}

/// Whether `file` is on a FUSE filesystem (a mirrorfs mount, here).
fn on_mirrorfs(file: &fs::File) -> bool {
    use std::os::fd::AsRawFd;
    const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor and a buffer of the right type.
    let result = unsafe { libc::fstatfs(file.as_raw_fd(), &mut stat) };
    result == 0 && stat.f_type as i64 == FUSE_SUPER_MAGIC
}

/// The client: writes `c-N` files with fsync through whichever mount takes them.
fn client(
    mountpoints: Vec<PathBuf>,
    stop: Arc<AtomicBool>,
    acks: Arc<Mutex<Vec<Ack>>>,
    last: Arc<Mutex<Option<usize>>>,
    trying: Arc<Mutex<String>>,
) {
    let mut n = 0u64;
    let mut order: Vec<usize> = (0..mountpoints.len()).collect();
    while !stop.load(Ordering::SeqCst) {
        let mut acked = false;
        for position in 0..order.len() {
            let machine = order[position];
            n += 1;
            let name = format!("c-{n:06}");
            let began_ms = unix_ms();
            *trying.lock().unwrap() = format!("{name} on {}", NAMES[machine]);
            let written =
                fs::File::create(mountpoints[machine].join(&name)).and_then(|mut file| {
                    // A mount point whose daemon is gone is a plain directory: what lands
                    // there was never written to the volume.
                    if !on_mirrorfs(&file) {
                        return Err(std::io::Error::from_raw_os_error(libc::ENOTCONN));
                    }
                    file.write_all(format!("{name} {began_ms}").as_bytes())?;
                    file.sync_all()
                });
            if written.is_ok() {
                acks.lock().unwrap().push(Ack {
                    name,
                    machine,
                    began_ms,
                    acked_ms: unix_ms(),
                });
                *last.lock().unwrap() = Some(machine);
                // The mount that took this write is tried first next time.
                order.remove(position);
                order.insert(0, machine);
                acked = true;
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(if acked { 20 } else { 100 }));
    }
}

/// A lease's holder: its name and epoch.
type Holder = (String, u64);

/// Spans of time, in Unix milliseconds.
type Spans = Vec<(u64, u64)>;

/// The leases each primary held, from the mount daemons' logs, by holder.
fn leases(cluster: &Cluster) -> BTreeMap<Holder, Spans> {
    let mut leases: BTreeMap<Holder, Spans> = BTreeMap::new();
    for m in &cluster.machines {
        let text = fs::read_to_string(m.log("mount")).unwrap_or_default();
        for line in text.lines().filter(|line| line.contains("lease held")) {
            let field = |key: &str| -> Option<String> {
                let at = line.find(&format!(" {key}="))? + key.len() + 2;
                Some(line[at..].split_whitespace().next()?.to_string())
            };
            let (Some(name), Some(epoch), Some(from), Some(until)) = (
                field("name"),
                field("epoch"),
                field("from_ms"),
                field("until_ms"),
            ) else {
                continue;
            };
            leases
                .entry((name, epoch.parse().unwrap()))
                .or_default()
                .push((from.parse().unwrap(), until.parse().unwrap()));
        }
    }
    leases
}

/// Merges overlapping or touching intervals.
fn merged(mut spans: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    spans.sort();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (from, until) in spans {
        match out.last_mut() {
            Some(last) if from <= last.1 => last.1 = last.1.max(until),
            _ => out.push((from, until)),
        }
    }
    out
}

/// A seed's directory: removed at the end, unless `JEPSEN_KEEP` is set, or the seed
/// failed and `JEPSEN_KEEP_FAILED` is (logs and copies for a post-mortem).
struct Scratch(Option<tempfile::TempDir>);

impl Scratch {
    fn path(&self) -> PathBuf {
        self.0.as_ref().unwrap().path().to_path_buf()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let keep = std::env::var_os("JEPSEN_KEEP").is_some()
            || (std::thread::panicking() && std::env::var_os("JEPSEN_KEEP_FAILED").is_some());
        if let (true, Some(dir)) = (keep, self.0.take()) {
            eprintln!("kept {}", dir.keep().display());
        }
    }
}

/// The client running against a cluster: what it was acknowledged, the machine that
/// acknowledged last, and what it is trying now.
struct Client {
    stop: Arc<AtomicBool>,
    acks: Arc<Mutex<Vec<Ack>>>,
    last: Arc<Mutex<Option<usize>>>,
    trying: Arc<Mutex<String>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Client {
    /// Seeds P's volume (so that the standbys have a copy to mount over), mounts the
    /// standbys, and starts writing.
    fn start(cluster: &mut Cluster) -> Client {
        let p_mount = cluster.machines[0].mountpoint();
        for n in 0..5 {
            let path = p_mount.join(format!("seed-{n}"));
            fs::write(&path, b"seed").unwrap();
            fs::File::open(&path).unwrap().sync_all().unwrap();
        }
        std::thread::sleep(Duration::from_millis(500));
        for replica in [1, 2] {
            cluster.start_standby(replica);
        }
        let mut started = Client {
            stop: Arc::new(AtomicBool::new(false)),
            acks: Arc::new(Mutex::new(Vec::new())),
            last: Arc::new(Mutex::new(Some(0))),
            trying: Arc::new(Mutex::new(String::new())),
            writer: None,
        };
        let mountpoints = DATA
            .iter()
            .map(|&i| cluster.machines[i].mountpoint())
            .collect();
        let (stop, acks, last, trying) = (
            Arc::clone(&started.stop),
            Arc::clone(&started.acks),
            Arc::clone(&started.last),
            Arc::clone(&started.trying),
        );
        started.writer = Some(std::thread::spawn(move || {
            client(mountpoints, stop, acks, last, trying)
        }));
        started
    }

    fn count(&self) -> usize {
        self.acks.lock().unwrap().len()
    }

    fn last_acked_ms(&self) -> Option<u64> {
        self.acks.lock().unwrap().last().map(|ack| ack.acked_ms)
    }

    /// Stops writing; everything acknowledged.
    fn stop(&mut self) -> Vec<Ack> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(writer) = self.writer.take() {
            writer.join().unwrap();
        }
        self.acks.lock().unwrap().clone()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Heals the LAN, restarts every machine that is down, and waits until one primary takes
/// writes and no other claims to be one (an old primary that came back with no rival and
/// was fenced since rejoins as a replica). Returns that primary.
fn settle(cluster: &mut Cluster, client: &Client, what: &str) -> usize {
    cluster.lan.heal();
    for index in 0..NAMES.len() {
        if cluster.machines[index].down {
            cluster.restart(index);
        }
    }
    let settle = Instant::now();
    loop {
        let count = client.count();
        std::thread::sleep(Duration::from_secs(2));
        let primaries = cluster.primaries();
        let grew = client.count() > count;
        let primary = primaries.first().copied();
        if grew && primaries.len() == 1 && primary == *client.last.lock().unwrap() {
            return primaries[0];
        }
        // An old primary (fenced, or not the newest), as its operator's automation would
        // see to: it rejoins as a replica. A fenced one may be the only one left claiming
        // to be primary: its node refuses to vote until it rejoins.
        for (rank, index) in primaries.into_iter().enumerate() {
            if rank > 0 || cluster.fenced(index) {
                cluster.retire(index);
            }
        }
        assert!(
            settle.elapsed() < Duration::from_secs(90),
            "{what}: no single primary takes writes 90 s after healing (the client is at {}); events:\n{}",
            client.trying.lock().unwrap(),
            cluster.events.join("\n")
        );
    }
}

/// The checker, once `final_primary` alone takes writes: see the module doc.
fn check(cluster: &Cluster, acks: &[Ack], final_primary: usize, what: &str) {
    let config = cluster.machines[final_primary].primary_config().unwrap();
    wait_caught_up(cluster, final_primary, &config);
    // Every acknowledged write is on the final primary and every replica.
    let primary_mount = cluster.machines[final_primary].mountpoint();
    for ack in acks {
        let expected = format!("{} {}", ack.name, ack.began_ms);
        let on_primary = fs::read_to_string(primary_mount.join(&ack.name)).unwrap_or_default();
        assert_eq!(
            on_primary,
            expected,
            "{what}: acknowledged write {} (by {}) lost on the final primary {}; events:\n{}",
            ack.name,
            NAMES[ack.machine],
            NAMES[final_primary],
            cluster.events.join("\n")
        );
        for replica in DATA.into_iter().filter(|&i| i != final_primary) {
            let copy = cluster.machines[replica]
                .copy()
                .join("data")
                .join(&ack.name);
            assert_eq!(
                fs::read_to_string(&copy).unwrap_or_default(),
                expected,
                "{what}: acknowledged write {} missing on replica {}; events:\n{}",
                ack.name,
                NAMES[replica],
                cluster.events.join("\n")
            );
        }
    }

    // No two primaries' leases overlap; every write was acknowledged under a lease of
    // the machine that took it.
    let leases = leases(cluster);
    let spans: Vec<(Holder, Spans)> = leases
        .into_iter()
        .map(|(holder, spans)| (holder, merged(spans)))
        .collect();
    for (a, (holder_a, spans_a)) in spans.iter().enumerate() {
        for (holder_b, spans_b) in &spans[a + 1..] {
            for &(from_a, until_a) in spans_a {
                for &(from_b, until_b) in spans_b {
                    assert!(
                        until_a <= from_b || until_b <= from_a,
                        "{what}: leases overlap: {holder_a:?} {from_a}..{until_a} and {holder_b:?} {from_b}..{until_b}"
                    );
                }
            }
        }
    }
    for ack in acks {
        let covered = spans.iter().any(|((name, _), spans)| {
            name == NAMES[ack.machine]
                && spans
                    .iter()
                    .any(|&(from, until)| from <= ack.acked_ms && until >= ack.began_ms)
        });
        assert!(
            covered,
            "{what}: {} acknowledged by {} outside its leases",
            ack.name, NAMES[ack.machine]
        );
    }

    // Every replica's copy verifies clean against the final primary.
    let verify = Command::new("ip")
        .args(["netns", "exec", &cluster.machines[final_primary].ns])
        .arg(common::binary())
        .args(["verify", "--content", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{what}: verify --content: {}\n{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );

    // Whatever an old primary's log held when it rejoined is in the final tree, or kept
    // aside on its machine.
    for (index, paths) in &cluster.rejoined_paths {
        let kept = kept_aside_paths(&cluster.machines[*index]);
        for path in paths {
            let in_tree = primary_mount.join(path.trim_start_matches('/')).exists();
            assert!(
                in_tree || kept.contains(path),
                "{what}: {path} of {}'s log was neither kept nor kept aside",
                NAMES[*index]
            );
        }
    }
}

/// Prints each fault's failover time: from the last write acknowledged before it to the
/// first one after it.
fn print_failovers(faults: &[(String, u64, Option<u64>)], acks: &[Ack]) {
    for (fault, at, before) in faults {
        let after = acks
            .iter()
            .find(|ack| ack.acked_ms > *at)
            .map(|ack| ack.acked_ms);
        match (before, after) {
            (Some(before), Some(after)) => eprintln!(
                "failover after {fault}: {:.2} s",
                (after - before) as f64 / 1000.0
            ),
            _ => eprintln!("failover after {fault}: no write around it"),
        }
    }
}

/// A fresh cluster in a directory of its own, with a 2 s lease or `JEPSEN_LEASE`.
fn cluster_in(scratch: &Scratch) -> Cluster {
    eprintln!("   in {}", scratch.path().display());
    let lease = std::env::var("JEPSEN_LEASE").unwrap_or_else(|_| "2s".to_string());
    Cluster::new(&scratch.path(), &lease)
}

/// One seed's run: the nemesis for `seconds`, then everything healed and checked.
fn run_seed(seed: u64, seconds: u64) {
    eprintln!("== seed {seed}");
    let scratch = Scratch(Some(common::scratch()));
    let mut cluster = cluster_in(&scratch);
    let mut client = Client::start(&mut cluster);
    let mut rng = Rng::new(seed);
    // (fault, when, the last acknowledged write before it) for failover times.
    let mut faults: Vec<(String, u64, Option<u64>)> = Vec::new();
    let end = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(3000 + rng.below(4000) as u64));
        let primary = cluster.primaries().first().copied();
        let down: Vec<usize> = (0..NAMES.len())
            .filter(|&i| cluster.machines[i].down)
            .collect();
        let last_ack = client.last_acked_ms();
        match (rng.below(6), primary) {
            (0, Some(p)) => {
                cluster.note(format!("nemesis: kill -9 primary {}", NAMES[p]));
                cluster.kill(p);
                faults.push((format!("kill {}", NAMES[p]), unix_ms(), last_ack));
            }
            (1, Some(p)) => {
                cluster.note(format!(
                    "nemesis: partition primary {} from everyone",
                    NAMES[p]
                ));
                cluster.lan.isolate(p);
                faults.push((format!("isolate {}", NAMES[p]), unix_ms(), last_ack));
            }
            (2, Some(p)) => {
                cluster.note(format!(
                    "nemesis: partition primary {} from the replicas, not from w",
                    NAMES[p]
                ));
                for other in DATA {
                    if other != p {
                        cluster.lan.cut(p, other);
                    }
                }
                faults.push((
                    format!("cut {} from replicas", NAMES[p]),
                    unix_ms(),
                    last_ack,
                ));
            }
            (3, _) => {
                let others: Vec<usize> = DATA
                    .into_iter()
                    .filter(|&i| Some(i) != primary && !cluster.machines[i].down)
                    .collect();
                if !others.is_empty() {
                    let victim = others[rng.below(others.len())];
                    cluster.note(format!("nemesis: partition replica {}", NAMES[victim]));
                    cluster.lan.isolate(victim);
                }
            }
            (4, _) if !down.is_empty() => {
                let back = down[rng.below(down.len())];
                cluster.note(format!("nemesis: restart {}", NAMES[back]));
                cluster.restart(back);
            }
            _ => {
                cluster.note("nemesis: heal".to_string());
                cluster.lan.heal();
            }
        }
    }

    cluster.note("heal all, restart all".to_string());
    let what = format!("seed {seed}");
    let final_primary = settle(&mut cluster, &client, &what);
    let acks = client.stop();
    cluster.note(format!(
        "final primary {}; {} writes acknowledged",
        NAMES[final_primary],
        acks.len()
    ));
    check(&cluster, &acks, final_primary, &what);
    print_failovers(&faults, &acks);
    eprintln!("== seed {seed} passed: {} acknowledged writes", acks.len());
}

/// Waits until every replica of the final primary holds its whole log.
fn wait_caught_up(cluster: &Cluster, primary: usize, config: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let output = common::run(&["status", "--json", "--config", config.to_str().unwrap()]);
        let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
        let end = status["log"]["next_offset"].as_u64();
        let replicas = status["replication"]["replicas"].as_array().cloned();
        if let (Some(end), Some(replicas)) = (end, replicas)
            && !replicas.is_empty()
            && replicas
                .iter()
                .all(|r| r["acknowledged"].as_u64() == Some(end))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the replicas of {} did not catch up: {status}; events:\n{}",
            NAMES[primary],
            cluster.events.join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The paths of the records kept aside on machine `m`'s copy.
fn kept_aside_paths(m: &Machine) -> BTreeSet<String> {
    let output = common::run(&[
        "replica",
        "status",
        "--json",
        "--dir",
        m.node_dir().to_str().unwrap(),
    ]);
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
    let mut paths = BTreeSet::new();
    for kept in report["volumes"][0]["kept_aside"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(dir) = kept["dir"].as_str() {
            paths.extend(log_paths(Path::new(dir)));
        }
    }
    paths
}

/// The seeds to run: `JEPSEN_SEEDS` as "1,2,3" or "1-200".
fn seeds() -> Vec<u64> {
    let text = std::env::var("JEPSEN_SEEDS").unwrap_or_else(|_| "1,2,3".to_string());
    text.split(',')
        .flat_map(|part| match part.split_once('-') {
            Some((a, b)) => (a.trim().parse().unwrap()..=b.trim().parse().unwrap()).collect(),
            None => vec![part.trim().parse().unwrap()],
        })
        .collect()
}

#[test]
fn acknowledged_writes_survive_kills_and_partitions_with_no_two_primaries() {
    let seconds = std::env::var("JEPSEN_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    for seed in seeds() {
        run_seed(seed, seconds);
    }
}

/// Failover, one fault at a time: the primary's machine killed with SIGKILL, then (after
/// everything is whole again) the primary cut from everyone, alternately, each round once
/// the new primary has taken writes for a while; the faulted machine comes back as a
/// replica before the next round. Each failover must happen and lose nothing (the same
/// checker); the time from the last write acknowledged before each fault to the first after
/// it is printed. `FAILOVER_ROUNDS` rounds of each fault (1 here; `scripts/bench-failover.sh`
/// runs 20 of each with a 5 s lease and reports the distribution).
#[test]
fn each_failover_of_a_lost_primary_is_timed_and_loses_nothing() {
    let rounds: usize = std::env::var("FAILOVER_ROUNDS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(1);
    let scratch = Scratch(Some(common::scratch()));
    let mut cluster = cluster_in(&scratch);
    let mut client = Client::start(&mut cluster);
    let mut faults = Vec::new();
    for round in 0..rounds * 2 {
        // Steady first: the primary takes writes.
        let count = client.count();
        let steady = Instant::now();
        while client.count() < count + 20 {
            assert!(
                steady.elapsed() < Duration::from_secs(60),
                "round {round}: no writes taken; events:\n{}",
                cluster.events.join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let primary = cluster.primaries()[0];
        let before = client.last_acked_ms();
        let fault = match round % 2 {
            0 => {
                cluster.note(format!("kill -9 primary {}", NAMES[primary]));
                cluster.kill(primary);
                "kill"
            }
            _ => {
                cluster.note(format!(
                    "partition primary {} from everyone",
                    NAMES[primary]
                ));
                cluster.lan.isolate(primary);
                "partition"
            }
        };
        let at = unix_ms();
        // The first write acknowledged by another machine.
        let waiting = Instant::now();
        loop {
            let taken = client
                .acks
                .lock()
                .unwrap()
                .iter()
                .rev()
                .take_while(|ack| ack.acked_ms > at)
                .any(|ack| ack.machine != primary);
            if taken {
                break;
            }
            assert!(
                waiting.elapsed() < Duration::from_secs(60),
                "round {round}: no failover within 60 s of the {fault}; events:\n{}",
                cluster.events.join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        faults.push((format!("{fault} of the primary"), at, before));
        // Whole again before the next round: the old primary rejoins and catches up.
        let what = format!("round {round}");
        let now_primary = settle(&mut cluster, &client, &what);
        let config = cluster.machines[now_primary].primary_config().unwrap();
        wait_caught_up(&cluster, now_primary, &config);
    }
    let final_primary = settle(&mut cluster, &client, "the end");
    let acks = client.stop();
    check(&cluster, &acks, final_primary, "timed failovers");
    print_failovers(&faults, &acks);
}
