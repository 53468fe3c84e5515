//! Small-file workload for scripts/bench.sh: create, stat, read and delete N files of
//! 0-16 KiB in a directory, timing each phase. Prints one JSON object of operations per
//! second. Sizes come from a fixed-seed generator, so every target gets the same files.
//!
//!   cargo bench --bench smallfiles -- DIR [FILES] [--cold]
//!
//! With `--cold` (root only), the kernel's caches are dropped after the creates and again
//! before the reads, and stat runs twice: cold (names and attributes read anew) and warm.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

const SIZE_MAX: u64 = 16 * 1024;

/// xorshift64*: a fixed, dependency-free sequence of file sizes.
fn sizes(count: usize) -> Vec<usize> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..count)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_F491_4F6C_DD1D) % (SIZE_MAX + 1)) as usize
        })
        .collect()
}

fn phase(
    name: &str,
    count: usize,
    work: impl FnOnce() -> std::io::Result<()>,
) -> Result<String, String> {
    let start = Instant::now();
    work().map_err(|error| format!("{name}: {error}"))?;
    let seconds = start.elapsed().as_secs_f64();
    Ok(format!("\"{name}\": {:.0}", count as f64 / seconds))
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let cold = args.iter().any(|a| a == "--cold");
    let args: Vec<&String> = args.iter().filter(|a| *a != "--cold").collect();
    let Some(dir) = args.first() else {
        eprintln!("usage: smallfiles DIR [FILES] [--cold]");
        std::process::exit(2);
    };
    let count: usize = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(20_000);
    let root = Path::new(dir).join("smallfiles");
    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(&root).expect("create the work directory");
    let sizes = sizes(count);
    let data = vec![0x5a_u8; SIZE_MAX as usize];
    let paths: Vec<PathBuf> = (0..count)
        .map(|i| root.join(format!("d{:02}/f{i:06}", i % 20)))
        .collect();
    for sub in 0..20 {
        fs::create_dir(root.join(format!("d{sub:02}"))).expect("create a subdirectory");
    }

    let stat_all = || -> std::io::Result<()> {
        for (path, size) in paths.iter().zip(&sizes) {
            assert_eq!(fs::metadata(path)?.len(), *size as u64);
        }
        Ok(())
    };
    let phases = || -> Result<Vec<String>, String> {
        Ok(vec![
            phase("create", count, || {
                for (path, size) in paths.iter().zip(&sizes) {
                    fs::File::create(path)?.write_all(&data[..*size])?;
                }
                Ok(())
            })?,
            {
                drop_caches(cold)?;
                phase(if cold { "stat-cold" } else { "stat" }, count, stat_all)?
            },
            if cold {
                phase("stat-warm", count, stat_all)?
            } else {
                String::new()
            },
            {
                drop_caches(cold)?;
                phase("read", count, || {
                    for (path, size) in paths.iter().zip(&sizes) {
                        assert_eq!(fs::read(path)?.len(), *size);
                    }
                    Ok(())
                })?
            },
            phase("delete", count, || {
                for path in &paths {
                    fs::remove_file(path)?;
                }
                Ok(())
            })?,
        ])
    };
    let outcome = phases();
    let _ = fs::remove_dir_all(&root);
    match outcome {
        Ok(results) => {
            let results: Vec<String> = results.into_iter().filter(|r| !r.is_empty()).collect();
            println!("{{{}}}", results.join(", "))
        }
        Err(error) => println!("{{\"error\": {error:?}}}"),
    }
}

/// Writes back and drops the kernel's page, dentry and inode caches, when asked to.
fn drop_caches(cold: bool) -> Result<(), String> {
    if !cold {
        return Ok(());
    }
    let status = std::process::Command::new("sync")
        .status()
        .map_err(|error| format!("sync: {error}"))?;
    if !status.success() {
        return Err(format!("sync: {status}"));
    }
    fs::write("/proc/sys/vm/drop_caches", "3").map_err(|error| format!("drop_caches: {error}"))
}
