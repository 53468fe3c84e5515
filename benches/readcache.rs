//! Read workloads for scripts/bench-cache.sh. Each prints one JSON object.
//!
//!   readcache seq FILE                       buffered 4 KiB reads, start to end: MB/s
//!   readcache rand FILE SPAN COUNT           O_DIRECT 4 KiB reads at random in [0, SPAN): IOPS
//!   readcache hot HOT SPAN SCAN SECONDS      O_DIRECT 4 KiB random reads of HOT's first SPAN
//!                                            bytes for SECONDS alone, then while another
//!                                            thread reads SCAN once, start to end: the
//!                                            share of hot reads that were hits each time
//!   readcache drop FILE                      POSIX_FADV_DONTNEED: the kernel forgets the
//!                                            file's cached pages (the daemon's stay)
//!
//! O_DIRECT makes the daemon (or the origin) answer, not the kernel's page cache, which on
//! this machine is large enough to hide any cache under it. A hot read counts as a hit
//! when it takes less than 2 ms: the slow origin needs at least 5 ms per read (200 IOPS),
//! and a read served from memory or a local disk takes far less, so the split does not
//! depend on which program served it.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const PAGE: usize = 4096;

/// A read slower than this went to the slow origin.
const HIT_LATENCY: Duration = Duration::from_millis(2);

/// A page-aligned buffer, as O_DIRECT needs.
struct Aligned {
    pointer: *mut u8,
    layout: Layout,
}

impl Aligned {
    fn new(len: usize) -> Aligned {
        let layout = Layout::from_size_align(len, PAGE).expect("a valid layout");
        // SAFETY: the layout has a non-zero size.
        let pointer = unsafe { alloc_zeroed(layout) };
        assert!(!pointer.is_null(), "out of memory");
        Aligned { pointer, layout }
    }

    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: `pointer` holds `layout.size()` initialized bytes owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.pointer, self.layout.size()) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout in `new`.
        unsafe { dealloc(self.pointer, self.layout) };
    }
}

/// xorshift64*.
struct Rng(u64);

impl Rng {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % bound
    }
}

fn open_direct(path: &str) -> File {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .unwrap_or_else(|error| fail(&format!("open {path}: {error}")))
}

fn fail(message: &str) -> ! {
    println!("{{\"error\": {message:?}}}");
    std::process::exit(1);
}

fn number(text: Option<&String>, what: &str) -> u64 {
    text.and_then(|text| text.parse().ok())
        .unwrap_or_else(|| fail(&format!("{what} must be a number")))
}

fn sequential(path: &str) {
    let mut file = File::open(path).unwrap_or_else(|error| fail(&format!("open {path}: {error}")));
    let mut buffer = vec![0u8; PAGE];
    let start = Instant::now();
    let mut total = 0u64;
    loop {
        let count = file
            .read(&mut buffer)
            .unwrap_or_else(|error| fail(&format!("read: {error}")));
        if count == 0 {
            break;
        }
        total += count as u64;
    }
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "{{\"bytes\": {total}, \"seconds\": {seconds:.3}, \"mb_per_s\": {:.1}}}",
        total as f64 / seconds / 1e6
    );
}

fn random(path: &str, span: u64, count: u64) {
    let file = open_direct(path);
    let mut buffer = Aligned::new(PAGE);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let pages = span / PAGE as u64;
    let start = Instant::now();
    for _ in 0..count {
        let offset = rng.below(pages) * PAGE as u64;
        file.read_exact_at(buffer.bytes(), offset)
            .unwrap_or_else(|error| fail(&format!("read at {offset}: {error}")));
    }
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "{{\"reads\": {count}, \"seconds\": {seconds:.3}, \"iops\": {:.0}}}",
        count as f64 / seconds
    );
}

/// Random reads of `file`'s first `span` bytes until `until` says stop: (reads, hits).
fn hot_reads(file: &File, span: u64, rng: &mut Rng, until: impl Fn(u64) -> bool) -> (u64, u64) {
    let mut buffer = Aligned::new(PAGE);
    let pages = span / PAGE as u64;
    let (mut reads, mut hits) = (0u64, 0u64);
    while !until(reads) {
        let offset = rng.below(pages) * PAGE as u64;
        let start = Instant::now();
        file.read_exact_at(buffer.bytes(), offset)
            .unwrap_or_else(|error| fail(&format!("hot read at {offset}: {error}")));
        reads += 1;
        hits += u64::from(start.elapsed() < HIT_LATENCY);
    }
    (reads, hits)
}

fn hot(hot: &str, span: u64, scan: &str, seconds: u64) {
    let file = open_direct(hot);
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let alone_until = Instant::now() + Duration::from_secs(seconds);
    let (alone_reads, alone_hits) =
        hot_reads(&file, span, &mut rng, |_| Instant::now() >= alone_until);

    let scanning = Arc::new(AtomicBool::new(true));
    let scanner = {
        let scanning = Arc::clone(&scanning);
        let scan = scan.to_string();
        std::thread::spawn(move || {
            let file = open_direct(&scan);
            let mut buffer = Aligned::new(1 << 20);
            let start = Instant::now();
            let mut offset = 0u64;
            loop {
                let count = file
                    .read_at(buffer.bytes(), offset)
                    .unwrap_or_else(|error| fail(&format!("scan read at {offset}: {error}")));
                if count == 0 {
                    break;
                }
                offset += count as u64;
            }
            scanning.store(false, Ordering::Relaxed);
            (offset, start.elapsed().as_secs_f64())
        })
    };
    let (during_reads, during_hits) =
        hot_reads(&file, span, &mut rng, |_| !scanning.load(Ordering::Relaxed));
    let (scanned, scan_seconds) = scanner.join().expect("the scan thread");
    let alone = alone_hits as f64 / alone_reads.max(1) as f64;
    let during = during_hits as f64 / during_reads.max(1) as f64;
    println!(
        "{{\"alone_reads\": {alone_reads}, \"alone_hit_ratio\": {alone:.4}, \
         \"during_reads\": {during_reads}, \"during_hit_ratio\": {during:.4}, \
         \"kept\": {:.4}, \"scan_bytes\": {scanned}, \"scan_mb_per_s\": {:.1}}}",
        during / alone.max(f64::MIN_POSITIVE),
        scanned as f64 / scan_seconds / 1e6
    );
}

fn drop_pages(path: &str) {
    let file = File::open(path).unwrap_or_else(|error| fail(&format!("open {path}: {error}")));
    // SAFETY: fadvise on a descriptor we own.
    let result = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if result != 0 {
        fail(&format!("fadvise: error {result}"));
    }
    println!("{{\"dropped\": true}}");
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| arg != "--bench")
        .collect();
    match args.first().map(String::as_str) {
        Some("seq") if args.len() == 2 => sequential(&args[1]),
        Some("rand") if args.len() == 4 => {
            random(
                &args[1],
                number(args.get(2), "SPAN"),
                number(args.get(3), "COUNT"),
            );
        }
        Some("hot") if args.len() == 5 => hot(
            &args[1],
            number(args.get(2), "SPAN"),
            &args[3],
            number(args.get(4), "SECONDS"),
        ),
        Some("drop") if args.len() == 2 => drop_pages(&args[1]),
        _ => {
            eprintln!(
                "usage: readcache seq FILE | rand FILE SPAN COUNT | hot HOT SPAN SCAN SECONDS | drop FILE"
            );
            std::process::exit(2);
        }
    }
}
