//! A network namespace joined to this one by a veth pair, whose link a test can cut and
//! restore: a partition without mocks.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A namespace and the veth pair to it; deleted (with the pair) when dropped. Whatever
/// runs inside must be stopped first.
pub struct Link {
    /// The namespace's name, for `ip netns exec`.
    pub name: String,
    /// This side's interface.
    host: String,
    /// The address of the namespace's side.
    pub address: String,
}

impl Link {
    /// Makes a namespace with a /30 to this one, both sides up.
    pub fn new() -> Link {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        // Interface names have at most 15 characters; the subnet is unique per process
        // and link while tests of one binary run at once.
        let tag = format!("{}{n}", pid % 100_000);
        let subnet = (pid % 32) * 8 + n;
        let link = Link {
            name: format!("mirrorfs-test-{tag}"),
            host: format!("mfs{tag}h"),
            address: format!("10.213.{subnet}.2"),
        };
        let guest = format!("mfs{tag}g");
        let host_address = format!("10.213.{subnet}.1/30");
        let guest_address = format!("{}/30", link.address);
        ip(&["netns", "add", &link.name]);
        // From here the guard deletes the namespace, and the pair with it.
        for args in [
            &[
                "link", "add", &link.host, "type", "veth", "peer", "name", &guest,
            ][..],
            &["link", "set", &guest, "netns", &link.name],
            &["addr", "add", &host_address, "dev", &link.host],
            &["link", "set", &link.host, "up"],
            &[
                "-n",
                &link.name,
                "addr",
                "add",
                &guest_address,
                "dev",
                &guest,
            ],
            &["-n", &link.name, "link", "set", &guest, "up"],
            &["-n", &link.name, "link", "set", "lo", "up"],
        ] {
            ip(args);
        }
        link
    }

    /// Cuts the link: nothing passes either way, and no reset tells anyone.
    pub fn cut(&self) {
        ip(&["link", "set", &self.host, "down"]);
    }

    /// Restores the link.
    pub fn restore(&self) {
        ip(&["link", "set", &self.host, "up"]);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Runs `ip ARGS`, which must succeed.
pub fn ip(args: &[&str]) {
    let output = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        output.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}
