//! The in-sync replica set and the high watermark, as Kafka defines them (pure logic).
//!
//! A replica is *in sync* while it has caught up to the end of the primary's log at some
//! moment within the last `lag_max`: one that keeps falling behind, or is gone, leaves the
//! set; one that catches up again rejoins. The *high watermark* is the offset every
//! in-sync replica holds (the lowest of their acknowledged offsets). What an fsync waits for
//! follows from `acks`: nothing, any `min_insync` replicas, or every in-sync replica and at
//! least `min_insync` of them.

use std::time::{Duration, Instant};

use crate::config::Acks;

/// What the primary knows of one replica.
#[derive(Clone, Debug)]
pub struct Progress {
    /// Every record below this is durable on the replica.
    pub acked: u64,
    /// The last moment the replica held everything the log had then; `None` if never.
    pub caught_up: Option<Instant>,
    /// Whether a connection to it is up.
    pub connected: bool,
}

impl Progress {
    /// A replica not heard from yet.
    pub fn new() -> Progress {
        Progress {
            acked: 0,
            caught_up: None,
            connected: false,
        }
    }

    /// The replica acknowledged `next` while the log ended at `log_end`.
    pub fn acknowledged(&mut self, next: u64, log_end: u64, now: Instant) {
        self.acked = self.acked.max(next);
        if self.acked >= log_end {
            self.caught_up = Some(now);
        }
    }

    /// Whether the replica is in the in-sync set at `now`.
    pub fn in_sync(&self, lag_max: Duration, log_end: u64, now: Instant) -> bool {
        if self.acked >= log_end && self.connected {
            return true;
        }
        self.connected
            && self
                .caught_up
                .is_some_and(|at| now.saturating_duration_since(at) <= lag_max)
    }
}

impl Default for Progress {
    fn default() -> Progress {
        Progress::new()
    }
}

/// The replicas' progress, and the rule for what an fsync waits for.
#[derive(Clone, Copy, Debug)]
pub struct Rule {
    /// What fsync waits for.
    pub acks: Acks,
    /// How many replicas must hold a record.
    pub min_insync: u32,
    /// How far behind an in-sync replica may fall.
    pub lag_max: Duration,
}

/// Whether a record below `offset` may be acknowledged to the application: `Ok(true)` if
/// the replicas hold it as `rule` requires, `Ok(false)` if not yet but they can, and
/// `Err(in_sync)` if too few replicas are in sync to ever satisfy it now.
pub fn satisfied(
    rule: Rule,
    replicas: &[Progress],
    offset: u64,
    log_end: u64,
    now: Instant,
) -> Result<bool, usize> {
    let in_sync: Vec<&Progress> = replicas
        .iter()
        .filter(|replica| replica.in_sync(rule.lag_max, log_end, now))
        .collect();
    let holding = |replicas: &[&Progress]| replicas.iter().filter(|r| r.acked > offset).count();
    match rule.acks {
        Acks::None => Ok(true),
        Acks::Quorum => {
            if holding(&replicas.iter().collect::<Vec<_>>()) >= rule.min_insync as usize {
                Ok(true)
            } else if in_sync.len() < rule.min_insync as usize {
                Err(in_sync.len())
            } else {
                Ok(false)
            }
        }
        Acks::All => {
            if in_sync.len() < rule.min_insync as usize {
                Err(in_sync.len())
            } else {
                Ok(holding(&in_sync) == in_sync.len())
            }
        }
    }
}

/// The high watermark: the offset every in-sync replica holds (`log_end` with none).
pub fn high_watermark(rule: Rule, replicas: &[Progress], log_end: u64, now: Instant) -> u64 {
    replicas
        .iter()
        .filter(|replica| replica.in_sync(rule.lag_max, log_end, now))
        .map(|replica| replica.acked)
        .min()
        .unwrap_or(log_end)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAG: Duration = Duration::from_secs(10);

    fn rule(acks: Acks, min_insync: u32) -> Rule {
        Rule {
            acks,
            min_insync,
            lag_max: LAG,
        }
    }

    fn replica(acked: u64, caught_up_ago: Option<u64>, connected: bool, now: Instant) -> Progress {
        Progress {
            acked,
            caught_up: caught_up_ago.map(|ago| now - Duration::from_secs(ago)),
            connected,
        }
    }

    #[test]
    fn the_in_sync_set_follows_lag_and_connection() {
        let now = Instant::now();
        assert!(
            replica(100, None, true, now).in_sync(LAG, 100, now),
            "at the end"
        );
        assert!(
            replica(90, Some(5), true, now).in_sync(LAG, 100, now),
            "caught up lately"
        );
        assert!(
            !replica(90, Some(11), true, now).in_sync(LAG, 100, now),
            "too long behind"
        );
        assert!(
            !replica(100, Some(0), false, now).in_sync(LAG, 100, now),
            "disconnected"
        );
        let mut rejoining = replica(50, Some(60), true, now);
        assert!(!rejoining.in_sync(LAG, 100, now));
        rejoining.acknowledged(100, 100, now);
        assert!(rejoining.in_sync(LAG, 100, now), "caught up again");
    }

    #[test]
    fn acks_all_quorum_and_none() {
        let now = Instant::now();
        let fast = replica(100, Some(0), true, now);
        let slow = replica(80, Some(1), true, now);
        let gone = replica(10, Some(600), false, now);
        let replicas = [fast.clone(), slow.clone(), gone.clone()];
        // Record 85: the fast replica has it, the slow (in sync) one not yet.
        assert_eq!(
            satisfied(rule(Acks::All, 1), &replicas, 85, 100, now),
            Ok(false)
        );
        assert_eq!(
            satisfied(rule(Acks::Quorum, 1), &replicas, 85, 100, now),
            Ok(true)
        );
        assert_eq!(
            satisfied(rule(Acks::None, 1), &replicas, 85, 100, now),
            Ok(true)
        );
        assert_eq!(
            satisfied(rule(Acks::All, 1), &replicas, 50, 100, now),
            Ok(true)
        );
        // Three must be in sync; one is gone.
        assert_eq!(
            satisfied(rule(Acks::All, 3), &replicas, 50, 100, now),
            Err(2)
        );
        assert_eq!(
            satisfied(rule(Acks::Quorum, 3), &replicas, 50, 100, now),
            Err(2)
        );
        assert_eq!(high_watermark(rule(Acks::All, 1), &replicas, 100, now), 80);
        assert_eq!(high_watermark(rule(Acks::All, 1), &[gone], 100, now), 100);
    }
}
