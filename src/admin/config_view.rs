//! `GET /api/admin/config`: the effective config (Envoy's `/config_dump`)
//! — every key with its default applied, in the file's key names and
//! human durations, runtime overrides marked, secrets redacted (a JWT
//! secret shows only where it comes from).
//!
//! Owns the rendering of a [`Config`] for people; must not read files or
//! change anything.

use std::collections::HashMap;

use serde_json::{json, Value};

use crate::config::render::{breaker, human, route, upstream};
use crate::config::{AuthConfig, Config, JwtKey};
use crate::runtime::{Generation, RuntimeOverride};

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
        "admin": {
            "listen": c.admin.listen.to_string(),
            "allowedOrigins": c.admin.allowed_origins,
            "allowedHosts": c.admin.allowed_hosts,
            "tls": c.admin.tls.as_ref().map(|t| json!({ "certFile": t.cert_file, "keyFile": t.key_file })),
        },
        "auth": auth(&c.auth),
        "client": {
            "headerTimeout": human(c.client.header_timeout),
            "idleTimeout": human(c.client.idle_timeout),
            "maxConnections": c.client.max_connections,
        },
        "accessLog": { "enabled": c.access_log },
        "readiness": { "upstreams": c.readiness_upstreams },
        "metrics": { "requests": c.request_metrics },
        "upstreams": upstreams,
        "routes": c.routes.iter().map(route).collect::<Vec<_>>(),
    })
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
