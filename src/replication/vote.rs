//! A voter's rules, for automatic failover (docs/design.md 9.8): a replica node or a
//! witness grants the primary's lease and elects a new primary, each epoch once. Pure
//! logic over the times it is given (monotonic, the voter's own clock); the caller keeps
//! the [`Ballot`] durable before it answers.
//!
//! The rules, in short: an epoch goes to one candidate, the more up to date one if several
//! ask before either holds a lease (Raft's up-to-date rule); a lease is granted only to
//! the holder of the voter's latest epoch; no new epoch is granted while a lease this
//! voter granted runs, nor, after a restart, before a whole lease could have run out
//! (a restarted voter does not remember when its last lease ends).

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// How far a copy reaches: the epoch of its last record, then its next offset. Ordered as
/// Raft orders logs: a later epoch wins, then a longer log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Standing {
    /// The epoch of its last record.
    pub epoch: u32,
    /// The offset of the first record it lacks.
    pub next: u64,
}

/// The durable part of a vote: the highest epoch granted, to whom, and how far that one
/// reached when it asked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ballot {
    /// The epoch.
    pub epoch: u32,
    /// The member it went to.
    pub to: String,
    /// Its reach when it asked.
    pub reach: Standing,
}

/// Why a voter said no.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// A newer epoch was granted: the asker is deposed.
    #[error("epoch {granted} was granted already (to {to}): epoch {asked} is over")]
    Stale {
        /// The epoch asked for.
        asked: u32,
        /// The newest granted.
        granted: u32,
        /// To whom.
        to: String,
    },
    /// The epoch went to another member.
    #[error("epoch {epoch} was granted to {to}")]
    GrantedTo {
        /// The epoch.
        epoch: u32,
        /// To whom.
        to: String,
    },
    /// A lease this voter granted has not run out.
    #[error("the lease of {holder} (epoch {epoch}) runs for {left:?} more here")]
    LeaseRuns {
        /// Its holder.
        holder: String,
        /// Its epoch.
        epoch: u32,
        /// How long it runs, by this voter's clock.
        left: Duration,
    },
    /// The voter restarted, and a lease it granted before may still run.
    #[error("restarted {ago:?} ago: no new epoch before a whole lease could have run out")]
    Restarted {
        /// Since the restart.
        ago: Duration,
    },
    /// The candidate's copy reaches less far than this voter's own.
    #[error("its copy reaches {theirs:?}, behind this voter's {ours:?}")]
    Behind {
        /// The candidate's.
        theirs: Standing,
        /// This voter's.
        ours: Standing,
    },
}

/// A lease this voter granted.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Granted {
    epoch: u32,
    holder: String,
    until: Instant,
}

/// One voter's state for one volume.
#[derive(Debug)]
pub struct Voter {
    ballot: Option<Ballot>,
    lease: Option<Granted>,
    /// Started (or restarted) at; with `quiet`, when new epochs may be granted again.
    started: Instant,
    quiet: Duration,
}

impl Voter {
    /// A voter that remembers `ballot`, started at `now`. Leases it granted before are
    /// forgotten, so no new epoch is granted for `quiet` (the longest lease and the clock
    /// bound on it).
    pub fn new(ballot: Option<Ballot>, now: Instant, quiet: Duration) -> Voter {
        Voter {
            ballot,
            lease: None,
            started: now,
            quiet,
        }
    }

    /// What must be durable before an answer: the ballot.
    pub fn ballot(&self) -> Option<&Ballot> {
        self.ballot.as_ref()
    }

    /// The lease this voter granted, while it runs: holder, epoch and time left.
    pub fn lease(&self, now: Instant) -> Option<(&str, u32, Duration)> {
        self.lease
            .as_ref()
            .filter(|lease| lease.until > now)
            .map(|lease| (lease.holder.as_str(), lease.epoch, lease.until - now))
    }

    /// `candidate`, whose copy reaches `reach`, asks for epoch `epoch`. `own` is this
    /// voter's own copy's reach (a witness has none). Granting changes the ballot.
    pub fn elect(
        &mut self,
        now: Instant,
        epoch: u32,
        candidate: &str,
        reach: Standing,
        own: Option<Standing>,
    ) -> Result<(), Refusal> {
        if let Some(ballot) = &self.ballot {
            if epoch == ballot.epoch && ballot.to == candidate {
                return Ok(());
            }
            if epoch < ballot.epoch {
                return Err(Refusal::Stale {
                    asked: epoch,
                    granted: ballot.epoch,
                    to: ballot.to.clone(),
                });
            }
            // Another candidate has this epoch: it keeps it once it holds a lease under it,
            // or unless this one is more up to date (or as up to date, with a lower name).
            let leased = self.lease.as_ref().is_some_and(|l| l.epoch == ballot.epoch);
            let better = (reach, std::cmp::Reverse(candidate))
                > (ballot.reach, std::cmp::Reverse(ballot.to.as_str()));
            if epoch == ballot.epoch && (leased || !better) {
                return Err(Refusal::GrantedTo {
                    epoch,
                    to: ballot.to.clone(),
                });
            }
        }
        if let Some((holder, held, left)) = self.lease(now)
            && holder != candidate
        {
            return Err(Refusal::LeaseRuns {
                holder: holder.to_string(),
                epoch: held,
                left,
            });
        }
        let ago = now.saturating_duration_since(self.started);
        if ago < self.quiet {
            return Err(Refusal::Restarted { ago });
        }
        if let Some(ours) = own
            && reach < ours
        {
            return Err(Refusal::Behind {
                theirs: reach,
                ours,
            });
        }
        self.ballot = Some(Ballot {
            epoch,
            to: candidate.to_string(),
            reach,
        });
        Ok(())
    }

    /// `holder`, primary of epoch `epoch`, asks for (or renews) its lease for `length`.
    /// Granted only to the holder of this voter's latest epoch; a primary that starts at an
    /// epoch this voter never granted claims it as an election would.
    pub fn lease_for(
        &mut self,
        now: Instant,
        epoch: u32,
        holder: &str,
        reach: Standing,
        length: Duration,
    ) -> Result<(), Refusal> {
        let ours = self
            .ballot
            .as_ref()
            .is_some_and(|ballot| ballot.epoch == epoch && ballot.to == holder);
        if !ours {
            self.elect(now, epoch, holder, reach, None)?;
        }
        self.lease = Some(Granted {
            epoch,
            holder: holder.to_string(),
            until: now + length,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(5);

    fn standing(epoch: u32, next: u64) -> Standing {
        Standing { epoch, next }
    }

    /// A voter started long enough ago to grant epochs.
    fn settled(now: Instant) -> Voter {
        Voter::new(None, now - LEASE * 2, LEASE)
    }

    #[test]
    fn a_lease_is_renewed_by_its_holder_and_blocks_elections_until_it_runs_out() {
        let now = Instant::now();
        let mut voter = settled(now);
        voter
            .lease_for(now, 1, "p", standing(1, 10), LEASE)
            .unwrap();
        voter
            .lease_for(now + LEASE / 2, 1, "p", standing(1, 20), LEASE)
            .unwrap();
        // r1 asks for epoch 2 while the renewed lease runs: refused.
        let at = now + LEASE;
        let refused = voter.elect(at, 2, "r1", standing(1, 20), None).unwrap_err();
        assert!(
            matches!(refused, Refusal::LeaseRuns { epoch: 1, .. }),
            "{refused}"
        );
        // Once it has run out, granted; the old holder's renewal is then refused.
        let later = now + LEASE / 2 + LEASE;
        voter.elect(later, 2, "r1", standing(1, 20), None).unwrap();
        let deposed = voter
            .lease_for(later, 1, "p", standing(1, 20), LEASE)
            .unwrap_err();
        assert!(
            matches!(deposed, Refusal::Stale { granted: 2, .. }),
            "{deposed}"
        );
        // The winner takes its lease under its epoch.
        voter
            .lease_for(later, 2, "r1", standing(1, 20), LEASE)
            .unwrap();
        assert_eq!(voter.lease(later).unwrap().0, "r1");
    }

    #[test]
    fn each_epoch_goes_to_one_candidate_the_more_up_to_date_unless_one_holds_a_lease() {
        let now = Instant::now();
        let mut voter = settled(now);
        voter.elect(now, 2, "r2", standing(1, 10), None).unwrap();
        // Asked again: the same answer.
        voter.elect(now, 2, "r2", standing(1, 10), None).unwrap();
        // Less up to date, or as far with a higher name: refused.
        assert!(voter.elect(now, 2, "r3", standing(1, 9), None).is_err());
        assert!(voter.elect(now, 2, "r3", standing(1, 10), None).is_err());
        // Further: the epoch moves to it (r2 holds no lease under it yet).
        voter.elect(now, 2, "r1", standing(1, 12), None).unwrap();
        assert_eq!(voter.ballot().unwrap().to, "r1");
        assert!(
            voter
                .lease_for(now, 2, "r2", standing(1, 10), LEASE)
                .is_err()
        );
        // Once r1 holds a lease under it, nobody takes the epoch from it.
        voter
            .lease_for(now, 2, "r1", standing(1, 12), LEASE)
            .unwrap();
        let taken = voter
            .elect(now, 2, "r0", standing(1, 99), None)
            .unwrap_err();
        assert!(
            matches!(taken, Refusal::GrantedTo { epoch: 2, .. }),
            "{taken}"
        );
        // An older epoch is over.
        assert!(matches!(
            voter.elect(now, 1, "r0", standing(1, 99), None),
            Err(Refusal::Stale { .. })
        ));
    }

    #[test]
    fn a_replica_voter_refuses_a_candidate_behind_its_own_copy() {
        let now = Instant::now();
        let mut voter = settled(now);
        let refused = voter
            .elect(now, 3, "r1", standing(2, 40), Some(standing(2, 41)))
            .unwrap_err();
        assert!(matches!(refused, Refusal::Behind { .. }), "{refused}");
        // A later epoch in the candidate's copy beats a longer log of an older one.
        voter
            .elect(now, 3, "r1", standing(3, 5), Some(standing(2, 41)))
            .unwrap();
    }

    #[test]
    fn a_restarted_voter_grants_no_epoch_until_a_whole_lease_could_have_run_out() {
        let now = Instant::now();
        let ballot = Ballot {
            epoch: 4,
            to: "p".to_string(),
            reach: standing(4, 100),
        };
        let mut voter = Voter::new(Some(ballot.clone()), now, LEASE);
        let refused = voter.elect(now + LEASE / 2, 5, "r1", standing(4, 100), None);
        assert!(
            matches!(refused, Err(Refusal::Restarted { .. })),
            "{refused:?}"
        );
        // The holder of its epoch may go on renewing meanwhile.
        voter
            .lease_for(now, 4, "p", standing(4, 100), LEASE)
            .unwrap();
        assert_eq!(voter.ballot(), Some(&ballot));
        // And the remembered epoch still refuses older primaries.
        assert!(voter.lease_for(now, 3, "q", standing(3, 1), LEASE).is_err());
    }
}
