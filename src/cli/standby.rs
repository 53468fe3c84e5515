//! `mirrorfs mount --standby`: a replica's copy served read-only while its node applies
//! the stream, and promoted in place when `mirrorfs promote` makes the copy the primary:
//! the mount takes on the promoted copy's log and replicas without unmounting.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::config::{Config, Overrides};
use crate::control::{self, ControlError, ControlSocket, Handler};
use crate::fuse;
use crate::log::Fence;
use crate::origin::TreeGate;
use crate::replication::{GATE_FILE, Replication, inspect_copy};
use crate::state::StateDir;
use crate::status::StandbyStatus;
use crate::vfs::Volume;
use crate::write::log_dir;

use super::volume::Served;
use super::{CliError, MountArgs};

/// The control request by which `mirrorfs promote` hands a standby its promoted copy.
pub const BECOME_PRIMARY: &str = "become-primary";

/// What `become-primary` carries.
#[derive(Debug, Serialize, Deserialize)]
pub struct BecomePrimary {
    /// The mount config `mirrorfs promote` wrote for the promoted copy.
    pub config: PathBuf,
}

/// A standby's answer to `become-primary`.
#[derive(Debug, Serialize, Deserialize)]
pub enum BecameAnswer {
    /// The mount serves the volume read-write, as its primary.
    Primary {
        /// The new primary's epoch.
        epoch: u32,
    },
    /// It could not; the mount stays a standby.
    Refused(String),
}

/// `--standby --dir DIR --volume ID MOUNTPOINT`: the copy's tree as the source, a state
/// directory of the standby's own beside the copy (its log stays empty: every change is
/// refused), and no stored hashes (the node keeps the copy's). Returns the copy's
/// directory.
pub fn args(args: &mut MountArgs) -> Result<PathBuf, CliError> {
    let (Some(dir), Some(id)) = (&args.dir, &args.volume) else {
        return Err(CliError::Usage(
            "--standby needs --dir and --volume".to_string(),
        ));
    };
    // The one positional argument is the mount point.
    if args.mountpoint.is_some() {
        return Err(CliError::Usage(
            "--standby takes the mount point alone (the source is the copy)".to_string(),
        ));
    }
    let root = std::path::absolute(dir.join(id))
        .map_err(|error| CliError::Usage(format!("--dir {}: {error}", dir.display())))?;
    if !root.join("data").is_dir() {
        return Err(CliError::Usage(format!(
            "no copy of volume {id} in {} (is the node keeping it?)",
            dir.display()
        )));
    }
    // A copy that never received anything would be replaced whole by its first
    // snapshot, under the mount.
    let copy = inspect_copy(&root).map_err(|error| CliError::Failure(error.to_string()))?;
    if copy.next == 0 {
        return Err(CliError::Usage(format!(
            "the copy of volume {id} holds nothing of the volume yet: mount the standby once its node has received some"
        )));
    }
    args.mountpoint = args.source.take();
    args.source = Some(root.join("data"));
    args.state_dir.get_or_insert(root.join("standby"));
    args.id.get_or_insert(id.clone());
    Ok(root)
}

/// Makes `served` a standby of the copy in `root`: read through the copy's gate, changes
/// refused, and followed for the kernel's caches.
pub fn stand_by(served: &Served, root: &Path) -> Result<fuse::Standby, CliError> {
    let gate_path = root.join(GATE_FILE);
    let gate = TreeGate::open(&gate_path)
        .map_err(|error| CliError::Failure(format!("{}: {error}", gate_path.display())))?;
    served.volume.stand_by(gate.clone());
    Ok(fuse::Standby {
        gate,
        log_dir: root.join("log"),
        data_dir: root.join("data"),
        followed: Arc::default(),
    })
}

/// Hands the promoted copy's config to the standby mount whose state directory is
/// `state_dir`, if one is running there: `Ok(None)` when none is. `Ok(Some(epoch))` once
/// it serves the volume read-write.
pub fn hand_over(state_dir: &Path, config: &Path) -> Result<Option<u32>, CliError> {
    use std::io::BufRead;
    let request = serde_json::to_string(&BecomePrimary {
        config: config.to_path_buf(),
    })
    .map_err(|error| CliError::Failure(error.to_string()))?;
    let mut answers = match control::request(state_dir, &format!("{BECOME_PRIMARY} {request}")) {
        Ok(answers) => answers,
        Err(ControlError::NotRunning { .. }) => return Ok(None),
        Err(error) => return Err(CliError::Failure(error.to_string())),
    };
    let mut line = String::new();
    answers
        .read_line(&mut line)
        .map_err(|error| CliError::Failure(format!("the standby did not answer: {error}")))?;
    match serde_json::from_str(&line) {
        Ok(BecameAnswer::Primary { epoch }) => Ok(Some(epoch)),
        Ok(BecameAnswer::Refused(reason)) => Err(CliError::Failure(reason)),
        Err(error) => Err(CliError::Failure(format!(
            "the standby answered {line:?}: {error}"
        ))),
    }
}

/// What status shows of a standby of the copy in `root`: `None` once it is promoted.
pub fn status(volume: &Volume, root: &Path, followed: &fuse::Followed) -> Option<StandbyStatus> {
    if !volume.is_standby() {
        return None;
    }
    let copy = inspect_copy(root).ok();
    let served_offset = followed.served();
    let high_watermark = copy.as_ref().map_or(0, |copy| copy.high_watermark);
    let received = copy.as_ref().map_or(0, |copy| copy.next);
    Some(StandbyStatus {
        copy: root.to_path_buf(),
        served_offset,
        received,
        high_watermark,
        // The stored high watermark may be a second old; what the node holds is current.
        lag: high_watermark
            .max(received)
            .saturating_sub(served_offset.unwrap_or(0)),
        out_of_step: copy.as_ref().is_some_and(|copy| copy.out_of_step),
        replaced: followed.replaced(),
        notices: followed.notices(),
    })
}

/// Starts the control socket of a volume promoted in place: its config, its state
/// directory, its replica senders.
pub type StartControl =
    dyn Fn(&Config, &Path, Option<Arc<Replication>>) -> Option<ControlSocket> + Send + Sync;

/// What a standby promoted in place runs beside its volume, until it is unmounted.
struct Running {
    state: StateDir,
    replication: Option<Arc<Replication>>,
    _control: Option<ControlSocket>,
}

/// A standby's promotion in place: the parts it took on, once it did.
#[derive(Clone, Default)]
pub struct InPlace {
    running: Arc<Mutex<Option<Running>>>,
}

impl InPlace {
    /// The control handler answering `become-primary` for `volume`, whose mount point is
    /// `mountpoint`; `start_control` starts the promoted volume's own control socket.
    pub fn handler(&self, volume: &Arc<Volume>, start_control: Box<StartControl>) -> Handler {
        let (in_place, volume) = (self.clone(), Arc::clone(volume));
        Arc::new(move |request: &str, stream: UnixStream| {
            let mut stream = stream;
            let answer = match request
                .strip_prefix(BECOME_PRIMARY)
                .map(|rest| serde_json::from_str::<BecomePrimary>(rest.trim()))
            {
                Some(Ok(asked)) => in_place.promote(&volume, &asked.config, &start_control),
                Some(Err(error)) => BecameAnswer::Refused(format!("bad request: {error}")),
                None => BecameAnswer::Refused(format!("unknown request {request:?}")),
            };
            if let Ok(line) = serde_json::to_string(&answer) {
                let _ = writeln!(stream, "{line}");
            }
        })
    }

    fn promote(
        &self,
        volume: &Arc<Volume>,
        config_path: &Path,
        start_control: &StartControl,
    ) -> BecameAnswer {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if running.is_some() || !volume.is_standby() {
            return BecameAnswer::Refused("this mount is no standby (promoted already?)".into());
        }
        match take_on(volume, config_path, start_control) {
            Ok((taken, epoch)) => {
                *running = Some(taken);
                tracing::info!(
                    epoch,
                    "promoted in place: this mount is the volume's primary now"
                );
                BecameAnswer::Primary { epoch }
            }
            Err(error) => {
                let error = error.message();
                tracing::error!(%error, "cannot promote the standby in place; it stays a standby");
                BecameAnswer::Refused(error)
            }
        }
    }

    /// Stops what the promotion started (after the volume's own parts stopped).
    pub fn shutdown(&self) {
        let running = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let Some(running) = running else {
            return;
        };
        if let Some(replication) = &running.replication {
            replication.shutdown();
        }
        if let Err(error) = running.state.end_serving() {
            tracing::warn!(%error, "cannot mark the promoted volume as stopped cleanly");
        }
    }
}

/// Opens what records the promoted copy's changes (the config at `config_path`: its log,
/// write policy and replicas) and hands it to `volume`, which stops being a standby.
fn take_on(
    volume: &Arc<Volume>,
    config_path: &Path,
    start_control: &StartControl,
) -> Result<(Running, u32), CliError> {
    let raw = Config::read(config_path).map_err(|error| CliError::Usage(error.to_string()))?;
    let cwd = std::env::current_dir().map_err(|error| {
        CliError::Failure(format!("cannot read the current directory: {error}"))
    })?;
    let config = Config::resolve(raw, Overrides::default(), &cwd)
        .map_err(|error| CliError::Usage(error.to_string()))?;
    let origin = volume.origin_shared();
    let same = |path: &Path| std::fs::canonicalize(path).ok();
    if same(&config.volume.source) != same(origin.path()) {
        return Err(CliError::Usage(format!(
            "{} serves {}, not this standby's {}",
            config_path.display(),
            config.volume.source.display(),
            origin.path().display()
        )));
    }
    let state = StateDir::open(&config.volume.state_dir)
        .map_err(|error| CliError::Failure(error.to_string()))?;
    if let Some(fence) =
        Fence::load(&log_dir(state.path())).map_err(|error| CliError::Failure(error.to_string()))?
    {
        return Err(super::volume::fenced(config.volume.id.as_str(), &fence));
    }
    // No stored hashes: the volume was opened without them (verify reads what it checks).
    let recording = super::volume::open_recording(&config, state.path(), origin, false)?;
    let epoch = recording.journal.log().epoch();
    state
        .begin_serving()
        .map_err(|error| CliError::Failure(format!("{}: {error}", state.path().display())))?;
    let replication = recording.replication;
    if volume.promote_in_place(recording.journal).is_err() {
        if let Some(replication) = &replication {
            replication.shutdown();
        }
        let _ = state.end_serving();
        return Err(CliError::Failure(
            "the mount was promoted already".to_string(),
        ));
    }
    let control = start_control(&config, state.path(), replication.clone());
    Ok((
        Running {
            state,
            replication,
            _control: control,
        },
        epoch,
    ))
}
