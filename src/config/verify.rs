//! The `[verify]` section: whether stored hashes are kept, and the checks the mount daemon
//! runs on its own schedule.

use std::time::Duration;

use serde::Deserialize;

use super::units::{ByteSize, Span};
use super::{ConfigError, invalid, within};

/// `[verify]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVerify {
    /// Keep per-file content hashes in state_dir, current as changes are made.
    pub stored_hashes: Option<bool>,
    /// Run a quick (metadata) check this often.
    pub quick_every: Option<Span>,
    /// Read all content once per this period, in partial runs spread over it.
    pub content_every: Option<Span>,
    /// A scheduled content check reads at most this many bytes per second.
    pub content_rate_bytes_max: Option<ByteSize>,
}

/// The validated `[verify]` section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerifyConfig {
    /// See [`RawVerify::stored_hashes`].
    pub stored_hashes: bool,
    /// See [`RawVerify::quick_every`]; `None`, never on a schedule.
    pub quick_every: Option<Duration>,
    /// See [`RawVerify::content_every`]; `None`, never on a schedule.
    pub content_every: Option<Duration>,
    /// See [`RawVerify::content_rate_bytes_max`].
    pub content_rate_bytes_max: u64,
}

impl Default for VerifyConfig {
    fn default() -> VerifyConfig {
        VerifyConfig {
            stored_hashes: true,
            quick_every: None,
            content_every: None,
            content_rate_bytes_max: RATE_DEFAULT,
        }
    }
}

const RATE_DEFAULT: u64 = 200 << 20;
const QUICK_RANGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(366 * 86_400));
const CONTENT_RANGE: (Duration, Duration) =
    (Duration::from_secs(60), Duration::from_secs(366 * 86_400));

/// Resolves `[verify]`.
pub(super) fn resolve(raw: &RawVerify) -> Result<VerifyConfig, ConfigError> {
    let stored_hashes = raw.stored_hashes.unwrap_or(true);
    let show_span = |span: Duration| Span(span).to_string();
    let span = |key, given: Option<Span>, range| match given {
        None => Ok(None),
        Some(span) => within(key, Some(span.0), span.0, range, show_span).map(Some),
    };
    let quick_every = span("verify.quick_every", raw.quick_every, QUICK_RANGE)?;
    let content_every = span("verify.content_every", raw.content_every, CONTENT_RANGE)?;
    if !stored_hashes && quick_every.is_some() {
        return Err(invalid(
            "verify.quick_every",
            "a quick check compares stored hashes; it needs stored_hashes = true",
        ));
    }
    Ok(VerifyConfig {
        stored_hashes,
        quick_every,
        content_every,
        content_rate_bytes_max: within(
            "verify.content_rate_bytes_max",
            raw.content_rate_bytes_max.map(|size| size.0),
            RATE_DEFAULT,
            (1 << 20, 1 << 40),
            |bytes| ByteSize(bytes).to_string(),
        )?,
    })
}
