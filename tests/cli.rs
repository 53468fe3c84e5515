//! The command-line contract: names, exit codes (0, 1, 2), one-line errors, signals, and
//! bad input that must leave nothing mounted.

mod common;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{KernelMount, Mount, mount_type, run, run_expecting_exit, scratch};

/// Asserts a usage failure: exit 2, exactly one line on stderr containing `expected`.
fn assert_usage_error(output: &std::process::Output, expected: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|line| !line.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 1, "one line expected, got: {stderr}");
    assert!(lines[0].starts_with("mirrorfs: "), "{stderr}");
    assert!(
        lines[0].contains(expected),
        "expected {expected:?} in {stderr}"
    );
}

/// `mirrorfs mount SOURCE MOUNTPOINT --state-dir STATE`, expected to refuse and exit.
fn try_mount(source: &Path, mountpoint: &Path, state: &Path) -> std::process::Output {
    let args = [
        OsStr::new("mount"),
        source.as_os_str(),
        mountpoint.as_os_str(),
        OsStr::new("--state-dir"),
        state.as_os_str(),
    ];
    run_expecting_exit(&args, None)
}

/// Asserts exit 0, showing stderr otherwise.
fn assert_success(output: &std::process::Output) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "stderr: {stderr}");
}

/// A scratch layout: origin with a file, an empty mount point, a state path.
struct Layout {
    dir: tempfile::TempDir,
    origin: PathBuf,
    mountpoint: PathBuf,
    state: PathBuf,
}

impl Layout {
    fn new() -> Layout {
        let dir = scratch();
        let origin = dir.path().join("origin");
        let mountpoint = dir.path().join("mnt");
        fs::create_dir(&origin).unwrap();
        fs::create_dir(&mountpoint).unwrap();
        fs::write(origin.join("hello"), b"hi").unwrap();
        let state = dir.path().join("state");
        Layout {
            dir,
            origin,
            mountpoint,
            state,
        }
    }

    fn mount(&self, source: &Path, mountpoint: &Path, extra: &[&str]) -> std::process::Output {
        let mut args: Vec<&OsStr> = vec![
            OsStr::new("mount"),
            source.as_os_str(),
            mountpoint.as_os_str(),
        ];
        if !extra.contains(&"--state-dir") {
            args.extend([OsStr::new("--state-dir"), self.state.as_os_str()]);
        }
        args.extend(extra.iter().map(OsStr::new));
        let output = run_expecting_exit(&args, None);
        assert!(
            mount_type(mountpoint).is_none(),
            "a refused mount left something mounted"
        );
        output
    }

    fn config(&self, body: &str) -> PathBuf {
        let path = self.dir.path().join("config.toml");
        fs::write(&path, body).unwrap();
        path
    }
}

#[test]
fn version_and_help() {
    let version = run(&["--version"]);
    assert_eq!(version.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("mirrorfs 0."));
    let help = run(&["help"]);
    assert_eq!(help.status.code(), Some(0));
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("mount") && text.contains("unmount"), "{text}");
    for command in ["mount", "unmount"] {
        let help = run(&[command, "--help"]);
        assert_eq!(help.status.code(), Some(0));
        assert!(String::from_utf8_lossy(&help.stdout).contains("Usage: mirrorfs"));
    }
    assert!(String::from_utf8_lossy(&run(&["mount", "--help"]).stdout).contains("--config"));
}

#[test]
fn bad_arguments_are_one_line_and_exit_two() {
    assert_usage_error(&run(&["mount", "--no-such-flag"]), "--no-such-flag");
    assert_usage_error(&run(&["frobnicate"]), "frobnicate");
    let layout = Layout::new();
    let only_source = run_expecting_exit(&[OsStr::new("mount"), layout.origin.as_os_str()], None);
    assert_usage_error(&only_source, "both SOURCE and MOUNTPOINT");
    assert_usage_error(&run(&["mount"]), "volume.source is required");
}

#[test]
fn bad_sources_are_refused() {
    let layout = Layout::new();
    let missing = layout.dir.path().join("nope");
    assert_usage_error(&layout.mount(&missing, &layout.mountpoint, &[]), "SOURCE");
    let file = layout.origin.join("hello");
    assert_usage_error(
        &layout.mount(&file, &layout.mountpoint, &[]),
        "not a directory",
    );

    // Unreadable to the user running mirrorfs.
    fs::set_permissions(layout.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&layout.origin, fs::Permissions::from_mode(0o700)).unwrap();
    let nobody_state = layout.dir.path().join("nobody-state");
    let args: Vec<&OsStr> = vec![
        OsStr::new("mount"),
        layout.origin.as_os_str(),
        layout.mountpoint.as_os_str(),
        OsStr::new("--state-dir"),
        nobody_state.as_os_str(),
    ];
    let output = run_expecting_exit(&args, Some(65534));
    assert_usage_error(&output, "cannot be read");
    assert!(mount_type(&layout.mountpoint).is_none());
}

#[test]
fn bad_mount_points_are_refused() {
    let layout = Layout::new();
    let missing = layout.dir.path().join("nope");
    assert_usage_error(&layout.mount(&layout.origin, &missing, &[]), "MOUNTPOINT");
    let file = layout.dir.path().join("file");
    fs::write(&file, b"").unwrap();
    assert_usage_error(&layout.mount(&layout.origin, &file, &[]), "not a directory");
    let inside = layout.origin.join("sub");
    fs::create_dir(&inside).unwrap();
    assert_usage_error(
        &layout.mount(&layout.origin, &inside, &[]),
        "inside the origin",
    );

    let busy = KernelMount::tmpfs(&layout.mountpoint, "1m");
    let output = try_mount(&layout.origin, &layout.mountpoint, &layout.state);
    assert_usage_error(&output, "busy");
    assert_eq!(
        mount_type(&busy.path).as_deref(),
        Some("tmpfs"),
        "the tmpfs is untouched"
    );
}

#[test]
fn a_state_dir_inside_the_source_is_refused_even_through_a_symlink() {
    let layout = Layout::new();
    let inside = layout.origin.join(".mirrorfs");
    let args = ["--state-dir", inside.to_str().unwrap()];
    assert_usage_error(
        &layout.mount(&layout.origin, &layout.mountpoint, &args),
        "inside the origin",
    );
    assert!(!inside.exists(), "nothing was created in the origin");

    let sneaky = layout.dir.path().join("sneaky");
    symlink(&layout.origin, &sneaky).unwrap();
    let through = sneaky.join("state");
    let args = ["--state-dir", through.to_str().unwrap()];
    assert_usage_error(
        &layout.mount(&layout.origin, &layout.mountpoint, &args),
        "inside SOURCE",
    );
    assert!(!layout.origin.join("state").exists());
}

#[test]
fn malformed_configs_name_the_problem() {
    let layout = Layout::new();
    let cases = [
        ("[volume\n", "line 1"),
        ("[volume]\nsorce = \"/x\"\n", "sorce"),
        ("[volume]\nallow_other = \"yes\"\n", "volume.allow_other"),
        ("[volume]\nid = \"no/slashes\"\n", "volume.id"),
        ("[volume]\nsource = \"relative/path\"\n", "absolute"),
        ("[cache]\nmemory_bytes = \"1MiB\"\n", "cache"),
    ];
    for (body, expected) in cases {
        let config = layout.config(body);
        let args = ["--config", config.to_str().unwrap()];
        let output = layout.mount(&layout.origin, &layout.mountpoint, &args);
        assert_usage_error(&output, expected);
    }
    let missing = layout.dir.path().join("missing.toml");
    let output = run_expecting_exit(
        &[
            OsStr::new("mount"),
            OsStr::new("--config"),
            missing.as_os_str(),
        ],
        None,
    );
    assert_usage_error(&output, "cannot read config");
}

#[test]
fn a_config_file_alone_mounts_and_the_command_line_overrides_it() {
    let layout = Layout::new();
    let other = layout.dir.path().join("other-mnt");
    fs::create_dir(&other).unwrap();
    let config = layout.config(&format!(
        "[volume]\nid = \"cfg\"\nsource = \"{}\"\nmountpoint = \"{}\"\nstate_dir = \"{}\"\n",
        layout.origin.display(),
        other.display(),
        layout.state.display()
    ));
    let mut daemon = Command::new(common::binary())
        .args([
            "mount",
            "--foreground",
            "--config",
            config.to_str().unwrap(),
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mounted = wait_for_mount(&other);
    let read = fs::read(other.join("hello"));
    // SAFETY: kill(2) of our own child.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGINT) };
    let status = daemon.wait().unwrap();
    assert!(mounted, "the config's mount point was not mounted");
    assert_eq!(read.unwrap(), b"hi");
    assert_eq!(status.code(), Some(0), "SIGINT unmounts and exits 0");
    assert!(mount_type(&other).is_none());

    // The command line wins over the file.
    let mut daemon = Command::new(common::binary())
        .args(["mount", "--foreground"])
        .arg(&layout.origin)
        .arg(&layout.mountpoint)
        .args(["--config", config.to_str().unwrap()])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mounted = wait_for_mount(&layout.mountpoint);
    // SAFETY: kill(2) of our own child.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let status = daemon.wait().unwrap();
    assert!(mounted && mount_type(&other).is_none());
    assert_eq!(status.code(), Some(0));
}

fn wait_for_mount(path: &Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if mount_type(path).as_deref() == Some("fuse.mirrorfs") {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn a_volume_is_served_by_one_daemon_at_a_time() {
    let mount = Mount::new();
    let second = mount.dir.path().join("second");
    fs::create_dir(&second).unwrap();
    let output = try_mount(&mount.origin, &second, &mount.state);
    assert_usage_error(&output, "in use");
    assert!(mount_type(&second).is_none());
}

#[test]
fn sigterm_and_sigint_unmount_and_exit_zero() {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let mut mount = Mount::new();
        fs::write(mount.path("f"), b"x").unwrap();
        assert_eq!(mount.stop_with(signal), Some(0), "{}", mount.log());
        assert!(mount_type(&mount.mountpoint).is_none());
        assert_eq!(fs::read(mount.origin_path("f")).unwrap(), b"x");
    }
}

#[test]
fn unmount_command() {
    let mut mount = Mount::new();
    let mountpoint = mount.mountpoint.to_str().unwrap().to_string();
    let output = run(&["unmount", &mountpoint]);
    assert_success(&output);
    assert!(mount_type(&mount.mountpoint).is_none());
    assert_eq!(
        mount.stop_with(0),
        Some(0),
        "the daemon exits 0 once unmounted"
    );

    assert_usage_error(&run(&["unmount", &mountpoint]), "not a mount point");
    let other = KernelMount::tmpfs(&mount.dir.path().join("tmp"), "1m");
    assert_usage_error(
        &run(&["unmount", other.path.to_str().unwrap()]),
        "not a mirrorfs",
    );
    assert_eq!(mount_type(&other.path).as_deref(), Some("tmpfs"));
}

#[test]
fn a_dead_daemons_mount_is_named_and_can_be_cleared() {
    let mut mount = Mount::new();
    mount.kill();
    let error = fs::metadata(&mount.mountpoint).unwrap_err();
    assert_eq!(error.raw_os_error(), Some(libc::ENOTCONN));
    let output = try_mount(&mount.origin, &mount.mountpoint, &mount.state);
    assert_usage_error(&output, "mirrorfs unmount");
    let output = run(&["unmount", mount.mountpoint.to_str().unwrap()]);
    assert_success(&output);
    assert!(mount_type(&mount.mountpoint).is_none());
    // And the volume can be served again (the dead daemon's lock died with it).
    mount.restart();
    fs::write(mount.path("back"), b"1").unwrap();
    assert!(mount.origin_path("back").exists());
}

/// `mirrorfs keygen > FILE` makes a private key file that a key reader accepts, a new key
/// each time; extra arguments are a usage error.
#[test]
fn keygen_writes_a_private_key_file() {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = scratch();
    let mut keys = Vec::new();
    for name in ["a.key", "b.key"] {
        let path = dir.path().join(name);
        // As a shell's `>` would create it: readable by everyone.
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o644)
            .open(&path)
            .unwrap();
        let status = Command::new(common::binary())
            .arg("keygen")
            .stdout(file)
            .status()
            .unwrap();
        assert!(status.success());
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        keys.push(mirrorfs::replication::VolumeKey::read(&path).unwrap());
    }
    assert_ne!(keys[0], keys[1]);
    assert_usage_error(&run(&["keygen", "extra"]), "unexpected argument");
}
