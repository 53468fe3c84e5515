//! The TOML schema exactly as written in a mount config. Every field is optional here;
//! `Config::resolve` fills defaults and rejects contradictions. Unknown keys are errors.

use std::path::PathBuf;

use serde::Deserialize;

/// A whole mount config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `[volume]`: what is mounted where.
    #[serde(default)]
    pub volume: RawVolume,
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
