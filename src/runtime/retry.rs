//! The retry budget of one upstream (docs/configuration.md: outlierDetection, retry, like Linkerd's and Envoy's):
//! retries over the last 10 seconds stay under `ratio` x the requests of
//! those 10 seconds plus `minPerSecond` x 10, so retries can never multiply
//! the load on a struggling upstream.
//!
//! Owns the two sliding counts, kept in atomics (one word per second:
//! the second's number and its count), so counting a request takes no
//! lock. Must not decide what is retryable (`forward` and `error` do).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::clock;
use crate::config::RetryPolicy;

/// Seconds the budget looks back.
const WINDOW_SECS: u64 = 10;

/// Requests and retries of one upstream, per second, over the window.
#[derive(Debug, Default)]
pub struct RetryBudget {
    requests: [AtomicU64; WINDOW_SECS as usize],
    retries: [AtomicU64; WINDOW_SECS as usize],
}

impl RetryBudget {
    pub fn new() -> RetryBudget {
        RetryBudget::default()
    }

    /// Counts one client request (one deposit into the budget).
    pub fn on_request(&self, now: Instant) {
        bump(&self.requests, second(now));
    }

    /// Takes one retry from the budget if it has one.
    pub fn try_retry(&self, policy: &RetryPolicy, now: Instant) -> bool {
        let sec = second(now);
        let requests = sum(&self.requests, sec) as f64;
        let retries = sum(&self.retries, sec) as f64;
        let allowed = policy.budget_ratio * requests + f64::from(policy.budget_min_per_second) * WINDOW_SECS as f64;
        if retries + 1.0 > allowed {
            return false;
        }
        bump(&self.retries, sec);
        true
    }
}

fn second(now: Instant) -> u64 {
    clock::ms(now) / 1000
}

/// Adds one to the slot of second `sec` (restarting a slot left by an older
/// second). A word is `second << 32 | count`.
fn bump(slots: &[AtomicU64; WINDOW_SECS as usize], sec: u64) {
    let slot = &slots[(sec % WINDOW_SECS) as usize];
    let tag = sec & 0xffff_ffff;
    let mut cur = slot.load(Ordering::Relaxed);
    loop {
        let next = if cur >> 32 == tag { cur.saturating_add(u64::from((cur & 0xffff_ffff) < 0xffff_ffff)) } else { tag << 32 | 1 };
        match slot.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return,
            Err(seen) => cur = seen,
        }
    }
}

/// The counts of the last `WINDOW_SECS` seconds up to `sec`.
fn sum(slots: &[AtomicU64; WINDOW_SECS as usize], sec: u64) -> u64 {
    slots
        .iter()
        .map(|s| s.load(Ordering::Relaxed))
        .filter(|w| {
            let tag = w >> 32;
            let now = sec & 0xffff_ffff;
            now.wrapping_sub(tag) & 0xffff_ffff < WINDOW_SECS
        })
        .map(|w| w & 0xffff_ffff)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn budget_is_ratio_of_requests_plus_a_floor() {
        let policy = RetryPolicy { budget_ratio: 0.2, budget_min_per_second: 1, ..RetryPolicy::default() };
        let b = RetryBudget::new();
        let now = clock::now();
        // The floor alone: 1/s over 10 s.
        let floor = (0..100).filter(|_| b.try_retry(&policy, now)).count();
        assert_eq!(floor, 10);
        for _ in 0..100 {
            b.on_request(now);
        }
        let more = (0..100).filter(|_| b.try_retry(&policy, now)).count();
        assert_eq!(more, 20, "20% of 100 requests");
        // Ten seconds later the window has moved past all of it.
        let later = now + Duration::from_secs(11);
        assert_eq!((0..100).filter(|_| b.try_retry(&policy, later)).count(), 10);
    }
}
