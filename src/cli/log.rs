//! `mirrorfs log`: a volume's change log, for operators. Reads the log without locking
//! it, so it works while the volume is mounted (a record being appended is not shown yet).

use std::io::{self, Write};

use serde_json::json;

use crate::log::{self, Op, Record};
use crate::write::log_dir;

use super::{CliError, LogArgs};

/// Runs `mirrorfs log`.
pub fn run(args: LogArgs) -> Result<(), CliError> {
    let state_dir = args.volume.state_dir()?;
    let dir = log_dir(&state_dir);
    if !dir.is_dir() {
        return Err(CliError::Usage(format!(
            "no change log in {} (has the volume been mounted?)",
            state_dir.display()
        )));
    }
    let view = log::inspect(&dir).map_err(|error| CliError::Failure(error.to_string()))?;
    let mut out = io::stdout().lock();
    let written = if args.stats {
        let epochs = log::Epochs::load(&dir)
            .map_err(|error| CliError::Failure(error.to_string()))?
            .unwrap_or_default();
        print_stats(&mut out, &view.stats(), &epochs, args.json)
    } else {
        let stats = view.stats();
        let from = args.from.unwrap_or(stats.first_offset);
        if from > stats.next_offset {
            return Err(CliError::Usage(format!(
                "offset {from} is past the end of the log (the next record gets {})",
                stats.next_offset
            )));
        }
        let records = view
            .records(from)
            .map_err(|error| CliError::Usage(error.to_string()))?;
        if !args.json {
            let _ = writeln!(
                out,
                "{:<20}  {:>12} {:>5}  {:<11} PATH",
                "TIME (UTC)", "OFFSET", "EPOCH", "OP"
            );
        }
        let times = log::Times::load(&dir);
        let printed = print_records(&mut out, records, &times, args.json, from);
        match printed {
            Ok(next) if args.follow => {
                drop(out);
                follow(&dir, next, args.json)
            }
            other => other.map(|_| ()),
        }
    };
    match written {
        Ok(()) => Ok(()),
        // `mirrorfs log | head` is a normal way to use it.
        Err(Printed::Io(error)) if error.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        Err(Printed::Io(error)) => Err(CliError::Failure(format!("cannot write output: {error}"))),
        Err(Printed::Log(error)) => Err(CliError::Failure(error.to_string())),
    }
}

enum Printed {
    Io(io::Error),
    Log(log::LogError),
}

impl From<io::Error> for Printed {
    fn from(error: io::Error) -> Printed {
        Printed::Io(error)
    }
}

fn print_stats(
    out: &mut impl Write,
    stats: &log::LogStats,
    epochs: &log::Epochs,
    json: bool,
) -> Result<(), Printed> {
    if json {
        let mut value = serde_json::to_value(stats).map_err(io::Error::other)?;
        value["epochs"] = serde_json::to_value(epochs.entries()).map_err(io::Error::other)?;
        writeln!(out, "{value}")?;
    } else {
        writeln!(out, "first offset  {}", stats.first_offset)?;
        writeln!(out, "next offset   {}", stats.next_offset)?;
        writeln!(
            out,
            "records       {}",
            stats.next_offset - stats.first_offset
        )?;
        writeln!(out, "segments      {}", stats.segments)?;
        writeln!(out, "bytes         {}", stats.bytes)?;
        // Where each leader epoch's records begin: "1 from 0, 2 from 1500".
        let history: Vec<String> = epochs.entries().iter().map(ToString::to_string).collect();
        writeln!(out, "epochs        {}", history.join(", "))?;
    }
    Ok(())
}

/// Prints `records`, which start at `from`; returns the offset after the last printed.
fn print_records(
    out: &mut impl Write,
    records: log::Records,
    times: &log::Times,
    json: bool,
    from: u64,
) -> Result<u64, Printed> {
    let mut next = from;
    for record in records {
        let record = record.map_err(Printed::Log)?;
        let time = times.of(record.offset).map(log::utc);
        if json {
            let mut value = record_json(&record);
            value["time"] = json!(time);
            writeln!(out, "{value}")?;
        } else {
            let time = time.as_deref().unwrap_or("-");
            writeln!(out, "{time:<20}  {}", record_line(&record))?;
        }
        next = record.offset + 1;
    }
    out.flush()?;
    Ok(next)
}

/// How often `--follow` looks for new records.
const FOLLOW_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

/// Prints records as they are appended from `next` on, until interrupted (tail -f).
fn follow(dir: &std::path::Path, mut next: u64, json: bool) -> Result<(), Printed> {
    loop {
        std::thread::sleep(FOLLOW_EVERY);
        let view = log::inspect(dir).map_err(Printed::Log)?;
        let stats = view.stats();
        if stats.next_offset <= next {
            continue;
        }
        // Retention may have removed what was not read yet: go on from what is kept.
        if next < stats.first_offset {
            eprintln!(
                "mirrorfs: records {next} to {} were removed by retention before they were read",
                stats.first_offset - 1
            );
            next = stats.first_offset;
        }
        let records = view.records(next).map_err(Printed::Log)?;
        let times = log::Times::load(dir);
        next = print_records(&mut io::stdout().lock(), records, &times, json, next)?;
    }
}

/// One line: offset, epoch, op, path (and the second path of a link or rename), and the
/// bytes or length the record carries.
fn record_line(record: &Record) -> String {
    let op = &record.op;
    let mut line = format!(
        "{:>12} {:>5}  {:<11} {}",
        record.offset,
        record.epoch,
        op.kind(),
        op.path()
    );
    if let Some(second) = op.new_path() {
        line.push_str(&format!(" -> {second}"));
    }
    match op {
        Op::Write { offset, data, .. } => {
            line.push_str(&format!("  {} bytes at {offset}", data.len()))
        }
        Op::Truncate { size, .. } => line.push_str(&format!("  size {size}")),
        Op::Fallocate { offset, length, .. } => {
            line.push_str(&format!("  {length} bytes at {offset}"))
        }
        Op::Copy {
            from,
            from_offset,
            offset,
            length,
            ..
        } => line.push_str(&format!(
            "  {length} bytes at {offset} from {from} at {from_offset}"
        )),
        Op::Rename { flags, .. } if flags & libc::RENAME_NOREPLACE != 0 => {
            line.push_str("  noreplace")
        }
        Op::SetXattr { name, .. } | Op::RemoveXattr { name, .. } => {
            line.push_str(&format!("  {}", name.escape_ascii()))
        }
        _ => {}
    }
    line
}

fn record_json(record: &Record) -> serde_json::Value {
    let op = &record.op;
    let mut value = json!({
        "offset": record.offset,
        "epoch": record.epoch,
        "op": op.kind(),
        "path": op.path().to_string(),
        "length": op.length(),
    });
    if let Some(second) = op.new_path() {
        value["new_path"] = json!(second.to_string());
    }
    if let Op::Write { offset, .. } | Op::Fallocate { offset, .. } | Op::Copy { offset, .. } = op {
        value["file_offset"] = json!(offset);
    }
    if let Op::Copy {
        from, from_offset, ..
    } = op
    {
        value["from"] = json!(from.to_string());
        value["from_offset"] = json!(from_offset);
    }
    value
}
