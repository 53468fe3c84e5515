//! A voter's box: the [`Voter`] of one volume on a replica node or a witness, with its
//! ballot kept in a file (`DIR/<volume>/ballot`), written durably before any answer that
//! depends on it, so a restarted voter never grants an epoch twice.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::durable;

use super::vote::{Ballot, Standing, Voter};

/// The ballot file's name in a volume's directory.
pub const BALLOT_FILE: &str = "ballot";

/// What the file holds: the ballot, and the longest lease ever granted (a restarted voter
/// grants no new epoch for that long).
#[derive(Debug, Default, Serialize, Deserialize)]
struct Saved {
    ballot: Option<Ballot>,
    lease_max_ms: u64,
}

/// A voter's votes for one volume, as status shows them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VotesStatus {
    /// The newest epoch it granted.
    pub granted_epoch: Option<u32>,
    /// To whom.
    pub granted_to: Option<String>,
    /// Who holds a lease it granted, while it runs.
    pub lease_holder: Option<String>,
    /// That lease's epoch.
    pub lease_epoch: Option<u32>,
    /// How long it runs here, in milliseconds.
    pub lease_left_ms: Option<u64>,
}

/// One volume's votes.
#[derive(Debug)]
pub struct BallotBox {
    path: PathBuf,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    voter: Voter,
    /// The longest lease granted, as saved.
    lease_max_ms: u64,
    /// A save failed: the voter in memory may hold a grant the file lacks, so it answers
    /// nothing more (a restart reads the file again).
    broken: bool,
}

/// Why a vote could not be given: refused, or not made durable.
#[derive(Debug, thiserror::Error)]
pub enum VoteError {
    /// The voter's rules say no.
    #[error("{0}")]
    Refused(#[from] super::vote::Refusal),
    /// The ballot could not be saved: nothing was granted.
    #[error("cannot save the ballot {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

impl BallotBox {
    /// Opens the box whose file is `path` (none yet: an empty ballot). A ballot file that
    /// cannot be read refuses the start: granting without it could grant an epoch twice.
    pub fn open(path: &Path) -> Result<BallotBox, VoteError> {
        let io_error = |source| VoteError::Io {
            path: path.to_path_buf(),
            source,
        };
        let saved: Saved = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|error| io_error(io::Error::new(io::ErrorKind::InvalidData, error)))?,
            Err(error) if error.kind() == io::ErrorKind::NotFound => Saved::default(),
            Err(error) => return Err(io_error(error)),
        };
        let quiet = Duration::from_millis(saved.lease_max_ms);
        Ok(BallotBox {
            path: path.to_path_buf(),
            state: Mutex::new(State {
                voter: Voter::new(saved.ballot, Instant::now(), quiet),
                lease_max_ms: saved.lease_max_ms,
                broken: false,
            }),
        })
    }

    /// The state, unless a save failed.
    fn state(&self) -> Result<MutexGuard<'_, State>, VoteError> {
        let state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match state.broken {
            false => Ok(state),
            true => Err(VoteError::Io {
                path: self.path.clone(),
                source: io::Error::other("an earlier save failed; restart the voter"),
            }),
        }
    }

    /// `candidate`, reaching `standing`, asks for epoch `epoch`; `own` is this voter's copy's
    /// standing (none for a witness).
    pub fn elect(
        &self,
        epoch: u32,
        candidate: &str,
        standing: Standing,
        own: Option<Standing>,
    ) -> Result<(), VoteError> {
        let mut state = self.state()?;
        let before = state.voter.ballot().cloned();
        state
            .voter
            .elect(Instant::now(), epoch, candidate, standing, own)?;
        self.save_if_changed(&mut state, before.as_ref())
    }

    /// `holder`, primary of `epoch` reaching `standing`, asks for a lease of `length`.
    pub fn lease(
        &self,
        epoch: u32,
        holder: &str,
        standing: Standing,
        length: Duration,
    ) -> Result<(), VoteError> {
        let mut state = self.state()?;
        let before = state.voter.ballot().cloned();
        // The longest lease is saved before it is granted: a restart must wait it out.
        let length_ms = length.as_millis() as u64;
        if length_ms > state.lease_max_ms {
            self.save(state.voter.ballot(), length_ms)?;
            state.lease_max_ms = length_ms;
        }
        state
            .voter
            .lease_for(Instant::now(), epoch, holder, standing, length)?;
        self.save_if_changed(&mut state, before.as_ref())
    }

    /// The votes, as status shows them.
    pub fn status(&self) -> VotesStatus {
        let state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let ballot = state.voter.ballot();
        let lease = state.voter.lease(Instant::now());
        VotesStatus {
            granted_epoch: ballot.map(|ballot| ballot.epoch),
            granted_to: ballot.map(|ballot| ballot.to.clone()),
            lease_holder: lease.map(|(holder, _, _)| holder.to_string()),
            lease_epoch: lease.map(|(_, epoch, _)| epoch),
            lease_left_ms: lease.map(|(_, _, left)| left.as_millis() as u64),
        }
    }

    /// Saves the ballot if the vote changed it; a failed save breaks the box.
    fn save_if_changed(&self, state: &mut State, before: Option<&Ballot>) -> Result<(), VoteError> {
        if state.voter.ballot() == before {
            return Ok(());
        }
        let saved = self.save(state.voter.ballot(), state.lease_max_ms);
        state.broken = saved.is_err();
        saved
    }

    fn save(&self, ballot: Option<&Ballot>, lease_max_ms: u64) -> Result<(), VoteError> {
        let saved = Saved {
            ballot: ballot.cloned(),
            lease_max_ms,
        };
        let text = serde_json::to_string(&saved).map_err(|error| VoteError::Io {
            path: self.path.clone(),
            source: io::Error::other(error),
        })?;
        durable::replace(&self.path, format!("{text}\n")).map_err(|source| VoteError::Io {
            path: self.path.clone(),
            source,
        })
    }
}
