//! Machines for failover tests: network namespaces on one bridge (a LAN), each running
//! real mirrorfs processes, with partitions made of blackhole routes (no firewall needed,
//! no reset sent: packets just vanish, as on a cut link).

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::netns::ip;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A bridge and namespaces plugged into it, each with one address; all deleted when
/// dropped (whatever runs inside must be stopped first).
pub struct Lan {
    bridge: String,
    /// The namespaces, by index: `hosts[i]` has address `prefix.(i + 1)`.
    pub hosts: Vec<Host>,
    /// Blackholes in place, as (from, to) host indexes.
    cuts: BTreeSet<(usize, usize)>,
}

/// One namespace on the LAN.
pub struct Host {
    /// Its name, for `ip netns exec` and `nsenter`.
    pub ns: String,
    /// Its address.
    pub ip: String,
    veth: String,
}

impl Lan {
    /// A LAN of `count` hosts.
    pub fn new(count: usize) -> Lan {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{}{n}", std::process::id() % 10_000);
        // MIRRORFS_LAN_SUBNET sets the third byte, for runs side by side (scripts/jepsen.sh).
        let subnet = std::env::var("MIRRORFS_LAN_SUBNET")
            .ok()
            .and_then(|text| text.parse::<u32>().ok())
            .map_or((std::process::id() % 200 + n * 7) % 250, |base| {
                (base + n) % 250
            });
        let mut lan = Lan {
            bridge: format!("mfb{tag}"),
            hosts: Vec::new(),
            cuts: BTreeSet::new(),
        };
        ip(&["link", "add", &lan.bridge, "type", "bridge"]);
        ip(&["link", "set", &lan.bridge, "up"]);
        for index in 0..count {
            let host = Host {
                ns: format!("mirrorfs-lan-{tag}-{index}"),
                ip: format!("10.215.{subnet}.{}", index + 1),
                veth: format!("mfv{tag}{index}"),
            };
            ip(&["netns", "add", &host.ns]);
            let guest = format!("{}g", host.veth);
            lan.hosts.push(host);
            let host = &lan.hosts[index];
            let address = format!("{}/24", host.ip);
            for args in [
                &[
                    "link", "add", &host.veth, "type", "veth", "peer", "name", &guest,
                ][..],
                &["link", "set", &guest, "netns", &host.ns],
                &["link", "set", &host.veth, "master", &lan.bridge],
                &["link", "set", &host.veth, "up"],
                &["-n", &host.ns, "addr", "add", &address, "dev", &guest],
                &["-n", &host.ns, "link", "set", &guest, "up"],
                &["-n", &host.ns, "link", "set", "lo", "up"],
            ] {
                ip(args);
            }
        }
        lan
    }

    /// Cuts `a` from `b`, both ways.
    pub fn cut(&mut self, a: usize, b: usize) {
        for (from, to) in [(a, b), (b, a)] {
            if self.cuts.insert((from, to)) {
                let route = format!("{}/32", self.hosts[to].ip);
                ip(&[
                    "-n",
                    &self.hosts[from].ns,
                    "route",
                    "add",
                    "blackhole",
                    &route,
                ]);
            }
        }
    }

    /// Cuts `a` from every other host.
    pub fn isolate(&mut self, a: usize) {
        for b in 0..self.hosts.len() {
            if b != a {
                self.cut(a, b);
            }
        }
    }

    /// Removes every cut.
    pub fn heal(&mut self) {
        for (from, to) in std::mem::take(&mut self.cuts) {
            let route = format!("{}/32", self.hosts[to].ip);
            ip(&[
                "-n",
                &self.hosts[from].ns,
                "route",
                "del",
                "blackhole",
                &route,
            ]);
        }
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for host in &self.hosts {
            let _ = Command::new("ip").args(["netns", "del", &host.ns]).status();
            let _ = Command::new("ip")
                .args(["link", "del", &host.veth])
                .stderr(Stdio::null())
                .status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
    }
}

/// A mirrorfs process run in a namespace (`nsenter --net`, so that a mount it makes is
/// seen by everyone), its log appended to a file; killed by its pid when dropped, its
/// mount point (if it has one) detached.
pub struct Daemon {
    child: Option<Child>,
    /// Its log.
    pub log: PathBuf,
    /// Where it mounts, if it does.
    pub mountpoint: Option<PathBuf>,
}

impl Daemon {
    /// Runs `mirrorfs ARGS` in namespace `ns` with `env`, logging to `log` (appended).
    pub fn start(ns: &str, args: &[&str], env: &[(&str, &str)], log: &Path) -> Daemon {
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{ns}"))
            .arg(super::binary())
            .args(args)
            // A mount serves in this process, which the test stops by pid.
            .args(super::foreground(
                args.first().copied().map(std::ffi::OsStr::new),
            ))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        Daemon {
            child: Some(child),
            log: log.to_path_buf(),
            mountpoint: None,
        }
    }

    /// [`Daemon::start`] for a `mirrorfs mount` at `mountpoint`: waits until it is mounted
    /// (or has exited: `Err` with its log).
    pub fn mount(
        ns: &str,
        args: &[&str],
        env: &[(&str, &str)],
        mountpoint: &Path,
        log: &Path,
    ) -> Result<Daemon, String> {
        let mut daemon = Daemon::start(ns, args, env, log);
        daemon.mountpoint = Some(mountpoint.to_path_buf());
        let deadline = Instant::now() + Duration::from_secs(30);
        while super::mount_type(mountpoint).as_deref() != Some("fuse.mirrorfs") {
            let child = daemon.child.as_mut().unwrap();
            if let Some(status) = child.try_wait().unwrap() {
                daemon.child = None;
                return Err(format!(
                    "exited with {status}:\n{}",
                    fs::read_to_string(log).unwrap_or_default()
                ));
            }
            if Instant::now() > deadline {
                return Err("not mounted within 30 s".to_string());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(daemon)
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => child.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    /// Kills it with SIGKILL and detaches the mount it leaves.
    pub fn kill(&mut self) {
        self.stop_with(libc::SIGKILL);
    }

    /// Stops it with `signal`, waits (killing it after 20 s), and detaches its mount if it
    /// left one.
    pub fn stop_with(&mut self, signal: i32) {
        if let Some(mut child) = self.child.take() {
            super::signal(child.id(), signal);
            let deadline = Instant::now() + Duration::from_secs(20);
            while child.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    super::signal(child.id(), libc::SIGKILL);
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // Only once: a daemon started later may have mounted there since.
        if let Some(mountpoint) = self.mountpoint.take()
            && super::mount_type(&mountpoint).is_some()
        {
            super::detach(&mountpoint);
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop_with(libc::SIGTERM);
    }
}
