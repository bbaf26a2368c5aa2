//! One upstream at run time: its [`Circuit`] (breaker, bulkhead, metrics,
//! kept across reloads by name), its endpoints and balancer, and its pooled
//! HTTP client. The circuit lock is per upstream and is never held across an
//! await or while logging, counting or broadcasting.

use parking_lot::{Mutex, MutexGuard};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::broadcast;

use crate::breaker::{Breaker, CallOutcome, Mode, Permit, Policy, Rejection, ResetReport, Snapshot, Status, Transition};
use crate::clock;
use crate::config::UpstreamConfig;
use crate::history::History;
use crate::store::{SavedCircuit, SavedPhase, Store};
use crate::telemetry::metrics::Outcome;
use crate::telemetry::UpstreamMetrics;

use super::endpoint::EndpointSet;
use super::retry::RetryBudget;

/// What a restart keeps of a circuit besides its phase (SPEC 8): counts,
/// rejections, the last failure and success (wall-clock ms) and the reason
/// it opened, as the JSON of `circuit_phases.counters`.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SavedCounters {
    pub total: u64,
    pub successful: u64,
    pub failed: u64,
    pub rejected: u64,
    pub last_failure_ms: Option<i64>,
    pub last_success_ms: Option<i64>,
    pub trip: Option<crate::breaker::Reason>,
}

/// A transition of one circuit, as published to watchers (WebSocket,
/// history). Cloned per receiver by the channel, not per client socket.
#[derive(Debug, Clone)]
pub struct CircuitEvent {
    pub upstream: Arc<str>,
    pub transition: Transition,
}

/// The per-name state that survives reloads.
pub struct Circuit {
    pub name: Arc<str>,
    core: Mutex<Core>,
    pub metrics: UpstreamMetrics,
    in_flight: AtomicUsize,
    events: broadcast::Sender<CircuitEvent>,
    status_changes: broadcast::Sender<Arc<str>>,
    /// The status last reported (`Status as u8`), to tell a change.
    status: std::sync::atomic::AtomicU8,
    /// Bumped on every transition and status change, so watchers can tell
    /// a change cheaply.
    pub version: AtomicU64,
    /// The breaker's [`Breaker::free_pass`] after its last change, or
    /// [`NO_FREE_PASS`]: admission reads it instead of taking the lock.
    free_pass: AtomicU64,
    /// Some endpoint of this upstream has answered (a response of any
    /// status, to a request or a health probe) since fusebox started: what
    /// `readiness.upstreams` waits for.
    answered: AtomicBool,
    /// The last failure counted was "could not connect" (refused,
    /// unreachable, connect timeout): an open circuit may then be brought
    /// back early by a TCP connect that succeeds (a partition that healed).
    /// Not after a failure status, a timeout or a reset: there a connect
    /// proves nothing.
    transport_failure: AtomicBool,
    /// A recovery knock is in flight; the next one is due at `knock_at_ms`
    /// (`clock::ms`).
    knocking: AtomicBool,
    knock_at_ms: AtomicU64,
}

/// No free pass: admission asks the breaker under the lock.
const NO_FREE_PASS: u64 = u64::MAX;

/// Why a request could not be admitted.
#[derive(Debug)]
pub enum Refusal {
    /// Bulkhead full: `maxConcurrentRequests` in flight.
    Overloaded {
        limit: usize,
    },
    Circuit(Rejection),
}

/// An admitted call: holds the bulkhead slot and the breaker permit. The
/// result is recorded with [`CallGuard::finish`] when the response headers
/// arrive; the guard then rides along with the response body so the
/// bulkhead slot is held until the body ends. Dropped unfinished (client
/// gone), it frees the permit without counting a result.
pub struct CallGuard {
    circuit: Arc<Circuit>,
    permit: Option<Permit>,
    pub started: Instant,
    /// Whether this call was counted in the in-flight gauge.
    gauged: bool,
    /// The same call's guard on its operation's circuit (docs/configuration.md: Routes): every
    /// result is recorded on both.
    operation: Option<Box<CallGuard>>,
}

/// One upstream of one config generation.
pub struct Upstream {
    pub config: UpstreamConfig,
    pub circuit: Arc<Circuit>,
    /// Its endpoints, balanced beneath the circuit.
    pub endpoints: Arc<EndpointSet>,
    /// Kept across reloads with the circuit's name.
    pub retry_budget: Arc<RetryBudget>,
    /// For an operation's circuit (docs/configuration.md: Routes): `(upstream, operation)`.
    pub operation: Option<(String, String)>,
}

/// What one lock guards: the breaker and the history it feeds, so a
/// request's result costs one lock.
struct Core {
    breaker: Breaker,
    history: History,
}

// === impl Circuit ===

impl Circuit {
    /// Writes what the store keeps of this circuit right now: mode and
    /// history, and the automatic phase (open until when, recovery
    /// attempts, incidents).
    pub fn save(&self, store: &Store) {
        let now = clock::now();
        store.circuit(&self.name, self.saved(now));
        let snap = self.snapshot(now);
        let wall_ms = |t: Option<Instant>| t.map(|t| crate::store::unix_ms(clock::wall(t)));
        let counters = SavedCounters {
            total: snap.total,
            successful: snap.successful,
            failed: snap.failed,
            rejected: snap.rejected,
            last_failure_ms: wall_ms(snap.last_failure),
            last_success_ms: wall_ms(snap.last_success),
            trip: snap.trip.clone(),
        };
        let phase = match (snap.open_until, snap.state) {
            (Some(_), _) => "open",
            (None, crate::breaker::CircuitState::HalfOpen) => "half-open",
            _ => "closed",
        };
        store.phase(
            &self.name,
            SavedPhase {
                saved_ms: crate::store::unix_ms(clock::wall(now)),
                phase: phase.to_string(),
                open_until_ms: snap.open_until.map(|t| crate::store::unix_ms(clock::wall(t))),
                recovery_attempts: snap.recovery_attempts,
                total_incidents: snap.total_incidents,
                counters: serde_json::to_string(&counters).ok(),
            },
        );
    }

    pub fn new(
        name: &str,
        policy: Policy,
        metrics: UpstreamMetrics,
        (events, status_changes): (broadcast::Sender<CircuitEvent>, broadcast::Sender<Arc<str>>),
        now: Instant,
    ) -> Circuit {
        let seed = fastrand::u64(..);
        metrics.set_state(crate::breaker::CircuitState::Closed);
        Circuit {
            name: Arc::from(name),
            core: Mutex::new(Core { breaker: Breaker::new(policy, now, seed), history: History::starting(unix_secs(now)) }),
            metrics,
            in_flight: AtomicUsize::new(0),
            events,
            status_changes,
            status: std::sync::atomic::AtomicU8::new(crate::breaker::Status::Unknown as u8),
            version: AtomicU64::new(0),
            free_pass: AtomicU64::new(NO_FREE_PASS),
            answered: AtomicBool::new(false),
            transport_failure: AtomicBool::new(false),
            knocking: AtomicBool::new(false),
            knock_at_ms: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Core> {
        self.core.lock()
    }

    /// Runs `f` under the lock, then publishes its transitions unlocked.
    pub fn with<R>(&self, f: impl FnOnce(&mut Breaker) -> R) -> R {
        self.with_core(|b, _| f(b))
    }

    fn with_core<R>(&self, f: impl FnOnce(&mut Breaker, &mut History) -> R) -> R {
        let (r, transitions) = {
            let mut guard = self.lock();
            let core = &mut *guard;
            let r = f(&mut core.breaker, &mut core.history);
            let transitions = core.breaker.take_transitions();
            self.free_pass.store(core.breaker.free_pass(clock::now).unwrap_or(NO_FREE_PASS), Ordering::Release);
            for t in transitions.iter().filter(|t| !t.shadow) {
                let status = core.breaker.status(t.at);
                let incident = t.to == crate::breaker::CircuitState::Open && t.from == crate::breaker::CircuitState::Closed;
                core.history.status(unix_secs(t.at), status, incident);
                // A transition's update carries its status: no separate one.
                self.status.store(status as u8, Ordering::Relaxed);
            }
            (r, transitions)
        };
        if !transitions.is_empty() {
            self.publish(transitions);
        }
        r
    }

    fn publish(&self, transitions: Vec<Transition>) {
        for t in transitions {
            self.version.fetch_add(1, Ordering::Relaxed);
            if t.shadow {
                self.metrics.shadow_transition(t.from, t.to, t.reason.rule());
            } else {
                self.metrics.set_state(t.to);
                self.metrics.transition(t.from, t.to, t.reason.rule());
            }
            if t.shadow {
                tracing::info!(upstream = %self.name, from = %t.from, to = %t.to, rule = t.reason.rule(), trace_id = crate::http::trace_id().as_deref(), "circuit {} would go {} -> {} (metrics-only): {}", self.name, t.from, t.to, t.reason);
            } else {
                // The trace of the request that caused it, when traced.
                tracing::info!(upstream = %self.name, from = %t.from, to = %t.to, rule = t.reason.rule(), trace_id = crate::http::trace_id().as_deref(), "circuit {}: {} -> {}: {}", self.name, t.from, t.to, t.reason);
            }
            // No receivers is fine: nobody is watching.
            let _ = self.events.send(CircuitEvent { upstream: self.name.clone(), transition: t });
        }
    }

    /// Admission: bulkhead first (cheap, no lock), then the breaker.
    /// `refused_status` is what a circuit refusal will answer (503 or the
    /// fallback's status), for the `code_class` label.
    pub fn admit(self: &Arc<Self>, limit: usize, refused_status: u16, now: Instant) -> Result<CallGuard, Refusal> {
        let prev = self.in_flight.fetch_add(1, Ordering::AcqRel);
        if prev >= limit {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            self.metrics.rejected(None, 503);
            return Err(Refusal::Overloaded { limit });
        }
        // Closed (the common case): no lock. The pass is republished under
        // the lock after every change of the breaker.
        let free = self.free_pass.load(Ordering::Acquire);
        let admitted = if free == NO_FREE_PASS { self.with(|b| b.try_acquire(now)) } else { Ok(Permit::free(free)) };
        match admitted {
            Ok(permit) => {
                let gauged = self.metrics.in_flight_inc();
                Ok(CallGuard { circuit: self.clone(), permit: Some(permit), started: now, gauged, operation: None })
            }
            Err(rej) => {
                self.in_flight.fetch_sub(1, Ordering::AcqRel);
                self.metrics.rejected(Some(rej.reason), refused_status);
                Err(Refusal::Circuit(rej))
            }
        }
    }

    /// Whether a knock on an open circuit's endpoints may start now: it was
    /// opened by transport faults, none is in flight and the last was
    /// `every` ago (±20%). Claims it (see [`Circuit::knocked`]).
    pub fn claim_knock(&self, every: Duration, now: Instant) -> bool {
        if !self.transport_failure.load(Ordering::Relaxed) || self.knocking.load(Ordering::Acquire) {
            return false;
        }
        let now_ms = clock::ms(now);
        if now_ms < self.knock_at_ms.load(Ordering::Relaxed) || self.knocking.swap(true, Ordering::AcqRel) {
            return false;
        }
        let spread = every.mul_f64(0.8 + 0.4 * fastrand::f64());
        self.knock_at_ms.store(clock::ms(now.checked_add(spread).unwrap_or(now)), Ordering::Relaxed);
        true
    }

    /// The knock claimed by [`Circuit::claim_knock`] is over.
    pub fn knocked(&self) {
        self.knocking.store(false, Ordering::Release);
    }

    /// Some endpoint answered once (see the field).
    pub fn has_answered(&self) -> bool {
        self.answered.load(Ordering::Relaxed)
    }

    /// An endpoint of this upstream answered.
    pub fn answered(&self) {
        if !self.answered.load(Ordering::Relaxed) {
            self.answered.store(true, Ordering::Relaxed);
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn snapshot(&self, now: Instant) -> Snapshot {
        self.lock().breaker.snapshot(now)
    }

    /// Runs `f` on the history (under the circuit's lock: keep it short).
    pub fn history<R>(&self, f: impl FnOnce(&History) -> R) -> R {
        f(&self.lock().history)
    }

    /// Time-driven changes (open -> half-open, TTLs), and a status change
    /// that came without a transition, published to `status_changes`.
    pub fn tick(&self, now: Instant) {
        let status = self.with_core(|b, h| {
            b.tick(now);
            let status = b.status(now);
            // Every status change goes into the history (SPEC 8), not
            // only transitions: healthy -> degraded after a failure,
            // degraded -> healthy when the window clears (no-op if same).
            h.status(unix_secs(now), status, false);
            status
        });
        let before = self.status.swap(status as u8, Ordering::Relaxed);
        if before != status as u8 {
            self.version.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(upstream = %self.name, status = status.as_str(), "circuit status changed");
            // No receivers is fine: nobody is watching.
            let _ = self.status_changes.send(self.name.clone());
        }
    }

    pub fn set_policy(&self, policy: Policy) {
        self.with(|b| b.set_policy(policy));
    }

    pub fn force(&self, mode: Mode, ttl: Option<Duration>, action: &str, now: Instant) {
        self.with(|b| b.force(mode, ttl, action, now));
    }

    pub fn reset(&self, action: &str, now: Instant) -> ResetReport {
        self.with(|b| b.reset(action, now))
    }

    /// What the store keeps of this circuit: its operator mode and history.
    pub fn saved(&self, now: Instant) -> SavedCircuit {
        let core = self.lock();
        let snap = core.breaker.snapshot(now);
        SavedCircuit {
            saved_ms: crate::store::unix_ms(clock::wall(now)),
            mode: snap.mode.as_str().to_string(),
            mode_until_ms: snap.mode_until.map(|t| crate::store::unix_ms(clock::wall(t))),
            history: core.history.to_json(),
        }
    }

    /// Takes back a history saved before a restart: fusebox's downtime
    /// since `saved_ms` reads as "unknown", then the status from now on.
    pub fn restore_history(&self, history: History, saved_ms: i64, now: Instant) {
        let mut core = self.lock();
        let status = core.breaker.status(now);
        core.history = history;
        core.history.status(u64::try_from(saved_ms / 1000).unwrap_or(0), Status::Unknown, false);
        core.history.status(unix_secs(now), status, false);
    }
}

// === impl CallGuard ===

impl CallGuard {
    /// Records the call's one result (a response status, or `None` for an
    /// error) and frees the permit.
    pub fn finish(&mut self, status: Option<u16>, timed_out: bool, now: Instant) -> CallOutcome {
        self.record(status, status, timed_out, false, now)
    }

    /// Records a call that got no response by the upstream's `fault`.
    pub fn finish_fault(&mut self, fault: super::fault::UpstreamFault, now: Instant) -> CallOutcome {
        use super::fault::UpstreamFault;
        self.record(None, None, fault == UpstreamFault::Timeout, fault == UpstreamFault::Connect, now)
    }

    /// A call that failed by nobody's fault (the keep-alive race): counted
    /// in the request metrics as the failure the client saw (`status`),
    /// never for the breaker (the permit goes back uncounted).
    pub fn finish_excused(self, status: u16, now: Instant) {
        let elapsed = now.saturating_duration_since(self.started);
        self.circuit.metrics.request(Outcome::Failure, Some(status), elapsed.as_secs_f64());
    }

    /// Records a call whose response (`status`, already sent to the
    /// client) broke or stalled mid-body: a failure of the whole exchange,
    /// with its real duration; the metrics keep the status it had.
    pub fn finish_broken(&mut self, status: u16, stalled: bool, now: Instant) -> CallOutcome {
        self.record(None, Some(status), stalled, false, now)
    }

    /// `verdict` is what the breaker classifies (None: failed), `shown`
    /// what the metrics label it with; `unreachable`: it could not connect.
    fn record(&mut self, verdict: Option<u16>, shown: Option<u16>, timed_out: bool, unreachable: bool, now: Instant) -> CallOutcome {
        let operation = self.operation.as_mut().map(|op| op.record(verdict, shown, timed_out, unreachable, now));
        let elapsed = now.saturating_duration_since(self.started);
        let permit = self.permit.take();
        let outcome = self.circuit.with_core(|b, h| {
            let outcome = b.policy().classify(verdict, elapsed);
            // Narrowest blame (SPEC 3b): on an operation's route, an answer
            // (a failure status, a slow call) is that operation's alone; the
            // upstream answered. Transport failures (no answer) count on
            // both: a dead upstream still opens for every operation.
            let effect = match (&operation, verdict) {
                (Some(_), Some(_)) => CallOutcome { failure: false, slow: false },
                _ => outcome,
            };
            if effect.failure {
                self.circuit.transport_failure.store(unreachable, Ordering::Relaxed);
            }
            if let Some(p) = permit {
                b.on_result(p, effect, elapsed, now);
            }
            h.record(unix_secs(now), effect.failure, elapsed);
            // The request's own outcome: the operation's verdict on its route.
            operation.unwrap_or(outcome)
        });
        let label = match (timed_out, outcome.failure) {
            (true, _) => Outcome::Timeout,
            (false, true) => Outcome::Failure,
            (false, false) => Outcome::Success,
        };
        self.circuit.metrics.request(label, shown, elapsed.as_secs_f64());
        outcome
    }

    pub fn circuit(&self) -> &Arc<Circuit> {
        &self.circuit
    }

    /// Records this call on `operation`'s circuit too.
    pub fn with_operation(mut self, operation: CallGuard) -> CallGuard {
        self.operation = Some(Box::new(operation));
        self
    }

    /// Takes back `n` failures of an ejected endpoint (see `Breaker::forgive`).
    pub fn forgive(&self, n: u32, now: Instant) {
        self.circuit.with(|b| b.forgive(n, now));
        if let Some(op) = &self.operation {
            op.forgive(n, now);
        }
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if let Some(p) = self.permit.take() {
            self.circuit.with(|b| b.on_cancel(p));
        }
        self.circuit.in_flight.fetch_sub(1, Ordering::AcqRel);
        if self.gauged {
            self.circuit.metrics.in_flight.dec();
        }
    }
}

/// Unix seconds of a monotonic instant.
fn unix_secs(at: Instant) -> u64 {
    clock::unix_secs(clock::wall(at))
}

// === impl Upstream ===

impl Upstream {
    /// `previous` is this upstream in the generation before, if any: its
    /// endpoints (connection pools, outlier state) are kept for the
    /// endpoints that stay, as long as protocol, timeouts and TLS (and
    /// whether any endpoint is https) are unchanged, and so is its retry
    /// budget.
    pub fn new(config: UpstreamConfig, circuit: Arc<Circuit>, previous: Option<&Upstream>) -> Upstream {
        let https = |c: &UpstreamConfig| c.endpoints.iter().any(|e| e.scheme == http::uri::Scheme::HTTPS);
        let same_transport = previous.is_some_and(|p| {
            p.config.protocol == config.protocol
                && p.config.timeouts.connect == config.timeouts.connect
                && p.config.pool_idle_timeout == config.pool_idle_timeout
                && p.config.tls == config.tls
                && https(&p.config) == https(&config)
        });
        let endpoints = EndpointSet::new(&config, previous.map(|p| &*p.endpoints), same_transport, circuit.metrics.clone());
        let retry_budget = previous.map_or_else(|| Arc::new(RetryBudget::new()), |p| p.retry_budget.clone());
        Upstream { config, circuit, endpoints, retry_budget, operation: None }
    }

    /// The circuit of operation `operation` of `parent`: named
    /// `upstream/operation`, with its own breaker policy, sharing the
    /// upstream's endpoints and retry budget. It is never probed itself.
    /// `fallback`: the route's own, else the upstream's is used.
    pub fn operation(
        parent: &Upstream,
        operation: &str,
        (breaker, fallback): (crate::breaker::Policy, Option<crate::config::Fallback>),
        circuit: Arc<Circuit>,
    ) -> Upstream {
        let mut config = parent.config.clone();
        config.name = format!("{}/{operation}", parent.config.name);
        config.breaker = breaker;
        if fallback.is_some() {
            config.fallback = fallback;
        }
        config.health_check = None;
        Upstream {
            config,
            circuit,
            endpoints: parent.endpoints.clone(),
            retry_budget: parent.retry_budget.clone(),
            operation: Some((parent.config.name.clone(), operation.to_string())),
        }
    }

    /// Whether the circuit refuses traffic now (a retry never passes it).
    pub fn circuit_refuses(&self) -> bool {
        matches!(self.circuit.with(|b| b.state()), crate::breaker::CircuitState::Open | crate::breaker::CircuitState::ForcedOpen)
    }
}
