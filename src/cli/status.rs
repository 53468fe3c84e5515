//! `mirrorfs status`: asks a mounted volume's daemon how it stands.

use crate::control::{self, Status};

use super::{CliError, StatusArgs};

/// Runs `mirrorfs status`.
pub fn run(args: StatusArgs) -> Result<(), CliError> {
    let state_dir = args.volume.state_dir()?;
    let status =
        control::query(&state_dir).map_err(|error| CliError::Failure(error.to_string()))?;
    if args.json {
        let text = serde_json::to_string(&status)
            .map_err(|error| CliError::Failure(format!("cannot encode the status: {error}")))?;
        println!("{text}");
    } else {
        print!("{}", render(&status));
    }
    Ok(())
}

/// The status as lines for a person.
fn render(status: &Status) -> String {
    let log = &status.log;
    let mut text = format!(
        "volume       {}\n\
         mounted      {} (origin {}), daemon pid {}\n\
         write mode   {}\n\
         log          offsets {} to {}, durable to {}, {} segment(s), {}\n",
        status.volume,
        status.mountpoint.display(),
        status.source.display(),
        status.pid,
        status.write_mode,
        log.stats.first_offset,
        log.stats.next_offset,
        log.durable_offset,
        log.stats.segments,
        human(log.stats.bytes),
    );
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
    text
}

/// Bytes rounded for reading: "512 B", "20.0 MiB".
fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
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
