//! A mount in the background, and telling whoever waits that it is up.
//!
//! `mirrorfs mount` without `--foreground` starts the daemon as a child of its own session
//! (the same command line with `--foreground`) and returns only once the child says the
//! mount is up, through a pipe named by `MIRRORFS_READY_FD`, or has failed (its error is
//! already on the shared stderr; the child's exit code becomes ours). A file written
//! right after `mirrorfs mount` returns lands in the volume, not in the directory under
//! it. The child logs to a file from the moment it knows its state directory, keeping
//! the caller's stderr only for its error, and lets go of it once mounted, so no caller
//! waiting on that stderr is held.
//!
//! In the foreground, under systemd's `Type=notify`, the same moment is READY=1 on
//! `NOTIFY_SOCKET`, and the unmount STOPPING=1.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, Stdio};

use super::CliError;

/// The environment variable naming the pipe a background daemon reports readiness on.
pub const READY_FD: &str = "MIRRORFS_READY_FD";

/// The line a daemon writes on the pipe once its mount is up.
const READY_LINE: &[u8] = b"ready\n";

/// Whether this process is a daemon started by a background `mirrorfs mount`.
pub fn is_background_child() -> bool {
    std::env::var_os(READY_FD).is_some()
}

/// Starts `args` (this command line) again as a daemon with `--foreground`, and waits
/// until it says its mount is up or it ends (then with its exit code).
pub fn start_in_background(args: &[OsString]) -> Result<(), CliError> {
    let failure = |what: &str, error: std::io::Error| CliError::Failure(format!("{what}: {error}"));
    let exe =
        std::env::current_exe().map_err(|error| failure("cannot find this program", error))?;
    let (read, write) = pipe().map_err(|error| failure("cannot make a pipe", error))?;
    let mut command = Command::new(exe);
    command
        .args(args.iter().skip(1))
        .arg("--foreground")
        .env(READY_FD, write.as_raw_fd().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    // SAFETY: setsid is async-signal-safe; the closure touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            // Its own session: a terminal's hang-up or Ctrl-C does not reach the daemon.
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .map_err(|error| failure("cannot start the daemon", error))?;
    // Only the child holds the write end now: its end of file is the child's word or exit.
    drop(write);
    let mut said = Vec::new();
    let _ = File::from(read).read_to_end(&mut said);
    if said == READY_LINE {
        return Ok(());
    }
    // It failed before mounting and has said why on our shared stderr.
    let status = child
        .wait()
        .map_err(|error| failure("cannot wait for the daemon", error))?;
    match (status.code(), status.signal()) {
        (Some(0), _) => Err(CliError::Failure(
            "the daemon ended before it mounted the volume".to_string(),
        )),
        (Some(code), _) => Err(CliError::Exit(code.clamp(1, 255), String::new())),
        (None, signal) => Err(CliError::Failure(format!(
            "the daemon was killed by signal {} before it mounted the volume",
            signal.unwrap_or(0)
        ))),
    }
}

/// What a daemon tells whoever waits for its mount.
#[derive(Debug, Default)]
pub struct Readiness {
    /// The pipe of the `mirrorfs mount` that started this daemon in the background.
    pipe: Option<File>,
    /// That command's stderr, once the daemon's own went to its log file: for the
    /// daemon's error, if it fails before it is mounted.
    caller_stderr: Option<File>,
}

/// Where a background daemon's log goes unless `--log-file` says: beside its state.
pub const LOG_NAME: &str = "daemon.log";

impl Readiness {
    /// Takes the pipe named in the environment, if any, and clears the variable. Call
    /// before any thread starts.
    pub fn from_env() -> Readiness {
        let Some(fd) = std::env::var_os(READY_FD) else {
            return Readiness::default();
        };
        // SAFETY: no other thread runs yet (the caller's promise), so none reads the
        // environment meanwhile.
        unsafe { std::env::remove_var(READY_FD) };
        let fd = fd.to_str().and_then(|fd| fd.parse::<i32>().ok());
        // SAFETY: F_GETFD/F_SETFD only look at and mark the descriptor.
        let open = fd.filter(|fd| *fd > 2 && unsafe { libc::fcntl(*fd, libc::F_GETFD) } >= 0);
        let pipe = open.map(|fd| {
            // Nothing the daemon starts (hooks) inherits it.
            // SAFETY: as above.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
            // SAFETY: the parent passed this descriptor for us alone, open for writing.
            File::from(unsafe { OwnedFd::from_raw_fd(fd) })
        });
        Readiness {
            pipe,
            caller_stderr: None,
        }
    }

    /// Whether a background `mirrorfs mount` waits on this daemon.
    pub fn in_background(&self) -> bool {
        self.pipe.is_some()
    }

    /// Sends the log to `path` from now on, in the background only (in the foreground it
    /// stays on stderr, which a supervisor collects).
    pub fn log_to(&mut self, path: &Path) {
        if !self.in_background() {
            return;
        }
        match log_to(path) {
            Ok(caller_stderr) => self.caller_stderr = Some(caller_stderr),
            Err(error) => {
                tracing::warn!(log = %path.display(), %error, "cannot open the log file; logging to the caller's stderr");
            }
        }
    }

    /// The daemon failed before it was mounted: the caller hears why.
    pub fn failed(&mut self, message: &str) {
        if let Some(mut stderr) = self.caller_stderr.take()
            && !message.is_empty()
        {
            let _ = writeln!(stderr, "mirrorfs: {message}");
        }
    }

    /// The mount is up: a background daemon tells its parent and lets go of the
    /// parent's stderr; one under systemd says READY=1 with `status`.
    pub fn ready(&mut self, status: &str) {
        if let Some(mut pipe) = self.pipe.take() {
            let _ = pipe.write_all(READY_LINE);
        }
        self.caller_stderr = None;
        sd_notify(&format!("READY=1\nSTATUS={status}"));
    }

    /// The mount is gone and the daemon is finishing (systemd's STOPPING=1).
    pub fn stopping(&self) {
        sd_notify("STOPPING=1");
    }
}

/// Sends this process's stderr (and so its log) to `path`, appended; returns what stderr
/// was.
fn log_to(path: &Path) -> std::io::Result<File> {
    let file = File::options()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)?;
    // SAFETY: F_DUPFD_CLOEXEC of stderr, then dup2 onto it; both only make descriptors.
    let caller = unsafe { libc::fcntl(2, libc::F_DUPFD_CLOEXEC, 3) };
    if caller < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: just made, owned by nothing else.
    let caller = File::from(unsafe { OwnedFd::from_raw_fd(caller) });
    // SAFETY: as above.
    if unsafe { libc::dup2(file.as_raw_fd(), 2) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(caller)
}

/// A pipe whose ends close on exec, but for the write end handed to the child (cleared
/// by `Command` through the fd number in the environment: see below).
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 just opened both; nothing else owns them.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // The child must inherit the write end: clear its close-on-exec flag. The parent
    // drops its copy right after the spawn.
    // SAFETY: F_SETFD on a descriptor we own.
    if unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETFD, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((read, write))
}

/// Tells systemd `message` on `NOTIFY_SOCKET` (sd_notify(3)), if it asked.
fn sd_notify(message: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let bytes = path.as_bytes();
    let address = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name),
        None => SocketAddr::from_pathname(&path),
    };
    let sent = UnixDatagram::unbound()
        .and_then(|socket| address.and_then(|to| socket.send_to_addr(message.as_bytes(), &to)));
    if let Err(error) = sent {
        tracing::warn!(socket = ?path, %error, "cannot notify systemd");
    }
}
