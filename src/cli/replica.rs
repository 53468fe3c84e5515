//! `mirrorfs replica serve` (run a replica node) and `mirrorfs replica status`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;

use crate::config::{NodeConfig, RawNodeConfig, human, parse_volume_arg};
use crate::control::{self, ControlError};
use crate::replication::{
    CopyStatus, ElectionStatus, OnElected, VotesStatus, inspect_copy, promoted_at,
};
use crate::replication::{HostedStatus, NODE_DIR, NodeError, NodeStatus, serve_node};
use crate::signals::StopSignals;

use super::{CliError, ReplicaStatusArgs, ServeArgs};

/// Runs a node from `--config` and/or the command line until a stop signal.
pub fn serve(args: ServeArgs) -> Result<(), CliError> {
    serve_as(args, false)
}

/// Runs `mirrorfs witness serve`: the node's server, keeping votes instead of copies.
pub fn serve_witness(args: ServeArgs) -> Result<(), CliError> {
    serve_as(args, true)
}

fn serve_as(args: ServeArgs, witness: bool) -> Result<(), CliError> {
    // First, before the runtime starts its threads: see StopSignals.
    let signals = StopSignals::block()
        .map_err(|error| CliError::Failure(format!("cannot block stop signals: {error}")))?;
    let usage = |error: crate::config::ConfigError| CliError::Usage(error.to_string());
    let cwd = std::env::current_dir().map_err(|error| {
        CliError::Failure(format!("cannot read the current directory: {error}"))
    })?;
    let absolute = |path: PathBuf| {
        if path.is_absolute() {
            path
        } else {
            cwd.join(path)
        }
    };
    let mut raw = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|error| {
                CliError::Usage(format!("cannot read config {}: {error}", path.display()))
            })?;
            NodeConfig::parse(path, &text).map_err(usage)?
        }
        None => RawNodeConfig::default(),
    };
    if let Some(listen) = args.listen {
        raw.listen = Some(listen);
    }
    if let Some(dir) = args.dir {
        raw.dir = Some(absolute(dir));
    }
    for volume in &args.volumes {
        let mut volume = parse_volume_arg(volume).map_err(CliError::Usage)?;
        volume.key_file = absolute(volume.key_file);
        raw.volumes.push(volume);
    }
    if let Some(listen) = args.metrics_listen {
        raw.metrics_listen = Some(listen);
    }
    let mut config = NodeConfig::resolve(raw, None).map_err(usage)?;
    config.witness = witness;
    if let Some(address) = config.metrics_listen {
        let node_dir = config.dir.join(NODE_DIR);
        let registry = crate::metrics::node_registry(move || {
            control::query::<crate::replication::NodeStatus>(&node_dir).ok()
        });
        crate::metrics::serve(address, registry)
            .map_err(|error| CliError::Usage(format!("metrics.listen {address}: {error}")))?;
    }
    let on_elected: OnElected = Arc::new(super::promote::serve_elected);
    serve_node(config, signals, on_elected).map_err(|error| match error {
        NodeError::Key(_)
        | NodeError::Dir { .. }
        | NodeError::State(_)
        | NodeError::Ballot { .. } => CliError::Usage(error.to_string()),
        other => CliError::Failure(other.to_string()),
    })
}

/// What `mirrorfs replica status --json` prints.
#[derive(Debug, Serialize)]
struct Report {
    /// The running node, if one answers.
    running: Option<NodeStatus>,
    /// Why none does, if none does.
    not_running: Option<String>,
    /// Each copy: from the node, or else from its files.
    volumes: Vec<HostedStatus>,
}

/// Runs `mirrorfs replica status`.
pub fn status(args: ReplicaStatusArgs) -> Result<(), CliError> {
    if !args.dir.is_dir() {
        return Err(CliError::Usage(format!(
            "{} is not a replica node's directory",
            args.dir.display()
        )));
    }
    let report = match control::query::<NodeStatus>(&args.dir.join(NODE_DIR)) {
        Ok(running) => Report {
            volumes: running.volumes.clone(),
            running: Some(running),
            not_running: None,
        },
        Err(ControlError::NotRunning { .. }) => Report {
            running: None,
            not_running: Some("no node answers; figures from its files".to_string()),
            volumes: from_files(&args.dir)?,
        },
        Err(error) => return Err(CliError::Failure(error.to_string())),
    };
    if args.json {
        let text = serde_json::to_string(&report)
            .map_err(|error| CliError::Failure(format!("cannot encode the status: {error}")))?;
        println!("{text}");
    } else {
        print!("{}", render(&args.dir, &report));
    }
    Ok(())
}

/// The copies in `dir`, read from their files.
fn from_files(dir: &Path) -> Result<Vec<HostedStatus>, CliError> {
    let failed =
        |error: &dyn std::fmt::Display| CliError::Failure(format!("{}: {error}", dir.display()));
    let mut volumes = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|error| failed(&error))? {
        let entry = entry.map_err(|error| failed(&error))?;
        let id = entry.file_name().to_string_lossy().into_owned();
        if id.starts_with('.') || !entry.path().join("log").is_dir() {
            continue;
        }
        let copy = inspect_copy(&entry.path()).map_err(|error| failed(&error))?;
        volumes.push(HostedStatus {
            election: None,
            id,
            copy,
            connected: false,
            last_contact: None,
            promoted: promoted_at(&entry.path()).map_err(|error| failed(&error))?,
            // Known only to a running node.
            stored_files: 0,
            hashes_pending: 0,
            votes: None,
        });
    }
    volumes.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(volumes)
}

/// A voter's votes, when it gave any: a line under its volume.
fn votes_text(votes: &VotesStatus) -> String {
    let (Some(epoch), Some(to)) = (votes.granted_epoch, &votes.granted_to) else {
        return String::new();
    };
    let lease = match (&votes.lease_holder, votes.lease_epoch, votes.lease_left_ms) {
        (Some(holder), Some(held), Some(ms)) => format!(
            "; lease of {holder} (epoch {held}) runs {:.1} s more here",
            ms as f64 / 1000.0
        ),
        _ => "; no lease runs here".to_string(),
    };
    format!("{:<20} votes: epoch {epoch} granted to {to}{lease}\n", "")
}

/// Where the copy's elections stand (automatic failover): what the node does now, and the
/// last election it stood in.
fn election_text(election: &ElectionStatus) -> String {
    let mut text = String::new();
    if !election.now.is_empty() {
        text += &format!("{:<20} election: {}\n", "", election.now);
    }
    if let Some(last) = &election.last {
        let ago = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |since| since.as_secs_f64())
            - last.at;
        text += &format!(
            "{:<20} last election: epoch {}, {:.0} s ago, {} ({}): {}\n",
            "",
            last.epoch,
            ago.max(0.0),
            if last.won { "won" } else { "lost" },
            last.reason,
            last.outcome
        );
    }
    text
}

fn render(dir: &Path, report: &Report) -> String {
    let mut text = match &report.running {
        Some(node) => format!(
            "node         pid {}, listening on {}, {}\n",
            node.pid,
            node.listen,
            node.dir.display()
        ),
        None => format!("node         not running ({})\n", dir.display()),
    };
    text += &format!(
        "{:<20} {:>12} {:>12} {:>12} {:>6}  primary\n",
        "volume", "next", "applied", "told hw", "epoch"
    );
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64());
    for volume in &report.volumes {
        let CopyStatus {
            next,
            applied,
            high_watermark,
            epoch,
            ..
        } = volume.copy;
        let contact = match (volume.connected, volume.last_contact) {
            (true, Some(at)) => format!("connected, last heard {:.1} s ago", (now - at).max(0.0)),
            (true, None) => "connected".to_string(),
            (false, Some(at)) => format!("gone, last heard {:.1} s ago", (now - at).max(0.0)),
            (false, None) if report.running.is_some() => {
                "not heard from since the node started".to_string()
            }
            (false, None) => "unknown".to_string(),
        };
        let snapshot = if volume.copy.receiving_snapshot {
            ", receiving a snapshot"
        } else {
            ""
        };
        text += &format!(
            "{:<20} {next:>12} {applied:>12} {high_watermark:>12} {epoch:>6}  {contact}{snapshot}\n",
            volume.id
        );
        for kept in &volume.copy.kept_aside {
            let shown: Vec<&str> = kept.paths.iter().take(5).map(String::as_str).collect();
            let more = kept.paths.len() - shown.len();
            text += &format!(
                "{:<20} KEPT ASIDE {} record(s) the new primary never had, {} of data, naming {}{}: mirrorfs log --state-dir {}\n",
                "",
                kept.records,
                human(kept.data_bytes),
                shown.join(" "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                },
                kept.dir.display()
            );
        }
        if let Some(votes) = &volume.votes {
            text += &votes_text(votes);
        }
        if let Some(election) = &volume.election {
            text += &election_text(election);
        }
        if let Some(stuck) = &volume.copy.stuck {
            text += &format!(
                "{:<20} STUCK on record {}: {}\n",
                "", stuck.offset, stuck.error
            );
        }
    }
    for (id, votes) in report.running.iter().flat_map(|node| &node.witnessed) {
        text += &format!("{id:<20} a witness: votes only, no copy\n");
        text += &votes_text(votes);
    }
    text
}
