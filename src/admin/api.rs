//! The admin API under `/api/admin/` (README: Admin listener):
//!
//! - `GET  circuit-breaker/status` — every service, in the seeds' shape.
//! - `PUT|DELETE circuit-breaker/{service}/config` — runtime override.
//! - `POST circuit-breaker/{service}/reset` — close and clear history.
//! - `POST circuit-breaker/{service}/force` — operator modes, with ttl.
//! - `GET  circuit-breaker/{service}/history?timeframe=1h|24h|7d|30d`
//!   (with a store, also the stored transitions of the timeframe).
//! - `POST config/reload` — reload the YAML now.
//! - `GET  audit` — the last admin mutations.
//!
//! Reads are open unless `auth.jwt.requireForReads`; every mutation needs
//! the admin role, is rate limited per caller, and is written to the audit
//! log (who, what, why, before, after). Errors are `{error:{code,message}}`.
//!
//! Durable audit (README: Admin listener, Persistence): with a store, a mutation first
//! writes the audit entry describing the intended change and waits for the
//! commit; only then is the change applied and 200 answered. A store that
//! cannot write makes the mutation answer 503 `store_unavailable` and
//! change nothing. (A reload's stored entry is its request; the in-memory
//! list shows its outcome.) Without a store the audit is in memory only.
//!
//! This module must not touch breaker internals except through `Circuit`,
//! and must not write to the store on the data plane's behalf.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::{bearer, AuthError, Principal};
use super::health::service_entry;
use super::AdminState;
use crate::breaker::{CircuitState, Mode};
use crate::clock;
use crate::http::error_response;
use crate::http::json_response;
use crate::http::ProxyBody;
use crate::runtime::upstream::Upstream;
use crate::runtime::RuntimeOverride;

/// Largest admin request body.
const MAX_BODY: usize = 64 * 1024;
/// How long a mutation waits for its audit entry to be committed before it
/// answers 503 and changes nothing.
const AUDIT_COMMIT_LIMIT: Duration = Duration::from_secs(5);

type Resp = Response<ProxyBody>;

#[derive(Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ConfigBody {
    failure_threshold: u32,
    reset_timeout_ms: u64,
    min_healthy_period_ms: u64,
    request_limit: Option<usize>,
    /// The rest of the architecture seed's `CircuitBreakerConfig`.
    enabled: Option<bool>,
    monitoring_window_ms: Option<u64>,
    health_check_interval_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ResetBody {
    reason: String,
    #[serde(default)]
    force: bool,
    metadata: Option<ResetMetadata>,
}

#[derive(Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ResetMetadata {
    triggered_by: Option<String>,
    environment: Option<String>,
    notes: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ForceBody {
    state: String,
    reason: String,
    ttl_ms: Option<u64>,
}

/// `?scope=local`: an operator action that stays on this member.
fn scope_local(req: &Request<Incoming>) -> bool {
    req.uri().query().is_some_and(|q| q.split('&').any(|kv| kv == "scope=local"))
}

fn fleet_action(
    service: &str,
    kind: &str,
    mode: Option<&str>,
    ttl_ms: Option<u64>,
    reason: &str,
    who: &Principal,
) -> crate::fleet::codec::Action {
    crate::fleet::codec::Action {
        circuit: service.to_string(),
        kind: kind.to_string(),
        mode: mode.map(str::to_string),
        ttl_ms,
        reason: reason.chars().take(crate::fleet::codec::MAX_TEXT).collect(),
        by: who.subject.chars().take(crate::fleet::codec::MAX_TEXT).collect(),
        at_ms: crate::store::unix_ms(SystemTime::now()),
        config: None,
    }
}

/// SPEC 10: an operator action that succeeded here applies on every
/// member of the fleet (unless `?scope=local`); never waits for Redis.
fn fleet_wide(state: &AdminState, resp: Resp, local: bool, action: crate::fleet::codec::Action) -> Resp {
    if resp.status() == StatusCode::OK && !local {
        if let Some(f) = state.fleet.get() {
            f.publish_action(action);
        }
    }
    resp
}

/// Routes `/api/admin/...`; `None` when the path is not an API path.
pub async fn handle(req: Request<Incoming>, state: &Arc<AdminState>) -> Option<Resp> {
    let path = req.uri().path().trim_end_matches('/').to_owned();
    let rest = path.strip_prefix("/api/admin/")?;
    // Each segment percent-decoded here, once: every verb and the audit
    // log see the same name (`market%2Ddata` is `market-data`; an
    // operation's circuit is `upstream%2Fop`).
    let decoded: Vec<String> = rest.split('/').map(|p| percent_encoding::percent_decode_str(p).decode_utf8_lossy().into_owned()).collect();
    let parts: Vec<&str> = decoded.iter().map(String::as_str).collect();
    let Some(route) = Route::parse(&parts) else {
        return Some(error_response(StatusCode::NOT_FOUND, "not_found", "no such admin endpoint"));
    };
    let method = req.method().clone();
    if !route.methods().contains(&method) {
        // RFC 9110 15.5.6: a 405 names the methods the resource has.
        let allow = route.methods().iter().map(Method::as_str).collect::<Vec<_>>().join(", ");
        let mut resp =
            error_response(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", format!("{method} is not allowed here; use {allow}"));
        if let Ok(v) = HeaderValue::from_str(&allow) {
            resp.headers_mut().insert(http::header::ALLOW, v);
        }
        return Some(resp);
    }
    let resp = match route {
        Route::Status => read(&req, state).map_or_else(|e| e, |_| status(state)),
        Route::Operation { service, operation } => match read(&req, state) {
            Ok(_) => operation_stats(state, service, operation),
            Err(e) => e,
        },
        Route::History { service } => match read(&req, state) {
            Ok(_) => history(state, service, req.uri().query()).await,
            Err(e) => e,
        },
        // The effective config: admin-only where auth is on (it shows how
        // fusebox is wired, though never a secret).
        Route::Config => match admin(&req, state) {
            Ok(_) => {
                let overrides = state.live.store.shared.overrides.lock().clone();
                json_response(StatusCode::OK, &super::config_view::render(&state.live.store.current(), &overrides))
            }
            Err(e) => e,
        },
        Route::Audit => match read(&req, state) {
            Ok(_) => audit_list(state),
            Err(e) => e,
        },
        Route::BreakerConfig { service } if method == Method::PUT => {
            let service = service.to_string();
            let local = scope_local(&req);
            match mutate::<ConfigBody>(req, state).await {
                Ok((p, body)) => {
                    let mut action = fleet_action(&service, "config", None, None, "runtime override", &p);
                    action.config = serde_json::to_value(&body).ok();
                    let resp = put_config(state, &p, &service, body).await;
                    fleet_wide(state, resp, local, action)
                }
                Err(e) => e,
            }
        }
        Route::BreakerConfig { service } => match admin(&req, state) {
            Ok(p) => {
                let action = fleet_action(service, "config", None, None, "runtime override removed", &p);
                let resp = delete_config(state, &p, service).await;
                fleet_wide(state, resp, scope_local(&req), action)
            }
            Err(e) => e,
        },
        Route::Reset { service } => {
            let service = service.to_string();
            let local = scope_local(&req);
            match mutate::<ResetBody>(req, state).await {
                Ok((p, body)) => {
                    let action = fleet_action(&service, "reset", None, None, &body.reason, &p);
                    let resp = reset(state, &p, &service, body).await;
                    fleet_wide(state, resp, local, action)
                }
                Err(e) => e,
            }
        }
        Route::Force { service } => {
            let service = service.to_string();
            let local = scope_local(&req);
            match mutate::<ForceBody>(req, state).await {
                Ok((p, body)) => {
                    let action = fleet_action(&service, "force", Some(&body.state), body.ttl_ms, &body.reason, &p);
                    let resp = force(state, &p, &service, body).await;
                    fleet_wide(state, resp, local, action)
                }
                Err(e) => e,
            }
        }
        Route::Fleet => match read(&req, state) {
            Ok(_) => {
                json_response(StatusCode::OK, &state.fleet.get().map_or_else(|| json!({ "enabled": false, "members": [] }), |f| f.view()))
            }
            Err(e) => e,
        },
        Route::Reload => match admin(&req, state) {
            Ok(p) => reload(state, &p).await,
            Err(e) => e,
        },
    };
    Some(resp)
}

/// The admin API's resources, each path written once (`parse`) with the
/// methods it answers (`methods`, also the `Allow` of a 405).
#[derive(Debug, Clone, Copy)]
enum Route<'a> {
    Status,
    Operation { service: &'a str, operation: &'a str },
    History { service: &'a str },
    Config,
    Audit,
    BreakerConfig { service: &'a str },
    Reset { service: &'a str },
    Force { service: &'a str },
    Reload,
    Fleet,
}

impl<'a> Route<'a> {
    /// The resource `parts` (the path after `/api/admin/`, split on `/`) names.
    fn parse(parts: &[&'a str]) -> Option<Route<'a>> {
        Some(match *parts {
            ["circuit-breaker", "status"] => Route::Status,
            ["circuit-breaker", service, "operations", operation] => Route::Operation { service, operation },
            ["circuit-breaker", service, "history"] => Route::History { service },
            ["circuit-breaker", service, "config"] => Route::BreakerConfig { service },
            ["circuit-breaker", service, "reset"] => Route::Reset { service },
            ["circuit-breaker", service, "force"] => Route::Force { service },
            ["config"] => Route::Config,
            ["fleet"] => Route::Fleet,
            ["config", "reload"] => Route::Reload,
            ["audit"] => Route::Audit,
            _ => return None,
        })
    }

    fn methods(self) -> &'static [Method] {
        match self {
            Route::Status | Route::Operation { .. } | Route::History { .. } | Route::Config | Route::Audit | Route::Fleet => &[Method::GET],
            Route::BreakerConfig { .. } => &[Method::PUT, Method::DELETE],
            Route::Reset { .. } | Route::Force { .. } | Route::Reload => &[Method::POST],
        }
    }
}

fn auth_error(e: &AuthError) -> Resp {
    match e {
        AuthError::Missing => error_response(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string()),
        AuthError::Invalid(_) => error_response(StatusCode::UNAUTHORIZED, "invalid_token", e.to_string()),
        AuthError::Forbidden(_) => error_response(StatusCode::FORBIDDEN, "forbidden", e.to_string()),
    }
}

/// Reads are open unless the config asks for a token.
fn read(req: &Request<Incoming>, state: &AdminState) -> Result<Option<Principal>, Resp> {
    let auth = state.authorizer();
    if !auth.reads_need_token() {
        return Ok(None);
    }
    auth.verify(bearer(req.headers())).map(Some).map_err(|e| auth_error(&e))
}

/// Admin role plus the per-caller rate limit.
fn admin(req: &Request<Incoming>, state: &AdminState) -> Result<Principal, Resp> {
    let p = state.authorizer().admin(bearer(req.headers())).map_err(|e| auth_error(&e))?;
    if let Err(wait) = state.mutations.check(&p.subject) {
        // Whole seconds, rounded up: a client that waits that long is let in.
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let mut resp = error_response(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many admin changes by {}; try again in {secs}s", p.subject),
        );
        resp.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        return Err(resp);
    }
    Ok(p)
}

/// Auth, rate limit, bounded body, JSON with unknown fields refused.
async fn mutate<B: DeserializeOwned>(req: Request<Incoming>, state: &Arc<AdminState>) -> Result<(Principal, B), Resp> {
    let principal = admin(&req, state)?;
    let bytes: Bytes = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            let too_big = e.downcast_ref::<http_body_util::LengthLimitError>().is_some();
            return Err(if too_big {
                error_response(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", format!("bodies are limited to {MAX_BODY} bytes"))
            } else {
                error_response(StatusCode::BAD_REQUEST, "bad_body", "could not read the request body")
            });
        }
    };
    match serde_json::from_slice::<B>(&bytes) {
        Ok(body) => Ok((principal, body)),
        Err(e) => Err(error_response(StatusCode::BAD_REQUEST, "bad_body", format!("invalid JSON body: {e}"))),
    }
}

/// The circuit named by a (decoded) `{service}` path segment: an
/// upstream, or an operation's circuit `upstream/operation` (its `/`
/// URL-encoded in the path).
fn find(state: &AdminState, service: &str) -> Result<Arc<Upstream>, Resp> {
    state
        .live
        .store
        .current()
        .upstreams
        .get(service)
        .cloned()
        .ok_or_else(|| error_response(StatusCode::NOT_FOUND, "unknown_service", format!("no upstream named `{service}`")))
}

/// `GET .../{service}/operations/{operation}`: the usage guide's
/// `CircuitBreakerStats` of one operation's circuit.
fn operation_stats(state: &AdminState, service: &str, operation: &str) -> Resp {
    let up = match find(state, &format!("{service}/{operation}")) {
        Ok(up) => up,
        Err(_) => {
            return error_response(
                StatusCode::NOT_FOUND,
                "unknown_operation",
                format!("upstream `{service}` has no operation `{operation}`"),
            );
        }
    };
    let now = clock::now();
    let s = up.circuit.snapshot(now);
    let state_name = match s.state {
        crate::breaker::CircuitState::Open | crate::breaker::CircuitState::ForcedOpen => "OPEN",
        crate::breaker::CircuitState::HalfOpen => "HALF_OPEN",
        _ => "CLOSED",
    };
    let rate = if s.total > 0 { s.failed as f64 / s.total as f64 } else { 0.0 };
    let stamp = |t: Option<std::time::Instant>| t.map(|t| clock::rfc3339(clock::wall(t)));
    json_response(
        StatusCode::OK,
        &json!({
            "service": up.config.name,
            "operation": operation,
            "state": state_name,
            // The seed's "total number of failures" (in the window, like
            // totalRequests); the consecutive count is its own field.
            "failureCount": s.failed,
            "consecutiveFailures": s.failure_count,
            "successCount": s.successful,
            "totalRequests": s.total,
            "lastFailureTime": stamp(s.last_failure),
            "lastSuccessTime": stamp(s.last_success),
            "nextAttemptTime": stamp(s.open_until),
            "failureRate": (rate * 1e4).round() / 1e4,
        }),
    )
}

/// Writes an operator's change of a circuit to the store at once (the
/// periodic snapshot would lose it to a crash in between).
fn save_circuit(state: &AdminState, up: &Upstream) {
    if let Some(store) = &state.live.store.shared.persist {
        up.circuit.save(store);
    }
}

/// Records a change about to be made: with a store, waits until its entry
/// is committed and answers `Err(503 store_unavailable)` if it cannot be
/// (the caller must then change nothing); then logs it and keeps it in
/// memory. Call it before applying the change, with `after` the intended
/// result.
async fn audit(
    state: &AdminState,
    who: &Principal,
    action: &str,
    service: Option<&str>,
    reason: &str,
    before: Value,
    after: Value,
) -> Result<MutationTurn, Resp> {
    let entry = audit_entry(who, action, service, reason, before, after);
    let turn = commit_audit(state, &entry).await?;
    remember(state, entry);
    Ok(turn)
}

fn audit_entry(who: &Principal, action: &str, service: Option<&str>, reason: &str, before: Value, after: Value) -> Value {
    json!({
        "timestamp": clock::timestamp(),
        "who": who.subject,
        "action": action,
        "service": service,
        "reason": reason,
        "before": before,
        "after": after,
    })
}

/// One mutation's turn: mutations take turns from entering their audit
/// entry to applying their change, so the audit log's order is the order
/// changes were applied in (the store's row ids are the sequence).
type MutationTurn = tokio::sync::MutexGuard<'static, ()>;

/// Writes `entry` to the store (when there is one) and waits for the
/// commit, in the mutation's turn, which the caller holds until its change
/// is applied.
async fn commit_audit(state: &AdminState, entry: &Value) -> Result<MutationTurn, Resp> {
    static TURNS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let turn = TURNS.lock().await;
    let Some(store) = &state.live.store.shared.persist else { return Ok(turn) };
    match store.audit_durable(SystemTime::now(), entry, AUDIT_COMMIT_LIMIT).await {
        Ok(()) => Ok(turn),
        Err(e) => {
            let action = entry["action"].as_str().unwrap_or("-");
            tracing::error!(target: "fusebox::audit", action, error = %e, "admin {action} refused: its audit entry could not be stored; nothing was changed");
            Err(error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                format!("the audit entry could not be stored, so nothing was changed: {e}"),
            ))
        }
    }
}

/// Logs an audit entry and keeps it in the in-memory list.
fn remember(state: &AdminState, entry: Value) {
    // `who` and `reason` come from a token and a request body: escaped
    // (Debug) so a newline or an escape sequence cannot forge a log line.
    let text = |k: &str| entry[k].as_str().unwrap_or("-").to_string();
    let (who, action, service, reason) = (text("who"), text("action"), text("service"), text("reason"));
    tracing::info!(target: "fusebox::audit", who = ?who, action = %action, service = %service, reason = ?reason, before = %entry["before"], after = %entry["after"], "admin {action} by {who:?}");
    let mut log = state.audit.lock();
    if log.len() >= crate::store::AUDIT_RECENT {
        log.pop_front();
    }
    log.push_back(entry);
}

fn status(state: &AdminState) -> Resp {
    let gen = state.live.store.current();
    let now = clock::now();
    let overrides = state.live.store.shared.overrides.lock().clone();
    let services: Vec<Value> = gen
        .sorted_upstreams()
        .into_iter()
        .map(|u| {
            let s = u.circuit.snapshot(now);
            let mut entry = service_entry(u, &s);
            entry["config"] = effective_config(u);
            if let (Some(c), Value::Object(extra)) = (entry["config"].as_object_mut(), seed_config(u)) {
                c.extend(extra);
            }
            entry["mode"] = json!(s.mode.as_str());
            entry["modeUntil"] = json!(s.mode_until.map(|t| clock::rfc3339(clock::wall(t))));
            entry["override"] = overrides.get(&u.config.name).map_or(Value::Null, override_json);
            entry
        })
        .collect();
    json_response(
        StatusCode::OK,
        &json!({ "success": true, "timestamp": clock::timestamp(), "generation": gen.number, "services": services }),
    )
}

fn effective_config(u: &Upstream) -> Value {
    let p = &u.config.breaker;
    json!({
        "failureThreshold": p.failure_threshold,
        "resetTimeoutMs": p.reset_timeout.as_millis() as u64,
        "minHealthyPeriodMs": p.min_healthy_period.as_millis() as u64,
        "requestLimit": u.config.max_concurrent_requests,
    })
}

/// The rest of the architecture seed's `CircuitBreakerConfig`, in effect.
fn seed_config(u: &Upstream) -> Value {
    let p = &u.config.breaker;
    json!({
        "enabled": p.enabled,
        "monitoringWindowMs": p.monitoring_window.as_millis() as u64,
        "healthCheckIntervalMs": u.config.health_check.as_ref().map(|h| h.interval.as_millis() as u64),
    })
}

fn override_json(o: &RuntimeOverride) -> Value {
    json!({
        "failureThreshold": o.failure_threshold,
        "resetTimeoutMs": o.reset_timeout.as_millis() as u64,
        "minHealthyPeriodMs": o.min_healthy_period.as_millis() as u64,
        "requestLimit": o.request_limit,
        "appliedAt": clock::rfc3339(o.applied_at),
        "appliedBy": o.applied_by,
    })
}

async fn put_config(state: &Arc<AdminState>, who: &Principal, service: &str, body: ConfigBody) -> Resp {
    let up = match find(state, service) {
        Ok(u) => u,
        Err(e) => return e,
    };
    let mut problems = Vec::new();
    if !(1..=100_000).contains(&body.failure_threshold) {
        problems.push("failureThreshold must be between 1 and 100000");
    }
    if !(1..=86_400_000).contains(&body.reset_timeout_ms) {
        problems.push("resetTimeoutMs must be between 1 and 86400000");
    }
    if body.min_healthy_period_ms > 7 * 86_400_000 {
        problems.push("minHealthyPeriodMs must be at most 7 days");
    }
    if body.request_limit.is_some_and(|l| l == 0 || l > 1_000_000) {
        problems.push("requestLimit must be between 1 and 1000000");
    }
    if body.monitoring_window_ms.is_some_and(|w| !(1_000..=7 * 86_400_000).contains(&w)) {
        problems.push("monitoringWindowMs must be between 1000 and 7 days");
    }
    if body.health_check_interval_ms.is_some_and(|i| !(100..=86_400_000).contains(&i)) {
        problems.push("healthCheckIntervalMs must be between 100 and 86400000");
    }
    // Never accepted and ignored: an interval needs a health check to time.
    if body.health_check_interval_ms.is_some() && up.config.health_check.is_none() {
        problems.push("healthCheckIntervalMs needs a healthCheck on this upstream (configure one in the YAML first)");
    }
    if !problems.is_empty() {
        return error_response(StatusCode::BAD_REQUEST, "invalid_config", problems.join("; "));
    }
    let gen = state.live.store.current();
    let Some(base) = gen.config.upstream(service).cloned() else {
        return error_response(StatusCode::NOT_FOUND, "unknown_service", format!("no upstream named `{service}`"));
    };
    let before = effective_config(&up);
    let intended = json!({
        "failureThreshold": body.failure_threshold,
        "resetTimeoutMs": body.reset_timeout_ms,
        "minHealthyPeriodMs": body.min_healthy_period_ms,
        "requestLimit": body.request_limit.unwrap_or(base.max_concurrent_requests),
        "enabled": body.enabled.unwrap_or(base.breaker.enabled),
        "monitoringWindowMs": body.monitoring_window_ms.unwrap_or(base.breaker.monitoring_window.as_millis() as u64),
    });
    // Held until the change is applied: audit order is applied order.
    let _in_order = match audit(state, who, "config", Some(service), "runtime override", before, intended).await {
        Ok(turn) => turn,
        Err(resp) => return resp,
    };
    let o = RuntimeOverride {
        base,
        failure_threshold: body.failure_threshold,
        reset_timeout: Duration::from_millis(body.reset_timeout_ms),
        min_healthy_period: Duration::from_millis(body.min_healthy_period_ms),
        request_limit: body.request_limit,
        enabled: body.enabled,
        monitoring_window: body.monitoring_window_ms.map(Duration::from_millis),
        health_check_interval: body.health_check_interval_ms.map(Duration::from_millis),
        applied_at: SystemTime::now(),
        applied_by: who.subject.clone(),
    };
    let applied_at = clock::rfc3339(o.applied_at);
    state.live.store.shared.overrides.lock().insert(service.to_string(), o);
    state.live.store.apply((*gen.config).clone(), "admin config override");
    let after = find(state, service)
        .map(|u| {
            let mut config = effective_config(&u);
            if let (Some(c), Value::Object(extra)) = (config.as_object_mut(), seed_config(&u)) {
                c.extend(extra);
            }
            config
        })
        .unwrap_or(Value::Null);
    let mut echoed = json!({
        "failureThreshold": body.failure_threshold,
        "resetTimeoutMs": body.reset_timeout_ms,
        "minHealthyPeriodMs": body.min_healthy_period_ms,
        // Defaulted to what is in effect now (after this change), never null.
        "requestLimit": body.request_limit.unwrap_or_else(|| find(state, service).map_or(up.config.max_concurrent_requests, |u| u.config.max_concurrent_requests)),
    });
    // The seed's other keys are echoed when the body named them.
    if let Some(v) = body.enabled {
        echoed["enabled"] = v.into();
    }
    if let Some(v) = body.monitoring_window_ms {
        echoed["monitoringWindowMs"] = v.into();
    }
    if let Some(v) = body.health_check_interval_ms {
        echoed["healthCheckIntervalMs"] = v.into();
    }
    json_response(
        StatusCode::OK,
        &json!({
            "success": true,
            "service": service,
            "config": echoed,
            "effective": after,
            "appliedAt": applied_at,
        }),
    )
}

async fn delete_config(state: &Arc<AdminState>, who: &Principal, service: &str) -> Resp {
    let up = match find(state, service) {
        Ok(u) => u,
        Err(e) => return e,
    };
    if !state.live.store.shared.overrides.lock().contains_key(service) {
        return error_response(StatusCode::NOT_FOUND, "no_override", format!("upstream `{service}` has no runtime override"));
    }
    let before = effective_config(&up);
    // Back to the YAML's values.
    let intended = state.live.store.current().config.upstream(service).map_or(Value::Null, |base| {
        json!({
            "failureThreshold": base.breaker.failure_threshold,
            "resetTimeoutMs": base.breaker.reset_timeout.as_millis() as u64,
            "minHealthyPeriodMs": base.breaker.min_healthy_period.as_millis() as u64,
            "requestLimit": base.max_concurrent_requests,
        })
    });
    // Held until the change is applied: audit order is applied order.
    let _in_order = match audit(state, who, "config-delete", Some(service), "runtime override removed", before, intended).await {
        Ok(turn) => turn,
        Err(resp) => return resp,
    };
    let removed = state.live.store.shared.overrides.lock().remove(service);
    if removed.is_none() {
        // Removed by a concurrent call meanwhile: the outcome is the same.
        tracing::info!(service, "runtime override already removed");
    }
    state.live.store.apply((*state.live.store.current().config).clone(), "admin override removed");
    let after = find(state, service).map(|u| effective_config(&u)).unwrap_or(Value::Null);
    json_response(StatusCode::OK, &json!({ "success": true, "service": service, "config": after, "removedAt": clock::timestamp() }))
}

async fn reset(state: &AdminState, who: &Principal, service: &str, body: ResetBody) -> Resp {
    let up = match find(state, service) {
        Ok(u) => u,
        Err(e) => return e,
    };
    if body.reason.trim().is_empty() {
        return error_response(StatusCode::BAD_REQUEST, "bad_body", "`reason` must say why");
    }
    let now = clock::now();
    let snap = up.circuit.snapshot(now);
    if matches!(snap.state, CircuitState::ForcedOpen | CircuitState::ForcedClosed | CircuitState::MetricsOnly) && !body.force {
        return error_response(
            StatusCode::CONFLICT,
            "conflicting_state",
            format!("circuit `{service}` is {} by an operator; send \"force\": true to reset it anyway", snap.state),
        );
    }
    let action = format!("reset by {}: {}", who.subject, body.reason);
    // The intended result, from a copy of the breaker: nothing changes until
    // the audit entry is committed.
    let (predicted, report) = up.circuit.with(|b| {
        let mut copy = b.clone();
        let report = copy.reset(&action, now);
        (copy.snapshot(now).state, report)
    });
    let previous = json!({
        "state": report.previous.as_str(),
        "failureCount": report.failure_count,
        "lastFailure": report.last_failure.map(|t| clock::rfc3339(clock::wall(t))),
        "totalIncidents": report.total_incidents,
    });
    let mut after = json!({ "state": predicted.as_str() });
    if let Some(m) = &body.metadata {
        after["metadata"] = json!(m);
    }
    // Held until the change is applied: audit order is applied order.
    let _in_order = match audit(state, who, "reset", Some(service), &body.reason, previous, after).await {
        Ok(turn) => turn,
        Err(resp) => return resp,
    };
    let report = up.circuit.reset(&action, now);
    save_circuit(state, &up);
    let previous = json!({
        "state": report.previous.as_str(),
        "failureCount": report.failure_count,
        "lastFailure": report.last_failure.map(|t| clock::rfc3339(clock::wall(t))),
        "totalIncidents": report.total_incidents,
    });
    let reset_time = clock::timestamp();
    json_response(StatusCode::OK, &json!({ "success": true, "service": service, "resetTime": reset_time, "previousState": previous }))
}

async fn force(state: &AdminState, who: &Principal, service: &str, body: ForceBody) -> Resp {
    let up = match find(state, service) {
        Ok(u) => u,
        Err(e) => return e,
    };
    let Some(mode) = Mode::parse(&body.state) else {
        return error_response(StatusCode::BAD_REQUEST, "bad_body", "`state` must be forced-open, forced-closed, metrics-only or auto");
    };
    if body.reason.trim().is_empty() {
        return error_response(StatusCode::BAD_REQUEST, "bad_body", "`reason` must say why");
    }
    let ttl = match body.ttl_ms {
        Some(0) => return error_response(StatusCode::BAD_REQUEST, "bad_body", "`ttlMs` must be positive"),
        Some(ms) if ms > 7 * 86_400_000 => return error_response(StatusCode::BAD_REQUEST, "bad_body", "`ttlMs` must be at most 7 days"),
        Some(_) if mode == Mode::Auto => return error_response(StatusCode::BAD_REQUEST, "bad_body", "`ttlMs` makes no sense with `auto`"),
        other => other.map(Duration::from_millis),
    };
    let now = clock::now();
    let before = up.circuit.snapshot(now);
    if before.mode == mode && ttl.is_none() && before.mode_until.is_none() {
        return error_response(StatusCode::CONFLICT, "conflicting_state", format!("circuit `{service}` is already {}", mode.as_str()));
    }
    let action = format!("{} by {}: {}", mode.as_str(), who.subject, body.reason);
    // The intended result, from a copy of the breaker: nothing changes until
    // the audit entry is committed.
    let predicted = up.circuit.with(|b| {
        let mut copy = b.clone();
        copy.force(mode, ttl, &action, now);
        copy.snapshot(now)
    });
    let until = predicted.mode_until.map(|t| clock::rfc3339(clock::wall(t)));
    // Held until the change is applied: audit order is applied order.
    let _in_order = match audit(
        state,
        who,
        "force",
        Some(service),
        &body.reason,
        json!({ "state": before.state.as_str(), "mode": before.mode.as_str() }),
        json!({ "state": predicted.state.as_str(), "mode": predicted.mode.as_str(), "until": until }),
    )
    .await
    {
        Ok(turn) => turn,
        Err(resp) => return resp,
    };
    up.circuit.force(mode, ttl, &action, now);
    save_circuit(state, &up);
    let after = up.circuit.snapshot(now);
    let until = after.mode_until.map(|t| clock::rfc3339(clock::wall(t)));
    json_response(
        StatusCode::OK,
        &json!({
            "success": true,
            "service": service,
            "state": after.state.as_str(),
            "previousState": before.state.as_str(),
            "until": until,
            "appliedAt": clock::timestamp(),
        }),
    )
}

async fn history(state: &AdminState, service: &str, query: Option<&str>) -> Resp {
    let up = match find(state, service) {
        Ok(u) => u,
        Err(e) => return e,
    };
    let timeframe = query.into_iter().flat_map(|q| q.split('&')).find_map(|kv| kv.strip_prefix("timeframe=")).unwrap_or("24h");
    let span = match timeframe {
        "1h" => 3600,
        "24h" => 86_400,
        "7d" => 7 * 86_400,
        "30d" => 30 * 86_400,
        other => {
            return error_response(StatusCode::BAD_REQUEST, "bad_timeframe", format!("timeframe `{other}` is not 1h, 24h, 7d or 30d"));
        }
    };
    let now = clock::unix_secs(SystemTime::now());
    let (periods, ops) = up.circuit.history(|h| (h.periods(now, span), h.operations(now, span)));
    let transitions = stored_transitions(state, service, now.saturating_sub(span)).await;
    let entries: Vec<Value> = periods
        .into_iter()
        .map(|(p, duration)| {
            json!({
                "timestamp": clock::rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(p.start)),
                "status": p.status.as_str(),
                "duration": duration,
                "incidents": p.incidents,
            })
        })
        .collect();
    json_response(
        StatusCode::OK,
        &json!({
            "success": true,
            "service": service,
            "timeframe": timeframe,
            "history": entries,
            "transitions": transitions,
            "metrics": {
                "timeframe": timeframe,
                "data": {
                    "requestCount": ops.request_count,
                    "successCount": ops.success_count,
                    "failureCount": ops.failure_count,
                    "avgResponseTime": ops.avg_response_ms,
                    "p95ResponseTime": ops.p95_response_ms,
                    "p99ResponseTime": ops.p99_response_ms,
                },
            },
        }),
    )
}

/// The stored transitions of `service` since Unix second `since` (newest
/// 1,000), or null without a store. Read on a blocking thread.
async fn stored_transitions(state: &AdminState, service: &str, since: u64) -> Value {
    let Some(store) = state.live.store.shared.persist.clone() else { return Value::Null };
    let name = service.to_string();
    let since_ms = i64::try_from(since.saturating_mul(1000)).unwrap_or(i64::MAX);
    match tokio::task::spawn_blocking(move || store.transitions(&name, since_ms, 1000)).await {
        Ok(Ok(list)) => list
            .into_iter()
            .map(|t| {
                json!({
                    "timestamp": clock::rfc3339(SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(t.at_ms).unwrap_or(0))),
                    "from": t.from,
                    "to": t.to,
                    "rule": t.rule,
                    "reason": t.reason,
                    "shadow": t.shadow,
                })
            })
            .collect(),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "reading stored transitions failed");
            Value::Null
        }
        Err(_) => Value::Null,
    }
}

async fn reload(state: &Arc<AdminState>, who: &Principal) -> Resp {
    if state.live.store.path().is_none() {
        return error_response(StatusCode::CONFLICT, "no_config_file", "fusebox runs on a built-in config; there is no file to reload");
    }
    // A store that lost its file re-opens it first (its queue keeps the
    // order: the re-open, then this entry).
    if let Some(store) = &state.live.store.shared.persist {
        store.reopen();
    }
    let before = json!({ "generation": state.live.store.generation() });
    // The stored entry is the request (committed before anything happens);
    // the in-memory list gets the outcome.
    let request = audit_entry(who, "reload", None, "admin reload", before.clone(), json!({ "requested": true }));
    // Its turn ends with the request's entry: reloads coalesce (several
    // requests while one runs cost one more run), so they are audited as
    // requests, and the outcome is kept in memory.
    if let Err(resp) = commit_audit(state, &request).await {
        return resp;
    }
    // Parsed and built on the blocking pool, coalesced with other triggers.
    match state.live.reload_coalesced("admin").await {
        Ok(n) => {
            remember(state, audit_entry(who, "reload", None, "admin reload", before, json!({ "generation": n })));
            json_response(StatusCode::OK, &json!({ "success": true, "generation": n, "reloadedAt": clock::timestamp() }))
        }
        Err(errors) => {
            let details: Vec<Value> =
                errors.errors.iter().map(|e| json!({ "line": e.line, "column": e.column, "path": e.path, "message": e.message })).collect();
            remember(state, audit_entry(who, "reload-rejected", None, "admin reload", before, json!({ "errors": details.len() })));
            json_response(
                StatusCode::BAD_REQUEST,
                &json!({
                    "success": false,
                    "error": { "code": "invalid_config", "message": errors.to_string(), "details": details },
                    "generation": state.live.store.generation(),
                }),
            )
        }
    }
}

fn audit_list(state: &AdminState) -> Resp {
    let log = state.audit.lock();
    json_response(StatusCode::OK, &json!({ "entries": log.iter().collect::<Vec<_>>() }))
}
