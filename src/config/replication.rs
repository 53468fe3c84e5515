//! The `[replication]` section: which replica nodes a primary streams its log to, and what
//! fsync waits for. Resolved here, checked against itself; the key file is read by the
//! mount command (this module touches no file).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::units::{ByteSize, Span};
use super::{ConfigError, invalid, within};

/// What fsync waits for beyond the local log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Acks {
    /// Nothing: replicas catch up on their own.
    None,
    /// Any `min_insync` replicas holding the records.
    Quorum,
    /// Every replica in the in-sync set, and at least `min_insync` of them.
    All,
}

/// What fsync does when too few replicas are in sync.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnInsufficient {
    /// Wait until enough are (a signal interrupts the wait: EINTR).
    Wait,
    /// Fail with EIO after `ack_timeout` (the default).
    Fail,
}

/// How records and snapshots are compressed on the wire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Compression {
    /// As they are (the default: on a LAN the CPU is the dearer resource).
    #[default]
    None,
    /// zstd at its fastest level, each message whole (as Kafka compresses batches); a
    /// message it would not shrink goes as it is.
    Zstd,
}

/// The least `rate_bytes_max`: below it a link could not carry a heartbeat and a batch
/// before the replica counts as silent.
pub const RATE_BYTES_MIN: u64 = 64 << 10;

/// `[replication]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReplication {
    /// none, quorum or all.
    pub acks: Option<Acks>,
    /// Replicas that must hold a record for quorum, and at least for all.
    pub min_insync: Option<u32>,
    /// A replica further behind than this leaves the in-sync set.
    pub lag_max: Option<Span>,
    /// wait or fail.
    pub on_insufficient: Option<OnInsufficient>,
    /// How long fsync waits before failing, with on_insufficient = "fail".
    pub ack_timeout: Option<Span>,
    /// Log kept for a replica that is away; past this it gets a snapshot on return.
    pub retain_bytes_max: Option<ByteSize>,
    /// The volume's pre-shared key.
    pub key_file: Option<PathBuf>,
    /// Send records unencrypted (still authenticated). Only for trusted networks.
    pub plaintext: Option<bool>,
    /// none or zstd.
    pub compression: Option<Compression>,
    /// Bytes per second each replica's connection may send at most.
    pub rate_bytes_max: Option<ByteSize>,
    /// A shell command a promotion of a replica runs once it has made it the primary.
    pub on_promote: Option<String>,
    /// A shell command the daemon runs when it is fenced (a replica was promoted).
    pub on_fenced: Option<String>,
    /// The replica nodes.
    #[serde(default)]
    pub replicas: Vec<RawReplica>,
}

/// One `[[replication.replicas]]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReplica {
    /// A name for status and logs.
    pub name: String,
    /// host:port of the replica node.
    pub address: String,
}

/// The validated `[replication]` section.
#[derive(Clone, Debug)]
pub struct ReplicationConfig {
    /// What fsync waits for.
    pub acks: Acks,
    /// See [`RawReplication::min_insync`].
    pub min_insync: u32,
    /// See [`RawReplication::lag_max`].
    pub lag_max: Duration,
    /// See [`RawReplication::on_insufficient`].
    pub on_insufficient: OnInsufficient,
    /// See [`RawReplication::ack_timeout`].
    pub ack_timeout: Duration,
    /// See [`RawReplication::retain_bytes_max`].
    pub retain_bytes_max: u64,
    /// The key file (absolute).
    pub key_file: PathBuf,
    /// Records cross the network unencrypted.
    pub plaintext: bool,
    /// See [`RawReplication::compression`].
    pub compression: Compression,
    /// See [`RawReplication::rate_bytes_max`]; `None`: no cap.
    pub rate_bytes_max: Option<u64>,
    /// Run by `sh -c` once a promotion made a replica the primary (on that machine).
    pub on_promote: Option<String>,
    /// Run by `sh -c` when this primary is fenced.
    pub on_fenced: Option<String>,
    /// The replica nodes, in config order.
    pub replicas: Vec<Replica>,
}

/// One replica node.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct Replica {
    /// Its name (1-64 of `A-Z a-z 0-9 . _ -`).
    pub name: String,
    /// Where it listens (`host:port`, resolved when connecting).
    pub address: String,
}

/// Checks the named members `raw` (replicas, or witnesses) whose name and address keys are
/// `keys`: valid names, none listed twice or among `others`, addresses `host:port`.
pub(super) fn check_members(
    (name_key, address_key): (&'static str, &'static str),
    raw: &[RawReplica],
    others: &[Replica],
) -> Result<Vec<Replica>, ConfigError> {
    let mut members: Vec<Replica> = Vec::new();
    for member in raw {
        if let Err(reason) = super::VolumeId::new(&member.name) {
            return Err(invalid(name_key, reason));
        }
        if members
            .iter()
            .chain(others)
            .any(|other| other.name == member.name)
        {
            return Err(invalid(
                name_key,
                format!("{:?} is listed twice", member.name),
            ));
        }
        if !valid_address(&member.address) {
            return Err(invalid(
                address_key,
                format!("{:?} is not host:port", member.address),
            ));
        }
        members.push(Replica {
            name: member.name.clone(),
            address: member.address.clone(),
        });
    }
    Ok(members)
}

const LAG_MAX_DEFAULT: Duration = Duration::from_secs(10);
const ACK_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
const RETAIN_BYTES_DEFAULT: u64 = 20 << 30;
const SPAN_RANGE: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(86_400));

/// Resolves `[replication]`; `None` when the section lists no replicas.
pub(super) fn resolve(raw: &RawReplication) -> Result<Option<ReplicationConfig>, ConfigError> {
    if raw.replicas.is_empty() {
        let set = raw.acks.is_some() || raw.key_file.is_some() || raw.min_insync.is_some();
        if set {
            return Err(invalid(
                "replication.replicas",
                "no replica is listed; add [[replication.replicas]] entries or remove [replication]",
            ));
        }
        return Ok(None);
    }
    let show_span = |span: Duration| Span(span).to_string();
    let acks = raw.acks.unwrap_or(Acks::All);
    let min_insync = raw.min_insync.unwrap_or(1);
    if min_insync as usize > raw.replicas.len() {
        return Err(invalid(
            "replication.min_insync",
            format!(
                "{min_insync} is more than the {} replica(s) listed",
                raw.replicas.len()
            ),
        ));
    }
    if min_insync == 0 && acks == Acks::Quorum {
        return Err(invalid("replication.min_insync", "quorum needs at least 1"));
    }
    let key_file = raw.key_file.clone().ok_or(ConfigError::Missing {
        key: "replication.key_file",
        hint: "give the volume's key file (`mirrorfs keygen > FILE` makes one)",
    })?;
    if !key_file.is_absolute() {
        return Err(invalid(
            "replication.key_file",
            format!(
                "{:?} must be an absolute path",
                key_file.display().to_string()
            ),
        ));
    }
    let replicas = check_members(
        ("replication.replicas.name", "replication.replicas.address"),
        &raw.replicas,
        &[],
    )?;
    Ok(Some(ReplicationConfig {
        acks,
        min_insync,
        lag_max: within(
            "replication.lag_max",
            raw.lag_max.map(|span| span.0),
            LAG_MAX_DEFAULT,
            SPAN_RANGE,
            show_span,
        )?,
        // Kafka's choice (a produce fails after delivery.timeout.ms), not a wait with no
        // end: an application blocked in fsync for as long as the replicas are away, with
        // nothing in its own logs to say why, is the worse surprise.
        on_insufficient: raw.on_insufficient.unwrap_or(OnInsufficient::Fail),
        ack_timeout: within(
            "replication.ack_timeout",
            raw.ack_timeout.map(|span| span.0),
            ACK_TIMEOUT_DEFAULT,
            SPAN_RANGE,
            show_span,
        )?,
        retain_bytes_max: within(
            "replication.retain_bytes_max",
            raw.retain_bytes_max.map(|size| size.0),
            RETAIN_BYTES_DEFAULT,
            (1 << 20, 1 << 50),
            |bytes| ByteSize(bytes).to_string(),
        )?,
        key_file,
        plaintext: raw.plaintext.unwrap_or(false),
        compression: raw.compression.unwrap_or_default(),
        rate_bytes_max: match raw.rate_bytes_max {
            None => None,
            Some(rate) => Some(within(
                "replication.rate_bytes_max",
                Some(rate.0),
                rate.0,
                (RATE_BYTES_MIN, 1 << 40),
                |bytes| ByteSize(bytes).to_string(),
            )?),
        },
        on_promote: hook("replication.on_promote", &raw.on_promote)?,
        on_fenced: hook("replication.on_fenced", &raw.on_fenced)?,
        replicas,
    }))
}

/// `host:port` with a port number, as a socket address or a host name.
pub fn valid_address(text: &str) -> bool {
    if text.parse::<SocketAddr>().is_ok() {
        return true;
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return false;
    };
    port.parse::<u16>().is_ok_and(|port| port != 0)
        && !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
}

/// A hook's command, if given: not empty, and one line.
fn hook(key: &'static str, command: &Option<String>) -> Result<Option<String>, ConfigError> {
    match command {
        Some(command) if command.trim().is_empty() || command.contains('\n') => Err(invalid(
            key,
            "a hook is one non-empty line of shell".to_string(),
        )),
        other => Ok(other.clone()),
    }
}
