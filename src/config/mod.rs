//! Mount configuration: a TOML file (see `mount-configs/`) and command-line overrides,
//! resolved into a validated [`Config`]. Parsing happens in two stages, as ripgrep does: the
//! raw schema ([`raw`]), then resolution, which fills defaults and rejects contradictions
//! with a message naming the key. Nothing here touches the filesystem except reading the
//! file; checks against the live system (does SOURCE exist?) belong to the command.

mod cache;
mod failover;
mod node;
mod raw;
mod replication;
mod units;
mod verify;

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

pub use cache::{CacheConfig, DiskTierConfig};
pub use failover::{FailoverConfig, FailoverMode};
pub use node::{NodeConfig, RawNodeConfig, parse_volume_arg};
pub use raw::RawConfig;
pub use raw::{Admission, Passthrough, WriteMode};
pub use replication::Replica;
pub use replication::{Acks, Compression, OnInsufficient, ReplicationConfig};
pub use units::{ByteSize, Span, human};
pub use verify::VerifyConfig;

/// Longest volume id; ids name directories on replica nodes.
const VOLUME_ID_LEN_MAX: usize = 64;

/// Default `[write] dirty_bytes_max`.
const DIRTY_BYTES_DEFAULT: u64 = 1 << 30;

/// Least `dirty_bytes_max`: one full-size write must fit.
const DIRTY_BYTES_MIN: u64 = 1 << 20;

/// Most `dirty_bytes_max`: unflushed data stays in the log on the state disk (memory holds
/// only its map), so this bounds how far the origin may fall behind.
const DIRTY_BYTES_MAX: u64 = 1 << 40;

/// Default `[write] flush_interval`.
const FLUSH_INTERVAL_DEFAULT: Duration = Duration::from_secs(2);

/// Bounds of `flush_interval`.
const FLUSH_INTERVAL_RANGE: (Duration, Duration) =
    (Duration::from_millis(10), Duration::from_secs(3600));

/// Default `[log] segment_bytes`.
const SEGMENT_BYTES_DEFAULT: u64 = 64 << 20;

/// Bounds of `segment_bytes`.
const SEGMENT_BYTES_RANGE: (u64, u64) = (64 << 10, 4 << 30);

/// Why a configuration cannot be used. Each renders as one line naming the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not fit the schema.
    #[error("config {path}{location}: {key}{message}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// " line N" where known.
        location: String,
        /// "section.key: " where known.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A required setting was given neither on the command line nor in the file.
    #[error("{key} is required: {hint}")]
    Missing {
        /// The setting.
        key: &'static str,
        /// How to give it.
        hint: &'static str,
    },
    /// A setting has an impossible value.
    #[error("{key}: {reason}")]
    Invalid {
        /// The setting.
        key: &'static str,
        /// Why it cannot be used.
        reason: String,
    },
}

/// A volume id: 1 to 64 of `A-Z a-z 0-9 . _ -`, not starting with a dot.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct VolumeId(String);

impl VolumeId {
    /// Validates `text` as a volume id.
    pub fn new(text: &str) -> Result<VolumeId, String> {
        if text.is_empty() || text.len() > VOLUME_ID_LEN_MAX {
            return Err(format!(
                "must be 1 to {VOLUME_ID_LEN_MAX} characters, got {}",
                text.len()
            ));
        }
        if text.starts_with('.') {
            return Err(format!("{text:?} must not start with '.'"));
        }
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if let Some(bad) = text.chars().find(|&c| !allowed(c)) {
            return Err(format!(
                "{text:?} contains {bad:?}; use letters, digits, '.', '_' and '-'"
            ));
        }
        Ok(VolumeId(text.to_string()))
    }

    /// The default id for an origin: its directory name and a short hash of its full path,
    /// so two origins named alike never share a state directory.
    pub fn for_source(source: &Path) -> VolumeId {
        let base: String = source
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_else(|| "root".to_string())
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .take(VOLUME_ID_LEN_MAX - 9)
            .collect();
        let hash = blake3::hash(source.as_os_str().as_encoded_bytes()).to_hex();
        VolumeId(format!("{base}-{}", &hash[..8]))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for VolumeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Settings given on the command line; each wins over the file.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// SOURCE.
    pub source: Option<PathBuf>,
    /// MOUNTPOINT.
    pub mountpoint: Option<PathBuf>,
    /// --state-dir.
    pub state_dir: Option<PathBuf>,
    /// --id.
    pub id: Option<String>,
    /// --allow-other.
    pub allow_other: Option<bool>,
}

/// A validated mount configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The `[volume]` section.
    pub volume: VolumeConfig,
    /// The `[cache]` section.
    pub cache: CacheConfig,
    /// The `[write]` section.
    pub write: WriteConfig,
    /// The `[log]` section.
    pub log: LogConfig,
    /// The `[replication]` section, if it lists replicas.
    pub replication: Option<ReplicationConfig>,
    /// The `[verify]` section.
    pub verify: VerifyConfig,
    /// The `[failover]` section.
    pub failover: FailoverConfig,
    /// `[metrics] listen`: where the daemon serves Prometheus metrics, if anywhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// The validated `[write]` section.
#[derive(Clone, Copy, Debug)]
pub struct WriteConfig {
    /// write-through or write-behind.
    pub mode: WriteMode,
    /// write-behind: unflushed bytes beyond which writers wait.
    pub dirty_bytes_max: u64,
    /// write-behind: the longest a change waits before the origin gets it.
    pub flush_interval: Duration,
    /// The kernel caches writes and sends them in large requests (its writeback cache).
    pub kernel_writeback: bool,
}

/// The validated `[log]` section.
#[derive(Clone, Copy, Debug)]
pub struct LogConfig {
    /// A segment file is sealed and a new one begun past this size.
    pub segment_bytes: u64,
}

/// The validated `[volume]` section. Paths are absolute and free of `.` and `..`.
#[derive(Clone, Debug)]
pub struct VolumeConfig {
    /// The volume's name.
    pub id: VolumeId,
    /// The origin.
    pub source: PathBuf,
    /// The mount point.
    pub mountpoint: PathBuf,
    /// mirrorfs's own files for the volume.
    pub state_dir: PathBuf,
    /// Whether other users may use the mount.
    pub allow_other: bool,
}

impl Config {
    /// Reads and parses a config file (without resolving it).
    pub fn read(path: &Path) -> Result<RawConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(path, &text)
    }

    /// Parses config text; `path` is only for messages.
    pub fn parse(path: &Path, text: &str) -> Result<RawConfig, ConfigError> {
        let deserializer = toml::Deserializer::parse(text)
            .map_err(|error| parse_error(path, text, &error, String::new()))?;
        serde_path_to_error::deserialize(deserializer).map_err(|error| {
            let key = error.path().to_string();
            let key = if key == "." {
                String::new()
            } else {
                format!("{key}: ")
            };
            parse_error(path, text, error.inner(), key)
        })
    }

    /// Resolves a parsed file (or none) and command-line overrides into a `Config`.
    /// Relative command-line paths are taken from `cwd`; paths in a file must be absolute.
    pub fn resolve(
        raw: RawConfig,
        overrides: Overrides,
        cwd: &Path,
    ) -> Result<Config, ConfigError> {
        let file = &raw.volume;
        let source = pick_path("source", overrides.source, file.source.clone(), cwd)?.ok_or(
            ConfigError::Missing {
                key: "volume.source",
                hint: "give SOURCE on the command line or `source` in [volume]",
            },
        )?;
        let mountpoint = pick_path(
            "mountpoint",
            overrides.mountpoint,
            file.mountpoint.clone(),
            cwd,
        )?
        .ok_or(ConfigError::Missing {
            key: "volume.mountpoint",
            hint: "give MOUNTPOINT on the command line or `mountpoint` in [volume]",
        })?;
        let id = match overrides.id.or(file.id.clone()) {
            Some(text) => VolumeId::new(&text).map_err(|reason| ConfigError::Invalid {
                key: "volume.id",
                reason,
            })?,
            None => VolumeId::for_source(&source),
        };
        let state_dir = pick_path(
            "state_dir",
            overrides.state_dir,
            file.state_dir.clone(),
            cwd,
        )?
        .unwrap_or_else(|| default_state_dir(&id));
        let allow_other = overrides.allow_other.or(file.allow_other).unwrap_or(false);

        if source == Path::new("/") {
            return Err(invalid(
                "volume.source",
                "the root directory cannot be an origin",
            ));
        }
        if mountpoint == source || mountpoint.starts_with(&source) {
            return Err(invalid(
                "volume.mountpoint",
                format!(
                    "{} is inside the origin {}; a mount there would contain itself",
                    mountpoint.display(),
                    source.display()
                ),
            ));
        }
        if state_dir.starts_with(&source) {
            return Err(invalid(
                "volume.state_dir",
                format!(
                    "{} is inside the origin {}; mirrorfs's own files must stay out of the data it serves",
                    state_dir.display(),
                    source.display()
                ),
            ));
        }
        if state_dir.starts_with(&mountpoint) {
            return Err(invalid(
                "volume.state_dir",
                format!(
                    "{} is inside the mount point {}",
                    state_dir.display(),
                    mountpoint.display()
                ),
            ));
        }
        let cache = cache::resolve(
            &raw.cache,
            [
                ("origin", &source),
                ("mount point", &mountpoint),
                ("state directory", &state_dir),
            ],
        )?;
        let replication = replication::resolve(&raw.replication)?;
        let write = resolve_write(&raw.write, cache.revalidate_after)?;
        Ok(Config {
            volume: VolumeConfig {
                id,
                source,
                mountpoint,
                state_dir,
                allow_other,
            },
            cache,
            failover: failover::resolve(&raw.failover, replication.as_ref())?,
            replication,
            verify: verify::resolve(&raw.verify)?,
            write,
            metrics_listen: metrics_listen(raw.metrics.listen.as_deref())?,
            log: LogConfig {
                segment_bytes: within(
                    "log.segment_bytes",
                    raw.log.segment_bytes.map(|size| size.0),
                    SEGMENT_BYTES_DEFAULT,
                    SEGMENT_BYTES_RANGE,
                    |bytes| units::ByteSize(bytes).to_string(),
                )?,
            },
        })
    }
}

/// `[metrics] listen`, an address and port ("127.0.0.1:9464", "[::]:9464").
pub fn metrics_listen(listen: Option<&str>) -> Result<Option<std::net::SocketAddr>, ConfigError> {
    listen
        .map(|text| {
            text.parse().map_err(|_| ConfigError::Invalid {
                key: "metrics.listen",
                reason: format!("{text:?} is not an address and port such as \"127.0.0.1:9464\""),
            })
        })
        .transpose()
}

/// The shortest `revalidate_after` that promises nothing else writes the origin, as the
/// kernel's writeback cache needs: under it, the kernel keeps a file's size and times as
/// it wrote them and takes none from the origin.
const KERNEL_WRITEBACK_REVALIDATE_MIN: Duration = Duration::from_secs(60);

fn resolve_write(
    raw: &raw::RawWrite,
    revalidate_after: Duration,
) -> Result<WriteConfig, ConfigError> {
    let origin_ours = revalidate_after >= KERNEL_WRITEBACK_REVALIDATE_MIN;
    if raw.kernel_writeback == Some(true) && !origin_ours {
        return Err(ConfigError::Invalid {
            key: "write.kernel_writeback",
            reason: format!(
                "needs cache.revalidate_after of at least {} (nothing else writes the origin)",
                units::Span(KERNEL_WRITEBACK_REVALIDATE_MIN)
            ),
        });
    }
    Ok(WriteConfig {
        kernel_writeback: raw.kernel_writeback.unwrap_or(origin_ours),
        mode: raw.mode.unwrap_or(WriteMode::WriteThrough),
        dirty_bytes_max: within(
            "write.dirty_bytes_max",
            raw.dirty_bytes_max.map(|size| size.0),
            DIRTY_BYTES_DEFAULT,
            (DIRTY_BYTES_MIN, DIRTY_BYTES_MAX),
            |bytes| units::ByteSize(bytes).to_string(),
        )?,
        flush_interval: within(
            "write.flush_interval",
            raw.flush_interval.map(|span| span.0),
            FLUSH_INTERVAL_DEFAULT,
            FLUSH_INTERVAL_RANGE,
            |time| units::Span(time).to_string(),
        )?,
    })
}

/// `given` (or `default`) if it lies in `range`, else an error naming `key` and the bounds.
fn within<T: PartialOrd + Copy>(
    key: &'static str,
    given: Option<T>,
    default: T,
    (least, most): (T, T),
    show: impl Fn(T) -> String,
) -> Result<T, ConfigError> {
    let value = given.unwrap_or(default);
    if value < least || value > most {
        return Err(invalid(
            key,
            format!(
                "{} is outside {} to {}",
                show(value),
                show(least),
                show(most)
            ),
        ));
    }
    Ok(value)
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

/// The command-line path if given (made absolute from `cwd`), else the file's (which must
/// already be absolute); either way normalized lexically.
fn pick_path(
    key: &'static str,
    command_line: Option<PathBuf>,
    file: Option<PathBuf>,
    cwd: &Path,
) -> Result<Option<PathBuf>, ConfigError> {
    let key_name = match key {
        "source" => "volume.source",
        "mountpoint" => "volume.mountpoint",
        _ => "volume.state_dir",
    };
    // The file's value is checked even when the command line overrides it: a bad file
    // is reported the first time, not on the day the override is dropped.
    let file = match file {
        None => None,
        Some(path) if path.is_absolute() => Some(normalize(&path)),
        Some(path) => {
            return Err(invalid(
                key_name,
                format!("{:?} must be an absolute path", path.display().to_string()),
            ));
        }
    };
    match command_line {
        Some(path) if path.as_os_str().is_empty() => Err(invalid(key_name, "the path is empty")),
        Some(path) => Ok(Some(normalize(&cwd.join(path)))),
        None => Ok(file),
    }
}

/// Removes `.` and resolves `..` textually (without following symlinks).
pub fn normalize(path: &Path) -> PathBuf {
    let mut normal = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                normal.pop();
            }
            other => normal.push(other),
        }
    }
    normal
}

/// `/var/lib/mirrorfs/ID` for root; `$XDG_STATE_HOME/mirrorfs/ID` (or
/// `~/.local/state/mirrorfs/ID`) for anyone else.
fn default_state_dir(id: &VolumeId) -> PathBuf {
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let base = if root {
        PathBuf::from("/var/lib")
    } else if let Some(state) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        PathBuf::from(state)
    } else if let Some(home) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Path::new(&home).join(".local/state")
    } else {
        PathBuf::from("/tmp")
    };
    base.join("mirrorfs").join(id.as_str())
}

fn parse_error(path: &Path, text: &str, error: &toml::de::Error, key: String) -> ConfigError {
    let location = error
        .span()
        .map(|span| {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!(" line {line}")
        })
        .unwrap_or_default();
    // toml's messages can span lines (with a source excerpt); keep the first line.
    let message = error
        .message()
        .lines()
        .next()
        .unwrap_or("invalid")
        .trim_end_matches('.')
        .to_string();
    ConfigError::Parse {
        path: path.to_path_buf(),
        location,
        key,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RawConfig, ConfigError> {
        Config::parse(Path::new("test.toml"), text)
    }

    fn resolve(text: &str) -> Result<Config, ConfigError> {
        Config::resolve(parse(text)?, Overrides::default(), Path::new("/cwd"))
    }

    #[test]
    fn a_full_volume_section_resolves() {
        let config = resolve(
            "[volume]\nid = \"demo\"\nsource = \"/srv/data\"\nmountpoint = \"/mnt/data\"\n\
             state_dir = \"/var/lib/mirrorfs/demo\"\nallow_other = true\n",
        )
        .unwrap();
        assert_eq!(config.volume.id.as_str(), "demo");
        assert_eq!(config.volume.source, Path::new("/srv/data"));
        assert_eq!(config.volume.mountpoint, Path::new("/mnt/data"));
        assert!(config.volume.allow_other);
    }

    #[test]
    fn unknown_keys_and_sections_are_named() {
        let message = parse("[volume]\nsorce = \"/x\"\n").unwrap_err().to_string();
        assert!(
            message.contains("line 2") && message.contains("sorce"),
            "{message}"
        );
        let message = parse("[volumes]\n").unwrap_err().to_string();
        assert!(message.contains("volumes"), "{message}");
    }

    #[test]
    fn wrong_types_name_the_key() {
        let message = parse("[volume]\nallow_other = \"yes\"\n")
            .unwrap_err()
            .to_string();
        assert!(message.contains("volume.allow_other"), "{message}");
        assert!(!message.contains('\n'), "one line: {message}");
    }

    #[test]
    fn malformed_toml_is_one_line() {
        let message = parse("[volume\nid = 1").unwrap_err().to_string();
        assert!(message.starts_with("config test.toml line 1"), "{message}");
        assert!(!message.contains('\n'), "{message}");
    }

    #[test]
    fn command_line_wins_and_relative_paths_use_cwd() {
        let raw = parse("[volume]\nsource = \"/srv/a\"\nmountpoint = \"/mnt/a\"\n").unwrap();
        let overrides = Overrides {
            source: Some("data/../b".into()),
            ..Overrides::default()
        };
        let config = Config::resolve(raw, overrides, Path::new("/cwd")).unwrap();
        assert_eq!(config.volume.source, Path::new("/cwd/b"));
        assert_eq!(config.volume.mountpoint, Path::new("/mnt/a"));
    }

    #[test]
    fn contradictions_are_rejected() {
        let cases = [
            ("source = \"relative\"\nmountpoint = \"/m\"", "absolute"),
            ("mountpoint = \"/m\"", "volume.source is required"),
            ("source = \"/s\"", "volume.mountpoint is required"),
            (
                "source = \"/s\"\nmountpoint = \"/s/m\"",
                "inside the origin",
            ),
            ("source = \"/s\"\nmountpoint = \"/s\"", "inside the origin"),
            (
                "source = \"/s\"\nmountpoint = \"/m\"\nstate_dir = \"/s/.state\"",
                "inside the origin",
            ),
            (
                "source = \"/s\"\nmountpoint = \"/m\"\nstate_dir = \"/m/state\"",
                "inside the mount point",
            ),
            (
                "source = \"/s\"\nmountpoint = \"/m\"\nid = \"a/b\"",
                "volume.id",
            ),
            (
                "source = \"/s\"\nmountpoint = \"/m\"\nid = \".hidden\"",
                "volume.id",
            ),
            ("source = \"/\"\nmountpoint = \"/m\"", "root directory"),
        ];
        for (body, expected) in cases {
            let message = resolve(&format!("[volume]\n{body}\n"))
                .unwrap_err()
                .to_string();
            assert!(message.contains(expected), "{body:?} gave {message:?}");
        }
    }

    #[test]
    fn revalidate_after_defaults_to_one_second_and_rejects_nonsense() {
        let base = "[volume]\nsource = \"/s\"\nmountpoint = \"/m\"\n";
        let config = resolve(base).unwrap();
        assert_eq!(config.cache.revalidate_after, Duration::from_secs(1));
        let config = resolve(&format!("{base}[cache]\nrevalidate_after = \"1d\"\n")).unwrap();
        assert_eq!(config.cache.revalidate_after, Duration::from_secs(86_400));
        let config = resolve(&format!("{base}[cache]\nrevalidate_after = \"0s\"\n")).unwrap();
        assert_eq!(config.cache.revalidate_after, Duration::ZERO);
        let message = resolve(&format!("{base}[cache]\nrevalidate_after = \"400d\"\n"))
            .unwrap_err()
            .to_string();
        assert!(message.contains("cache.revalidate_after"), "{message}");
        let message = resolve(&format!("{base}[cache]\nrevalidate_after = 5\n"))
            .unwrap_err()
            .to_string();
        assert!(message.contains("cache.revalidate_after"), "{message}");
    }

    #[test]
    fn write_and_log_sections_default_and_reject_nonsense() {
        let base = "[volume]\nsource = \"/s\"\nmountpoint = \"/m\"\n";
        let config = resolve(base).unwrap();
        assert_eq!(config.write.mode, WriteMode::WriteThrough);
        assert_eq!(config.write.dirty_bytes_max, 1 << 30);
        assert_eq!(config.write.flush_interval, Duration::from_secs(2));
        assert_eq!(config.log.segment_bytes, 64 << 20);
        let config = resolve(&format!(
            "{base}[write]\nmode = \"write-behind\"\ndirty_bytes_max = \"64MiB\"\n\
             flush_interval = \"500ms\"\n[log]\nsegment_bytes = \"1MiB\"\n"
        ))
        .unwrap();
        assert_eq!(config.write.mode, WriteMode::WriteBehind);
        assert_eq!(config.write.dirty_bytes_max, 64 << 20);
        assert_eq!(config.write.flush_interval, Duration::from_millis(500));
        assert_eq!(config.log.segment_bytes, 1 << 20);
        for (section, bad, key) in [
            ("write", "mode = \"write-sometimes\"", "write.mode"),
            (
                "write",
                "dirty_bytes_max = \"1KiB\"",
                "write.dirty_bytes_max",
            ),
            ("write", "flush_interval = \"0s\"", "write.flush_interval"),
            ("log", "segment_bytes = \"5GiB\"", "log.segment_bytes"),
            ("log", "segment_size = \"5MiB\"", "log"),
        ] {
            let message = resolve(&format!("{base}[{section}]\n{bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(message.contains(key), "{bad}: {message}");
            assert_eq!(message.lines().count(), 1, "{message}");
        }
    }

    #[test]
    fn kernel_writeback_follows_the_promise_that_nothing_else_writes_the_origin() {
        let base = "[volume]\nsource = \"/s\"\nmountpoint = \"/m\"\nstate_dir = \"/st\"\n";
        let writeback =
            |extra: &str| resolve(&format!("{base}{extra}")).map(|c| c.write.kernel_writeback);
        assert!(!writeback("").unwrap());
        assert!(writeback("[cache]\nrevalidate_after = \"1m\"\n").unwrap());
        assert!(writeback("[cache]\nrevalidate_after = \"1d\"\n").unwrap());
        let off = "[cache]\nrevalidate_after = \"1d\"\n[write]\nkernel_writeback = false\n";
        assert!(!writeback(off).unwrap());
        let refused = "[cache]\nrevalidate_after = \"59s\"\n[write]\nkernel_writeback = true\n";
        let message = writeback(refused).unwrap_err().to_string();
        assert!(message.starts_with("write.kernel_writeback: "), "{message}");
        assert!(message.contains("1m"), "{message}");
    }

    #[test]
    fn cache_section_defaults_and_rejects_nonsense() {
        let base = "[volume]\nsource = \"/s\"\nmountpoint = \"/m\"\nstate_dir = \"/st\"\n";
        let cache = resolve(base).unwrap().cache;
        assert_eq!(cache.memory_bytes, 256 << 20);
        assert!(cache.disk.is_none());
        assert_eq!(cache.block_size, 1 << 20);
        assert_eq!(
            (cache.readahead_min, cache.readahead_max),
            (128 << 10, 32 << 20)
        );
        assert_eq!(cache.admission, Admission::ScanResistant);
        assert_eq!(cache.passthrough, Passthrough::Off);
        assert!(!cache.refresh_ahead);
        let cache = resolve(&format!(
            "{base}[cache]\nmemory_bytes = \"16MiB\"\ndisk_dir = \"/fast/c\"\n\
             disk_bytes = \"1GiB\"\nblock_size = \"256KiB\"\nadmission = \"always\"\n\
             refresh_ahead = true\npassthrough = \"auto\"\n"
        ))
        .unwrap()
        .cache;
        let disk = cache.disk.unwrap();
        assert_eq!(
            (disk.dir.as_path(), disk.bytes),
            (Path::new("/fast/c"), 1 << 30)
        );
        assert_eq!(cache.block_size, 256 << 10);
        assert_eq!(
            cache.readahead_max,
            4 << 20,
            "a quarter of a small memory tier"
        );
        assert_eq!(cache.admission, Admission::Always);
        assert!(cache.refresh_ahead && cache.passthrough == Passthrough::Auto);
        let off = resolve(&format!("{base}[cache]\nmemory_bytes = 0\n")).unwrap();
        assert!(!off.cache.enabled());
        for (bad, key) in [
            ("memory_bytes = \"1MiB\"", "cache.memory_bytes"),
            ("block_size = \"100KiB\"", "power of two"),
            ("block_size = \"1GiB\"", "cache.block_size"),
            (
                "readahead_min = \"8MiB\"\nreadahead_max = \"1MiB\"",
                "cache.readahead_min",
            ),
            (
                "memory_bytes = \"64MiB\"\nreadahead_max = \"32MiB\"",
                "quarter",
            ),
            ("disk_dir = \"rel/dir\"", "absolute"),
            ("disk_dir = \"/s/cache\"", "origin"),
            ("disk_dir = \"/st\"", "state directory"),
            ("disk_dir = \"/\"", "cache.disk_dir"),
            ("disk_bytes = \"1GiB\"", "disk_dir"),
            ("memory_bytes = 0\ndisk_dir = \"/c\"", "memory tier"),
            (
                "disk_dir = \"/c\"\ndisk_bytes = \"1MiB\"",
                "cache.disk_bytes",
            ),
            ("admission = \"lfu\"", "cache.admission"),
            ("passthrough = \"on\"", "cache.passthrough"),
        ] {
            let message = resolve(&format!("{base}[cache]\n{bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(message.contains(key), "{bad}: {message}");
            assert_eq!(message.lines().count(), 1, "{message}");
        }
    }

    #[test]
    fn failover_section_defaults_derives_its_timings_and_rejects_nonsense() {
        let base = "[volume]\nsource = \"/s\"\nmountpoint = \"/m\"\n";
        let replication = "[replication]\nkey_file = \"/k\"\n\
                           [[replication.replicas]]\nname = \"r1\"\naddress = \"h:1\"\n";
        let manual = resolve(base).unwrap().failover;
        assert_eq!(manual.mode, FailoverMode::Manual);
        assert!(!manual.is_auto() && !manual.unclean);
        assert_eq!(manual.lease, Duration::from_secs(5));
        // The primary counts its lease shrunk by the clock bound twice, and renews four
        // times within it.
        assert_eq!(
            manual.lease_valid_for(),
            Duration::from_secs(5).div_f64(1.21)
        );
        assert_eq!(manual.renew_every(), manual.lease_valid_for() / 4);
        // Two machines: auto asked for, but no majority survives losing one; it says so.
        let two = resolve(&format!("{base}{replication}[failover]\nmode = \"auto\"\n"))
            .unwrap()
            .failover;
        assert_eq!((two.voters, two.majority()), (2, 2));
        assert!(!two.is_auto());
        assert!(two.auto_off.as_deref().unwrap().contains("add a witness"));
        // Two machines and a witness: three voters, a majority of two.
        let three = resolve(&format!(
            "{base}{replication}[failover]\nmode = \"auto\"\nlease = \"10s\"\n\
             clock_rate_bound = 1.5\nunclean = true\n\
             [[failover.witnesses]]\nname = \"w\"\naddress = \"witness.example:7080\"\n"
        ))
        .unwrap()
        .failover;
        assert!(three.is_auto() && three.unclean);
        assert_eq!((three.voters, three.majority()), (3, 2));
        assert_eq!(three.witnesses[0].name, "w");
        assert_eq!(
            three.lease_valid_for(),
            Duration::from_secs(10).div_f64(2.25)
        );
        for (body, key) in [
            ("mode = \"sometimes\"\n", "failover.mode"),
            ("lease = \"100ms\"\n", "failover.lease"),
            ("clock_rate_bound = 1.0\n", "failover.clock_rate_bound"),
            ("clock_rate_bound = 3\n", "failover.clock_rate_bound"),
            ("clock_rate_bound = nan\n", "failover.clock_rate_bound"),
            (
                "[[failover.witnesses]]\nname = \"r1\"\naddress = \"h:2\"\n",
                "listed twice",
            ),
            (
                "[[failover.witnesses]]\nname = \"w\"\naddress = \"nowhere\"\n",
                "failover.witnesses.address",
            ),
        ] {
            let message = resolve(&format!("{base}{replication}[failover]\n{body}"))
                .unwrap_err()
                .to_string();
            assert!(message.contains(key), "{body}: {message}");
            assert_eq!(message.lines().count(), 1, "{message}");
        }
        let alone = resolve(&format!("{base}[failover]\nmode = \"auto\"\n"))
            .unwrap_err()
            .to_string();
        assert!(alone.contains("needs replicas"), "{alone}");
        // Auto mode refuses settings under which a majority could lack an acknowledged
        // write: acks = "none", or two replicas and two witnesses with min_insync = 1 (r1,
        // w1 and w2 make a majority of five without r2).
        let witnesses = "[[failover.witnesses]]\nname = \"w1\"\naddress = \"h:3\"\n\
                         [[failover.witnesses]]\nname = \"w2\"\naddress = \"h:4\"\n";
        let two_replicas = "[[replication.replicas]]\nname = \"r1\"\naddress = \"h:1\"\n\
                            [[replication.replicas]]\nname = \"r2\"\naddress = \"h:2\"\n";
        for (settings, auto, key) in [
            ("acks = \"none\"\n", "", "replication.acks"),
            ("min_insync = 1\n", witnesses, "use at least 2"),
            ("", "address = \"nowhere\"\n", "failover.address"),
        ] {
            let message = resolve(&format!(
                "{base}[replication]\nkey_file = \"/k\"\n{settings}{two_replicas}\
                 [failover]\nmode = \"auto\"\n{auto}"
            ))
            .unwrap_err()
            .to_string();
            assert!(message.contains(key), "{settings}{auto}: {message}");
            assert_eq!(message.lines().count(), 1, "{message}");
        }
        let safe = resolve(&format!(
            "{base}[replication]\nkey_file = \"/k\"\nmin_insync = 2\n{two_replicas}\
             [failover]\nmode = \"auto\"\naddress = \"10.0.0.1:7071\"\n{witnesses}"
        ))
        .unwrap()
        .failover;
        assert_eq!(
            (safe.voters, safe.address.as_deref()),
            (5, Some("10.0.0.1:7071"))
        );
    }

    #[test]
    fn replication_section_defaults_and_rejects_nonsense() {
        let base = "[volume]\nsource = \"/s\"\nmountpoint = \"/m\"\n";
        assert!(resolve(base).unwrap().replication.is_none());
        let replicas = "[[replication.replicas]]\nname = \"r1\"\naddress = \"127.0.0.1:7071\"\n\
                        [[replication.replicas]]\nname = \"r2\"\naddress = \"backup.example:7071\"\n";
        let config = resolve(&format!(
            "{base}[replication]\nkey_file = \"/etc/k\"\n{replicas}"
        ))
        .unwrap()
        .replication
        .unwrap();
        assert_eq!(config.acks, Acks::All);
        assert_eq!(config.min_insync, 1);
        assert_eq!(config.on_insufficient, OnInsufficient::Fail);
        assert_eq!(config.lag_max, Duration::from_secs(10));
        assert_eq!(config.ack_timeout, Duration::from_secs(30));
        assert_eq!(config.retain_bytes_max, 20 << 30);
        assert_eq!(config.replicas.len(), 2);
        assert!(!config.plaintext);
        let config = resolve(&format!(
            "{base}[replication]\nacks = \"quorum\"\nmin_insync = 2\nlag_max = \"2s\"\n\
             on_insufficient = \"wait\"\nack_timeout = \"500ms\"\nretain_bytes_max = \"1GiB\"\n\
             key_file = \"/etc/k\"\nplaintext = true\n{replicas}"
        ))
        .unwrap()
        .replication
        .unwrap();
        assert_eq!((config.acks, config.min_insync), (Acks::Quorum, 2));
        assert_eq!(config.on_promote, None);
        assert_eq!(config.on_insufficient, OnInsufficient::Wait);
        assert!(config.plaintext);
        for (body, key) in [
            (
                "acks = \"all\"\nkey_file = \"/k\"\n",
                "replication.replicas",
            ),
            (replicas, "replication.key_file"),
            (&format!("key_file = \"k\"\n{replicas}"), "absolute"),
            (
                &format!("key_file = \"/k\"\nmin_insync = 3\n{replicas}"),
                "replication.min_insync",
            ),
            (
                &format!("key_file = \"/k\"\nacks = \"some\"\n{replicas}"),
                "replication.acks",
            ),
            (
                &format!("key_file = \"/k\"\nlag_max = \"0s\"\n{replicas}"),
                "replication.lag_max",
            ),
            (
                "key_file = \"/k\"\n[[replication.replicas]]\nname = \"r\"\naddress = \"nowhere\"\n",
                "replication.replicas.address",
            ),
            (
                "key_file = \"/k\"\n[[replication.replicas]]\nname = \"r\"\naddress = \"h:1\"\n\
                 [[replication.replicas]]\nname = \"r\"\naddress = \"h:2\"\n",
                "twice",
            ),
            (
                &format!("key_file = \"/k\"\non_promote = \" \"\n{replicas}"),
                "replication.on_promote",
            ),
            (
                &format!("key_file = \"/k\"\non_fenced = \"a\\nb\"\n{replicas}"),
                "replication.on_fenced",
            ),
        ] {
            let message = resolve(&format!("{base}[replication]\n{body}"))
                .unwrap_err()
                .to_string();
            assert!(message.contains(key), "{body}: {message}");
            assert_eq!(message.lines().count(), 1, "{message}");
        }
    }

    #[test]
    fn default_id_is_a_safe_name_unique_per_path() {
        let a = VolumeId::for_source(Path::new("/srv/my data"));
        let b = VolumeId::for_source(Path::new("/other/my data"));
        assert!(a.as_str().starts_with("my_data-"));
        assert_ne!(a, b);
        assert!(VolumeId::new(a.as_str()).is_ok());
    }
}
