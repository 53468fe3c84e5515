//! The TOML schema exactly as written in a mount config. Every field is optional here;
//! `Config::resolve` fills defaults and rejects contradictions. Unknown keys are errors.

use std::path::PathBuf;

use serde::Deserialize;

use super::units::Span;

/// A whole mount config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `[volume]`: what is mounted where.
    #[serde(default)]
    pub volume: RawVolume,
    /// `[cache]`: what may be cached, and for how long.
    #[serde(default)]
    pub cache: RawCache,
}

/// The `[cache]` section (the read cache's tiers arrive with issue 4).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    /// How stale a change made directly in the origin (not through the mount) may be seen.
    pub revalidate_after: Option<Span>,
}

/// The `[volume]` section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVolume {
    /// The volume's name; later, its namespace on replica nodes.
    pub id: Option<String>,
    /// The origin (backing directory).
    pub source: Option<PathBuf>,
    /// Where the volume is mounted.
    pub mountpoint: Option<PathBuf>,
    /// mirrorfs's own files for this volume; never inside `source`.
    pub state_dir: Option<PathBuf>,
    /// Let users other than the one who mounted use the mount (permissions still apply).
    pub allow_other: Option<bool>,
}
