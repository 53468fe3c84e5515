//! A work queue for the cache's background threads: bounded for work that may be dropped
//! (read-ahead, copying to the disk tier), unbounded for work that must happen.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};

/// Items of work `T` waiting for a thread.
#[derive(Debug)]
pub(super) struct WorkQueue<T> {
    waiting: Mutex<Waiting<T>>,
    ready: Condvar,
    max: usize,
}

#[derive(Debug)]
struct Waiting<T> {
    items: VecDeque<T>,
    stopped: bool,
}

impl<T> WorkQueue<T> {
    /// A queue that `offer` keeps at most `max` items long.
    pub(super) fn new(max: usize) -> WorkQueue<T> {
        WorkQueue {
            waiting: Mutex::new(Waiting {
                items: VecDeque::new(),
                stopped: false,
            }),
            ready: Condvar::new(),
            max,
        }
    }

    fn waiting(&self) -> MutexGuard<'_, Waiting<T>> {
        self.waiting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues `item` unless the queue is full or stopped; says whether it was queued.
    pub(super) fn offer(&self, item: T) -> bool {
        let mut waiting = self.waiting();
        if waiting.items.len() >= self.max || waiting.stopped {
            return false;
        }
        waiting.items.push_back(item);
        self.ready.notify_one();
        true
    }

    /// Queues `item` whatever the length (until stopped).
    pub(super) fn push(&self, item: T) {
        let mut waiting = self.waiting();
        if !waiting.stopped {
            waiting.items.push_back(item);
            self.ready.notify_one();
        }
    }

    /// The next item, waiting for one; `None` once stopped and, if `drain`, empty.
    pub(super) fn pop(&self, drain: bool) -> Option<T> {
        let mut waiting = self.waiting();
        loop {
            if waiting.stopped && (!drain || waiting.items.is_empty()) {
                return None;
            }
            if let Some(item) = waiting.items.pop_front() {
                return Some(item);
            }
            waiting = self
                .ready
                .wait(waiting)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    /// Ends the threads' waits: nothing more is queued.
    pub(super) fn stop(&self) {
        self.waiting().stopped = true;
        self.ready.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offers_are_bounded_pushes_are_not_and_stop_drains_on_request() {
        let queue = WorkQueue::new(2);
        assert!(queue.offer(1) && queue.offer(2));
        assert!(!queue.offer(3), "full");
        queue.push(4);
        assert_eq!(queue.pop(false), Some(1));
        queue.stop();
        assert!(!queue.offer(5));
        assert_eq!(queue.pop(true), Some(2));
        assert_eq!(queue.pop(true), Some(4));
        assert_eq!(queue.pop(true), None);
        let undrained = WorkQueue::new(2);
        undrained.push(1);
        undrained.stop();
        assert_eq!(undrained.pop(false), None);
    }
}
