//! `mirrorfs replica serve`: run a replica node.

use std::path::PathBuf;

use crate::config::node::{NodeConfig, RawNodeConfig, parse_volume_arg};
use crate::replication::node::{self, NodeError};
use crate::signals::StopSignals;

use super::{CliError, ServeArgs};

/// Runs a node from `--config` and/or the command line until a stop signal.
pub fn serve(args: ServeArgs) -> Result<(), CliError> {
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
    let config = NodeConfig::resolve(raw, None).map_err(usage)?;
    node::serve(config, signals).map_err(|error| match error {
        NodeError::Key(_) | NodeError::Dir { .. } => CliError::Usage(error.to_string()),
        other => CliError::Failure(other.to_string()),
    })
}
