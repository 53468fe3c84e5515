//! The `[failover]` section: whether a replica takes over on its own when the primary is
//! lost (`mode = "auto"`), with what lease, and which witnesses vote besides the replicas.
//! The lease's timings are derived here from two numbers, so that the safety argument in
//! docs/design.md (9.8) holds for any accepted config.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::replication::{Acks, RawReplica, ReplicationConfig, check_members};
use super::units::Span;
use super::{ConfigError, invalid, within};

/// Who decides that a replica takes over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailoverMode {
    /// An operator, with `mirrorfs promote` (the default).
    Manual,
    /// The voters, by lease and election.
    Auto,
}

/// `[failover]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFailover {
    /// manual or auto.
    pub mode: Option<FailoverMode>,
    /// How long a lease granted to the primary lasts.
    pub lease: Option<Span>,
    /// The most two machines' clocks may differ in rate: 1.1 means one may count a
    /// second while another counts 1.1.
    pub clock_rate_bound: Option<f64>,
    /// When no replica can prove it is in sync: promote the furthest anyway (true), or
    /// wait and report (false, the default).
    pub unclean: Option<bool>,
    /// Voters that keep no copy, only their votes (`mirrorfs witness serve`).
    #[serde(default)]
    pub witnesses: Vec<RawReplica>,
    /// This primary's name among the voters (default: the machine's host name).
    pub name: Option<String>,
    /// Where this machine's replica node listens once it rejoins as a replica after a
    /// failover: a new primary's config lists it there.
    pub address: Option<String>,
}

/// The validated `[failover]` section.
#[derive(Clone, Debug, PartialEq)]
pub struct FailoverConfig {
    /// As written (default manual).
    pub mode: FailoverMode,
    /// Why automatic failover is off although asked for, if it is.
    pub auto_off: Option<String>,
    /// See [`RawFailover::lease`].
    pub lease: Duration,
    /// See [`RawFailover::clock_rate_bound`].
    pub clock_rate_bound: f64,
    /// See [`RawFailover::unclean`].
    pub unclean: bool,
    /// The witnesses, in config order.
    pub witnesses: Vec<super::Replica>,
    /// Every voter: the primary itself, the replica nodes and the witnesses.
    pub voters: usize,
    /// See [`RawFailover::name`]; the command fills in the host name when it is not given.
    pub name: Option<String>,
    /// See [`RawFailover::address`].
    pub address: Option<String>,
}

/// Default lease.
const LEASE_DEFAULT: Duration = Duration::from_secs(5);

/// Bounds of the lease: shorter ones fence a primary over a scheduling hiccup.
const LEASE_RANGE: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(300));

/// Default bound on clock rates: far above what NTP-disciplined or even free-running
/// quartz clocks drift (parts per million), and above what a VM paused for a moment
/// looks like over one lease.
const CLOCK_RATE_DEFAULT: f64 = 1.1;

/// Voters without which no majority survives the loss of one machine.
const VOTERS_FOR_AUTO: usize = 3;

impl FailoverConfig {
    /// The votes that make a majority.
    pub fn majority(&self) -> usize {
        self.voters / 2 + 1
    }

    /// Whether replicas take over on their own.
    pub fn is_auto(&self) -> bool {
        self.mode == FailoverMode::Auto && self.auto_off.is_none()
    }

    /// How long after it asked for a lease the primary may take changes under it, by its
    /// own clock: the lease shrunk by the clock bound twice (its clock may run slow, a
    /// voter's fast).
    pub fn lease_valid_for(&self) -> Duration {
        self.lease
            .div_f64(self.clock_rate_bound * self.clock_rate_bound)
    }

    /// How often the primary renews its lease: four tries before it runs out.
    pub fn renew_every(&self) -> Duration {
        self.lease_valid_for() / 4
    }
}

/// Resolves `[failover]` against the volume's `replication`.
pub(super) fn resolve(
    raw: &RawFailover,
    replication: Option<&ReplicationConfig>,
) -> Result<FailoverConfig, ConfigError> {
    let mode = raw.mode.unwrap_or(FailoverMode::Manual);
    if mode == FailoverMode::Auto && replication.is_none() {
        return Err(invalid(
            "failover.mode",
            "\"auto\" needs replicas to fail over to: add [replication] with its replicas",
        ));
    }
    let lease = within(
        "failover.lease",
        raw.lease.map(|span| span.0),
        LEASE_DEFAULT,
        LEASE_RANGE,
        |span| Span(span).to_string(),
    )?;
    let clock_rate_bound = raw.clock_rate_bound.unwrap_or(CLOCK_RATE_DEFAULT);
    if !(clock_rate_bound > 1.0 && clock_rate_bound <= 2.0) {
        return Err(invalid(
            "failover.clock_rate_bound",
            format!("{clock_rate_bound} is not above 1 and at most 2"),
        ));
    }
    let replicas = replication.map_or(&[][..], |replication| &replication.replicas[..]);
    let witnesses = check_members(
        ("failover.witnesses.name", "failover.witnesses.address"),
        &raw.witnesses,
        replicas,
    )?;
    let voters = 1 + replicas.len() + witnesses.len();
    if let Some(address) = &raw.address
        && !super::replication::valid_address(address)
    {
        return Err(invalid(
            "failover.address",
            format!("{address:?} is not host:port"),
        ));
    }
    if mode == FailoverMode::Auto
        && let Some(replication) = replication
    {
        check_durability(replication, witnesses.len(), voters)?;
    }
    if let Some(name) = &raw.name {
        if let Err(reason) = super::VolumeId::new(name) {
            return Err(invalid("failover.name", reason));
        }
        if replicas
            .iter()
            .chain(&witnesses)
            .any(|member| &member.name == name)
        {
            return Err(invalid(
                "failover.name",
                format!("{name:?} names a replica or a witness too"),
            ));
        }
    }
    let auto_off = (mode == FailoverMode::Auto && voters < VOTERS_FOR_AUTO).then(|| {
        format!(
            "automatic failover is off: {voters} voter(s) (this primary and its replicas and witnesses) cannot keep a majority when one is lost; add a witness ([[failover.witnesses]], mirrorfs witness serve)"
        )
    });
    Ok(FailoverConfig {
        mode,
        auto_off,
        lease,
        clock_rate_bound,
        unclean: raw.unclean.unwrap_or(false),
        witnesses,
        voters,
        name: raw.name.clone(),
        address: raw.address.clone(),
    })
}

/// Refuses replication settings under which an election could pass over an acknowledged
/// write. A new primary is elected by a majority of the voters without the old primary;
/// each replica among them refuses a candidate behind its own copy. So every such majority
/// must hold a replica that had each acknowledged record: at least `majority - witnesses`
/// of its members are replicas (and one at least, the candidate), and a record is acknowledged once `min_insync` replicas
/// hold it, so `min_insync` must exceed `replicas - (majority - witnesses)`.
fn check_durability(
    replication: &ReplicationConfig,
    witnesses: usize,
    voters: usize,
) -> Result<(), ConfigError> {
    if replication.acks == Acks::None {
        return Err(invalid(
            "replication.acks",
            "\"none\" acknowledges writes no replica holds, which a failover would lose: use \"quorum\" or \"all\" with failover.mode = \"auto\"",
        ));
    }
    let replicas = replication.replicas.len();
    let majority = voters / 2 + 1;
    // The candidate is a replica in its own majority, so it holds at least one.
    let replicas_in_majority = majority.saturating_sub(witnesses).max(1);
    let needed = (replicas + 1).saturating_sub(replicas_in_majority).max(1);
    if (replication.min_insync as usize) < needed {
        return Err(invalid(
            "replication.min_insync",
            format!(
                "{} is too few for failover.mode = \"auto\" with {replicas} replicas and {witnesses} witness(es): a majority of the voters could then lack an acknowledged write; use at least {needed}",
                replication.min_insync
            ),
        ));
    }
    Ok(())
}
