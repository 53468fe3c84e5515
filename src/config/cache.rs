//! The `[cache]` section resolved: defaults filled, bounds and contradictions checked.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::raw::{Admission, Passthrough, RawCache};
use super::units::{ByteSize, Span};
use super::{ConfigError, invalid, normalize, within};

/// Default `revalidate_after`: origin changes made by other programs show within 1 s.
const REVALIDATE_AFTER_DEFAULT: Duration = Duration::from_secs(1);

/// Longest `revalidate_after` (a year is already "never"; longer values are surely typos).
const REVALIDATE_AFTER_MAX: Duration = Duration::from_secs(365 * 86_400);

/// Default `memory_bytes`.
const MEMORY_BYTES_DEFAULT: u64 = 256 << 20;

/// Most `memory_bytes`.
const MEMORY_BYTES_MAX: u64 = 1 << 40;

/// Default `disk_bytes`.
const DISK_BYTES_DEFAULT: u64 = 20 << 30;

/// Most `disk_bytes`.
const DISK_BYTES_MAX: u64 = 1 << 50;

/// Default `block_size`.
const BLOCK_SIZE_DEFAULT: u64 = 1 << 20;

/// Bounds of `block_size`: at least a few pages, at most what one origin read should be.
const BLOCK_SIZE_RANGE: (u64, u64) = (64 << 10, 16 << 20);

/// Default read-ahead windows, as Linux starts small and zfetch grows to tens of MiB.
const READAHEAD_DEFAULT: (u64, u64) = (128 << 10, 32 << 20);

/// Bounds of either read-ahead window.
const READAHEAD_RANGE: (u64, u64) = (4 << 10, 1 << 30);

/// Blocks a tier must hold at least, or admission has nothing to choose between.
const BLOCKS_PER_TIER_MIN: u64 = 8;

/// The validated `[cache]` section.
#[derive(Clone, Debug)]
pub struct CacheConfig {
    /// The memory tier's budget in bytes; 0 when the read cache is off.
    pub memory_bytes: u64,
    /// The disk tier's directory and budget, if there is one.
    pub disk: Option<DiskTierConfig>,
    /// Bytes per cached block (a power of two).
    pub block_size: u64,
    /// Read-ahead's first window.
    pub readahead_min: u64,
    /// Read-ahead's largest window.
    pub readahead_max: u64,
    /// Which blocks the tiers let in.
    pub admission: Admission,
    /// How long the kernel and the cache may trust what they hold without asking the
    /// origin again, which is how late a change made directly in the origin by another
    /// program can be seen. Changes made through the mount are seen at once.
    pub revalidate_after: Duration,
    /// Hot files are revalidated in the background before `revalidate_after` runs out.
    pub refresh_ahead: bool,
    /// Whether read-only opens may be handed to the kernel.
    pub passthrough: Passthrough,
}

/// The disk tier's place and budget.
#[derive(Clone, Debug)]
pub struct DiskTierConfig {
    /// Its directory (absolute, normalized).
    pub dir: PathBuf,
    /// Its budget in bytes.
    pub bytes: u64,
}

impl CacheConfig {
    /// Whether reads go through a cache at all.
    pub fn enabled(&self) -> bool {
        self.memory_bytes > 0
    }
}

/// Resolves `[cache]`. `owned` are the volume's other directories, which the disk tier
/// must not be inside of nor contain.
pub(super) fn resolve(
    raw: &RawCache,
    owned: [(&str, &Path); 3],
) -> Result<CacheConfig, ConfigError> {
    let show_bytes = |bytes: u64| ByteSize(bytes).to_string();
    let revalidate_after = raw
        .revalidate_after
        .map_or(REVALIDATE_AFTER_DEFAULT, |span| span.0);
    if revalidate_after > REVALIDATE_AFTER_MAX {
        return Err(invalid(
            "cache.revalidate_after",
            format!("{} is longer than a year", Span(revalidate_after)),
        ));
    }
    let block_size = within(
        "cache.block_size",
        raw.block_size.map(|size| size.0),
        BLOCK_SIZE_DEFAULT,
        BLOCK_SIZE_RANGE,
        show_bytes,
    )?;
    if !block_size.is_power_of_two() {
        return Err(invalid(
            "cache.block_size",
            format!("{} is not a power of two", ByteSize(block_size)),
        ));
    }
    let memory_bytes = raw.memory_bytes.map_or(MEMORY_BYTES_DEFAULT, |size| size.0);
    if memory_bytes != 0
        && !(block_size * BLOCKS_PER_TIER_MIN..=MEMORY_BYTES_MAX).contains(&memory_bytes)
    {
        return Err(invalid(
            "cache.memory_bytes",
            format!(
                "{} is outside {} ({BLOCKS_PER_TIER_MIN} blocks) to {}; 0 turns the cache off",
                ByteSize(memory_bytes),
                ByteSize(block_size * BLOCKS_PER_TIER_MIN),
                ByteSize(MEMORY_BYTES_MAX)
            ),
        ));
    }
    let readahead_min = within(
        "cache.readahead_min",
        raw.readahead_min.map(|size| size.0),
        READAHEAD_DEFAULT.0,
        READAHEAD_RANGE,
        show_bytes,
    )?;
    let readahead_max = within(
        "cache.readahead_max",
        raw.readahead_max.map(|size| size.0),
        // The default shrinks with a small memory tier (see below), never below the minimum.
        READAHEAD_DEFAULT.1.min(memory_bytes / 4).max(readahead_min),
        READAHEAD_RANGE,
        show_bytes,
    )?;
    if readahead_min > readahead_max {
        return Err(invalid(
            "cache.readahead_min",
            format!(
                "{} is more than readahead_max {}",
                ByteSize(readahead_min),
                ByteSize(readahead_max)
            ),
        ));
    }
    // Prefetched blocks wait in the memory tier's probation share (a quarter); a window
    // larger than that would evict its own blocks before the reader gets to them.
    if memory_bytes != 0 && readahead_max > memory_bytes / 4 {
        return Err(invalid(
            "cache.readahead_max",
            format!(
                "{} is more than a quarter of memory_bytes {}, so read-ahead would evict its own blocks",
                ByteSize(readahead_max),
                ByteSize(memory_bytes)
            ),
        ));
    }
    let disk = match &raw.disk_dir {
        None => {
            if raw.disk_bytes.is_some() {
                return Err(invalid(
                    "cache.disk_bytes",
                    "is set but disk_dir is not; give disk_dir for a disk tier",
                ));
            }
            None
        }
        Some(dir) => Some(resolve_disk(raw, dir, memory_bytes, block_size, owned)?),
    };
    Ok(CacheConfig {
        memory_bytes,
        disk,
        block_size,
        readahead_min,
        readahead_max,
        admission: raw.admission.unwrap_or(Admission::ScanResistant),
        revalidate_after,
        refresh_ahead: raw.refresh_ahead.unwrap_or(false),
        passthrough: raw.passthrough.unwrap_or(Passthrough::Off),
    })
}

fn resolve_disk(
    raw: &RawCache,
    dir: &Path,
    memory_bytes: u64,
    block_size: u64,
    owned: [(&str, &Path); 3],
) -> Result<DiskTierConfig, ConfigError> {
    if !dir.is_absolute() {
        return Err(invalid(
            "cache.disk_dir",
            format!("{:?} must be an absolute path", dir.display().to_string()),
        ));
    }
    if memory_bytes == 0 {
        return Err(invalid(
            "cache.disk_dir",
            "needs a memory tier; memory_bytes = 0 turns the whole cache off",
        ));
    }
    let dir = normalize(dir);
    for (name, other) in owned {
        if dir.starts_with(other) || other.starts_with(&dir) {
            return Err(invalid(
                "cache.disk_dir",
                format!(
                    "{} overlaps the {name} {}; the disk tier needs a directory of its own",
                    dir.display(),
                    other.display()
                ),
            ));
        }
    }
    let bytes = within(
        "cache.disk_bytes",
        raw.disk_bytes.map(|size| size.0),
        DISK_BYTES_DEFAULT,
        (block_size * BLOCKS_PER_TIER_MIN, DISK_BYTES_MAX),
        |bytes| ByteSize(bytes).to_string(),
    )?;
    Ok(DiskTierConfig { dir, bytes })
}
