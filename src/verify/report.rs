//! What a verify run found and did: every finding with its place, its hashes, which copy
//! was trusted and what was done, the figures of the run, and the fsck-style exit code.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// Exit code bits, as fsck's.
pub mod exit {
    /// Nothing differs.
    pub const CLEAN: i32 = 0;
    /// Differences were found and all repaired.
    pub const REPAIRED: i32 = 1;
    /// Differences are left unrepaired.
    pub const UNREPAIRED: i32 = 4;
    /// Something could not be checked (a replica unreachable, an I/O error).
    pub const OPERATIONAL: i32 = 8;
    /// The command was given wrongly.
    pub const USAGE: i32 = 16;
    /// A replica could not be compared as of the primary's offset: it is behind, stuck on
    /// a record it cannot apply, or follows another history of the volume. Not fsck's;
    /// replication (or a new snapshot) brings such a copy back, not a repair.
    pub const BEHIND: i32 = 64;
}

/// Kinds of finding about where a copy stands rather than what it holds.
pub mod position {
    /// The copy did not reach the primary's offset in time.
    pub const BEHIND: &str = "behind";
    /// The copy holds a record it cannot apply.
    pub const STUCK: &str = "stuck";
    /// The copy follows another history of the volume.
    pub const DIVERGED: &str = "diverged";
}

/// The copy a finding is about.
pub const PRIMARY: &str = "primary";

/// One difference, or one piece of rot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// What kind: an aspect of the quick check ("missing", "mode", ...), "content" (the
    /// content differs from the trusted copy's), "rot" (content no longer matches the
    /// copy's own stored hashes, with no change to explain it) or "unrecoverable".
    pub kind: String,
    /// The path, from the volume root ("/a/b").
    pub path: String,
    /// Which copy is wrong: "primary" or a replica's name.
    pub copy: String,
    /// The byte range, for content.
    pub range: Option<(u64, u64)>,
    /// What the trusted copy has (a value, or a hash in hex).
    pub expected: String,
    /// What the wrong copy has.
    pub actual: String,
    /// Which copy was trusted, and why.
    pub trusted: String,
    /// What was done about it.
    pub action: Action,
}

/// What was done about a finding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "done", content = "detail")]
pub enum Action {
    /// Reported only (no --repair).
    Reported,
    /// Repaired, and a re-check found it gone.
    Repaired,
    /// No copy can be trusted: nothing was overwritten.
    Unrecoverable,
    /// The repair failed, or the re-check still found it.
    RepairFailed(String),
}

/// A replica as the run saw it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ReplicaReport {
    /// Its name.
    pub name: String,
    /// Whether it was checked.
    pub checked: bool,
    /// Why not, or what went wrong.
    pub error: Option<String>,
    /// Its applied offset when its walk ended.
    pub applied: u64,
}

/// The figures of a run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Figures {
    /// Entries walked on the primary.
    pub entries: u64,
    /// Regular files whose content was read.
    pub files_hashed: u64,
    /// Bytes of content read on the primary.
    pub bytes_hashed: u64,
    /// Regular files whose stored roots could not be compared (no current stored hash on
    /// a side); a content check reads them.
    pub unhashed: u64,
    /// Paths the primary kept changing through the run, so no state of theirs could be
    /// compared (named in [`Report::busy_paths`]).
    pub busy: u64,
    /// Regular files a partial content run left for later.
    pub files_left: u64,
    /// Seconds the run took.
    pub seconds: f64,
}

/// A whole run's report.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    /// "quick" or "content".
    pub mode: String,
    /// The subtree checked ("/" for the whole volume).
    pub path: String,
    /// The primary's log end when the run began: the state compared.
    pub as_of: u64,
    /// The replicas.
    pub replicas: Vec<ReplicaReport>,
    /// What was found.
    pub findings: Vec<Finding>,
    /// The figures.
    pub figures: Figures,
    /// The paths counted in [`Figures::busy`].
    #[serde(default)]
    pub busy_paths: Vec<String>,
    /// Errors that kept part of the volume from being checked.
    pub errors: Vec<String>,
    /// The exit code the run ends with.
    pub exit_code: i32,
}

impl Finding {
    /// Whether this is about where the copy stands (behind, stuck, another history)
    /// rather than a difference in what it holds.
    pub fn is_position(&self) -> bool {
        [position::BEHIND, position::STUCK, position::DIVERGED].contains(&self.kind.as_str())
    }

    /// What the finding is about, to know it again in a later run.
    pub fn about(&self) -> About<'_> {
        About {
            copy: &self.copy,
            path: &self.path,
            kind: &self.kind,
            range: self.range,
        }
    }
}

/// What a finding is about: the same in two runs when they found the same thing wrong,
/// whatever values they saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct About<'a> {
    /// The wrong copy.
    pub copy: &'a str,
    /// The path.
    pub path: &'a str,
    /// What kind of difference.
    pub kind: &'a str,
    /// The byte range, for content.
    pub range: Option<(u64, u64)>,
}

impl Report {
    /// Sets the exit code from what the report holds.
    pub fn settle(&mut self) {
        let mut code = exit::CLEAN;
        let (placed, held): (Vec<&Finding>, Vec<&Finding>) =
            self.findings.iter().partition(|f| f.is_position());
        if !placed.is_empty() {
            code |= exit::BEHIND;
        }
        if held.iter().any(|f| f.action == Action::Repaired) {
            code |= exit::REPAIRED;
        }
        if held.iter().any(|f| f.action != Action::Repaired) {
            code |= exit::UNREPAIRED;
        }
        if !self.errors.is_empty() || self.replicas.iter().any(|r| r.error.is_some()) {
            code |= exit::OPERATIONAL;
        }
        self.exit_code = code;
    }

    /// The report for a person: one line per finding, then a summary.
    pub fn human(&self) -> String {
        let mut text = String::new();
        for finding in &self.findings {
            if finding.is_position() {
                let _ = writeln!(
                    text,
                    "{}: {}: {}; the primary's log is at {} [not compared as of it; {}]",
                    finding.copy, finding.kind, finding.actual, finding.expected, finding.trusted,
                );
                continue;
            }
            let range = finding
                .range
                .map(|(start, end)| format!(" bytes {start}..{end}"))
                .unwrap_or_default();
            let _ = writeln!(
                text,
                "{}: {} {}{range}: {} has {}, expected {} (trusted: {}) [{}]",
                finding.copy,
                finding.kind,
                finding.path,
                finding.copy,
                finding.actual,
                finding.expected,
                finding.trusted,
                match &finding.action {
                    Action::Reported => "not repaired".to_string(),
                    Action::Repaired => "repaired".to_string(),
                    Action::Unrecoverable => "unrecoverable: nothing overwritten".to_string(),
                    Action::RepairFailed(why) => format!("repair failed: {why}"),
                }
            );
        }
        for error in &self.errors {
            let _ = writeln!(text, "error: {error}");
        }
        const BUSY_SHOWN: usize = 20;
        for path in self.busy_paths.iter().take(BUSY_SHOWN) {
            let _ = writeln!(
                text,
                "busy: {path} (the primary changed it throughout the run)"
            );
        }
        if self.busy_paths.len() > BUSY_SHOWN {
            let _ = writeln!(
                text,
                "busy: {} more (--json lists them all)",
                self.busy_paths.len() - BUSY_SHOWN
            );
        }
        for replica in &self.replicas {
            if let Some(error) = &replica.error {
                let _ = writeln!(text, "replica {}: not checked: {error}", replica.name);
            }
        }
        let figures = &self.figures;
        let checked: Vec<&str> = self
            .replicas
            .iter()
            .filter(|replica| replica.checked)
            .map(|replica| replica.name.as_str())
            .collect();
        let against = match checked.is_empty() {
            true => "the primary alone".to_string(),
            false => format!("primary against {}", checked.join(", ")),
        };
        let _ = write!(
            text,
            "{} check of {} ({against}) as of offset {}: {} entries",
            self.mode, self.path, self.as_of, figures.entries
        );
        if self.mode == "content" {
            let _ = write!(
                text,
                ", {} file(s) ({}) read",
                figures.files_hashed,
                crate::config::human(figures.bytes_hashed)
            );
        }
        let _ = write!(text, ", {} finding(s)", self.findings.len());
        if figures.unhashed > 0 {
            let _ = write!(
                text,
                ", {} file(s) without stored hashes to compare (a content check reads them)",
                figures.unhashed
            );
        }
        if figures.busy > 0 {
            let _ = write!(
                text,
                ", {} path(s) the primary changed throughout (not compared)",
                figures.busy
            );
        }
        if figures.files_left > 0 {
            let _ = write!(
                text,
                ", {} file(s) left for the next run",
                figures.files_left
            );
        }
        let _ = writeln!(text, ", {:.1} s", figures.seconds);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(action: Action) -> Finding {
        Finding {
            kind: "mode".to_string(),
            path: "/f".to_string(),
            copy: "r1".to_string(),
            range: None,
            expected: "644".to_string(),
            actual: "600".to_string(),
            trusted: PRIMARY.to_string(),
            action,
        }
    }

    #[test]
    fn exit_codes_add_up_as_fsck_does() {
        let mut report = Report::default();
        report.settle();
        assert_eq!(report.exit_code, exit::CLEAN);
        report.findings.push(finding(Action::Repaired));
        report.settle();
        assert_eq!(report.exit_code, exit::REPAIRED);
        report.findings.push(finding(Action::Unrecoverable));
        report.settle();
        assert_eq!(report.exit_code, exit::REPAIRED | exit::UNREPAIRED);
        report.replicas.push(ReplicaReport {
            name: "r2".to_string(),
            error: Some("connection refused".to_string()),
            ..ReplicaReport::default()
        });
        report.settle();
        assert_eq!(report.exit_code, 1 | 4 | 8);
        assert!(
            report
                .human()
                .contains("r1: mode /f: r1 has 600, expected 644")
        );
    }
}
