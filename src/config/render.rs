//! A checked config in its file's key names, as JSON: every key with its
//! default applied, durations in human form. What `GET /api/admin/config`
//! shows (the admin adds overrides and redacts secrets), and what a runtime
//! override's stable key is made of ([`upstream_key`]).
//!
//! Pure functions of the config; must not read files or know of runtime
//! state. A key renamed here changes the admin API and the stored
//! overrides' keys: keep the file's names.

use std::time::Duration;

use serde_json::{json, Value};

use super::{LoadBalancing, Protocol, RouteConfig, UpstreamConfig};
use crate::breaker::Policy;

/// A duration as the file would spell it (`1m 30s`).
pub fn human(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// One upstream as the file would say it (its fallback body as a length).
pub fn upstream(u: &UpstreamConfig) -> Value {
    json!({
        "endpoints": u.endpoints.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "loadBalancing": match u.load_balancing { LoadBalancing::RoundRobin => "round-robin", LoadBalancing::LeastRequest => "least-request" },
        "protocol": match u.protocol { Protocol::Http1 => "http1", Protocol::Http2 => "http2" },
        "breaker": breaker(&u.breaker),
        "healthCheck": u.health_check.as_ref().map(|h| json!({ "path": h.path, "interval": human(h.interval), "timeout": human(h.timeout) })),
        "timeouts": { "connect": human(u.timeouts.connect), "request": human(u.timeouts.request), "idle": human(u.timeouts.idle) },
        "maxConcurrentRequests": u.max_concurrent_requests,
        "fallback": u.fallback.as_ref().map(fallback),
        "tls": {
            "caFile": u.tls.ca_file,
            "serverName": u.tls.server_name,
            "certFile": u.tls.cert_file,
            "keyFile": u.tls.key_file,
        },
        "outlierDetection": {
            "consecutiveFailures": u.outlier_detection.consecutive_failures,
            "baseEjectionTime": human(u.outlier_detection.base_ejection_time),
            "maxEjectionTime": human(u.outlier_detection.max_ejection_time),
            "maxEjectionPercent": u.outlier_detection.max_ejection_percent,
        },
        "retry": {
            "attempts": u.retry.attempts,
            "on": u.retry.on.names(),
            "budget": { "ratio": u.retry.budget_ratio, "minPerSecond": u.retry.budget_min_per_second },
        },
        "dnsRefresh": human(u.dns_refresh),
        "startupGrace": human(u.startup_grace),
        "pool": { "idleTimeout": human(u.pool_idle_timeout) },
    })
}

pub fn breaker(p: &Policy) -> Value {
    json!({
        "enabled": p.enabled,
        "failureThreshold": p.failure_threshold,
        "failureRateThreshold": p.failure_rate_threshold,
        "minimumRequestCount": p.minimum_request_count,
        "monitoringWindow": human(p.monitoring_window),
        "slowCallDuration": human(p.slow_call_duration),
        "slowCallRateThreshold": p.slow_call_rate_threshold,
        "resetTimeout": human(p.reset_timeout),
        "maxResetTimeout": human(p.max_reset_timeout),
        "jitter": p.jitter,
        "halfOpenRequests": p.half_open_requests,
        "minHealthyPeriod": human(p.min_healthy_period),
        "recoveryRamp": human(p.recovery_ramp),
        "failureStatuses": p.failure_statuses.0.iter().map(|r| if r.from == r.to { r.from.to_string() } else { format!("{}-{}", r.from, r.to) }).collect::<Vec<_>>(),
    })
}

pub fn route(r: &RouteConfig) -> Value {
    json!({
        "match": {
            "pathPrefix": r.path_prefix,
            "host": r.host,
            "methods": r.methods.as_ref().map(|m| m.iter().map(ToString::to_string).collect::<Vec<_>>()),
        },
        "upstream": r.upstream,
        "operation": r.operation,
        "breaker": r.breaker.as_ref().map(breaker),
        "fallback": r.fallback.as_ref().map(fallback),
    })
}

/// A fallback, its body as a length.
fn fallback(f: &crate::config::Fallback) -> Value {
    json!({
        "status": f.status.as_u16(),
        "headers": f.headers.iter().map(|(k, v)| (k.to_string(), Value::from(v.to_str().unwrap_or("<binary>")))).collect::<serde_json::Map<_, _>>(),
        "bodyBytes": f.body.len(),
    })
}

/// A string that names the YAML of one upstream, stable across versions
/// of fusebox (unlike a `Debug` rendering): its rendering in the file's
/// key names, with the fallback body in full. A runtime override is stored
/// with it and holds while it stays the same.
pub fn upstream_key(u: &UpstreamConfig) -> String {
    let mut v = upstream(u);
    if let Some(f) = &u.fallback {
        v["fallback"]["body"] = Value::from(String::from_utf8_lossy(&f.body).into_owned());
    }
    v["name"] = Value::from(u.name.as_str());
    v.to_string()
}
