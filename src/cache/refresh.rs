//! Refresh-ahead (`[cache] refresh_ahead = true`): for origins that other programs change,
//! files being read are checked against the origin in the background a little before
//! `revalidate_after` runs out, and when one changed, the blocks that were cached of it are
//! fetched again at once. Readers then neither wait for the check nor miss afterwards.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use super::files::Revalidated;
use super::prefetch::Job;
use super::stats::bump;
use super::{Cache, CachedFile, clip, lock};

/// A file read within this many `revalidate_after` periods counts as hot.
const HOT_PERIODS: u32 = 4;

/// Bounds of how often the refresher looks.
const PERIOD_RANGE: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(60));

impl Cache {
    /// The refresh-ahead thread's life: every quarter of `revalidate_after`, the hot files
    /// whose check falls due within that quarter are checked.
    pub(super) fn refresher(&self) {
        let period = (self.revalidate_after / 4).clamp(PERIOD_RANGE.0, PERIOD_RANGE.1);
        loop {
            let stopped = lock(&self.refresh_stop.0);
            let (stopped, _) = self
                .refresh_stop
                .1
                .wait_timeout_while(stopped, period, |stopped| !*stopped)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if *stopped {
                return;
            }
            drop(stopped);
            for file in self.due_for_refresh(period) {
                self.refresh(&file);
            }
        }
    }

    /// Open files read lately whose check falls due within `period`. Files changed
    /// through the mount are left to their readers, who know whether writes are pending.
    fn due_for_refresh(&self, period: Duration) -> Vec<Arc<CachedFile>> {
        let hot = self.revalidate_after * HOT_PERIODS;
        let due = self.revalidate_after.saturating_sub(period);
        let state = self.lock();
        state
            .files
            .values()
            .filter(|file| {
                !file.changed_locally && file.read.elapsed() <= hot && file.checked.elapsed() >= due
            })
            .filter_map(|file| file.open.upgrade())
            .collect()
    }

    /// Checks `file` against the origin; if another program changed it, fetches the
    /// blocks that were cached of it again.
    fn refresh(&self, file: &Arc<CachedFile>) {
        let Ok(stat) = file.origin.stat() else {
            return;
        };
        let mut state = self.lock();
        let Some(known) = state.files.get(&file.key) else {
            return;
        };
        if known.changed_locally {
            return;
        }
        let epoch = known.epoch;
        let hot: Vec<u64> = state
            .memory
            .keys()
            .filter(|key| key.file == file.key && key.epoch == epoch)
            .map(|key| key.index)
            .collect();
        bump(&self.counters.refreshes, 1);
        if self.revalidate(&mut state, file.key, stat.stamp(), false) != Revalidated::Stale {
            return;
        }
        let known = &state.files[&file.key];
        let ranges: Vec<Range<u64>> = hot
            .iter()
            .map(|index| index * self.block_size..(index + 1) * self.block_size)
            .collect();
        let job = Job {
            file: Arc::clone(file),
            epoch: known.epoch,
            generation: known.generation,
            ranges: clip(ranges, known.size),
        };
        drop(state);
        self.jobs.offer(job);
    }
}
