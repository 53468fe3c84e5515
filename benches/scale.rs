//! The scale workload for scripts/bench-scale.sh: many small files through a mount, with
//! what the daemon spends on them watched as they come.
//!
//!   cargo bench --bench scale -- create DIR FROM TO STEP PID
//!       creates files FROM..TO of 100 bytes, 1,000 per directory, and prints one JSON line
//!       each time the count reaches a multiple of STEP: files so far, the rate of that step, and the
//!       daemon's (PID's) resident memory and bytes written by syscalls;
//!   cargo bench --bench scale -- change DIR FILES COUNT PID
//!       rewrites the first bytes of COUNT of those files, spread over the tree, and prints
//!       the daemon's bytes written while doing so.

use std::fs;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

const PER_DIR: usize = 1000;

fn path_of(root: &Path, n: usize) -> PathBuf {
    root.join(format!("d{:04}/f{n:07}", n / PER_DIR))
}

/// One figure of `/proc/PID/<file>` ("VmRSS:" in status, "wchar:" in io).
fn proc_figure(pid: u32, file: &str, key: &str) -> u64 {
    let text = fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap_or_default();
    text.lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    proc_figure(pid, "status", "VmRSS:")
}

fn written(pid: u32) -> u64 {
    proc_figure(pid, "io", "wchar:")
}

fn create(root: &Path, from: usize, to: usize, step: usize, pid: u32) -> std::io::Result<()> {
    let step = step.max(1);
    let mut started = Instant::now();
    for n in from..to {
        if n % PER_DIR == 0 {
            fs::create_dir_all(path_of(root, n).parent().expect("in a directory"))?;
        }
        let mut file = fs::File::create(path_of(root, n))?;
        file.write_all(format!("{n:099}\n").as_bytes())?;
        drop(file);
        if (n + 1) % step == 0 || n + 1 == to {
            let seconds = started.elapsed().as_secs_f64();
            let count = n + 1 - from.max((n / step) * step);
            println!(
                "{{\"files\": {}, \"rate\": {:.0}, \"rss_kib\": {}, \"written\": {}}}",
                n + 1,
                count as f64 / seconds,
                rss_kib(pid),
                written(pid)
            );
            started = Instant::now();
        }
    }
    Ok(())
}

fn change(root: &Path, files: usize, count: usize, pid: u32) -> std::io::Result<()> {
    let before = written(pid);
    let started = Instant::now();
    let stride = (files / count.max(1)).max(1);
    for n in (0..files).step_by(stride).take(count) {
        fs::OpenOptions::new()
            .write(true)
            .open(path_of(root, n))?
            .write_all_at(b"changed", 0)?;
    }
    println!(
        "{{\"changed\": {count}, \"seconds\": {:.3}, \"written\": {}}}",
        started.elapsed().as_secs_f64(),
        written(pid) - before
    );
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let number = |i: usize| args.get(i).and_then(|a| a.parse::<usize>().ok());
    let outcome = match (args.first().map(String::as_str), args.get(1)) {
        (Some("create"), Some(dir)) => match (number(2), number(3), number(4), number(5)) {
            (Some(from), Some(to), Some(step), Some(pid)) => {
                create(Path::new(dir), from, to, step, pid as u32)
            }
            _ => usage(),
        },
        (Some("change"), Some(dir)) => match (number(2), number(3), number(4)) {
            (Some(files), Some(count), Some(pid)) => {
                change(Path::new(dir), files, count, pid as u32)
            }
            _ => usage(),
        },
        _ => usage(),
    };
    if let Err(error) = outcome {
        eprintln!("scale: {error}");
        std::process::exit(1);
    }
}

fn usage() -> ! {
    eprintln!("usage: scale create DIR FROM TO STEP PID | scale change DIR FILES COUNT PID");
    std::process::exit(2);
}
