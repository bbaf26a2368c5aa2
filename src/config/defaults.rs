//! Defaults: every built-in value of the file's keys, each written once
//! here, and the one way the layers that set an upstream's keys are merged
//! before `validate` checks the result.
//!
//! Layers, lowest first; a key takes the value of the highest layer that
//! writes it:
//! 1. built-in: the values below (the breaker's are
//!    `breaker::Policy::default()`, which the breaker owns);
//! 2. the file's `defaults:` (upstream keys only);
//! 3. the upstream's own keys (`upstreams.NAME`);
//! 4. for an operation's circuit: the route's `breaker` keys over its
//!    upstream's policy (layers 1-3, merged and checked).
//!
//! Top-level keys (`listen`, `shutdown`, `client`, `auth.jwt`, ...) have two
//! layers: the file's value over the built-in one.
//!
//! Merging goes key by key, inside a section too (`retry.budget.ratio` from
//! `defaults:` and `retry.attempts` from the upstream make one `retry`); a
//! list (`retry.on`, `breaker.failureStatuses`) is one value. The merged
//! value keeps the key path it was written at, so `validate` checks it once
//! and names that key (`defaults.breaker.jitter`, not the upstream's). A
//! `defaults:` value that every upstream replaces is never used, but it is
//! still checked: `validate` also merges and checks `defaults:` on its own.
//! A winning value that is invalid is reported and the base stands in for
//! it (layer 1; for an operation, its upstream's policy). A check across
//! keys (`maxResetTimeout` >= `resetTimeout`, `timeouts` > 0) is reported
//! at the section's key in the upstream or route (`Section::home`).
//!
//! Must not: check or convert values or report errors (that is
//! `validate`); read files or the environment.

use std::time::Duration;

use super::model::{RawBreaker, RawDefaults, RawHealthCheck, RawOutlierDetection, RawRetry, RawTimeouts, RawUpstream};
use super::{ClientConfig, LoadBalancing, OutlierDetection, Protocol, RetryOn, RetryPolicy, ShutdownConfig, Timeouts};

// === built-in values: top level ===

pub const LISTEN: &str = "0.0.0.0:8080";
pub const ADMIN_LISTEN: &str = "127.0.0.1:9901";
/// One data-path worker per core.
pub const WORKERS: usize = 0;
pub const REQUEST_METRICS: bool = true;
pub const ACCESS_LOG: bool = false;
pub const JWT_ADMIN_ROLE: &str = "admin";
pub const JWT_REQUIRE_FOR_READS: bool = false;
pub const JWT_LEEWAY: Duration = Duration::from_secs(30);

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig { drain_delay: Duration::from_secs(5), grace_period: Duration::from_secs(30) }
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig { header_timeout: Duration::from_secs(10), idle_timeout: Duration::from_secs(60), max_connections: 10_000 }
    }
}

// === built-in values: an upstream ===

pub const LOAD_BALANCING: LoadBalancing = LoadBalancing::RoundRobin;
pub const PROTOCOL: Protocol = Protocol::Http1;
pub const MAX_CONCURRENT_REQUESTS: usize = 1000;
pub const DNS_REFRESH: Duration = Duration::from_secs(30);
/// How long an endpoint that never answered is *starting*: its refused
/// connects are excused (SPEC 9a).
pub const STARTUP_GRACE: Duration = Duration::from_secs(60);
pub const FALLBACK_STATUS: http::StatusCode = http::StatusCode::SERVICE_UNAVAILABLE;
/// A `healthCheck` is off unless given; given, these fill its keys.
pub const HEALTH_CHECK_PATH: &str = "/health";
pub const HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(30);
pub const HEALTH_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts { connect: Duration::from_secs(2), request: Duration::from_secs(30), idle: Duration::from_secs(60) }
    }
}

impl Default for OutlierDetection {
    fn default() -> Self {
        OutlierDetection {
            consecutive_failures: 5,
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 50,
        }
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        // A plain proxy's availability (nginx's `proxy_next_upstream error
        // timeout`): an idempotent bodyless request whose attempt could
        // not connect, was reset before a response byte or timed out goes
        // once more on another endpoint, within the budget.
        RetryPolicy {
            attempts: 1,
            on: RetryOn(RetryOn::CONNECT_FAILURE.0 | RetryOn::RESET.0 | RetryOn::STATUS_504.0),
            budget_ratio: 0.2,
            budget_min_per_second: 10,
        }
    }
}

// === merging ===

/// A value as the file writes it, with the key path it is written at.
pub struct Written<'a, T: ?Sized> {
    pub at: String,
    pub value: &'a T,
}

/// One section (an upstream's `breaker`, `timeouts`, `dnsRefresh`, ..., or a
/// route's `breaker`): the layers of the file that write it, lowest first,
/// each with its key path.
pub struct Section<'a, R> {
    /// The section's key path in its own upstream or route
    /// (`upstreams.api.breaker`): checks across its keys are reported here.
    pub home: String,
    layers: Vec<(String, &'a R)>,
}

/// An upstream's keys that `defaults:` may set too, each merged.
pub struct UpstreamLayers<'a> {
    pub breaker: Section<'a, RawBreaker>,
    pub health_check: Section<'a, RawHealthCheck>,
    pub timeouts: Section<'a, RawTimeouts>,
    pub outlier_detection: Section<'a, RawOutlierDetection>,
    pub retry: Section<'a, RawRetry>,
    pub max_concurrent_requests: Option<Written<'a, usize>>,
    pub dns_refresh: Option<Written<'a, String>>,
    pub startup_grace: Option<Written<'a, String>>,
}

/// Layers 2 and 3 of the upstream at `path` (`upstreams.NAME`).
pub fn upstream<'a>(path: &str, own: &'a RawUpstream, defaults: &'a RawDefaults) -> UpstreamLayers<'a> {
    UpstreamLayers {
        breaker: Section::of(path, "breaker", defaults.breaker.as_ref(), own.breaker.as_ref()),
        health_check: Section::of(path, "healthCheck", defaults.health_check.as_ref(), own.health_check.as_ref()),
        timeouts: Section::of(path, "timeouts", defaults.timeouts.as_ref(), own.timeouts.as_ref()),
        outlier_detection: Section::of(path, "outlierDetection", defaults.outlier_detection.as_ref(), own.outlier_detection.as_ref()),
        retry: Section::of(path, "retry", defaults.retry.as_ref(), own.retry.as_ref()),
        max_concurrent_requests: Section::of(
            path,
            "maxConcurrentRequests",
            defaults.max_concurrent_requests.as_ref(),
            own.max_concurrent_requests.as_ref(),
        )
        .top(),
        dns_refresh: Section::of(path, "dnsRefresh", defaults.dns_refresh.as_ref(), own.dns_refresh.as_ref()).top(),
        startup_grace: Section::of(path, "startupGrace", defaults.startup_grace.as_ref(), own.startup_grace.as_ref()).top(),
    }
}

/// Layer 4: the `breaker` keys of the route at `path` (`routes[i]`), to go
/// over its upstream's policy.
pub fn route_breaker<'a>(path: &str, own: Option<&'a RawBreaker>) -> Section<'a, RawBreaker> {
    let home = format!("{path}.breaker");
    Section { layers: own.map(|r| (home.clone(), r)).into_iter().collect(), home }
}

// === impl Section ===

impl<'a, R> Section<'a, R> {
    /// `key` of the upstream at `path`, under `defaults.key` (either may be
    /// absent).
    fn of(path: &str, key: &str, defaults: Option<&'a R>, own: Option<&'a R>) -> Self {
        let home = format!("{path}.{key}");
        let layers = [(format!("defaults.{key}"), defaults), (home.clone(), own)];
        Section { layers: layers.into_iter().filter_map(|(at, r)| Some((at, r?))).collect(), home }
    }

    /// Whether any layer writes the section (`healthCheck: {}` does).
    pub fn is_written(&self) -> bool {
        !self.layers.is_empty()
    }

    /// The section as the highest layer that writes it writes it.
    pub fn top(&self) -> Option<Written<'a, R>> {
        self.layers.last().map(|(at, value)| Written { at: at.clone(), value: *value })
    }

    /// The merged value of one key of the section (`field` reads it from a
    /// layer): the highest layer's that writes it.
    pub fn get<T: ?Sized>(&self, key: &str, field: impl Fn(&'a R) -> Option<&'a T>) -> Option<Written<'a, T>> {
        self.layers.iter().rev().find_map(|(at, layer)| field(layer).map(|value| Written { at: format!("{at}.{key}"), value }))
    }
}
