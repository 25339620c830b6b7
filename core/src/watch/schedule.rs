//! When watch mode runs what: a full scan at start, every `interval` and
//! [`DEBOUNCE`] after the first engine event of a burst; a GPU poll every
//! `gpu_interval` in between. Pure: the loop passes the time in.

use std::time::{Duration, Instant};

/// How long after an engine event the scan starts, so that a burst of events
/// (create, then start) costs one scan.
pub const DEBOUNCE: Duration = Duration::from_millis(250);

/// Why a full scan runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// At start, and after a reload.
    Start,
    /// Every `interval`.
    Timer,
    /// The engine reported a change.
    Change,
}

/// What to run now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    /// Every collector, the engine included.
    Full(Why),
    /// The GPU collectors and `/proc`, with the last containers.
    Gpu,
}

/// The timers of watch mode.
#[derive(Debug, Clone)]
pub struct Schedule {
    interval: Duration,
    gpu_interval: Duration,
    next_full: Instant,
    next_gpu: Instant,
    change_due: Option<Instant>,
    started: bool,
}

impl Schedule {
    /// A schedule whose first job, a full scan, is due at `now`.
    pub fn new(now: Instant, interval: Duration, gpu_interval: Duration) -> Self {
        Schedule {
            interval,
            gpu_interval,
            next_full: now,
            next_gpu: now + gpu_interval,
            change_due: None,
            started: false,
        }
    }

    /// The engine reported a change at `now`: a full scan [`DEBOUNCE`] later
    /// (unless one is already due sooner for an earlier event).
    pub fn changed(&mut self, now: Instant) {
        self.change_due.get_or_insert(now + DEBOUNCE);
    }

    /// A full scan failed: another at `at` (unless one is due sooner).
    pub fn retry(&mut self, at: Instant) {
        let due = self.change_due.map_or(at, |c| c.min(at));
        self.change_due = Some(due);
    }

    /// When the next job is due.
    pub fn next_wake(&self) -> Instant {
        let due = self.next_full.min(self.next_gpu);
        self.change_due.map_or(due, |c| c.min(due))
    }

    /// The job due at `now`, if any, with the timers moved past it. A full
    /// scan also counts as a GPU poll.
    pub fn take(&mut self, now: Instant) -> Option<Job> {
        let why = if !self.started {
            Why::Start
        } else if self.change_due.is_some_and(|c| c <= now) {
            Why::Change
        } else if self.next_full <= now {
            Why::Timer
        } else if self.next_gpu <= now {
            self.next_gpu = now + self.gpu_interval;
            return Some(Job::Gpu);
        } else {
            return None;
        };
        self.started = true;
        self.change_due = None;
        self.next_full = now + self.interval;
        self.next_gpu = now + self.gpu_interval;
        Some(Job::Full(why))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_full_scan_first_then_gpu_polls_then_the_timer() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0, ms(30_000), ms(2_000));
        assert_eq!(s.take(t0), Some(Job::Full(Why::Start)));
        assert_eq!(s.take(t0 + ms(1_999)), None);
        assert_eq!(s.next_wake(), t0 + ms(2_000));
        assert_eq!(s.take(t0 + ms(2_000)), Some(Job::Gpu));
        assert_eq!(s.take(t0 + ms(2_001)), None);
        assert_eq!(s.take(t0 + ms(30_000)), Some(Job::Full(Why::Timer)));
        assert_eq!(s.next_wake(), t0 + ms(32_000));
    }

    #[test]
    fn a_failed_full_scan_is_tried_again_at_the_retry_time() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0, ms(30_000), ms(2_000));
        s.take(t0);
        s.retry(t0 + ms(500));
        assert_eq!(s.next_wake(), t0 + ms(500));
        assert_eq!(s.take(t0 + ms(499)), None);
        assert_eq!(s.take(t0 + ms(500)), Some(Job::Full(Why::Change)));
        // An engine event due sooner is not delayed by a later retry.
        s.changed(t0 + ms(600));
        s.retry(t0 + ms(5_000));
        assert_eq!(s.next_wake(), t0 + ms(600) + DEBOUNCE);
    }

    #[test]
    fn a_burst_of_changes_is_one_scan_after_the_debounce() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0, ms(30_000), ms(2_000));
        s.take(t0);
        s.changed(t0 + ms(100));
        s.changed(t0 + ms(200));
        s.changed(t0 + ms(300));
        assert_eq!(s.next_wake(), t0 + ms(100) + DEBOUNCE);
        assert_eq!(s.take(t0 + ms(349)), None);
        assert_eq!(s.take(t0 + ms(350)), Some(Job::Full(Why::Change)));
        assert_eq!(s.take(t0 + ms(360)), None, "the burst was one scan");
        // The full scan restarted both timers.
        assert_eq!(s.next_wake(), t0 + ms(2_350));
    }
}
