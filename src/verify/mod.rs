//! `mirrorfs verify`: checking that the primary and its replicas hold the same volume, and
//! that neither has rotted; and repairing from the copy to trust.
//!
//! - [`run`]: the quick and content checks as of one log offset, and the choice of the copy
//!   to trust;
//! - [`window`]: which differences a change still travelling may explain;
//! - [`remote`]: the primary's end of a verify session with a replica node;
//! - [`repair`]: what was found turned into records (and rot written back);
//! - [`report`]: findings, figures and the fsck-style exit code.

mod remote;
mod repair;
mod report;
mod run;
mod window;

use std::collections::HashSet;

use crate::vfs::Volume;

use report::Action;
pub use report::{Report, exit};
use run::{Checked, Fix, Found};
pub use run::{Options, Progress, Subject};

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
        mut found,
        mut replicas,
    } = run::check(subject, options, progress);
    // Still `Reported` after the repairs: repaired, unless the recheck finds it again.
    let repairable =
        |item: &Found| item.finding.action == Action::Reported && !matches!(item.fix, Fix::Nothing);
    if options.repair && found.iter().any(repairable) {
        progress(&Progress {
            phase: "repair".to_string(),
            ..Progress::default()
        });
        match volume.repairing() {
            Ok(repairing) => {
                repair::repair(&mut found, &mut replicas, &repairing);
                if let Err(error) = repairing.finish() {
                    report.errors.push(format!("finishing repairs: {error}"));
                }
            }
            Err(error) => {
                for item in found.iter_mut().filter(|item| repairable(item)) {
                    item.finding.action = Action::RepairFailed(error.to_string());
                }
            }
        }
        drop(replicas);
        let files: HashSet<Vec<u8>> = found
            .iter()
            .filter_map(|item| item.fix.path())
            .map(|path| path.as_bytes().to_vec())
            .collect();
        let again = run::recheck(subject, options, &files, progress);
        let still: HashSet<_> = again
            .found
            .iter()
            .map(|item| item.finding.about())
            .collect();
        for item in found.iter_mut().filter(|item| repairable(item)) {
            item.finding.action = match still.contains(&item.finding.about()) {
                true => Action::RepairFailed("still differs after the repair".to_string()),
                false => Action::Repaired,
            };
        }
        report.errors.extend(again.report.errors);
        report.figures.seconds += again.report.figures.seconds;
    }
    report.findings = found.into_iter().map(|item| item.finding).collect();
    report.settle();
    report
}
