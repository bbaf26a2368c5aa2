//! `GET /api/admin/config`: the effective config (Envoy's `/config_dump`)
//! — every key with its default applied, in the file's key names and
//! human durations, runtime overrides marked, secrets redacted (a JWT
//! secret shows only where it comes from).
//!
//! Owns the rendering of a [`Config`] for people; must not read files or
//! change anything.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Value};

use crate::breaker::Policy;
use crate::config::{AuthConfig, Config, JwtKey, LoadBalancing, Protocol, RouteConfig, UpstreamConfig};
use crate::proxy::{Generation, RuntimeOverride};

/// The effective config of `generation`, with `overrides` marked.
pub fn render(generation: &Generation, overrides: &HashMap<String, RuntimeOverride>) -> Value {
    let c: &Config = &generation.config;
    let upstreams: serde_json::Map<String, Value> = c
        .upstreams
        .iter()
        .map(|yaml| {
            // What runs: the generation's upstream has overrides applied.
            let running = generation.upstreams.get(&yaml.name).map_or(yaml, |u| &u.config);
            let mut v = upstream(running);
            if let Some(o) = overrides.get(&yaml.name) {
                v["runtimeOverride"] = json!({
                    "appliedBy": o.applied_by,
                    "appliedAt": crate::clock::rfc3339(o.applied_at),
                    "keys": override_keys(o),
                    "yaml": breaker(&yaml.breaker),
                });
            }
            (yaml.name.clone(), v)
        })
        .collect();
    json!({
        "generation": generation.number,
        "listen": c.listen.to_string(),
        "workers": c.workers,
        "tls": c.tls.as_ref().map(|t| json!({ "certFile": t.cert_file, "keyFile": t.key_file })),
        "shutdown": { "drainDelay": human(c.shutdown.drain_delay), "gracePeriod": human(c.shutdown.grace_period) },
        "store": c.store.as_ref().map(|p| json!({ "path": p })),
        "admin": { "listen": c.admin.listen.to_string(), "allowedOrigins": c.admin.allowed_origins },
        "auth": auth(&c.auth),
        "client": {
            "headerTimeout": human(c.client.header_timeout),
            "idleTimeout": human(c.client.idle_timeout),
            "maxConnections": c.client.max_connections,
        },
        "accessLog": { "enabled": c.access_log },
        "metrics": { "requests": c.request_metrics },
        "upstreams": upstreams,
        "routes": c.routes.iter().map(route).collect::<Vec<_>>(),
    })
}

fn human(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

fn auth(a: &AuthConfig) -> Value {
    match a {
        AuthConfig::None => json!("none"),
        AuthConfig::Jwt(j) => {
            let key = match &j.key {
                // Where the secret comes from; never the secret.
                JwtKey::Hs256 { source, .. } => json!({ "hs256": source, "secret": "<redacted>" }),
                JwtKey::PublicKey { file, .. } => json!({ "publicKeyFile": file }),
            };
            json!({ "jwt": {
                "key": key,
                "adminRole": j.admin_role,
                "roleClaim": j.role_claim,
                "requireForReads": j.require_for_reads,
                "issuer": j.issuer,
                "audience": j.audience,
                "leeway": human(j.leeway),
            } })
        }
    }
}

fn upstream(u: &UpstreamConfig) -> Value {
    json!({
        "endpoints": u.endpoints.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "loadBalancing": match u.load_balancing { LoadBalancing::RoundRobin => "round-robin", LoadBalancing::LeastRequest => "least-request" },
        "protocol": match u.protocol { Protocol::Http1 => "http1", Protocol::Http2 => "http2" },
        "breaker": breaker(&u.breaker),
        "healthCheck": u.health_check.as_ref().map(|h| json!({ "path": h.path, "interval": human(h.interval), "timeout": human(h.timeout) })),
        "timeouts": { "connect": human(u.timeouts.connect), "request": human(u.timeouts.request), "idle": human(u.timeouts.idle) },
        "maxConcurrentRequests": u.max_concurrent_requests,
        "fallback": u.fallback.as_ref().map(|f| json!({
            "status": f.status.as_u16(),
            "headers": f.headers.iter().map(|(k, v)| (k.to_string(), Value::from(v.to_str().unwrap_or("<binary>")))).collect::<serde_json::Map<_, _>>(),
            "bodyBytes": f.body.len(),
        })),
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
    })
}

fn breaker(p: &Policy) -> Value {
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

fn route(r: &RouteConfig) -> Value {
    json!({
        "match": {
            "pathPrefix": r.path_prefix,
            "host": r.host,
            "methods": r.methods.as_ref().map(|m| m.iter().map(ToString::to_string).collect::<Vec<_>>()),
        },
        "upstream": r.upstream,
        "operation": r.operation,
        "breaker": r.breaker.as_ref().map(breaker),
    })
}

/// The keys a runtime override sets, as the PUT body named them.
fn override_keys(o: &RuntimeOverride) -> Value {
    let mut v = json!({
        "failureThreshold": o.failure_threshold,
        "resetTimeoutMs": u64::try_from(o.reset_timeout.as_millis()).unwrap_or(u64::MAX),
        "minHealthyPeriodMs": u64::try_from(o.min_healthy_period.as_millis()).unwrap_or(u64::MAX),
    });
    if let Some(l) = o.request_limit {
        v["requestLimit"] = l.into();
    }
    if let Some(e) = o.enabled {
        v["enabled"] = e.into();
    }
    if let Some(w) = o.monitoring_window {
        v["monitoringWindowMs"] = u64::try_from(w.as_millis()).unwrap_or(u64::MAX).into();
    }
    if let Some(i) = o.health_check_interval {
        v["healthCheckIntervalMs"] = u64::try_from(i.as_millis()).unwrap_or(u64::MAX).into();
    }
    v
}
