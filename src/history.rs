//! Per-upstream history kept in memory: operation buckets (per minute for
//! the last hour, per hour for 30 days) with a latency sketch for p95/p99
//! within 1% of the recorded latencies (`sketch`, never a bucket bound),
//! and health periods (status changes, 7-day retention). Memory is
//! bounded whatever the traffic: at most `MINUTES + HOURS` buckets and
//! `MAX_PERIODS` periods per upstream. Pure data: time is passed in as Unix
//! seconds; no clock, lock or I/O here. [`History::to_json`] and
//! [`History::from_json`] are the form the store keeps across restarts.

use std::collections::VecDeque;
use std::time::Duration;

use crate::breaker::Status;

mod sketch;
pub use sketch::{Bin, Sketch};

const MINUTES: usize = 60;
const HOURS: usize = 30 * 24;
const MAX_PERIODS: usize = 5_000;
const PERIOD_RETENTION_SECS: u64 = 7 * 24 * 3600;

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct Bucket {
    /// Start of the bucket, Unix seconds.
    start: u64,
    requests: u64,
    successes: u64,
    failures: u64,
    duration_us: u64,
    /// The latencies (files saved before the sketch have none: their
    /// buckets count but give no percentile).
    #[serde(default)]
    sketch: Sketch,
}

/// A stretch of time with one status.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthPeriod {
    pub start: u64,
    pub status: Status,
    pub incidents: u32,
}

/// Aggregates over a timeframe, in the dashboard seed's shape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OperationMetrics {
    pub request_count: u64,
    pub success_count: u64,
    pub failure_count: u64,
    pub avg_response_ms: f64,
    pub p95_response_ms: f64,
    pub p99_response_ms: f64,
}

#[derive(Debug, Clone, Default)]
pub struct History {
    minutes: VecDeque<Bucket>,
    hours: VecDeque<Bucket>,
    periods: VecDeque<HealthPeriod>,
}

/// A history as the store saves it.
#[derive(serde::Serialize, serde::Deserialize)]
struct Saved {
    minutes: Vec<Bucket>,
    hours: Vec<Bucket>,
    /// (start, status, incidents)
    periods: Vec<(u64, String, u32)>,
}

impl History {
    /// The history as JSON, for the store.
    pub fn to_json(&self) -> String {
        let saved = Saved {
            minutes: self.minutes.iter().cloned().collect(),
            hours: self.hours.iter().cloned().collect(),
            periods: self.periods.iter().map(|p| (p.start, p.status.to_string(), p.incidents)).collect(),
        };
        serde_json::to_string(&saved).unwrap_or_default()
    }

    /// A history saved by [`History::to_json`], trimmed to today's bounds
    /// (an unknown status reads as "unknown").
    pub fn from_json(text: &str) -> Result<History, serde_json::Error> {
        let saved: Saved = serde_json::from_str(text)?;
        let tail = |v: Vec<Bucket>, cap: usize| -> VecDeque<Bucket> { v.into_iter().rev().take(cap).rev().collect() };
        let periods = saved
            .periods
            .into_iter()
            .rev()
            .take(MAX_PERIODS)
            .rev()
            .map(|(start, status, incidents)| HealthPeriod { start, status: Status::parse(&status).unwrap_or(Status::Unknown), incidents })
            .collect();
        Ok(History { minutes: tail(saved.minutes, MINUTES), hours: tail(saved.hours, HOURS), periods })
    }

    /// A history whose first period (healthy) starts at `t`.
    pub fn starting(t: u64) -> History {
        let mut h = History::default();
        h.status(t, Status::Healthy, false);
        h
    }

    /// Records one finished call at Unix second `t`.
    pub fn record(&mut self, t: u64, failure: bool, duration: Duration) {
        let us = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
        let minute = t - t % 60;
        if self.minutes.back().is_none_or(|b| b.start != minute) {
            // The minute that ends gives its latencies to its hour once
            // (the request path adds each call to one sketch only).
            if let Some(done) = self.minutes.back() {
                let hour = done.start - done.start % 3600;
                if let Some(h) = self.hours.iter_mut().rev().find(|h| h.start == hour) {
                    h.sketch.merge(&done.sketch);
                }
            }
            if self.minutes.len() == MINUTES {
                self.minutes.pop_front();
            }
            self.minutes.push_back(Bucket { start: minute, ..Bucket::default() });
        }
        let hour = t - t % 3600;
        if self.hours.back().is_none_or(|b| b.start != hour) {
            if self.hours.len() == HOURS {
                self.hours.pop_front();
            }
            self.hours.push_back(Bucket { start: hour, ..Bucket::default() });
        }
        for b in [self.minutes.back_mut(), self.hours.back_mut()].into_iter().flatten() {
            b.requests += 1;
            if failure {
                b.failures += 1;
            } else {
                b.successes += 1;
            }
            b.duration_us = b.duration_us.saturating_add(us);
        }
        if let Some(m) = self.minutes.back_mut() {
            m.sketch.add_bin(Bin::of(duration));
        }
    }

    /// Notes the status from Unix second `t` on (no-op if unchanged).
    pub fn status(&mut self, t: u64, status: Status, incident: bool) {
        if let Some(last) = self.periods.back_mut() {
            if last.status == status {
                last.incidents += u32::from(incident);
                return;
            }
        }
        while self.periods.len() >= MAX_PERIODS || self.periods.front().is_some_and(|p| t.saturating_sub(p.start) > PERIOD_RETENTION_SECS) {
            if self.periods.pop_front().is_none() {
                break;
            }
        }
        self.periods.push_back(HealthPeriod { start: t, status, incidents: u32::from(incident) });
    }

    /// Health periods overlapping `[now - span, now]`, each with its
    /// duration in ms (the last one runs until `now`).
    pub fn periods(&self, now: u64, span: u64) -> Vec<(HealthPeriod, u64)> {
        let from = now.saturating_sub(span);
        let mut out = Vec::new();
        for (i, p) in self.periods.iter().enumerate() {
            let end = self.periods.get(i + 1).map_or(now, |n| n.start);
            if end >= from {
                out.push((p.clone(), end.saturating_sub(p.start) * 1000));
            }
        }
        out
    }

    /// Operation metrics over `[now - span, now]`.
    pub fn operations(&self, now: u64, span: u64) -> OperationMetrics {
        let (ring, width) = if span <= 3600 { (&self.minutes, 60) } else { (&self.hours, 3600) };
        let from = now.saturating_sub(span);
        let mut total = Bucket::default();
        for b in ring.iter().filter(|b| b.start + width > from) {
            total.requests += b.requests;
            total.successes += b.successes;
            total.failures += b.failures;
            total.duration_us = total.duration_us.saturating_add(b.duration_us);
            total.sketch.merge(&b.sketch);
        }
        // Hours hold the latencies of their finished minutes: the current
        // minute's are still in its own bucket.
        if width == 3600 {
            if let Some(m) = self.minutes.back().filter(|m| m.start + 60 > from) {
                total.sketch.merge(&m.sketch);
            }
        }
        // Nearest rank, within 1% of the recorded latency.
        let pct = |q: f64| -> f64 { (total.sketch.quantile_ms(q) * 1e3).round() / 1e3 };
        OperationMetrics {
            request_count: total.requests,
            success_count: total.successes,
            failure_count: total.failures,
            avg_response_ms: if total.requests > 0 { total.duration_us as f64 / total.requests as f64 / 1e3 } else { 0.0 },
            p95_response_ms: pct(0.95),
            p99_response_ms: pct(0.99),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregates_and_percentiles() {
        let mut h = History::default();
        let t = 1_800_000_000;
        for i in 0..100 {
            let ms = if i < 95 { 3 } else { 700 };
            h.record(t + i, i % 10 == 0, Duration::from_millis(ms));
        }
        let m = h.operations(t + 100, 3600);
        assert_eq!(m.request_count, 100);
        assert_eq!(m.failure_count, 10);
        // Within 1% of the recorded latencies, not a bucket's bound.
        assert!((m.p95_response_ms - 3.0).abs() <= 0.03, "{}", m.p95_response_ms);
        assert!((m.p99_response_ms - 700.0).abs() <= 7.0, "{}", m.p99_response_ms);
        assert!((m.avg_response_ms - (95.0 * 3.0 + 5.0 * 700.0) / 100.0).abs() < 1e-6);
        // Older than the hour: not in 1h, still in 24h.
        assert_eq!(h.operations(t + 7200, 3600).request_count, 0);
        assert_eq!(h.operations(t + 7200, 86_400).request_count, 100);
    }

    #[test]
    fn survives_a_round_trip_through_json() {
        let mut h = History::default();
        let t = 1_800_000_000;
        h.status(t, Status::Healthy, false);
        h.status(t + 5, Status::Failed, true);
        for i in 0..50 {
            h.record(t + i * 30, i % 5 == 0, Duration::from_millis(12));
        }
        let back = History::from_json(&h.to_json()).expect("parses");
        assert_eq!(back.operations(t + 1500, 3600), h.operations(t + 1500, 3600));
        assert_eq!(back.operations(t + 1500, 86_400), h.operations(t + 1500, 86_400));
        assert_eq!(back.periods(t + 1500, 3600), h.periods(t + 1500, 3600));
        assert!(History::from_json("{not json").is_err());
    }

    #[test]
    fn periods_are_bounded_and_timed() {
        let mut h = History::default();
        h.status(100, Status::Healthy, false);
        h.status(160, Status::Failed, true);
        h.status(170, Status::Failed, false);
        h.status(200, Status::Healthy, false);
        let p = h.periods(260, 3600);
        assert_eq!(p.len(), 3);
        assert_eq!(p[1].0.status, Status::Failed);
        assert_eq!(p[1].1, 40_000);
        assert_eq!(p[1].0.incidents, 1);
        for i in 0..(MAX_PERIODS as u64 + 10) {
            h.status(300 + i, if i % 2 == 0 { Status::Failed } else { Status::Healthy }, false);
        }
        assert!(h.periods.len() <= MAX_PERIODS);
    }
}
