//! Stopping a daemon cleanly: the stop signals are blocked in every thread and taken by
//! one that waits for them, so a signal never kills the process with its default action
//! halfway through an unmount or a write.

use std::io;

/// SIGINT, SIGTERM and SIGHUP, blocked in the calling thread and so in every thread it
/// starts afterwards; the daemon waits for them on one thread ([`StopSignals::wait`]) and stops cleanly. Take this before
/// any other thread exists: a thread started earlier keeps the default action, and a stop
/// signal delivered to it would kill the daemon without unmounting.
#[derive(Clone, Copy)]
pub struct StopSignals(libc::sigset_t);

impl std::fmt::Debug for StopSignals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StopSignals(SIGINT, SIGTERM, SIGHUP)")
    }
}

impl StopSignals {
    /// Blocks the stop signals in this thread (and the threads it will start).
    pub fn block() -> io::Result<StopSignals> {
        // SAFETY: sigset operations on a local set; pthread_sigmask on the current thread.
        unsafe {
            let mut set = std::mem::zeroed::<libc::sigset_t>();
            libc::sigemptyset(&mut set);
            for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
                libc::sigaddset(&mut set, signal);
            }
            let error = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            if error != 0 {
                return Err(io::Error::from_raw_os_error(error));
            }
            Ok(StopSignals(set))
        }
    }
}

impl StopSignals {
    /// Waits for one of the stop signals and returns its number (`None` if waiting failed).
    pub fn wait(&self) -> Option<i32> {
        let mut signal = 0;
        // SAFETY: a valid signal set and out-pointer.
        (unsafe { libc::sigwait(&self.0, &mut signal) } == 0).then_some(signal)
    }
}
