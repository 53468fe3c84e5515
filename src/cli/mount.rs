//! `mirrorfs mount`: resolve the config, check the system, and serve the volume.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::config::Passthrough;
use crate::config::RawConfig;
use crate::config::{Config, Overrides, WriteMode, normalize};
use crate::control::{self, ControlSocket, Handler};
use crate::fuse::{self, FS_TYPE, MountOptions};
use crate::log::Fence;
use crate::replication::Replication;
use crate::signals::StopSignals;
use crate::state::{StateDir, StateError};
use crate::status::{LogStatus, Status, VerifyStatus};
use crate::vfs::Volume;
use crate::write::log_dir;

use super::options;
use super::ready::{self, Readiness};
use super::registry::{self, Registered};
use super::verify::LastRunCell;
use super::{CliError, MountArgs, mountinfo, standby};

/// Mounts and serves until unmounted.
pub fn run(args: MountArgs) -> Result<(), CliError> {
    // First, before anything can start a thread (the origin does): see StopSignals.
    let signals = StopSignals::block()
        .map_err(|error| CliError::Failure(format!("cannot set up signal handling: {error}")))?;
    let mut readiness = Readiness::from_env();
    let served = serve(args, signals, &mut readiness);
    if let Err(error) = &served {
        readiness.failed(&error.message());
    }
    served
}

/// Resolves the volume, mounts it and serves it until unmounted.
fn serve(args: MountArgs, signals: StopSignals, readiness: &mut Readiness) -> Result<(), CliError> {
    let mut args = args;
    let listed = options::parse(&args.options, args.sloppy).map_err(CliError::Usage)?;
    args.config = args.config.or(listed.config);
    args.state_dir = args.state_dir.or(listed.state_dir);
    args.id = args.id.or(listed.id);
    args.allow_other |= listed.allow_other;
    let args_log_file = args.log_file.take().or(listed.log_file);
    let standby_copy = match args.standby {
        true => Some(standby::args(&mut args)?),
        false => None,
    };
    if args.source.is_some() != args.mountpoint.is_some() {
        return Err(CliError::Usage(
            "give both SOURCE and MOUNTPOINT, or neither (then --config names them)".to_string(),
        ));
    }
    let config_path = args
        .config
        .as_ref()
        .map(|path| std::fs::canonicalize(path).unwrap_or_else(|_| path.clone()));
    let raw = match &args.config {
        Some(path) => Config::read(path).map_err(usage)?,
        None => RawConfig::default(),
    };
    let cwd = std::env::current_dir().map_err(|error| {
        CliError::Failure(format!("cannot read the current directory: {error}"))
    })?;
    let overrides = Overrides {
        source: args.source,
        mountpoint: args.mountpoint,
        state_dir: args.state_dir,
        id: args.id,
        allow_other: args.allow_other.then_some(true),
    };
    let mut config = Config::resolve(raw, overrides, &cwd).map_err(usage)?;
    if standby_copy.is_some() {
        // The node keeps the copy's stored hashes; a standby changes nothing to hash.
        config.verify.stored_hashes = false;
    }
    let volume = &config.volume;
    let disk_dir = config.cache.disk.as_ref().map(|disk| disk.dir.as_path());
    check_system(
        &volume.source,
        &volume.mountpoint,
        &volume.state_dir,
        disk_dir,
    )?;
    let state = StateDir::open(&volume.state_dir).map_err(|error| match error {
        StateError::Locked { .. } => CliError::Usage(error.to_string()),
        StateError::Io { .. } => CliError::Failure(error.to_string()),
    })?;
    readiness.log_to(
        &args_log_file
            .clone()
            .unwrap_or_else(|| state.path().join(ready::LOG_NAME)),
    );
    prepare_process();

    // A fenced primary serves nothing, not even reads: its copy is older than the new
    // primary's, and applications must reach that one (or wait), not read stale data.
    let fence = Fence::load(&log_dir(state.path()))
        .map_err(|error| CliError::Failure(error.to_string()))?;
    if let Some(fence) = fence {
        return Err(super::volume::fenced(volume.id.as_str(), &fence));
    }
    // Bound before the volume opens: a port in use refuses the mount, in one line.
    let request_times = match config.metrics_listen {
        None => None,
        Some(address) => {
            let times = crate::metrics::RequestTimes::default();
            let state_path = state.path().to_path_buf();
            let registry = crate::metrics::mount_registry(
                move || control::query::<Status>(&state_path).ok(),
                &times,
            );
            crate::metrics::serve(address, registry)
                .map_err(|error| CliError::Usage(format!("metrics.listen {address}: {error}")))?;
            Some(times)
        }
    };
    tracing::info!(
        volume = %volume.id,
        source = %volume.source.display(),
        state_dir = %state.path().display(),
        "serving volume"
    );
    let options = MountOptions {
        fs_name: volume.source.display().to_string(),
        allow_other: volume.allow_other,
        threads: worker_threads(),
        ttl: config.cache.revalidate_after,
        // A standby's reads must go through the daemon, which holds the copy's gate.
        passthrough: config.cache.passthrough == Passthrough::Auto && standby_copy.is_none(),
        // A standby takes no writes.
        writeback: config.write.kernel_writeback && standby_copy.is_none(),
        flags: listed.flags,
        request_times,
    };
    // A standby reads through no cache of its own: the node changes the tree under it,
    // and a block read ahead outside a request would be read outside the gate.
    let served = super::volume::open(&config, state.path(), standby_copy.is_none())?;
    let standby = match &standby_copy {
        None => None,
        Some(copy) => Some(standby::stand_by(&served, copy)?),
    };
    let followed = standby
        .as_ref()
        .map(|standby: &fuse::Standby| Arc::clone(&standby.followed));
    let in_place = standby::InPlace::default();
    // Marked once the volume is open (a refused mount leaves no mark), before any change.
    let unclean = state.begin_serving().map_err(|error| {
        CliError::Failure(format!("state_dir {}: {error}", state.path().display()))
    })?;
    let last_verify = LastRunCell::default();
    let promoted_control = {
        let (volume, last_verify) = (Arc::clone(&served.volume), Arc::clone(&last_verify));
        move |config: &Config, state_dir: &Path, replication| {
            let parts = Parts {
                volume: &volume,
                replication,
                last_verify: &last_verify,
            };
            start_control(config, state_dir, parts, None, None)
        }
    };
    let _control = start_control(
        &config,
        state.path(),
        Parts {
            volume: &served.volume,
            replication: served.replication.clone(),
            last_verify: &last_verify,
        },
        standby_copy.zip(followed),
        Some(in_place.handler(&served.volume, Box::new(promoted_control))),
    );
    let schedule = super::verify::schedule(&config, &served.volume, &last_verify);
    // A change the origin took just before the daemon died may have no record, so no
    // replica will ever get it: after an unclean stop, the copies are checked against the
    // origin and repaired from it.
    let after_crash = (unclean && config.replication.is_some())
        .then(|| super::verify::repair_after_crash(&config, &served.volume, &last_verify))
        .flatten();
    let unmounted = AtomicBool::new(false);
    let outcome = std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("state-watch".to_string())
            .spawn_scoped(scope, || watch_state(&state, &served.volume, &unmounted))
            .map_err(|error| CliError::Failure(format!("cannot start a thread: {error}")))?;
        let status = format!("serving {} at {}", volume.id, volume.mountpoint.display());
        // As mountinfo will name it.
        let mountpoint =
            std::fs::canonicalize(&volume.mountpoint).unwrap_or_else(|_| volume.mountpoint.clone());
        let pid = std::process::id();
        let outcome = fuse::serve(
            Arc::clone(&served.volume),
            &volume.mountpoint,
            &options,
            signals,
            standby,
            &mut || {
                registry::register(&Registered {
                    mountpoint: mountpoint.clone(),
                    volume: volume.id.to_string(),
                    source: volume.source.clone(),
                    state_dir: state.path().to_path_buf(),
                    config: config_path.clone(),
                    pid,
                });
                readiness.ready(&status);
            },
        )
        .map_err(|error| CliError::Failure(error.to_string()));
        registry::unregister(&mountpoint, pid);
        readiness.stopping();
        unmounted.store(true, Ordering::Relaxed);
        outcome
    });
    // Unmounted: no request can come any more; runs under way end, and the origin is
    // brought up to date.
    drop(after_crash);
    drop(schedule);
    served.shutdown();
    in_place.shutdown();
    if let Err(error) = state.end_serving() {
        tracing::warn!(%error, "cannot mark the volume as stopped cleanly");
    }
    outcome
}

/// How often the state dir is looked at while mounted.
const STATE_WATCH_EVERY: Duration = Duration::from_millis(200);

/// Watches the state dir until `unmounted`: once it is deleted, moved or replaced, records
/// have nowhere to go that a restart would find, so the volume refuses changes (EROFS;
/// fsync EIO) rather than make changes no log holds.
fn watch_state(state: &StateDir, volume: &Volume, unmounted: &AtomicBool) {
    let watch = state.watch();
    if let Err(error) = &watch {
        tracing::warn!(%error, "cannot watch state_dir; it is looked at every 200 ms instead");
    }
    while !unmounted.load(Ordering::Relaxed) {
        if let Some(reason) = state.lost() {
            tracing::error!(
                %reason,
                "the volume's state is gone: changes are refused from now on (reads go on); \
                 unmount, put state_dir back (or mount with a new one and check the replicas \
                 with mirrorfs verify), then mount again"
            );
            volume.refuse_changes(reason);
            return;
        }
        match &watch {
            Ok(watch) => watch.wait(STATE_WATCH_EVERY),
            Err(_) => std::thread::sleep(STATE_WATCH_EVERY),
        }
    }
}

/// What a control socket reports on.
struct Parts<'a> {
    volume: &'a Arc<Volume>,
    replication: Option<Arc<Replication>>,
    last_verify: &'a LastRunCell,
}

/// Answers `mirrorfs status` while mounted (for a standby, with its section; and
/// `become-primary` with `in_place`). A volume without it still works, so a socket that
/// cannot be made (a state path too long for a socket name) is only a warning.
fn start_control(
    config: &Config,
    state_dir: &Path,
    parts: Parts<'_>,
    standby: Option<(PathBuf, Arc<fuse::Followed>)>,
    in_place: Option<Handler>,
) -> Option<ControlSocket> {
    let verify = super::verify::handler(config, parts.volume, parts.last_verify);
    let handler: Handler = match in_place {
        None => verify,
        Some(in_place) => Arc::new(move |request: &str, stream| {
            match request.starts_with(standby::BECOME_PRIMARY) {
                true => in_place(request, stream),
                false => verify(request, stream),
            }
        }),
    };
    let last_verify = Arc::clone(parts.last_verify);
    let volume = Arc::clone(parts.volume);
    let replication = parts.replication;
    let (id, source, mountpoint, state) = (
        config.volume.id.to_string(),
        config.volume.source.clone(),
        config.volume.mountpoint.clone(),
        state_dir.to_path_buf(),
    );
    let status = move || {
        let journal = volume.journal();
        let log = journal.log();
        Status {
            volume: id.clone(),
            source: source.clone(),
            mountpoint: mountpoint.clone(),
            pid: std::process::id(),
            write_mode: match journal.mode() {
                WriteMode::WriteThrough => "write-through",
                WriteMode::WriteBehind => "write-behind",
            }
            .to_string(),
            log: LogStatus {
                stats: log.view().stats(),
                durable_offset: log.durable_offset(),
                epochs: log.epochs().entries().to_vec(),
                fence: log.fence(),
            },
            write_behind: journal.behind_status(),
            cache: volume.cache().map(|cache| cache.stats()),
            passthrough_opens: volume.passthrough_opens(),
            handler_panics: volume.panics(),
            replication: replication.as_ref().map(|replication| replication.status()),
            verify: VerifyStatus {
                stored_files: volume.hashes().map(|store| store.stored_files() as u64),
                pending_files: volume
                    .hashes()
                    .map_or(0, |store| store.pending_files() as u64),
                last_run: last_verify
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone(),
            },
            standby: standby
                .as_ref()
                .and_then(|(copy, followed)| standby::status(&volume, copy, followed)),
            election: crate::replication::load_election(&state),
        }
    };
    match ControlSocket::serve_with(state_dir, status, Some(handler)) {
        Ok(socket) => Some(socket),
        Err(error) => {
            tracing::warn!(%error, "no control socket; 'mirrorfs status' will not reach this mount");
            None
        }
    }
}

fn usage(error: impl std::fmt::Display) -> CliError {
    CliError::Usage(error.to_string())
}

/// Checks what the config cannot know: that SOURCE is a readable directory, that
/// MOUNTPOINT is a free directory, and that no symlink hides one of the volume's
/// directories inside another (the config checks the paths as written; here they are
/// resolved).
fn check_system(
    source: &Path,
    mountpoint: &Path,
    state_dir: &Path,
    disk_dir: Option<&Path>,
) -> Result<(), CliError> {
    let source_real = readable_dir("SOURCE", source)?;

    let mounts = mountinfo::read()
        .map_err(|error| CliError::Failure(format!("cannot read the mount table: {error}")))?;
    let mountpoint_real = real_path(mountpoint);
    if let Some(mount) = mounts
        .iter()
        .find(|mount| mount.mount_point == mountpoint_real || mount.mount_point == mountpoint)
    {
        let hint = if mount.fs_type == FS_TYPE && std::fs::metadata(mountpoint).is_err() {
            format!(
                " (a mirrorfs mount whose daemon has stopped; run 'mirrorfs unmount {}')",
                mountpoint.display()
            )
        } else {
            format!(" ({} from {})", mount.fs_type, mount.source)
        };
        return Err(CliError::Usage(format!(
            "MOUNTPOINT {} is busy: something is already mounted there{hint}",
            mountpoint.display()
        )));
    }
    match std::fs::metadata(mountpoint) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(CliError::Usage(format!(
                "MOUNTPOINT {} is not a directory",
                mountpoint.display()
            )));
        }
        Err(error) => {
            return Err(CliError::Usage(format!(
                "MOUNTPOINT {}: {error}",
                mountpoint.display()
            )));
        }
    }
    if mountpoint_real.starts_with(&source_real) {
        return Err(CliError::Usage(format!(
            "MOUNTPOINT {} is inside SOURCE {} (through a symlink); a mount there would contain itself",
            mountpoint.display(),
            source.display()
        )));
    }
    let state_real = real_path(state_dir);
    if state_real.starts_with(&source_real) {
        return Err(CliError::Usage(format!(
            "state_dir {} is inside SOURCE {} (through a symlink)",
            state_dir.display(),
            source.display()
        )));
    }
    if state_real.starts_with(&mountpoint_real) {
        return Err(CliError::Usage(format!(
            "state_dir {} is inside MOUNTPOINT {} (through a symlink)",
            state_dir.display(),
            mountpoint.display()
        )));
    }
    let Some(disk_dir) = disk_dir else {
        return Ok(());
    };
    let disk_real = real_path(disk_dir);
    let others = [
        ("SOURCE", source, &source_real),
        ("MOUNTPOINT", mountpoint, &mountpoint_real),
        ("state_dir", state_dir, &state_real),
    ];
    for (name, other, other_real) in others {
        if disk_real.starts_with(other_real) || other_real.starts_with(&disk_real) {
            return Err(CliError::Usage(format!(
                "cache.disk_dir {} overlaps {name} {} (through a symlink); the disk tier needs a directory of its own",
                disk_dir.display(),
                other.display()
            )));
        }
    }
    Ok(())
}

/// `path` must be a directory this process can list and enter; returns its real path.
fn readable_dir(what: &str, path: &Path) -> Result<PathBuf, CliError> {
    let meta = std::fs::metadata(path)
        .map_err(|error| CliError::Usage(format!("{what} {}: {error}", path.display())))?;
    if !meta.is_dir() {
        return Err(CliError::Usage(format!(
            "{what} {} is not a directory",
            path.display()
        )));
    }
    if let Err(error) = std::fs::read_dir(path) {
        return Err(CliError::Usage(format!(
            "{what} {} cannot be read: {error}",
            path.display()
        )));
    }
    path.canonicalize()
        .map_err(|error| CliError::Usage(format!("{what} {}: {error}", path.display())))
}

/// The real path of `path`, resolving symlinks in as much of it as exists.
fn real_path(path: &Path) -> PathBuf {
    let mut existing = path.to_path_buf();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = existing.canonicalize() {
            let mut resolved = real;
            for part in rest.iter().rev() {
                resolved.push(part);
            }
            return normalize(&resolved);
        }
        match (existing.file_name(), existing.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name.to_os_string());
                existing = parent.to_path_buf();
            }
            _ => return normalize(path),
        }
    }
}

/// Process-wide settings the daemon needs before it serves.
fn prepare_process() {
    // The kernel has already applied the caller's umask to every mode it sends; the daemon's
    // own umask must not remove bits a second time.
    // SAFETY: umask cannot fail.
    unsafe { libc::umask(0) };
    // Open files each hold a descriptor: allow as many as the hard limit lets us.
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid out-pointer, then the same struct back.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Workers taking kernel requests: one per core, at least two (so one slow origin call
/// does not stall the mount). More idle workers cost more than they give: they all wait on
/// the one FUSE request queue, and each request then wakes, and contends among, more of
/// them (measured: 2 workers deleted 19,700 files/s and 4 workers 15,400 on 2 cores).
fn worker_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    cores.clamp(2, 16)
}
