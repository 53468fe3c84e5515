//! Running mirrorfs as a service: `mirrorfs mount` in the background returns only once the
//! mount is up (or with its error), and a foreground daemon tells systemd READY=1 and
//! STOPPING=1.

mod common;

use std::fs;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{binary, mount_type, scratch};

/// A daemon a background `mirrorfs mount` left running: unmounted and waited for (killed
/// by pid if it does not end) when dropped.
struct Background {
    mountpoint: PathBuf,
    pid: Option<u32>,
}

impl Background {
    fn alive(&self) -> bool {
        self.pid
            .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists() && !zombie(pid))
    }

    /// Unmounts, and waits up to 10 s for the daemon to end; whether it did.
    fn unmount(&mut self) -> bool {
        let _ = Command::new(binary())
            .arg("unmount")
            .arg(&self.mountpoint)
            .output();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        !self.alive()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if mount_type(&self.mountpoint).is_some() && !self.unmount() {
            if let Some(pid) = self.pid {
                // SAFETY: kill(2) of the daemon this test started.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
            let path = std::ffi::CString::new(self.mountpoint.to_str().unwrap()).unwrap();
            // SAFETY: NUL-terminated path.
            unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// Whether process `pid` has ended but is not reaped (a daemon is no child of ours: init
/// reaps it, but may not have yet).
fn zombie(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            stat.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(true)
}

/// Runs `mirrorfs ARGS` to its end, which must come within 30 s (with its output on
/// pipes: a daemon left holding them would keep it from ending).
fn run_within(args: &[&std::ffi::OsStr]) -> Output {
    let child = Command::new(binary())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let waiter = std::thread::spawn(move || child.wait_with_output().unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !waiter.is_finished() {
        assert!(
            Instant::now() < deadline,
            "mirrorfs {args:?} (pid {pid}) did not return within 30 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    waiter.join().unwrap()
}

/// An origin and a mount point made in `dir`, and where the state will go.
fn layout(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let (origin, mountpoint) = (dir.join("origin"), dir.join("mnt"));
    fs::create_dir(&origin).unwrap();
    fs::create_dir(&mountpoint).unwrap();
    (origin, mountpoint, dir.join("state"))
}

#[test]
fn a_background_mount_returns_once_the_mount_is_up_and_ends_at_unmount() {
    let dir = scratch();
    let (origin, mountpoint, state) = layout(dir.path());
    let output = run_within(&[
        "mount".as_ref(),
        origin.as_os_str(),
        mountpoint.as_os_str(),
        "--state-dir".as_ref(),
        state.as_os_str(),
    ]);
    let mut daemon = Background {
        mountpoint: mountpoint.clone(),
        pid: None,
    };
    // No waiting: the mount is there the moment the command returns.
    let mounted = mount_type(&mountpoint);
    let written = fs::write(mountpoint.join("first"), b"right after");
    assert!(output.status.success(), "{output:?}");
    assert_eq!(mounted.as_deref(), Some("fuse.mirrorfs"));
    written.unwrap();
    assert_eq!(fs::read(origin.join("first")).unwrap(), b"right after");
    assert!(
        output.stdout.is_empty() && output.stderr.is_empty(),
        "{output:?}"
    );

    let status = common::run(&["status", "--state-dir", state.to_str().unwrap(), "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    daemon.pid = status["pid"].as_u64().map(|pid| pid as u32);
    assert!(daemon.alive(), "{status}");
    // Its own session: no terminal's hang-up or Ctrl-C reaches it.
    let pid = daemon.pid.unwrap();
    // SAFETY: getsid(2) only reads.
    assert_eq!(unsafe { libc::getsid(pid as i32) }, pid as i32);
    let log = fs::read_to_string(state.join("daemon.log")).unwrap();
    assert!(log.contains("mounted"), "{log}");
    assert!(!log.contains('\x1b'), "no colours in a log file: {log}");

    assert!(daemon.unmount(), "the daemon ends at unmount");
    assert!(mount_type(&mountpoint).is_none());
    let log = fs::read_to_string(state.join("daemon.log")).unwrap();
    assert!(log.contains("unmounted"), "{log}");
}

#[test]
fn a_background_mount_that_cannot_mount_returns_its_error_and_exit_code() {
    let dir = scratch();
    let origin = dir.path().join("origin");
    fs::create_dir(&origin).unwrap();
    let missing = dir.path().join("no-such-mountpoint");
    let state = dir.path().join("state");
    let output = run_within(&[
        "mount".as_ref(),
        origin.as_os_str(),
        missing.as_os_str(),
        "--state-dir".as_ref(),
        state.as_os_str(),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("no-such-mountpoint"), "{stderr}");
    assert!(mount_type(&missing).is_none());

    // A second mount of a volume already mounted is refused the same way, and the first
    // goes on serving.
    let mountpoint = dir.path().join("mnt");
    fs::create_dir(&mountpoint).unwrap();
    let args = [
        "mount".as_ref(),
        origin.as_os_str(),
        mountpoint.as_os_str(),
        "--state-dir".as_ref(),
        state.as_os_str(),
    ];
    let first = run_within(&args);
    let _daemon = Background {
        mountpoint: mountpoint.clone(),
        pid: None,
    };
    assert!(first.status.success(), "{first:?}");
    let second = run_within(&args);
    assert_eq!(second.status.code(), Some(2), "{second:?}");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    fs::write(mountpoint.join("still"), b"served").unwrap();
    assert_eq!(fs::read(origin.join("still")).unwrap(), b"served");
}

#[test]
fn a_foreground_mount_tells_systemd_ready_then_stopping() {
    let dir = scratch();
    let (origin, mountpoint, state) = layout(dir.path());
    let socket_path = dir.path().join("notify");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut daemon = common::MountedChild::spawn_with_env(
        &[
            origin.to_str().unwrap(),
            mountpoint.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
        ],
        &[("NOTIFY_SOCKET", socket_path.to_str().unwrap())],
        &mountpoint,
        &dir.path().join("log"),
    );
    let mut message = [0; 512];
    let len = socket.recv(&mut message).expect("READY=1 within 30 s");
    let ready = String::from_utf8_lossy(&message[..len]).to_string();
    assert!(ready.starts_with("READY=1\n"), "{ready}");
    assert!(ready.contains("STATUS=serving"), "{ready}");
    // Ready means mounted.
    assert_eq!(mount_type(&mountpoint).as_deref(), Some("fuse.mirrorfs"));

    assert_eq!(daemon.stop(libc::SIGTERM), Some(0), "{}", daemon.log());
    let len = socket.recv(&mut message).expect("STOPPING=1");
    assert_eq!(&message[..len], b"STOPPING=1");
}

/// `mount -t fuse.mirrorfs` and an fstab line, through mount(8) and its helper
/// `/sbin/mount.fuse.mirrorfs` (the binary under test, bound over /usr/sbin inside a mount
/// namespace of the test's own, so the machine's /usr/sbin is left alone); `umount` ends
/// the daemon. The script kills its daemon by pid and detaches the mount if it fails.
#[test]
fn mount_t_and_an_fstab_line_mount_the_volume_and_umount_ends_the_daemon() {
    let dir = scratch();
    let root = dir.path();
    for sub in ["origin", "mnt", "sbin"] {
        fs::create_dir(root.join(sub)).unwrap();
    }
    std::os::unix::fs::symlink(binary(), root.join("sbin/mount.fuse.mirrorfs")).unwrap();
    fs::write(
        root.join("data.toml"),
        format!("[volume]\nstate_dir = \"{}/state\"\n", root.display()),
    )
    .unwrap();
    let script = r#"
set -eu
pid=""
trap 'st=$?; if [ $st -ne 0 ]; then umount -l "$R/mnt" 2>/dev/null || true; [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null; fi; exit $st' EXIT
daemon_pid() { "$B" status --state-dir "$R/state" --json | sed -n 's/.*"pid": *\([0-9]*\).*/\1/p' | head -1; }
wait_gone() { for _ in $(seq 500); do [ -d "/proc/$1" ] && ! grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null || return 0; sleep 0.02; done; echo "daemon $1 still running after umount"; exit 1; }
mount --bind "$R/sbin" /usr/sbin

mount -t fuse.mirrorfs "$R/origin" "$R/mnt" -o "config=$R/data.toml,noatime,suid,dev,_netdev"
line=$(grep " $R/mnt " /proc/self/mountinfo)
echo "mounted: $line"
case "$line" in *fuse.mirrorfs*) ;; *) echo "not a mirrorfs mount"; exit 1 ;; esac
case "$line" in *noatime*) ;; *) echo "noatime not applied"; exit 1 ;; esac
case "$line" in *nosuid*|*nodev*) echo "suid,dev not applied"; exit 1 ;; esac
pid=$(daemon_pid)
echo hello > "$R/mnt/greeting"
[ "$(cat "$R/origin/greeting")" = hello ]
umount "$R/mnt"
wait_gone "$pid"
grep -q 'unmounted' "$R/state/daemon.log"

echo "$R/origin $R/mnt fuse.mirrorfs config=$R/data.toml,ro,nosuid,nodev,nofail 0 0" > "$R/fstab"
mount -T "$R/fstab" "$R/mnt"
pid=$(daemon_pid)
[ "$(cat "$R/mnt/greeting")" = hello ]
line=$(grep " $R/mnt " /proc/self/mountinfo)
case "$line" in *" ro,nosuid,nodev"*) ;; *) echo "ro,nosuid,nodev not applied: $line"; exit 1 ;; esac
if sh -c 'echo more > "$1"' _ "$R/mnt/other" 2>"$R/err"; then echo "a read-only mount took a write"; exit 1; fi
grep -q 'Read-only file system' "$R/err"
umount "$R/mnt"
wait_gone "$pid"
echo ok
"#;
    let output = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", script])
        .env("R", root)
        .env("B", binary())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let log = fs::read_to_string(root.join("state/daemon.log")).unwrap_or_default();
    assert!(
        output.status.success() && stdout.ends_with("ok\n"),
        "{stdout}\n{stderr}\ndaemon log:\n{log}"
    );
}

/// The systemd units in `systemd/` pass `systemd-analyze verify` with nothing to say (an
/// unknown key is only a warning there, so the output must be empty too). Their
/// ExecStart names the installed binary; the copies checked name the one under test.
#[test]
fn the_systemd_units_pass_systemd_analyze_verify() {
    let dir = scratch();
    let units = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd");
    let mut checked = Vec::new();
    for (template, instance) in [
        ("mirrorfs@.service", "mirrorfs@data.service"),
        (
            "mirrorfs-replica@.service",
            "mirrorfs-replica@backup.service",
        ),
    ] {
        let text = fs::read_to_string(units.join(template)).unwrap();
        assert!(text.contains("/usr/local/bin/mirrorfs "), "{template}");
        let text = text.replace("/usr/local/bin/mirrorfs ", &format!("{} ", binary()));
        fs::write(dir.path().join(instance), text).unwrap();
        checked.push(format!("./{instance}"));
    }
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .args(&checked)
        .current_dir(dir.path())
        .output()
        .expect("systemd-analyze (scripts/install-deps.sh --test installs it)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success() && said.trim().is_empty(), "{said}");
}

/// `mirrorfs list` shows a mounted volume, and `status`, `log` and `verify` find it by its
/// mount point; a path with no volume mounted, or no volume named, is one clear line.
#[test]
fn volumes_are_listed_and_found_by_their_mount_point() {
    let mount = common::Mount::new();
    fs::write(mount.path("f"), b"listed").unwrap();
    let point = mount.mountpoint.to_str().unwrap();

    let listed = common::run(&["list", "--json"]);
    assert!(listed.status.success(), "{listed:?}");
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let ours = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| entry["mountpoint"] == point)
        .unwrap_or_else(|| panic!("{point} not in {listed}"));
    assert_eq!(ours["state_dir"], mount.state.to_str().unwrap());
    assert_eq!(ours["pid"], mount.pid());
    let text = String::from_utf8_lossy(&common::run(&["list"]).stdout).to_string();
    assert!(
        text.lines()
            .any(|line| line.starts_with(point) && line.contains("state ")),
        "{text}"
    );

    let status = common::run(&["status", point, "--json"]);
    assert!(status.status.success(), "{status:?}");
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["pid"], mount.pid());
    let log = common::run(&["log", point]);
    assert!(
        String::from_utf8_lossy(&log.stdout).contains("f"),
        "{log:?}"
    );
    let verify = common::run(&["verify", point, "--json"]);
    assert!(verify.status.success(), "{verify:?}");

    let elsewhere = common::run(&["status", mount.dir.path().to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&elsewhere.stderr);
    assert_eq!(elsewhere.status.code(), Some(1), "{elsewhere:?}");
    assert!(
        stderr.contains("no mirrorfs volume is mounted at"),
        "{stderr}"
    );
    let none = common::run(&["status"]);
    let stderr = String::from_utf8_lossy(&none.stderr);
    assert_eq!(none.status.code(), Some(2), "{none:?}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("MOUNTPOINT") || stderr.contains("--config"),
        "the missing arguments are named: {stderr}"
    );
}

/// An ioctl the volume does not pass on is ENOTTY, and says nothing in the daemon's log
/// (fuser's default logged a multi-line WARN for each).
#[test]
fn an_unsupported_ioctl_is_enotty_and_quiet() {
    use std::os::fd::AsRawFd;
    let mount = common::Mount::new();
    fs::write(mount.path("f"), b"x").unwrap();
    let file = fs::File::open(mount.path("f")).unwrap();
    let mut flags: libc::c_long = 0;
    // FS_IOC_GETFLAGS, as lsattr asks.
    // SAFETY: the request writes one long into `flags`.
    let result = unsafe { libc::ioctl(file.as_raw_fd(), 0x8008_6601, &mut flags) };
    assert_eq!(result, -1);
    assert_eq!(common::errno(), libc::ENOTTY);
    let log = mount.log();
    assert!(
        !log.contains("WARN") && !log.contains("ERROR"),
        "the log says something: {log}"
    );
}

/// `mirrorfs log --follow` prints a record appended after it started.
#[test]
fn log_follow_prints_a_record_written_after_it_started() {
    use std::io::BufRead;
    let mount = common::Mount::new();
    fs::write(mount.path("before"), b"1").unwrap();
    let mut follower = Command::new(binary())
        .args([
            "log",
            mount.mountpoint.to_str().unwrap(),
            "--follow",
            "--json",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (lines, seen) = std::sync::mpsc::channel();
    let stdout = follower.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    // What was there is printed first; then the new change.
    let wait_for = |needle: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(line) = seen.recv_timeout(Duration::from_millis(100))
                && line.contains(needle)
            {
                return true;
            }
        }
        false
    };
    let before = wait_for("\"/before\"");
    fs::write(mount.path("after-follow"), b"2").unwrap();
    let after = wait_for("after-follow");
    // SAFETY: kill(2) of the follower this test started.
    unsafe { libc::kill(follower.id() as i32, libc::SIGTERM) };
    follower.wait().unwrap();
    reader.join().unwrap();
    assert!(before, "the existing record was not printed");
    assert!(after, "a record appended while following was not printed");
}

/// Ctrl-C on `mirrorfs verify` ends the daemon's run at once, and `verify --cancel`
/// ends one started elsewhere; either way the volume takes a new run within a second.
#[test]
fn a_verify_run_ends_when_its_client_goes_or_is_cancelled() {
    let mount = common::Mount::new();
    // 64 MiB read at 8 MiB/s: a run of 8 s, unless it is stopped.
    let chunk = vec![0x5a_u8; 1 << 20];
    let mut file = fs::File::create(mount.path("big")).unwrap();
    for _ in 0..64 {
        std::io::Write::write_all(&mut file, &chunk).unwrap();
    }
    drop(file);
    let point = mount.mountpoint.to_str().unwrap().to_string();
    let start_run = || {
        Command::new(binary())
            .args([
                "verify",
                &point,
                "--content",
                "--max-rate",
                "8MiB",
                "--json",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // Whether the volume takes a new run (no other under way) within `limit`.
    let free_within = |limit: Duration| {
        let deadline = Instant::now() + limit;
        loop {
            let quick = common::run(&["verify", &point, "--json"]);
            if quick.status.success() {
                return true;
            }
            let said = String::from_utf8_lossy(&quick.stdout).to_string()
                + &String::from_utf8_lossy(&quick.stderr);
            assert!(said.contains("already under way"), "{said}");
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };

    let mut client = start_run();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!free_within(Duration::ZERO), "the first run is under way");
    // SAFETY: kill(2) of the client this test started (Ctrl-C).
    unsafe { libc::kill(client.id() as i32, libc::SIGINT) };
    client.wait().unwrap();
    assert!(
        free_within(Duration::from_secs(1)),
        "the run went on after its client left"
    );

    let client = start_run();
    std::thread::sleep(Duration::from_millis(1500));
    let cancelled = common::run(&["verify", &point, "--cancel"]);
    assert!(cancelled.status.success(), "{cancelled:?}");
    let started = Instant::now();
    let output = client.wait_with_output().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    // A partial run: it read less than the file.
    let read = report["figures"]["bytes_hashed"].as_u64().unwrap();
    assert!(read < 64 << 20, "{report}");
    let none = common::run(&["verify", &point, "--cancel"]);
    assert_ne!(none.status.code(), Some(0), "{none:?}");
    assert!(String::from_utf8_lossy(&none.stderr).contains("no verify run is under way"));
}

/// Shell completions and the man page come from the command's own definitions, and a
/// reader that stops early (`| head`) gets no panic.
#[test]
fn completions_and_the_man_page_are_generated() {
    let bash = common::run(&["completions", "bash"]);
    assert!(bash.status.success(), "{bash:?}");
    let script = String::from_utf8(bash.stdout).unwrap();
    assert!(script.contains("complete -F _mirrorfs") && script.contains("verify"));
    let checked = Command::new("bash")
        .args(["-n", "-c", &script])
        .output()
        .unwrap();
    assert!(checked.status.success(), "{checked:?}");
    let page = common::run(&["manpage"]);
    let page = String::from_utf8(page.stdout).unwrap();
    assert!(page.contains(".TH mirrorfs 8"), "{page}");
    assert!(
        page.contains("mirrorfs\\-mount") || page.contains("mount"),
        "{page}"
    );

    for args in [["completions", "zsh"], ["manpage", ""]] {
        let mut child = Command::new(binary())
            .args(args.iter().filter(|arg| !arg.is_empty()))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Read one byte, then hang up.
        let mut stdout = child.stdout.take().unwrap();
        let mut byte = [0; 1];
        std::io::Read::read_exact(&mut stdout, &mut byte).unwrap();
        drop(stdout);
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

/// `verify --cancel` also ends a scheduled run (the first content run comes a minute after
/// the mount).
#[test]
fn a_scheduled_verify_run_is_cancelled_too() {
    let mount = common::Mount::with_config(
        "[verify]\ncontent_every = \"60s\"\ncontent_rate_bytes_max = \"4MiB\"\n",
    );
    let chunk = vec![0x3c_u8; 1 << 20];
    let mut file = fs::File::create(mount.path("big")).unwrap();
    for _ in 0..64 {
        std::io::Write::write_all(&mut file, &chunk).unwrap();
    }
    drop(file);
    let point = mount.mountpoint.to_str().unwrap().to_string();
    let busy = || {
        let quick = common::run(&["verify", &point, "--json"]);
        !quick.status.success()
            && String::from_utf8_lossy(&quick.stderr).contains("already under way")
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    while !busy() {
        assert!(
            Instant::now() < deadline,
            "no scheduled run began within 90 s"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let cancelled = common::run(&["verify", &point, "--cancel"]);
    assert!(cancelled.status.success(), "{cancelled:?}");
    let deadline = Instant::now() + Duration::from_secs(1);
    while busy() {
        assert!(
            Instant::now() < deadline,
            "the scheduled run went on after --cancel"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // It ended as a run does, its report logged (the probe above ran after it).
    let log = mount.log();
    assert!(log.contains("scheduled verify run"), "{log}");
}
