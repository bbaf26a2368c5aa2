//! Active health probes: one GET of the upstream's `healthCheck.path` (or
//! `/`) on every endpoint at once, within `healthCheck.timeout` (or the
//! request timeout). Each endpoint is ejected or restored on its own
//! result; the upstream is healthy when any endpoint is. Used by the
//! periodic checker and by on-demand checks from the admin side. In
//! half-open with a health check configured, the probe is the trial (it
//! takes the trial lease), so no user request is spent on a broken
//! upstream; a probe that passes while the circuit is open ends the open
//! period at once and is that trial. Also the two knocks that need no
//! health check: a TCP connect to the endpoints of a circuit opened
//! because its upstream could not be reached ([`knock_if_open`]), and a GET
//! on upstreams `readiness.upstreams` waits for ([`knock`]). Must not:
//! count a knock as a request or a trial.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use http::{Request, StatusCode};

use super::endpoint::Member;
use super::upstream::Upstream;
use crate::clock;
use crate::http::empty;

/// What one probe saw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProbeResult {
    pub healthy: bool,
    pub latency: Duration,
}

/// Probes every endpoint of `up` once, feeds each result to its endpoint
/// and the whole to its circuit.
pub async fn probe(up: &Arc<Upstream>) -> ProbeResult {
    let circuit = &up.circuit;
    let permit = circuit.with(|b| b.try_acquire_probe(clock::now()).ok());
    up.endpoints.ensure_resolved().await;
    let members = up.endpoints.members();
    let started = clock::now();
    let results = join_all(members.iter().map(|m| probe_one(up, m))).await;
    let now = clock::now();
    let latency = now.saturating_duration_since(started);
    if members.len() > 1 {
        for (m, healthy) in members.iter().zip(&results) {
            // A starting endpoint (never answered, within startupGrace) is
            // not ejected for not answering yet.
            if !*healthy && !up.circuit.has_answered() && m.is_starting(up.config.startup_grace, now) {
                continue;
            }
            up.endpoints.health(m, *healthy, now);
        }
    }
    let healthy = results.iter().any(|h| *h);
    circuit.with(|b| match permit {
        Some(p) => b.on_probe(p, healthy, latency, now),
        // Open, and the upstream answers its health check: recovery on
        // evidence, not on the timer. The probe that passed is the trial.
        None if healthy && b.recover_early("a health check passed".to_string(), now) => match b.try_acquire_probe(now) {
            Ok(p) => b.on_probe(p, healthy, latency, now),
            Err(_) => b.note_probe(),
        },
        None => b.note_probe(),
    });
    circuit.metrics.health_check(healthy);
    ProbeResult { healthy, latency }
}

/// One GET on one endpoint.
async fn probe_one(up: &Upstream, member: &Arc<Member>) -> bool {
    let path = up.config.health_check.as_ref().map_or("/", |h| h.path.as_str());
    let timeout = up.config.health_check.as_ref().map_or(up.config.timeouts.request, |h| h.timeout);
    let Ok(req) = Request::get(path).header("user-agent", "fusebox-health-check").body(empty()) else {
        return false;
    };
    let (mut head, body) = req.into_parts();
    // The probe's connection is not pooled again: its body is not read.
    match tokio::time::timeout(timeout, member.pool().send(&mut head, body, None, clock::now())).await {
        Ok(Ok(resp)) => {
            member.answered();
            up.circuit.answered();
            resp.status() != StatusCode::SERVICE_UNAVAILABLE && !up.config.breaker.failure_statuses.contains(resp.status().as_u16())
        }
        _ => false,
    }
}

/// One GET on every endpoint of `up` that has not answered yet, for
/// `readiness.upstreams`: any answer marks the endpoint and the upstream
/// as answered; nothing is fed to circuits or outlier detection.
pub async fn knock(up: &Arc<Upstream>) {
    up.endpoints.ensure_resolved().await;
    let members = up.endpoints.members();
    join_all(members.iter().map(|m| probe_one(up, m))).await;
}

/// How often an open circuit that was opened by connect failures knocks on
/// its endpoints with a TCP connect (±20%).
pub const RECOVERY_KNOCK: Duration = Duration::from_secs(1);

/// Recovery on evidence without a health check: a circuit that is open
/// because its upstream could not be reached (refused, unreachable,
/// connect timeout) tries a TCP connect to each endpoint every
/// [`RECOVERY_KNOCK`]; the first that succeeds (a partition healed, the
/// app is back) makes it half-open at once, and a real request decides.
/// A circuit opened by failure statuses, timeouts or resets still waits
/// its `resetTimeout`: a connect proves nothing there. Called by the
/// runtime's ticker; the connects run on a task of their own.
pub fn knock_if_open(up: &Arc<Upstream>, now: std::time::Instant) {
    if up.config.health_check.is_some() || !matches!(up.circuit.with(|b| b.state()), crate::breaker::CircuitState::Open) {
        return;
    }
    if !up.circuit.claim_knock(RECOVERY_KNOCK, now) {
        return;
    }
    let up = up.clone();
    tokio::spawn(async move {
        let members = up.endpoints.members();
        let connect = up.config.timeouts.connect;
        let tries = members.iter().map(|m| async move {
            match tokio::time::timeout(connect, tokio::net::TcpStream::connect(m.address)).await {
                Ok(Ok(_)) => Some(m.label.clone()),
                _ => None,
            }
        });
        if let Some(label) = join_all(tries).await.into_iter().flatten().next() {
            up.circuit.with(|b| b.recover_early(format!("a TCP connect to {label} succeeded"), clock::now()));
        }
        up.circuit.knocked();
    });
}

/// How often an upstream named in `readiness.upstreams` that has not
/// answered yet (and has no health check) is knocked on.
pub const READINESS_KNOCK: Duration = Duration::from_secs(1);

/// Probes every `interval` while the upstream exists in the current config.
pub async fn run_checks(store: Arc<arc_swap::ArcSwap<super::Generation>>, name: String) {
    loop {
        let interval = {
            let generation = store.load();
            let Some(up) = generation.upstreams.get(&name).cloned() else { return };
            let Some(hc) = up.config.health_check.clone() else { return };
            drop(generation);
            probe(&up).await;
            hc.interval
        };
        tokio::time::sleep(interval).await;
    }
}
