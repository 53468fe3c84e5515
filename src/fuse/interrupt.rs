//! Whether the process behind a request has a signal waiting for it: the kernel's
//! FUSE_INTERRUPT, which fuser 0.18 answers with ENOSYS itself (so the kernel stops sending
//! it), read instead from `/proc/PID/status`.
//!
//! A request the daemon has taken cannot be ended by the kernel, not even by SIGKILL: the
//! caller sleeps uninterruptibly until the daemon replies. A request that may wait long
//! (an fsync waiting for replicas) asks this now and then and answers EINTR once a signal
//! is pending: a handled signal then interrupts the call as it would on a local
//! filesystem, and a fatal one (SIGKILL, or Ctrl-C with no handler, which the kernel
//! turns into SIGKILL) ends the process.

/// Whether thread `pid` (FUSE names the calling thread) has a signal pending that it does
/// not block or ignore. False when it cannot be told (the process is gone, or hidden).
pub fn signal_pending(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|status| pending_in(&status))
}

/// [`signal_pending`] from the text of a status file.
fn pending_in(status: &str) -> bool {
    let mask = |field: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|value| u64::from_str_radix(value.trim(), 16).ok())
            .unwrap_or(0)
    };
    let pending = mask("SigPnd:") | mask("ShdPnd:");
    // SIGKILL cannot be blocked or ignored, whatever the masks say.
    let kill = 1 << (libc::SIGKILL - 1);
    pending & kill != 0 || pending & !mask("SigBlk:") & !mask("SigIgn:") != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(pending: &str, shared: &str, blocked: &str, ignored: &str) -> String {
        format!(
            "Name:\tdd\nSigQ:\t1/94000\nSigPnd:\t{pending}\nShdPnd:\t{shared}\n\
             SigBlk:\t{blocked}\nSigIgn:\t{ignored}\nSigCgt:\t0000000000000000\n"
        )
    }

    #[test]
    fn a_pending_signal_counts_unless_blocked_or_ignored() {
        let none = "0000000000000000";
        let sigint = "0000000000000002";
        let sigkill = "0000000000000100";
        assert!(!pending_in(&status(none, none, none, none)));
        assert!(pending_in(&status(none, sigint, none, none)));
        assert!(pending_in(&status(sigint, none, none, none)));
        assert!(!pending_in(&status(none, sigint, sigint, none)));
        assert!(!pending_in(&status(none, sigint, none, sigint)));
        assert!(pending_in(&status(sigkill, none, sigkill, sigkill)));
        assert!(!pending_in("garbage"));
    }

    #[test]
    fn this_thread_has_nothing_pending() {
        // SAFETY: gettid cannot fail.
        let tid = unsafe { libc::gettid() } as u32;
        assert!(!signal_pending(tid));
        assert!(!signal_pending(u32::MAX));
    }
}
