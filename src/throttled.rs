//! A log line that a loop may hit many times a second (an accept that keeps failing, a
//! store that cannot be saved), said at most once per interval with a count of the rest.

use std::time::{Duration, Instant};

/// A log line said at most once per interval, with a count of the rest.
pub(crate) struct Throttled {
    what: &'static str,
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttled {
    /// A line saying `what`, said at most once `every` so long.
    pub(crate) fn new(what: &'static str, every: Duration) -> Throttled {
        Throttled {
            what,
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// Says `what` with `detail` at warn level, unless it was said less than its interval
    /// ago (then counts it, and the next line says how many).
    pub(crate) fn warn(&mut self, detail: &dyn std::fmt::Display) {
        if self.last.is_some_and(|at| at.elapsed() < self.every) {
            self.suppressed += 1;
            return;
        }
        let suppressed = std::mem::take(&mut self.suppressed);
        tracing::warn!(%detail, suppressed, "{}", self.what);
        self.last = Some(Instant::now());
    }
}
