//! A volume's parts put together (origin, journal, read cache, replication, stored
//! hashes) for the mount daemon, or headless for `mirrorfs verify` on an unmounted volume;
//! and taken apart in order.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::cache::Cache;
use crate::config::{Config, FailoverConfig};
use crate::log::{Fence, LogPath};
use crate::manifest::Hashing;
use crate::origin::{HoldError, Origin};
use crate::replication::{
    AutoFailover, BALLOT_FILE, BallotBox, LeaseKeeper, LeaseSetup, Replication, ReplicationError,
    Standing, VolumeKey,
};
use crate::vfs::Volume;
use crate::write::Follower;
use crate::write::Journal;

use super::CliError;

/// How long a starting primary waits to have tried a handshake with every replica (one
/// refusing connections answers at once; an unreachable one takes a connect timeout).
const FIRST_CONTACT_WAIT: Duration = Duration::from_secs(6);

/// The error of a mount or open of volume `id` refused because `fence` fenced it.
pub fn fenced(id: &str, fence: &Fence) -> CliError {
    CliError::Failure(format!(
        "volume {id} is {fence}: a replica was promoted, and this copy is behind it; rejoin it as a replica of the new primary"
    ))
}

/// With automatic failover, starts renewing the primary's lease with the voters (its own
/// ballot in `state_dir`, the replicas, the witnesses): changes are taken only while it is
/// held (docs/design.md 9.8). Returns once the first round is over.
fn hold_lease(
    config: &Config,
    state_dir: &Path,
    journal: &Journal,
    replication: &Arc<Replication>,
) -> Result<(), CliError> {
    let (failover, Some(settings)) = (&config.failover, &config.replication) else {
        return Ok(());
    };
    if let Some(why) = &failover.auto_off {
        if failover.mode == crate::config::FailoverMode::Auto {
            tracing::warn!(volume = %config.volume.id, "{why}");
        }
        return Ok(());
    }
    if !failover.is_auto() {
        return Ok(());
    }
    let failed = |error: &dyn std::fmt::Display| CliError::Failure(error.to_string());
    let key = VolumeKey::read(&settings.key_file).map_err(|e| CliError::Usage(e.to_string()))?;
    let own = BallotBox::open(&state_dir.join(BALLOT_FILE)).map_err(|e| failed(&e))?;
    let log = Arc::clone(journal.snapshot_source().log());
    let setup = LeaseSetup {
        volume: config.volume.id.to_string(),
        name: primary_name(failover),
        epoch: log.epoch(),
        voters: settings
            .replicas
            .iter()
            .chain(&failover.witnesses)
            .cloned()
            .collect(),
        key,
        plaintext: settings.plaintext,
        own,
        failover: failover.clone(),
    };
    let deposing = Arc::downgrade(replication);
    let fencing = Arc::clone(&log);
    let keeper = LeaseKeeper::start(
        setup,
        move || Standing {
            epoch: log.epoch(),
            next: log.next_offset(),
        },
        move || fencing.is_fenced(),
        move |epoch, by| {
            if let Some(replication) = deposing.upgrade() {
                replication.deposed(epoch, by);
            }
        },
    )
    .map_err(|e| failed(&format!("cannot start the lease keeper: {e}")))?;
    replication.keep_lease(keeper);
    Ok(())
}

/// The primary's name among the voters: as configured, or the machine's host name.
fn primary_name(failover: &FailoverConfig) -> String {
    failover.name.clone().unwrap_or_else(host_name)
}

/// The machine's host name: a primary's default name among the voters.
fn host_name() -> String {
    let mut buffer = [0u8; 256];
    // SAFETY: the buffer and its length match; the result is checked.
    let result = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) };
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    match result {
        0 => String::from_utf8_lossy(&buffer[..end]).into_owned(),
        _ => "primary".to_string(),
    }
}

/// A volume's parts, running.
pub struct Served {
    /// The volume.
    pub volume: Arc<Volume>,
    /// The replica senders, if the volume has replicas.
    pub replication: Option<Arc<Replication>>,
    hashing: Option<Hashing>,
    /// The origin's lock: one volume serves an origin.
    _hold: std::fs::File,
}

/// Opens the volume `config` describes, its state in `state_dir` (locked by the caller);
/// with `cache`, reads go through the read cache.
pub fn open(config: &Config, state_dir: &Path, cache: bool) -> Result<Served, CliError> {
    let volume = &config.volume;
    let origin = Arc::new(Origin::open(&volume.source).map_err(|error| {
        CliError::Usage(format!(
            "cannot open SOURCE {}: {error}",
            volume.source.display()
        ))
    })?);
    let hold = origin.hold().map_err(|error| {
        let message = format!("SOURCE {}: {error}", volume.source.display());
        match error {
            HoldError::Held { .. } => CliError::Usage(message),
            HoldError::Io(_) => CliError::Failure(message),
        }
    })?;
    let cache = match cache {
        true => Cache::start(&config.cache)
            .map_err(|error| CliError::Failure(format!("read cache: {error}")))?,
        false => None,
    };
    let recording = open_recording(config, state_dir, &origin, config.verify.stored_hashes)?;
    let volume = Arc::new(Volume::new(
        origin,
        recording.journal,
        cache,
        recording
            .hashing
            .as_ref()
            .map(|hashing| Arc::clone(hashing.store())),
    ));
    Ok(Served {
        volume,
        replication: recording.replication,
        hashing: recording.hashing,
        _hold: hold,
    })
}

/// What records a volume's changes and sends them on: the journal (the log and the write
/// policy), the replica senders, and the stored hashes' hasher.
pub struct Recording {
    /// The journal, following its log to the replicas.
    pub journal: Journal,
    /// The replica senders, if the volume has replicas.
    pub replication: Option<Arc<Replication>>,
    /// The stored hashes kept current, with `hashes`.
    pub hashing: Option<Hashing>,
}

/// Opens what records the changes of the volume `config` describes over `origin`, its
/// state in `state_dir` (locked by the caller); with `hashes`, the stored hashes are kept.
/// Refused (and nothing left running) once the replicas say the volume is fenced.
pub fn open_recording(
    config: &Config,
    state_dir: &Path,
    origin: &Arc<Origin>,
    hashes: bool,
) -> Result<Recording, CliError> {
    let volume = &config.volume;
    // SAFETY: geteuid cannot fail.
    let as_root = unsafe { libc::geteuid() } == 0;
    let mut journal = Journal::open(
        state_dir,
        &config.write,
        &config.log,
        Arc::clone(origin),
        as_root,
    )
    .map_err(|error| CliError::Failure(error.to_string()))?;
    let replication = match &config.replication {
        None => None,
        Some(replication) => Some(
            Replication::start(
                replication,
                volume.id.as_str(),
                journal.snapshot_source(),
                // The log's latest epoch: the one its new records carry.
                journal.log().epoch(),
                config.failover.is_auto().then(|| {
                    AutoFailover::from_config(
                        &config.failover,
                        primary_name(&config.failover),
                        volume.mountpoint.clone(),
                    )
                }),
            )
            .map_err(|error| match error {
                ReplicationError::Key(_) => CliError::Usage(error.to_string()),
                other => CliError::Failure(other.to_string()),
            })?,
        ),
    };
    if let Some(replication) = &replication {
        journal.follow(Arc::clone(replication) as Arc<dyn Follower>);
        // A primary restarted after a replica was promoted learns so from the replicas
        // before it takes a change, and stops there.
        replication.first_contact(FIRST_CONTACT_WAIT);
        if let Some(fence) = journal.log().fence() {
            replication.shutdown();
            return Err(fenced(volume.id.as_str(), &fence));
        }
    }
    let hashing = match hashes {
        false => None,
        true => {
            let reading = Arc::clone(origin);
            Some(
                Hashing::start(
                    state_dir,
                    move |path: &LogPath| crate::tree::open_regular(&reading, path, libc::O_RDONLY),
                    journal.applied_source(),
                )
                .map_err(|error| CliError::Failure(format!("cannot start the hasher: {error}")))?,
            )
        }
    };
    if let (Some(replication), Some(hashing)) = (&replication, &hashing) {
        replication.keep_hashes(Arc::clone(hashing.store()));
    }
    if let Some(replication) = &replication {
        hold_lease(config, state_dir, &journal, replication)?;
    }
    Ok(Recording {
        journal,
        replication,
        hashing,
    })
}

impl Served {
    /// Stops every part: the origin brought up to date with the log, the replicas'
    /// senders stopped, the stored hashes saved.
    pub fn shutdown(&self) {
        self.volume.journal().shutdown();
        if let Some(cache) = self.volume.cache() {
            cache.shutdown();
        }
        if let Some(replication) = &self.replication {
            replication.shutdown();
        }
        if let Some(hashing) = &self.hashing {
            hashing.stop();
        }
    }
}
