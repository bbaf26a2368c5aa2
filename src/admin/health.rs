//! Probes, health reports and the metrics scrape. All cheap reads: a load
//! of the current generation and one short lock per circuit. With a store,
//! `/health/detailed` reports its write health (`ok` or `degraded`, write
//! errors, the last error, dropped writes); a degraded store makes the
//! overall status at least `degraded`. Must not write anything.

use std::sync::atomic::Ordering;
use std::time::SystemTime;

use http::{HeaderValue, Response, StatusCode};
use serde_json::{json, Value};

use super::AdminState;
use crate::breaker::{Snapshot, Status};
use crate::clock;
use crate::http::ProxyBody;
use crate::http::{full, json_response};
use crate::runtime::upstream::Upstream;

pub fn livez() -> Response<ProxyBody> {
    json_response(StatusCode::OK, &json!({ "status": "alive" }))
}

pub fn readyz(state: &AdminState) -> Response<ProxyBody> {
    if state.live.draining.load(Ordering::Acquire) {
        json_response(StatusCode::SERVICE_UNAVAILABLE, &json!({ "status": "draining" }))
    } else if !state.live.ready.load(Ordering::Acquire) {
        json_response(StatusCode::SERVICE_UNAVAILABLE, &json!({ "status": "starting" }))
    } else if let waiting @ [_, ..] = state.live.upstreams_not_ready().as_slice() {
        json_response(StatusCode::SERVICE_UNAVAILABLE, &json!({ "status": "starting", "waitingFor": waiting }))
    } else {
        json_response(StatusCode::OK, &json!({ "status": "ready" }))
    }
}

/// Worst status over all upstreams (unknown counts as healthy here: an
/// idle upstream is not a problem).
fn overall(statuses: impl Iterator<Item = Status>) -> &'static str {
    let mut worst = "healthy";
    for s in statuses {
        match s {
            Status::Failed => return "failed",
            Status::Degraded => worst = "degraded",
            Status::Healthy | Status::Unknown => {}
        }
    }
    worst
}

pub fn summary(state: &AdminState) -> Response<ProxyBody> {
    let gen = state.live.store.current();
    let now = clock::now();
    let snaps: Vec<Snapshot> = gen.upstreams.values().map(|u| u.circuit.snapshot(now)).collect();
    let status = overall(snaps.iter().map(|s| s.status));
    let open = snaps.iter().filter(|s| s.status == Status::Failed).count();
    json_response(
        StatusCode::OK,
        &json!({
            "status": status,
            "timestamp": clock::timestamp(),
            "upstreams": snaps.len(),
            "openCircuits": open,
            "generation": gen.number,
        }),
    )
}

pub fn detailed(state: &AdminState) -> Response<ProxyBody> {
    let gen = state.live.store.current();
    let now = clock::now();
    let services: Vec<Value> = gen.sorted_upstreams().into_iter().map(|u| service_entry(u, &u.circuit.snapshot(now))).collect();
    let reload = state.live.store.status();
    let store = state.live.store.shared.persist.as_ref().map(|p| (p.path().display().to_string(), p.health()));
    let store_degraded = store.as_ref().is_some_and(|(_, h)| h.degraded);
    // `fleet: degraded` with the error while Redis is away (SPEC 10).
    let fleet = state.fleet.get().map(|f| f.view());
    let fleet_degraded = fleet.as_ref().is_some_and(|f| f["status"] == "degraded");
    let status = overall(
        services
            .iter()
            .map(|s| match s["status"].as_str() {
                Some("failed") => Status::Failed,
                Some("degraded") => Status::Degraded,
                _ => Status::Healthy,
            })
            .chain(store_degraded.then_some(Status::Degraded))
            .chain(fleet_degraded.then_some(Status::Degraded)),
    );
    json_response(
        StatusCode::OK,
        &json!({
            "status": status,
            "timestamp": clock::timestamp(),
            "uptimeSeconds": SystemTime::now().duration_since(state.live.started).map_or(0, |d| d.as_secs()),
            "config": {
                "generation": gen.number,
                "path": state.live.store.path().map(|p| p.display().to_string()),
                "lastReload": {
                    "trigger": reload.last_trigger,
                    "attemptedAt": reload.last_attempt.map(clock::rfc3339),
                    "succeededAt": reload.last_success.map(clock::rfc3339),
                    "ok": reload.last_error.is_none(),
                    "errors": reload.last_error.as_ref().map(|e| e.errors.iter().map(|x| json!({
                        "line": x.line, "column": x.column, "path": x.path, "message": x.message,
                    })).collect::<Vec<_>>()),
                    "restartNeeded": reload.restart_needed,
                },
            },
            "websocket": { "clients": state.live.store.shared.metrics.websocket_clients.get() },
            "store": store.map(|(path, h)| json!({
                "path": path,
                "status": if h.degraded { "degraded" } else { "ok" },
                "writeErrors": h.write_errors,
                "lastError": h.last_error.map(|(at, message)| json!({ "at": clock::rfc3339(at), "message": message })),
                "droppedWrites": h.dropped_writes,
            })),
            "fleet": fleet,
            "services": services,
        }),
    )
}

pub fn circuit_breakers(state: &AdminState) -> Response<ProxyBody> {
    let gen = state.live.store.current();
    let now = clock::now();
    let circuits: Vec<Value> = gen
        .sorted_upstreams()
        .into_iter()
        .map(|u| {
            let s = u.circuit.snapshot(now);
            json!({
                "service": u.config.name,
                "state": s.state.as_str(),
                "status": s.status.as_str(),
                "mode": s.mode.as_str(),
                "failureCount": s.failure_count,
                "window": { "calls": s.window.calls, "failures": s.window.failures, "slow": s.window.slow },
                "recoveryAttempts": s.recovery_attempts,
                "totalIncidents": s.total_incidents,
                "rejected": s.rejected,
                "inFlight": u.circuit.in_flight(),
                "endpoints": u.endpoints.view(now),
                "openUntil": s.open_until.map(|t| clock::rfc3339(clock::wall(t))),
                "trip": s.trip.as_ref().map(|r| json!({ "rule": r.rule(), "detail": r.to_string(), "restored": s.restored })),
                "total": s.total,
                "successful": s.successful,
                "failed": s.failed,
                "lastFailure": s.last_failure.map(|t| clock::rfc3339(clock::wall(t))),
                "lastSuccess": s.last_success.map(|t| clock::rfc3339(clock::wall(t))),
                "lastTransition": s.last_transition.as_ref().map(|t| json!({
                    "from": t.from.as_str(), "to": t.to.as_str(), "reason": t.reason.to_string(), "rule": t.reason.rule(),
                    "detail": t.reason.to_string(), "shadow": t.shadow, "at": clock::rfc3339(clock::wall(t.at)),
                })),
            })
        })
        .collect();
    json_response(StatusCode::OK, &json!({ "timestamp": clock::timestamp(), "circuitBreakers": circuits }))
}

pub fn metrics(state: &AdminState) -> Response<ProxyBody> {
    let mut resp = Response::new(full(state.live.store.shared.metrics.render()));
    resp.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    resp
}

/// One service in the shapes every client reads (`view::ServiceEntry`).
pub fn service_entry(u: &Upstream, s: &Snapshot) -> Value {
    super::view::ServiceEntry::of(u, s, clock::now()).to_json()
}
