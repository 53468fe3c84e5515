//! The commands a config names for failover's moments (`on_promote`, `on_fenced`): run by
//! `sh -c` with the volume id, its epoch and its role now in the environment, so that a
//! promotion can move a virtual IP or restart a service.

use std::process::{Command, ExitStatus, Stdio};

/// What the hook is told.
#[derive(Clone, Copy, Debug)]
pub struct Moment<'a> {
    /// The volume id (`MIRRORFS_VOLUME`).
    pub volume: &'a str,
    /// The epoch that began (`MIRRORFS_EPOCH`).
    pub epoch: u32,
    /// What this machine's copy is now: "primary" or "fenced" (`MIRRORFS_ROLE`).
    pub role: &'a str,
    /// The mount config that serves a promoted copy, if one was written
    /// (`MIRRORFS_CONFIG`): a hook may mount it.
    pub config: Option<&'a std::path::Path>,
}

/// Runs `command` for `moment` and waits for it; its output goes where ours does.
pub fn run(command: &str, moment: Moment<'_>) -> std::io::Result<ExitStatus> {
    let mut shell = Command::new("/bin/sh");
    shell
        .arg("-c")
        .arg(command)
        .env("MIRRORFS_VOLUME", moment.volume)
        .env("MIRRORFS_EPOCH", moment.epoch.to_string())
        .env("MIRRORFS_ROLE", moment.role)
        .stdin(Stdio::null());
    if let Some(config) = moment.config {
        shell.env("MIRRORFS_CONFIG", config);
    }
    shell.status()
}

/// Runs `command` for `moment` on a thread of its own, logging how it ended: for a daemon,
/// which must not wait on it.
pub fn spawn(command: &str, moment: Moment<'_>) {
    let command = command.to_string();
    let (volume, epoch, role) = (
        moment.volume.to_string(),
        moment.epoch,
        moment.role.to_string(),
    );
    let spawned = std::thread::Builder::new()
        .name("hook".to_string())
        .spawn(move || {
            let moment = Moment {
                volume: &volume,
                epoch,
                role: &role,
                config: None,
            };
            match run(&command, moment) {
                Ok(status) if status.success() => {
                    tracing::info!(%command, role, "hook ran");
                }
                Ok(status) => tracing::error!(%command, role, %status, "hook failed"),
                Err(error) => tracing::error!(%command, role, %error, "hook could not run"),
            }
        });
    if let Err(error) = spawned {
        tracing::error!(%error, "hook could not start");
    }
}
