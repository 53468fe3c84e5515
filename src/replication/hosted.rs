//! One volume a replica node keeps: its copy, its stored hashes, and who streams to it.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use super::ballot::{BallotBox, VotesStatus};
use super::candidacy::{Candidacy, ElectionStatus};
use super::copy::{CopyStatus, VolumeCopy, kept_aside};
use super::key::VolumeKey;
use super::promote::{PromoteError, Promotion, grant, promote};
use super::protocol::Stuck;
use super::vote::Standing;
use crate::manifest::HashStore;
use crate::manifest::Hashing;

/// One volume a node keeps.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HostedStatus {
    /// The volume id.
    pub id: String,
    /// Where its copy stands.
    #[serde(flatten)]
    pub copy: CopyStatus,
    /// Whether a primary is connected now.
    pub connected: bool,
    /// When a primary last sent something, in seconds since the Unix epoch.
    pub last_contact: Option<f64>,
    /// The epoch the copy was promoted to primary at, here: the node keeps it no more.
    #[serde(default)]
    pub promoted: Option<u32>,
    /// Files of the copy with stored hashes.
    #[serde(default)]
    pub stored_files: u64,
    /// Files whose changes the hasher has yet to take in.
    #[serde(default)]
    pub hashes_pending: u64,
    /// The node's votes for the volume (automatic failover), while it runs.
    #[serde(default)]
    pub votes: Option<VotesStatus>,
    /// Where an election of a new primary stands here (automatic failover), while it runs.
    #[serde(default)]
    pub election: Option<ElectionStatus>,
}

/// A primary not heard from for this long (three heartbeats) counts as gone: for a
/// promotion, and for an election.
pub(super) const PRIMARY_SILENT: Duration = Duration::from_secs(3);

/// How often a copy stuck on the same record is logged again.
const STUCK_LOG_EVERY: Duration = Duration::from_secs(60);

/// One volume the node keeps.
#[derive(Debug)]
pub(super) struct Hosted {
    /// The volume's key, which a primary must prove it holds.
    pub(super) key: VolumeKey,
    /// Whether the volume's connections may go unencrypted.
    pub(super) plaintext: bool,
    copy: Mutex<VolumeCopy>,
    /// The copy's stored hashes and their hasher.
    hashing: Hashing,
    /// The newest connection's number; older ones stop at their next message.
    pub(super) session: AtomicU64,
    /// When a primary last sent something.
    pub(super) contact: Mutex<Option<SystemTime>>,
    /// Sessions open now.
    pub(super) open_sessions: AtomicU64,
    /// The stuck record last logged, and when.
    stuck_logged: Mutex<Option<(u64, Instant)>>,
    /// Held by a promotion of the copy.
    promoting: Mutex<()>,
    /// Set once the copy was promoted to primary: its directory is a primary's state from
    /// then on, which the node never writes again.
    promoted: OnceLock<u32>,
    /// The node's votes for the volume (automatic failover).
    pub(super) ballots: Arc<BallotBox>,
    /// The copy standing for election (automatic failover).
    pub(super) candidacy: Candidacy,
    /// When the node took the copy up: a primary never heard is silent since.
    started: Instant,
}

impl Hosted {
    /// A volume kept with `key` (unencrypted connections allowed with `plaintext`), its
    /// copy and its stored hashes' hasher.
    pub(super) fn new(
        key: VolumeKey,
        plaintext: bool,
        copy: VolumeCopy,
        hashing: Hashing,
        ballots: BallotBox,
    ) -> Hosted {
        Hosted {
            key,
            plaintext,
            copy: Mutex::new(copy),
            hashing,
            session: AtomicU64::new(0),
            contact: Mutex::new(None),
            open_sessions: AtomicU64::new(0),
            stuck_logged: Mutex::new(None),
            promoting: Mutex::new(()),
            promoted: OnceLock::new(),
            ballots: Arc::new(ballots),
            candidacy: Candidacy::default(),
            started: Instant::now(),
        }
    }

    /// How far the copy reaches, for an election: its last record's epoch, its next offset.
    pub(super) fn standing(&self) -> Standing {
        let copy = self.copy();
        Standing {
            epoch: copy.last_epoch().unwrap_or(0),
            next: copy.next(),
        }
    }

    /// Whether a primary streams to the copy and was heard from lately (a primary sends at
    /// least a heartbeat a second; a session whose link was cut stays open, silent, until
    /// the idle timeout).
    fn primary_heard(&self) -> bool {
        let contact = *self.contact.lock().unwrap_or_else(|p| p.into_inner());
        self.open_sessions.load(Ordering::SeqCst) > 0
            && contact.is_some_and(|at| at.elapsed().is_ok_and(|since| since < PRIMARY_SILENT))
    }

    /// How long no primary was heard from: since its last message, or since the node took
    /// the copy up if none was heard since.
    pub(super) fn primary_silent_for(&self) -> Duration {
        let contact = *self.contact.lock().unwrap_or_else(|p| p.into_inner());
        match contact {
            Some(at) => at.elapsed().unwrap_or_default(),
            None => self.started.elapsed(),
        }
    }

    /// The epoch the copy was promoted at, if it was.
    pub(super) fn promoted(&self) -> Option<u32> {
        self.promoted.get().copied()
    }

    /// Promotes the copy, kept in `root`, to the volume's primary and hands it over: from
    /// now on the node refuses the volume's primaries (fencing the older ones) and never
    /// writes the directory again. Refused while a primary streams to the copy.
    pub(super) fn hand_over(
        &self,
        root: &Path,
        unclean: bool,
        candidate: Option<&str>,
        epoch: Option<u32>,
    ) -> Result<Promotion, PromoteError> {
        let Ok(_one) = self.promoting.try_lock() else {
            return Err(PromoteError::Busy);
        };
        if let Some(epoch) = self.promoted() {
            return Err(PromoteError::Promoted(epoch));
        }
        if self.primary_heard() {
            return Err(PromoteError::PrimaryConnected);
        }
        let promotion = promote(&mut self.copy(), root, unclean, candidate, epoch)?;
        let _ = self.promoted.set(promotion.epoch);
        self.stop_hashing();
        Ok(promotion)
    }

    /// Grants leader epoch `epoch` to the promotion of replica `candidate` (see
    /// [`super::promote::grant`]).
    pub(super) fn grant(&self, epoch: u32, candidate: &str) -> Result<(), PromoteError> {
        if let Some(promoted) = self.promoted() {
            return Err(PromoteError::Promoted(promoted));
        }
        grant(&self.copy(), epoch, candidate)
    }

    /// What status shows of it, as volume `id`.
    pub(super) fn status(&self, id: &str) -> HostedStatus {
        let contact = *self.contact.lock().unwrap_or_else(|p| p.into_inner());
        HostedStatus {
            id: id.to_string(),
            copy: {
                let copy = self.copy();
                let mut status = copy.status();
                // Shown, not worth failing a status for.
                status.kept_aside = kept_aside(copy.root()).unwrap_or_default();
                status
            },
            connected: self.open_sessions.load(Ordering::SeqCst) > 0,
            promoted: self.promoted(),
            stored_files: self.hashing.store().stored_files() as u64,
            hashes_pending: self.hashing.store().pending_files() as u64,
            votes: Some(self.ballots.status()),
            election: Some(self.candidacy.status()),
            last_contact: contact.and_then(|at| {
                at.duration_since(SystemTime::UNIX_EPOCH)
                    .ok()
                    .map(|since| since.as_secs_f64())
            }),
        }
    }

    /// Logs that the copy is stuck on `stuck`: at once for a new record, then once per
    /// [`STUCK_LOG_EVERY`] (a primary retries every second or two).
    pub(super) fn report_stuck(&self, volume: &str, stuck: &Stuck) {
        let mut logged = self
            .stuck_logged
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let due = logged
            .is_none_or(|(offset, at)| offset != stuck.offset || at.elapsed() >= STUCK_LOG_EVERY);
        if due {
            tracing::error!(
                %volume,
                offset = stuck.offset,
                error = %stuck.error,
                "the copy is stuck: it holds this record but cannot apply it, and its tree \
                 stays before it until the cause is removed (mirrorfs replica status shows it)"
            );
            *logged = Some((stuck.offset, Instant::now()));
        }
    }

    /// The copy's stored hashes.
    pub(super) fn hashes(&self) -> &Arc<HashStore> {
        self.hashing.store()
    }

    /// Stops the hasher, saving the stored hashes.
    pub(super) fn stop_hashing(&self) {
        self.hashing.stop();
    }

    /// The copy, unless another holds it now.
    pub(super) fn try_copy(&self) -> Option<MutexGuard<'_, VolumeCopy>> {
        match self.copy.try_lock() {
            Ok(copy) => Some(copy),
            Err(std::sync::TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    /// The copy, locked.
    pub(super) fn copy(&self) -> MutexGuard<'_, VolumeCopy> {
        self.copy
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
