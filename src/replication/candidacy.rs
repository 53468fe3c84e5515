//! One volume's election state on a replica node (automatic failover): what status shows
//! of it, and when the node may stand next.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

/// Where a volume's election stands on this node, as status shows it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ElectionStatus {
    /// What the node does now: follows the primary, waits (and why), or stands.
    pub now: String,
    /// The last election it stood in.
    pub last: Option<LastElection>,
}

/// One election a node stood in.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LastElection {
    /// The epoch it stood for.
    pub epoch: u32,
    /// When it began, in seconds since the Unix epoch.
    pub at: f64,
    /// Why it stood.
    pub reason: String,
    /// Whether it won.
    pub won: bool,
    /// The votes, or what stopped it.
    pub outcome: String,
}

/// After a lost election, the candidate waits this long and up to as long again, and
/// before its first up to twice as long (so that candidates do not keep splitting the
/// votes).
pub(super) const RETRY_AFTER: Duration = Duration::from_millis(400);

/// One volume's election state on this node.
#[derive(Debug, Default)]
pub(super) struct Candidacy {
    status: Mutex<ElectionStatus>,
    /// The newest epoch a voter named, to stand past it.
    newest_seen: Mutex<u32>,
    /// No new election before this.
    not_before: Mutex<Option<Instant>>,
}

impl Candidacy {
    /// As status shows it.
    pub(super) fn status(&self) -> ElectionStatus {
        self.status
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Keeps `last` as the last election it stood in.
    pub(super) fn record(&self, last: LastElection) {
        self.status.lock().unwrap_or_else(|p| p.into_inner()).last = Some(last);
    }

    /// The newest epoch a voter named.
    pub(super) fn newest_seen(&self) -> u32 {
        *self.newest_seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes that a voter named `epoch`, to stand past it next time.
    pub(super) fn saw_epoch(&self, epoch: u32) {
        let mut seen = self.newest_seen.lock().unwrap_or_else(|p| p.into_inner());
        *seen = (*seen).max(epoch);
    }

    /// Whether it may stand now. Every replica notices a silent primary at about the same
    /// time: each waits a while of its own first, so that one usually asks alone.
    pub(super) fn due(&self) -> bool {
        let mut not_before = self.not_before.lock().unwrap_or_else(|p| p.into_inner());
        match *not_before {
            None => {
                *not_before = Some(Instant::now() + RETRY_AFTER.mul_f64(2.0 * jitter()));
                false
            }
            Some(at) => Instant::now() >= at,
        }
    }

    /// Stands no sooner than `at` (none: waits a while of its own when next due).
    pub(super) fn wait_until(&self, at: Option<Instant>) {
        *self.not_before.lock().unwrap_or_else(|p| p.into_inner()) = at;
    }

    pub(super) fn set_now(&self, now: String) {
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        if status.now != now {
            tracing::info!(now, "election");
            status.now = now;
        }
    }
}

/// A number in [0, 1) that differs between processes and calls.
pub(super) fn jitter() -> f64 {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.subsec_nanos());
    let mixed = (u64::from(nanos) ^ u64::from(std::process::id()).rotate_left(17))
        .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (mixed >> 11) as f64 / (1u64 << 53) as f64
}
