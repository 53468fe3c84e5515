//! `mirrorfs status`: asks a mounted volume's daemon how it stands.

use crate::cache::{CacheStats, TierStats};
use crate::control::{self, ControlError};
use crate::replication::LeaseStatus;
use crate::status::{StandbyStatus, Status};

use super::{CliError, StatusArgs};
use crate::config::human;

/// Runs `mirrorfs status`.
pub fn run(args: StatusArgs) -> Result<(), CliError> {
    let state_dir = args.volume.state_dir()?;
    if args.check {
        let status = control::query::<Status>(&state_dir)
            .map_err(|error| CliError::Failure(error.to_string()))?;
        let volume = &status.volume;
        if status.standby.is_some() {
            return Err(CliError::Failure(format!(
                "volume {volume} is mounted here as a standby, not the primary"
            )));
        }
        // With automatic failover, a primary out of its lease takes nothing: it must not
        // hold a virtual IP either.
        if let Some(why) = lease_lost(&status) {
            return Err(CliError::Failure(format!(
                "volume {volume} does not hold its lease: {why}"
            )));
        }
        return match &status.log.fence {
            None => Ok(()),
            Some(fence) => Err(CliError::Failure(format!("volume {volume} is {fence}"))),
        };
    }
    let status: Status = control::query(&state_dir).map_err(|error| match error {
        ControlError::NotRunning { .. } => {
            CliError::Failure(format!("volume is not mounted: {error}"))
        }
        other => CliError::Failure(other.to_string()),
    })?;
    if args.json {
        let mut value = serde_json::to_value(&status)
            .map_err(|error| CliError::Failure(format!("cannot encode the status: {error}")))?;
        value["role"] = serde_json::Value::from(status.role());
        let text = serde_json::to_string(&value)
            .map_err(|error| CliError::Failure(format!("cannot encode the status: {error}")))?;
        println!("{text}");
    } else {
        print!("{}", render(&status));
    }
    Ok(())
}

/// Why a primary under automatic failover does not hold its lease, if it does not.
fn lease_lost(status: &Status) -> Option<String> {
    let lease = status.replication.as_ref()?.lease.as_ref()?;
    match lease.held_for_ms {
        Some(_) => None,
        None => Some(
            lease
                .why_not
                .clone()
                .unwrap_or_else(|| "not granted yet".to_string()),
        ),
    }
}

/// The status as lines for a person.
fn render(status: &Status) -> String {
    let log = &status.log;
    let mut text = format!(
        "volume       {}\n\
         mounted      {} (origin {}), daemon pid {}\n\
         write mode   {}\n\
         log          first offset {}, next offset {} ({} record(s) kept), durable below {}, {} segment(s), {}\n",
        status.volume,
        status.mountpoint.display(),
        status.source.display(),
        status.pid,
        status.write_mode,
        log.stats.first_offset,
        log.stats.next_offset,
        log.stats.next_offset - log.stats.first_offset,
        log.durable_offset,
        log.stats.segments,
        human(log.stats.bytes),
    );
    let epochs: Vec<String> = log.epochs.iter().map(ToString::to_string).collect();
    text += &format!("role         {}\n", status.role());
    text += &format!("epochs       {}\n", epochs.join(", "));
    if let Some(fence) = &log.fence {
        text += &format!("FENCED       {fence}: changes fail with EROFS, fsync with EIO\n");
    }
    if let Some(standby) = &status.standby {
        text += &standby_text(standby);
    }
    if let Some(behind) = &status.write_behind {
        text += &format!(
            "unflushed    {} in {} file(s); origin has every record below {}\n\
             flushed      {} since mount\n",
            human(behind.dirty_bytes),
            behind.dirty_files,
            behind.applied_offset,
            human(behind.flushed_bytes),
        );
        if let Some(error) = &behind.flush_error {
            text += &format!("flush error  {error} (retrying; nothing is lost)\n");
        }
    }
    match &status.cache {
        None => text += "read cache   off\n",
        Some(cache) => text += &cache_text(cache),
    }
    if let Some(replication) = &status.replication {
        // u64::MAX: no replica holds records back from retention.
        let needed = match replication.retained_from {
            u64::MAX => "no replica needs older records".to_string(),
            from => format!("replicas need the records from {from} on"),
        };
        text += &format!(
            "replication  epoch {}, high watermark {} (every in-sync replica holds the records below it), {needed}\n",
            replication.epoch, replication.high_watermark
        );
        if let Some(lease) = &replication.lease {
            text += &lease_text(lease);
        }
        if let Some(election) = &status.election {
            text += &format!(
                "elected      epoch {} ({}): {}\n",
                election.epoch, election.reason, election.outcome
            );
        }
        if let Some(why) = &replication.waiting_for {
            text += &format!(
                "  {} fsync call(s) waiting for replicas: {why}\n",
                replication.waiting_fsyncs
            );
        }
        for replica in &replication.replicas {
            let seconds = replica
                .lag_seconds
                .map_or("never caught up".to_string(), |s| {
                    format!("{s:.1} s behind")
                });
            text += &format!(
                "  {:<10} {:<22} {:<16} acknowledged {}, {} record(s) ({}), {seconds}\n",
                replica.name,
                replica.address,
                replica.state,
                replica.acknowledged,
                replica.lag_records,
                human(replica.lag_bytes)
            );
            if let Some(snapshot) = &replica.snapshot {
                text += &format!(
                    "  {:<10} snapshot from offset {}: {} object(s), {} sent in {:.1} s\n",
                    "",
                    snapshot.offset,
                    snapshot.sent.objects,
                    human(snapshot.sent.bytes),
                    snapshot.seconds
                );
            }
            match (&replica.stuck, &replica.error) {
                (Some(stuck), _) => {
                    text += &format!(
                        "  {:<10} STUCK on record {}: {} (the replica holds it but cannot apply it; see its node's log)\n",
                        "", stuck.offset, stuck.error
                    );
                }
                (None, Some(error)) if replica.state == "diverged" => {
                    text += &format!(
                        "  {:<10} DIVERGED: {error}\n  {:<10} what to do: {}\n",
                        "",
                        "",
                        crate::replication::DIVERGED_ADVICE
                    );
                }
                (None, Some(error)) => text += &format!("  {:<10} last error: {error}\n", ""),
                (None, None) => {}
            }
        }
    }
    if status.handler_panics > 0 {
        text += &format!(
            "PANICS       {} request handler(s) panicked (each answered EIO; see the daemon's log)\n",
            status.handler_panics
        );
    }
    let verify = &status.verify;
    match verify.stored_files {
        Some(stored) => {
            text += &format!(
                "hashes       stored for {stored} file(s), {} waiting to be rehashed\n",
                verify.pending_files
            )
        }
        None => text += "hashes       not kept ([verify] stored_hashes = false)\n",
    }
    if let Some(run) = &verify.last_run {
        let how = if run.scheduled {
            "scheduled"
        } else {
            "asked for"
        };
        text += &format!(
            "last verify  {how}, exit {}: {}\n",
            run.exit_code, run.summary
        );
    }
    if status.passthrough_opens > 0 {
        text += &format!(
            "passthrough  {} open(s) read the origin directly\n",
            status.passthrough_opens
        );
    }
    text
}

/// The read cache's lines of `status`.
fn lease_text(lease: &LeaseStatus) -> String {
    let votes = format!(
        "{} of {} voters granted the last round, {} needed",
        lease.granted, lease.voters, lease.majority
    );
    match lease.held_for_ms {
        Some(ms) => format!(
            "lease        held as {} for {:.1} s more ({votes})\n",
            lease.name,
            ms as f64 / 1000.0
        ),
        None => format!(
            "LEASE        not held by {}: changes fail with EROFS, fsync with EIO ({votes}; {})\n",
            lease.name,
            lease.why_not.as_deref().unwrap_or("no round won yet")
        ),
    }
}

fn standby_text(standby: &StandbyStatus) -> String {
    let served = standby
        .served_offset
        .map_or_else(|| "not known yet".to_string(), |offset| offset.to_string());
    let mut text = format!(
        "STANDBY      read-only copy {}: serves every record below {served}; the node holds {} durably; lag {} record(s) behind high watermark {}\n",
        standby.copy.display(),
        standby.received,
        standby.lag,
        standby.high_watermark,
    );
    if standby.out_of_step {
        text += "             the copy is being resynced: reads may mix two states until it ends\n";
    }
    if standby.replaced {
        text += "             the copy was replaced by a snapshot: this mount serves the old tree; mount it again\n";
    }
    text
}

fn cache_text(cache: &CacheStats) -> String {
    let tier = |name: &str, tier: &TierStats| {
        let looked = tier.hits + tier.misses;
        let ratio = if looked == 0 {
            "-".to_string()
        } else {
            format!("{:.1}%", 100.0 * tier.hits as f64 / looked as f64)
        };
        format!(
            "{name:<13}{} of {} in {} blocks; {} hits, {} misses ({ratio} hit), {} evicted, {} promoted\n",
            human(tier.bytes),
            human(tier.budget),
            tier.blocks,
            tier.hits,
            tier.misses,
            tier.evictions,
            tier.promotions,
        )
    };
    let mut text = tier("cache memory", &cache.memory);
    if let Some(disk) = &cache.disk {
        text += &tier("cache disk", disk);
    }
    text += &format!(
        "origin reads {} ({}); read ahead {}, {} of it used, {} dropped unused\n\
         invalidated  {} file(s) changed in the origin; {} corrupt block(s) dropped\n",
        cache.origin_reads,
        human(cache.origin_bytes),
        human(cache.prefetched_bytes),
        human(cache.prefetch_used_bytes),
        human(cache.prefetch_unused_bytes),
        cache.invalidations,
        cache.corrupt_blocks,
    );
    if cache.invalidations > 0 {
        text += &format!(
            "AROUND       origin changed around the mount: {} time(s) a file the cache held \
             changed in a way no change through the mount explains; such changes are not in \
             the log and reach no replica ('mirrorfs verify --repair' sends them)\n",
            cache.invalidations
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_well() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(1023), "1023 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(20 << 20), "20.0 MiB");
        assert_eq!(human(3 << 40), "3.0 TiB");
    }
}
