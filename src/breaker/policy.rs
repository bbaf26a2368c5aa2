//! Breaker thresholds, with the defaults of the architecture seed, and the
//! classification of one call into failure / slow.

use std::time::Duration;

use super::state::CallOutcome;

/// Every threshold of one circuit. Built by `config::validate`, which has
/// already checked the ranges.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Consecutive failures that open the circuit.
    pub failure_threshold: u32,
    /// Percent of failed calls in the window that opens it.
    pub failure_rate_threshold: f64,
    /// No rate decision below this many calls in the window.
    pub minimum_request_count: u32,
    pub monitoring_window: Duration,
    /// Calls slower than this count as slow.
    pub slow_call_duration: Duration,
    /// Percent of slow calls in the window that opens it.
    pub slow_call_rate_threshold: f64,
    /// First open period.
    pub reset_timeout: Duration,
    /// Cap of the doubled open period after failed recoveries.
    pub max_reset_timeout: Duration,
    /// Random spread of each open period, as a fraction (0.2 = +-20%).
    pub jitter: f64,
    /// Trial requests in flight at once in half-open.
    pub half_open_requests: u32,
    /// After a recovery the status stays `degraded` this long.
    pub min_healthy_period: Duration,
    /// After a recovery, admitted traffic ramps up linearly over this long.
    pub recovery_ramp: Duration,
    pub failure_statuses: StatusSet,
    /// How long a half-open trial may stay out before its slot is freed
    /// (connect + request timeout of the upstream).
    pub trial_lease: Duration,
    /// An active health check exists: half-open trials are its probes, and
    /// user requests are not spent on a broken upstream.
    pub probe_trials: bool,
    /// `breaker.enabled`: false counts every call but never rejects.
    pub enabled: bool,
}

/// Inclusive range of HTTP status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusRange {
    pub from: u16,
    pub to: u16,
}

/// The statuses that count as failures (`["500-599"]` by default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusSet(pub Vec<StatusRange>);

// === impl Policy ===

impl Default for Policy {
    fn default() -> Self {
        Policy {
            failure_threshold: 5,
            failure_rate_threshold: 50.0,
            minimum_request_count: 10,
            monitoring_window: Duration::from_secs(300),
            slow_call_duration: Duration::from_secs(2),
            slow_call_rate_threshold: 100.0,
            reset_timeout: Duration::from_secs(60),
            max_reset_timeout: Duration::from_secs(600),
            jitter: 0.2,
            half_open_requests: 1,
            min_healthy_period: Duration::from_secs(120),
            recovery_ramp: Duration::ZERO,
            failure_statuses: StatusSet(vec![StatusRange { from: 500, to: 599 }]),
            trial_lease: Duration::from_secs(32),
            probe_trials: false,
            enabled: true,
        }
    }
}

impl Policy {
    /// Classifies a call that produced a response (`Some(status)`) or an
    /// error (`None`), taking `elapsed`.
    pub fn classify(&self, status: Option<u16>, elapsed: Duration) -> CallOutcome {
        CallOutcome {
            failure: match status {
                Some(s) => self.failure_statuses.contains(s),
                None => true,
            },
            slow: elapsed > self.slow_call_duration,
        }
    }
}

// === impl StatusSet ===

impl StatusSet {
    pub fn contains(&self, status: u16) -> bool {
        self.0.iter().any(|r| r.from <= status && status <= r.to)
    }

    /// Parses `500`, `"500-599"` or `"5xx"`.
    pub fn parse_one(text: &str) -> Result<StatusRange, String> {
        let text = text.trim();
        let bad = || format!("`{text}` is not a status, a range like 500-599, or a class like 5xx");
        let range = if let Some(class) = text.strip_suffix("xx").or_else(|| text.strip_suffix("XX")) {
            let d: u16 = class.parse().map_err(|_| bad())?;
            StatusRange { from: d * 100, to: d * 100 + 99 }
        } else if let Some((a, b)) = text.split_once('-') {
            StatusRange { from: a.trim().parse().map_err(|_| bad())?, to: b.trim().parse().map_err(|_| bad())? }
        } else {
            let s: u16 = text.parse().map_err(|_| bad())?;
            StatusRange { from: s, to: s }
        };
        if range.from < 100 || range.to > 599 || range.from > range.to {
            return Err(format!("`{text}` is outside 100-599 or reversed"));
        }
        Ok(range)
    }
}
