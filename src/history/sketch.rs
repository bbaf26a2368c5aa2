//! A latency sketch with bounded relative error: durations (in
//! nanoseconds) fall into log-linear bins, 64 per power of two (HDR
//! Histogram's layout, kept sparse as DDSketch keeps its bins), so any
//! quantile read back is within 0.8% of the true value whatever the
//! distribution (below 64 ns, exact), and two sketches merge by adding
//! their bins. The bin of a value is a few integer operations (no
//! logarithm: it is taken on the request path). Sparse and sorted: a
//! bucket holds only the bins it saw, at most [`MAX_BINS`] (past that the
//! two lowest bins are merged, which only ever coarsens the fastest
//! calls).
//!
//! Must not: know about time or buckets (that is `History`).

use std::time::Duration;

/// Relative accuracy promised for every quantile (the layout gives 1/128).
#[cfg(test)]
const ALPHA: f64 = 0.01;
/// Sub-bins per power of two: 2^6.
const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
/// More bins than 1 µs to 1 h needs (32 powers of two × 64).
pub const MAX_BINS: usize = 2048;

/// Durations in microseconds, binned; `(bin index, count)` sorted by index.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Sketch {
    bins: Vec<(i32, u32)>,
}

/// The bin of `ns` nanoseconds: the value itself below 64; above, its
/// power of two and the next 6 bits below its top bit.
fn index(ns: u64) -> i32 {
    if ns < SUB {
        return ns as i32;
    }
    let top = 63 - ns.leading_zeros(); // >= SUB_BITS
    let sub = (ns >> (top - SUB_BITS)) & (SUB - 1);
    (((top - SUB_BITS + 1) as u64) << SUB_BITS | sub) as i32
}

/// The value (ns) a bin stands for: its middle, within 1/128 of every
/// value in it.
fn value(i: i32) -> f64 {
    let i = i.max(0) as u64;
    if i < SUB {
        return i as f64;
    }
    let top = (i >> SUB_BITS) - 1 + u64::from(SUB_BITS);
    let sub = i & (SUB - 1);
    let width = 1u64 << (top - u64::from(SUB_BITS));
    ((SUB + sub) * width) as f64 + width as f64 / 2.0
}

/// The bin of a duration, computed once and added to several sketches
/// (a call goes into its minute and its hour).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bin(i32);

impl Bin {
    pub fn of(d: Duration) -> Bin {
        Bin(index(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)))
    }
}

impl Sketch {
    pub fn add(&mut self, d: Duration) {
        self.add_bin(Bin::of(d));
    }

    pub fn add_bin(&mut self, bin: Bin) {
        self.add_n(bin.0, 1);
    }

    fn add_n(&mut self, i: i32, n: u32) {
        match self.bins.binary_search_by_key(&i, |(k, _)| *k) {
            Ok(at) => self.bins[at].1 = self.bins[at].1.saturating_add(n),
            Err(at) => {
                self.bins.insert(at, (i, n));
                if self.bins.len() > MAX_BINS {
                    let (_, low) = self.bins.remove(0);
                    self.bins[0].1 = self.bins[0].1.saturating_add(low);
                }
            }
        }
    }

    pub fn merge(&mut self, other: &Sketch) {
        for (i, n) in &other.bins {
            self.add_n(*i, *n);
        }
    }

    pub fn count(&self) -> u64 {
        self.bins.iter().map(|(_, n)| u64::from(*n)).sum()
    }

    /// The `q` quantile (nearest rank) in milliseconds; 0 when empty.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        let total = self.count();
        if total == 0 {
            return 0.0;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (i, n) in &self.bins {
            seen += u64::from(*n);
            if seen >= rank {
                return value(*i) / 1e6;
            }
        }
        self.bins.last().map_or(0.0, |(i, _)| value(*i) / 1e6)
    }

    /// Bins kept (for the memory bound).
    pub fn len(&self) -> usize {
        self.bins.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bins.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exact nearest-rank quantile of sorted values.
    fn exact(sorted: &[f64], q: f64) -> f64 {
        let rank = ((q * sorted.len() as f64).ceil() as usize).max(1);
        sorted[rank - 1]
    }

    #[test]
    fn quantiles_are_within_one_percent_of_the_truth() {
        // Uniform, bimodal and long-tailed (log-normal-ish) latencies.
        let mut rng = fastrand::Rng::with_seed(7);
        let uniform: Vec<f64> = (1..=1000).map(f64::from).collect();
        let bimodal: Vec<f64> = (0..1000).map(|i| if i % 5 == 0 { 130.0 + rng.f64() } else { 2.0 + rng.f64() }).collect();
        let tail: Vec<f64> = (0..5000).map(|_| (rng.f64() * 8.0).exp() / 10.0).collect();
        for values in [uniform, bimodal, tail] {
            let mut s = Sketch::default();
            for ms in &values {
                s.add(Duration::from_secs_f64(ms / 1e3));
            }
            let mut sorted = values.clone();
            sorted.sort_by(f64::total_cmp);
            for q in [0.5, 0.9, 0.95, 0.99, 0.999, 1.0] {
                let (got, want) = (s.quantile_ms(q), exact(&sorted, q));
                assert!((got - want).abs() <= want * ALPHA + 1e-3, "q{q}: {got} vs {want}");
            }
        }
    }

    #[test]
    fn the_issue_case_reads_the_slow_calls_not_a_bucket_bound() {
        // 40 fast calls and 10 of 130 ms: p95 = p99 = 130 ms (was 200).
        let mut s = Sketch::default();
        for _ in 0..40 {
            s.add(Duration::from_millis(3));
        }
        for _ in 0..10 {
            s.add(Duration::from_millis(130));
        }
        for q in [0.95, 0.99] {
            assert!((s.quantile_ms(q) - 130.0).abs() <= 1.3, "{}", s.quantile_ms(q));
        }
    }

    #[test]
    fn sketches_merge_and_stay_bounded() {
        let (mut a, mut b) = (Sketch::default(), Sketch::default());
        for ms in 1..=500u64 {
            a.add(Duration::from_millis(ms));
            b.add(Duration::from_millis(ms + 500));
        }
        a.merge(&b);
        assert_eq!(a.count(), 1000);
        assert!((a.quantile_ms(0.5) - 500.0).abs() <= 5.0, "{}", a.quantile_ms(0.5));
        // Every microsecond from 1 µs to an hour, sparsely: still bounded.
        let mut wide = Sketch::default();
        let mut us = 1.0f64;
        while us < 3.6e9 {
            wide.add(Duration::from_secs_f64(us / 1e6));
            us *= 1.005;
        }
        assert!(wide.len() <= MAX_BINS, "{}", wide.len());
        assert_eq!(Sketch::default().quantile_ms(0.99), 0.0);
    }
}
