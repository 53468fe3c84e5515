//! Write burst for scripts/bench-write.sh: FILES files of 64 KiB-4 MiB written into DIR,
//! each fsynced before the next (an untar or a build output that must be durable). Sizes
//! and contents come from a fixed seed, so every target gets the same bytes. Prints one
//! JSON object: files/s, MB/s, seconds, bytes.
//!
//!   cargo bench --bench writeburst -- DIR [FILES]

use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

const SIZE_MIN: u64 = 64 << 10;
const SIZE_MAX: u64 = 4 << 20;

/// xorshift64*.
fn next(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let Some(dir) = args.first() else {
        eprintln!("usage: writeburst DIR [FILES]");
        std::process::exit(2);
    };
    let count: u64 = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(128);
    let root = Path::new(dir).join("burst");
    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(&root).expect("create the burst directory");
    let mut state = 0x2545_F491_4F6C_DD1D_u64;
    let data: Vec<u8> = (0..SIZE_MAX).map(|_| next(&mut state) as u8).collect();
    let sizes: Vec<usize> = (0..count)
        .map(|_| (SIZE_MIN + next(&mut state) % (SIZE_MAX - SIZE_MIN + 1)) as usize)
        .collect();

    let start = Instant::now();
    let outcome = (|| -> std::io::Result<u64> {
        let mut bytes = 0;
        for (i, size) in sizes.iter().enumerate() {
            let mut file = fs::File::create(root.join(format!("f{i:05}")))?;
            file.write_all(&data[..*size])?;
            file.sync_all()?;
            bytes += *size as u64;
        }
        Ok(bytes)
    })();
    let seconds = start.elapsed().as_secs_f64();
    match outcome {
        Ok(bytes) => println!(
            "{{\"files_per_s\": {:.1}, \"mb_per_s\": {:.1}, \"seconds\": {seconds:.2}, \"bytes\": {bytes}}}",
            count as f64 / seconds,
            bytes as f64 / seconds / 1e6
        ),
        Err(error) => println!("{{\"error\": {:?}}}", error.to_string()),
    }
}
