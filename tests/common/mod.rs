//! Test harness: real `mirrorfs mount` processes over temporary origins.
//!
//! Every guard undoes exactly what it did: `Mount` stops only the daemon it started (by pid)
//! and detaches its own mount point if the daemon left it behind; `TmpfsMount` unmounts
//! the tmpfs it mounted.

#![allow(dead_code)]

pub mod cluster;
pub mod netns;
pub mod replica;
pub mod workload;

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The mirrorfs binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_mirrorfs")
}

/// A fresh temporary directory for one test (on the root filesystem, which has xattrs).
pub fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("mirrorfs-test-")
        .tempdir_in("/tmp")
        .expect("create a scratch directory")
}

/// Whether `path` is a mount point now, and of what type.
pub fn mount_type(path: &Path) -> Option<String> {
    let table = fs::read_to_string("/proc/self/mountinfo").ok()?;
    table.lines().rev().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let separator = fields.iter().position(|field| *field == "-")?;
        let point = fields.get(4)?.replace("\\040", " ");
        (Path::new(&point) == path).then(|| fields[separator + 1].to_string())
    })
}

fn detach(path: &Path) {
    let c_path = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: NUL-terminated path.
    unsafe { libc::umount2(c_path.as_ptr(), libc::MNT_DETACH) };
}

fn signal(pid: u32, signal: i32) {
    // SAFETY: plain kill(2) on the pid of a child we started and have not reaped.
    unsafe { libc::kill(pid as i32, signal) };
}

/// A running `mirrorfs mount` over a temporary origin.
pub struct Mount {
    /// The scratch directory holding origin, mount point and state.
    pub dir: tempfile::TempDir,
    /// The origin (backing directory).
    pub origin: PathBuf,
    /// The mount point.
    pub mountpoint: PathBuf,
    /// The volume's state directory.
    pub state: PathBuf,
    child: Option<Child>,
    log: PathBuf,
    extra: Vec<String>,
    /// Environment variables the daemon gets.
    pub env: Vec<(String, String)>,
}

impl Mount {
    /// Mounts a new empty origin.
    pub fn new() -> Mount {
        Mount::with_args(&[])
    }

    /// Mounts a new empty origin with extra `mirrorfs mount` arguments.
    pub fn with_args(extra: &[&str]) -> Mount {
        let dir = scratch();
        let origin = dir.path().join("origin");
        fs::create_dir(&origin).unwrap();
        Mount::over(dir, origin, extra)
    }

    /// Mounts a new empty origin with `config` as its mount config file.
    pub fn with_config(config: &str) -> Mount {
        let dir = scratch();
        let origin = dir.path().join("origin");
        fs::create_dir(&origin).unwrap();
        let file = dir.path().join("mount.toml");
        fs::write(&file, config).unwrap();
        let file = file.to_str().unwrap().to_string();
        Mount::over(dir, origin, &["--config", &file])
    }

    /// Mounts `origin` (kept in `dir`, which the guard removes at the end).
    pub fn over(dir: tempfile::TempDir, origin: PathBuf, extra: &[&str]) -> Mount {
        let state = dir.path().join("state");
        Mount::over_state(dir, origin, state, extra)
    }

    /// [`Mount::over`] with its state in `state` (a promoted copy's directory).
    pub fn over_state(
        dir: tempfile::TempDir,
        origin: PathBuf,
        state: PathBuf,
        extra: &[&str],
    ) -> Mount {
        let mountpoint = dir.path().join("mnt");
        let log = dir.path().join("daemon.log");
        fs::create_dir_all(&mountpoint).unwrap();
        let mut mount = Mount {
            dir,
            origin,
            mountpoint,
            state,
            child: None,
            log,
            extra: extra.iter().map(|arg| arg.to_string()).collect(),
            env: Vec::new(),
        };
        mount.restart();
        mount
    }

    /// Starts a daemon again over the same origin, mount point and state (after it was
    /// stopped or killed, and its dead mount cleared).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the daemon is still running");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(binary())
            .args(["mount", "--foreground"])
            .arg(&self.origin)
            .arg(&self.mountpoint)
            .arg("--state-dir")
            .arg(&self.state)
            .args(&self.extra)
            .envs(self.env.iter().map(|(key, value)| (key, value)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start mirrorfs");
        self.child = Some(child);
        self.wait_until_mounted();
    }

    fn wait_until_mounted(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if mount_type(&self.mountpoint).as_deref() == Some("fuse.mirrorfs") {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "mirrorfs exited with {status} before mounting:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("mirrorfs did not mount within 20s:\n{}", self.log());
    }

    /// A path inside the mount.
    pub fn path(&self, relative: &str) -> PathBuf {
        self.mountpoint.join(relative)
    }

    /// The same path inside the origin.
    pub fn origin_path(&self, relative: &str) -> PathBuf {
        self.origin.join(relative)
    }

    /// A config naming this volume whole (source, mount point and state directory, then
    /// the rest of the config it was mounted with), for commands that take only
    /// `--config`, such as `mirrorfs verify`.
    pub fn full_config(&self) -> PathBuf {
        let given = fs::read_to_string(self.dir.path().join("mount.toml")).unwrap_or_default();
        let rest = given.strip_prefix("[volume]\n").unwrap_or(&given);
        let named = format!(
            "[volume]\nsource = \"{}\"\nmountpoint = \"{}\"\nstate_dir = \"{}\"\n{}",
            self.origin.display(),
            self.mountpoint.display(),
            self.state.display(),
            if given.starts_with("[volume]") {
                rest.to_string()
            } else {
                given.clone()
            }
        );
        let path = self.dir.path().join("volume.toml");
        fs::write(&path, named).unwrap();
        path
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `mirrorfs status --json` of this volume, as JSON.
    pub fn status_json(&self) -> serde_json::Value {
        let output = run(&[
            "status",
            "--state-dir",
            self.state.to_str().unwrap(),
            "--json",
        ]);
        assert!(output.status.success(), "{output:?}");
        serde_json::from_slice(&output.stdout).unwrap()
    }

    /// `mirrorfs status --json` of this volume.
    pub fn status(&self) -> mirrorfs::status::Status {
        serde_json::from_value(self.status_json()).unwrap()
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends `signal` to the daemon and waits for it to exit; returns its exit code.
    pub fn stop_with(&mut self, sig: i32) -> Option<i32> {
        let mut child = self.child.take()?;
        signal(child.id(), sig);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        signal(child.id(), libc::SIGKILL);
        let _ = child.wait();
        panic!(
            "mirrorfs did not exit within 20s of signal {sig}:\n{}",
            self.log()
        );
    }

    /// Kills the daemon with SIGKILL, leaving its (now dead) mount behind.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), libc::SIGKILL);
            let _ = child.wait();
        }
    }

    /// Kills the daemon with SIGKILL and detaches the dead mount it leaves, ready for
    /// `restart`.
    pub fn crash(&mut self) {
        self.kill();
        if mount_type(&self.mountpoint).is_some() {
            detach(&self.mountpoint);
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.stop_with(libc::SIGTERM);
        }
        if mount_type(&self.mountpoint).is_some() {
            detach(&self.mountpoint);
        }
    }
}

/// A `mirrorfs mount` started with arguments of its own (a standby, say): stopped by its
/// pid and its mount detached when dropped.
pub struct MountedChild {
    child: Child,
    /// Where it is mounted.
    pub mountpoint: PathBuf,
    log: PathBuf,
    /// Reaped already: its pid may be another process's now.
    ended: bool,
}

impl MountedChild {
    /// Runs `mirrorfs mount ARGS`, its log in `log`, and waits until `mountpoint` is
    /// mounted (or the daemon exits: then this panics with its log).
    pub fn start(args: &[&str], mountpoint: &Path, log: &Path) -> MountedChild {
        MountedChild::spawn_with_env(args, &[], mountpoint, log)
    }

    /// [`MountedChild::start`] with `env` set for the daemon.
    pub fn spawn_with_env(
        args: &[&str],
        env: &[(&str, &str)],
        mountpoint: &Path,
        log: &Path,
    ) -> MountedChild {
        let child = Command::new(binary())
            .args(["mount", "--foreground"])
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        let mut mounted = MountedChild {
            child,
            mountpoint: mountpoint.to_path_buf(),
            log: log.to_path_buf(),
            ended: false,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while mount_type(mountpoint).as_deref() != Some("fuse.mirrorfs") {
            if let Some(status) = mounted.child.try_wait().unwrap() {
                panic!("mirrorfs exited with {status}:\n{}", mounted.log());
            }
            assert!(Instant::now() < deadline, "not mounted:\n{}", mounted.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        mounted
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends it `sig` and waits for it to end; its exit code.
    pub fn stop(&mut self, sig: i32) -> Option<i32> {
        signal(self.child.id(), sig);
        let status = self.child.wait().unwrap();
        self.ended = true;
        status.code()
    }
}

impl Drop for MountedChild {
    fn drop(&mut self) {
        if !self.ended {
            signal(self.child.id(), libc::SIGTERM);
            let _ = self.child.wait();
        }
        if mount_type(&self.mountpoint).is_some() {
            detach(&self.mountpoint);
        }
    }
}

/// A kernel mount made for one test (tmpfs, bind), unmounted when dropped.
pub struct KernelMount {
    /// Where it is mounted.
    pub path: PathBuf,
}

impl KernelMount {
    /// Mounts a tmpfs of `size` (e.g. "2m") at `path` (created if missing).
    pub fn tmpfs(path: &Path, size: &str) -> KernelMount {
        KernelMount::with(
            path,
            &["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"],
        )
    }

    /// Binds `source` read-only at `path`.
    pub fn read_only_bind(source: &Path, path: &Path) -> KernelMount {
        let source = source.to_str().unwrap();
        let mount = KernelMount::with(path, &["--bind", source]);
        mount.remount(&["-o", "remount,ro,bind"]);
        mount
    }

    fn with(path: &Path, args: &[&str]) -> KernelMount {
        fs::create_dir_all(path).unwrap();
        let status = Command::new("mount").args(args).arg(path).status().unwrap();
        assert!(status.success(), "mount {args:?} at {}", path.display());
        KernelMount {
            path: path.to_path_buf(),
        }
    }

    fn remount(&self, args: &[&str]) {
        let status = Command::new("mount")
            .args(args)
            .arg(&self.path)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "mount {args:?} at {}",
            self.path.display()
        );
    }
}

impl Drop for KernelMount {
    fn drop(&mut self) {
        detach(&self.path);
    }
}

/// Runs `mirrorfs ARGS` to completion (a mount in the foreground: one wrongly accepted
/// would serve, not leave a daemon behind).
pub fn run(args: &[&str]) -> Output {
    Command::new(binary())
        .args(args)
        .args(foreground(args.first().copied().map(std::ffi::OsStr::new)))
        .stdin(Stdio::null())
        .output()
        .expect("run mirrorfs")
}

/// `--foreground` for a `mirrorfs mount` (whose first argument is `command`): the test
/// then owns the daemon's process, to stop by pid.
pub fn foreground(command: Option<&std::ffi::OsStr>) -> Option<&'static str> {
    (command == Some(std::ffi::OsStr::new("mount"))).then_some("--foreground")
}

/// Runs a shell script as `uid`:`gid` (no supplementary groups) in `dir`.
pub fn sh_as(uid: u32, gid: u32, dir: &Path, script: &str) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .uid(uid)
        .gid(gid)
        .stdin(Stdio::null())
        .output()
        .expect("run sh")
}

/// The errno of the last libc call.
pub fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// A path as a C string.
pub fn c_path(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).unwrap()
}

/// Runs `mirrorfs ARGS` as `uid` (None: as is) and expects it to exit within 20 s (a
/// mount that wrongly succeeds would serve forever); kills it and fails otherwise.
pub fn run_expecting_exit(args: &[&std::ffi::OsStr], uid: Option<u32>) -> Output {
    let mut command = Command::new(binary());
    command
        .args(args)
        .args(foreground(args.first().copied()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(uid) = uid {
        command.uid(uid).gid(uid);
    }
    let mut child = command.spawn().expect("run mirrorfs");
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // It mounted: stop it cleanly so no dead mount is left behind, then report.
    signal(child.id(), libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && child.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(child.id(), libc::SIGKILL);
    let output = child.wait_with_output().unwrap();
    panic!(
        "mirrorfs {args:?} kept running (it should have refused):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// What a tree holds, as comparable text per path: type, mode, owner, size, content hash,
/// symlink target, every xattr (ACLs too), mtime (files, directories and symlinks), and
/// which paths share an inode. (scripts/treecmp.py is the same judge for scripts.)
pub fn tree(root: &Path) -> std::collections::BTreeMap<String, String> {
    use std::os::unix::fs::MetadataExt;
    let mut entries = std::collections::BTreeMap::new();
    let mut first_name_of_inode = std::collections::HashMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let mut names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .collect();
        names.sort();
        for path in names {
            let relative = path.strip_prefix(root).unwrap().display().to_string();
            let meta = fs::symlink_metadata(&path).unwrap();
            let kind = meta.file_type();
            let mut text = format!(
                "mode={:o} uid={} gid={}",
                meta.mode(),
                meta.uid(),
                meta.gid()
            );
            if !kind.is_file() {
                text += &format!(" mtime={}.{:09}", meta.mtime(), meta.mtime_nsec());
            }
            if kind.is_dir() {
                pending.push(path.clone());
            } else if kind.is_symlink() {
                text += &format!(" -> {}", fs::read_link(&path).unwrap().display());
            } else if kind.is_file() {
                let content = fs::read(&path).unwrap();
                let link = first_name_of_inode
                    .entry(meta.ino())
                    .or_insert_with(|| relative.clone());
                text += &format!(
                    " size={} blake3={} mtime={}.{:09} links={} same-as={link}",
                    meta.len(),
                    &blake3::hash(&content).to_hex()[..16],
                    meta.mtime(),
                    meta.mtime_nsec(),
                    meta.nlink(),
                );
            }
            if !kind.is_symlink() {
                let mut xattrs: Vec<String> = xattr_names(&path)
                    .into_iter()
                    .map(|name| format!("{name}={:?}", xattr_value(&path, &name)))
                    .collect();
                xattrs.sort();
                text += &format!(" xattrs=[{}]", xattrs.join(","));
            }
            entries.insert(relative, text);
        }
    }
    entries
}

fn xattr_names(path: &Path) -> Vec<String> {
    let c = c_path(path);
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid path and buffer of the stated length.
    let len = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(len >= 0, "llistxattr {}", path.display());
    buf.truncate(len as usize);
    buf.split(|&b| b == 0)
        .filter(|name| !name.is_empty())
        .map(|name| String::from_utf8_lossy(name).into_owned())
        .collect()
}

fn xattr_value(path: &Path, name: &str) -> String {
    let c = c_path(path);
    let key = CString::new(name).unwrap();
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid path, name and buffer of the stated length.
    let len =
        unsafe { libc::lgetxattr(c.as_ptr(), key.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(len >= 0, "lgetxattr {} {name}", path.display());
    format!("{:02x?}", &buf[..len as usize])
}

/// Applies every record of the log in `state` to the directory `copy`, as a replica
/// would, each one `times` times in a row. Returns the number of records.
pub fn replay(state: &Path, copy: &Path, times: usize) -> usize {
    let origin = mirrorfs::origin::Origin::open(copy).unwrap();
    let snapshot = mirrorfs::log::inspect(&mirrorfs::write::log_dir(state)).unwrap();
    let mut count = 0;
    for record in snapshot.records(0).unwrap() {
        let record = record.unwrap();
        for _ in 0..times {
            mirrorfs::tree::apply(&origin, &record, true).unwrap();
        }
        count += 1;
    }
    count
}

/// renameat2(2) with `flags`; the errno on failure.
pub fn rename2(from: &Path, to: &Path, flags: u32) -> Result<(), i32> {
    let (from, to) = (c_path(from), c_path(to));
    // SAFETY: NUL-terminated paths.
    let result = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            flags,
        )
    };
    if result == 0 { Ok(()) } else { Err(errno()) }
}

/// getxattr(2); the errno on failure.
pub fn xattr_get(path: &Path, key: &str) -> Result<Vec<u8>, i32> {
    let (path, key) = (c_path(path), c_path(Path::new(key)));
    let mut buffer = vec![0u8; 256];
    // SAFETY: NUL-terminated strings and a buffer of its length.
    let size = unsafe {
        libc::getxattr(
            path.as_ptr(),
            key.as_ptr(),
            buffer.as_mut_ptr().cast(),
            buffer.len(),
        )
    };
    if size < 0 {
        return Err(errno());
    }
    buffer.truncate(size as usize);
    Ok(buffer)
}

/// setxattr(2) with `flags`; the errno on failure.
pub fn xattr_set(path: &Path, key: &str, value: &[u8], flags: i32) -> Result<(), i32> {
    let (path, key) = (c_path(path), c_path(Path::new(key)));
    // SAFETY: NUL-terminated strings and a value of its length.
    let result = unsafe {
        libc::setxattr(
            path.as_ptr(),
            key.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    };
    if result == 0 { Ok(()) } else { Err(errno()) }
}

/// removexattr(2); the errno on failure.
pub fn xattr_remove(path: &Path, key: &str) -> Result<(), i32> {
    let (path, key) = (c_path(path), c_path(Path::new(key)));
    // SAFETY: NUL-terminated strings.
    let result = unsafe { libc::removexattr(path.as_ptr(), key.as_ptr()) };
    if result == 0 { Ok(()) } else { Err(errno()) }
}
