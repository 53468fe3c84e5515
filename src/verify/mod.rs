//! `mirrorfs verify`: checking that the primary and its replicas hold the same volume, and
//! that neither has rotted; and repairing from the copy to trust.
//!
//! - [`run`]: the quick and content checks as of one log offset, and the choice of the copy
//!   to trust;
//! - [`compare`]: two copies' entries merged into their differences (pure logic);
//! - [`window`]: which differences a change still travelling may explain;
//! - [`remote`]: the primary's end of a verify session with a replica node;
//! - [`repair`]: what was found turned into records (and rot written back);
//! - [`report`]: findings, figures and the fsck-style exit code.

pub mod compare;
pub mod remote;
pub mod repair;
pub mod report;
pub mod run;
pub mod window;

use std::collections::HashSet;

use crate::vfs::Volume;

use report::{Action, Report};
use run::{Checked, Fix, Options, Progress, Subject};

/// Checks `subject` as `options` say and, with `--repair`, repairs through `volume` and
/// checks again what was repaired.
pub fn verify(
    subject: &Subject<'_>,
    volume: &Volume,
    options: &Options,
    progress: &mut dyn FnMut(&Progress),
) -> Report {
    let Checked {
        mut report,
        fixes,
        mut replicas,
    } = run::check(subject, options, progress);
    let to_repair: Vec<usize> = (0..fixes.len())
        .filter(|&at| report.findings[at].action == Action::Reported)
        .filter(|&at| !matches!(fixes[at], Fix::Nothing))
        .collect();
    if !options.repair || to_repair.is_empty() {
        return report;
    }
    progress(&Progress {
        phase: "repair".to_string(),
        ..Progress::default()
    });
    let failures = match volume.repairing() {
        Ok(repairing) => {
            let failures = repair::repair(&fixes, &mut replicas, &repairing);
            if let Err(error) = repairing.finish() {
                report.errors.push(format!("finishing repairs: {error}"));
            }
            failures
        }
        Err(error) => vec![Some(error.to_string()); fixes.len()],
    };
    drop(replicas);
    let files: HashSet<Vec<u8>> = fixes
        .iter()
        .filter_map(|fix| match fix {
            Fix::Content { path, .. } | Fix::Rot { path, .. } => Some(path.as_bytes().to_vec()),
            Fix::Metadata { path, .. } => Some(path.as_bytes().to_vec()),
            Fix::Nothing => None,
        })
        .collect();
    let again = run::recheck(subject, options, &files, progress).report;
    for at in to_repair {
        let finding = &mut report.findings[at];
        finding.action = match &failures[at] {
            Some(why) => Action::RepairFailed(why.clone()),
            None if again.findings.iter().any(|later| {
                later.copy == finding.copy
                    && later.path == finding.path
                    && later.kind == finding.kind
                    && later.range == finding.range
            }) =>
            {
                Action::RepairFailed("still differs after the repair".to_string())
            }
            None => Action::Repaired,
        };
    }
    report.errors.extend(again.errors);
    report.figures.seconds += again.figures.seconds;
    report.settle();
    report
}
