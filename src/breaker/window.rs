//! The sliding monitoring window: a ring of time buckets holding call,
//! failure and slow counts. Rates are computed over the buckets that fall
//! inside `monitoringWindow` of `now`; memory is fixed (`BUCKETS` entries)
//! whatever the traffic.

use std::time::Duration;

/// Buckets per window: the window slides in steps of `window / BUCKETS`.
pub const BUCKETS: usize = 10;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub calls: u64,
    pub failures: u64,
    pub slow: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Absolute bucket number (time since origin / width).
    index: u64,
    counts: Counts,
}

/// Time-bucketed counts over the last `window`. Time is a `Duration` since
/// an origin chosen by the owner.
#[derive(Debug, Clone)]
pub struct Window {
    width_nanos: u64,
    buckets: [Bucket; BUCKETS],
}

impl Window {
    pub fn new(window: Duration) -> Window {
        let width = (window.as_nanos() / BUCKETS as u128).max(1_000_000);
        Window { width_nanos: u64::try_from(width).unwrap_or(u64::MAX), buckets: [Bucket::default(); BUCKETS] }
    }

    fn index_of(&self, t: Duration) -> u64 {
        u64::try_from(t.as_nanos() / u128::from(self.width_nanos)).unwrap_or(u64::MAX)
    }

    pub fn record(&mut self, t: Duration, failure: bool, slow: bool) {
        let idx = self.index_of(t);
        let b = &mut self.buckets[(idx % BUCKETS as u64) as usize];
        if b.index != idx {
            *b = Bucket { index: idx, counts: Counts::default() };
        }
        b.counts.calls += 1;
        b.counts.failures += u64::from(failure);
        b.counts.slow += u64::from(slow);
    }

    /// Takes back up to `n` failed calls of the window ending at `t`, newest
    /// first (failures of an endpoint that was ejected for them: the part
    /// was routed around, the whole is not failing).
    pub fn forgive(&mut self, n: u64, t: Duration) {
        let now = self.index_of(t);
        let oldest = now.saturating_sub(BUCKETS as u64 - 1);
        let mut left = n;
        let mut order: Vec<usize> = (0..BUCKETS).filter(|&i| self.buckets[i].index >= oldest && self.buckets[i].index <= now).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(self.buckets[i].index));
        for i in order {
            if left == 0 {
                break;
            }
            let c = &mut self.buckets[i].counts;
            let take = left.min(c.failures);
            c.failures -= take;
            c.calls = c.calls.saturating_sub(take);
            c.slow = c.slow.min(c.calls);
            left -= take;
        }
    }

    /// Sum of the buckets inside the window ending at `t`.
    pub fn totals(&self, t: Duration) -> Counts {
        let now = self.index_of(t);
        let oldest = now.saturating_sub(BUCKETS as u64 - 1);
        self.buckets.iter().filter(|b| b.index >= oldest && b.index <= now && b.counts.calls > 0).fold(Counts::default(), |acc, b| Counts {
            calls: acc.calls + b.counts.calls,
            failures: acc.failures + b.counts.failures,
            slow: acc.slow + b.counts.slow,
        })
    }

    pub fn clear(&mut self) {
        self.buckets = [Bucket::default(); BUCKETS];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_slide_out_of_the_window() {
        let mut w = Window::new(Duration::from_secs(10));
        w.record(Duration::from_millis(500), true, false);
        w.record(Duration::from_millis(1500), false, true);
        assert_eq!(w.totals(Duration::from_secs(2)), Counts { calls: 2, failures: 1, slow: 1 });
        // 10.6 s: the bucket [0,1) has left, [1,2) is still in.
        assert_eq!(w.totals(Duration::from_millis(10_600)), Counts { calls: 1, failures: 0, slow: 1 });
        assert_eq!(w.totals(Duration::from_secs(12)), Counts::default());
    }

    #[test]
    fn a_reused_slot_forgets_its_old_bucket() {
        let mut w = Window::new(Duration::from_secs(10));
        w.record(Duration::from_millis(100), true, false);
        w.record(Duration::from_millis(10_100), false, false);
        assert_eq!(w.totals(Duration::from_millis(10_100)), Counts { calls: 1, failures: 0, slow: 0 });
    }

    #[test]
    fn forgiven_failures_leave_the_window_newest_first() {
        let mut w = Window::new(Duration::from_secs(10));
        w.record(Duration::from_millis(100), true, false);
        w.record(Duration::from_millis(1100), true, false);
        w.record(Duration::from_millis(1200), false, false);
        w.forgive(1, Duration::from_millis(1300));
        assert_eq!(w.totals(Duration::from_millis(1300)), Counts { calls: 2, failures: 1, slow: 0 });
        w.forgive(5, Duration::from_millis(1300));
        assert_eq!(w.totals(Duration::from_millis(1300)), Counts { calls: 1, failures: 0, slow: 0 });
    }
}
