//! The `fusebox_*` series of README: Metrics, registered on one registry the
//! app owns. Per-upstream handles are resolved once when an upstream is
//! built, so the request path only bumps atomics.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::breaker::{CircuitState, RejectReason};

/// `outcome` label values of `fusebox_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success = 0,
    Failure = 1,
    Rejected = 2,
    Timeout = 3,
}

const OUTCOMES: [&str; 4] = ["success", "failure", "rejected", "timeout"];
const CODE_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];
const ENDPOINT_OUTCOMES: [&str; 3] = ["success", "failure", "timeout"];
const REJECT_REASONS: [&str; 6] = ["circuit_open", "half_open_full", "overloaded", "recovery_ramp", "upstream_starting", "no_endpoint"];

/// Every series fusebox exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    circuit_state: IntGaugeVec,
    transitions: IntCounterVec,
    shadow_transitions: IntCounterVec,
    requests: IntCounterVec,
    rejected: IntCounterVec,
    duration: HistogramVec,
    in_flight: IntGaugeVec,
    health_checks: IntCounterVec,
    endpoint_ejections: IntCounterVec,
    endpoint_ejected: IntGaugeVec,
    retries: IntCounterVec,
    client_errors: IntCounterVec,
    /// The same series for operation circuits (docs/configuration.md: Routes), with `operation`.
    ops: OperationFamilies,
    pub reloads: IntCounterVec,
    pub last_reload_success: Gauge,
    /// 1 when the last reload attempt succeeded, 0 while it is failing.
    pub last_reload_ok: IntGauge,
    pub config_generation: IntGauge,
    pub websocket_clients: IntGauge,
    pub websocket_messages: IntCounter,
    pub websocket_drops: IntCounter,
    /// Store commits that failed (full disk, I/O error): store.rs counts.
    pub store_write_errors: IntCounter,
    /// The trace pipeline's counters (telemetry/trace.rs).
    pub trace: super::trace::TraceMetrics,
    open_connections: IntGaugeVec,
    request_bytes: IntCounterVec,
    response_bytes: IntCounterVec,
    endpoint_requests: IntCounterVec,
    endpoint_duration: HistogramVec,
    /// Per-request recording on/off (`metrics.requests`), read per request.
    recording: Arc<AtomicBool>,
}

/// The per-circuit families again, labelled `{upstream, operation, ...}`,
/// for the circuits of operations.
#[derive(Clone)]
struct OperationFamilies {
    circuit_state: IntGaugeVec,
    transitions: IntCounterVec,
    shadow_transitions: IntCounterVec,
    requests: IntCounterVec,
    rejected: IntCounterVec,
    duration: HistogramVec,
    in_flight: IntGaugeVec,
}

/// Handles for one upstream, resolved once.
#[derive(Clone)]
pub struct UpstreamMetrics {
    name: String,
    /// Set for an operation's circuit: its series carry `operation`.
    operation: Option<String>,
    /// outcome x code_class, resolved on first use so a scrape carries
    /// only the combinations that happen (plus the common ones at zero).
    requests: Vec<OnceLock<IntCounter>>,
    requests_vec: IntCounterVec,
    rejected: Vec<IntCounter>,
    duration: Histogram,
    pub in_flight: IntGauge,
    state: Vec<IntGauge>,
    transitions: IntCounterVec,
    shadow_transitions: IntCounterVec,
    health_checks: IntCounterVec,
    endpoint_ejections: IntCounterVec,
    endpoint_ejected: IntGaugeVec,
    retries: IntCounterVec,
    client_errors: IntCounterVec,
    recording: Arc<AtomicBool>,
    /// Request body bytes sent to the upstream (its operations' too).
    pub request_bytes: IntCounter,
    /// Response body bytes received from the upstream and passed on.
    pub response_bytes: IntCounter,
    endpoint_requests: IntCounterVec,
    endpoint_duration: HistogramVec,
}

/// Handles for one endpoint of an upstream, resolved when the endpoint
/// appears: attempts by outcome, and their durations.
#[derive(Clone)]
pub struct EndpointMetrics {
    /// success, failure, timeout
    requests: [IntCounter; 3],
    duration: Histogram,
    recording: Arc<AtomicBool>,
}

/// Buckets of the duration histograms, in seconds.
const DURATION_BUCKETS: [f64; 15] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Index into `CODE_CLASSES`: 1xx..5xx, or `none` for no response.
fn code_class(status: Option<u16>) -> usize {
    match status {
        Some(s @ 100..=599) => usize::from(s / 100 - 1),
        _ => 5,
    }
}

fn must<T>(r: prometheus::Result<T>) -> T {
    // Metric names and label sets are fixed in this file; a failure here is
    // a programming error caught by every test run.
    r.expect("static metric definition is valid")
}

// === impl Metrics ===

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let reg = |c: Box<dyn prometheus::core::Collector>| must(registry.register(c));
        let build_info = must(IntGaugeVec::new(
            Opts::new("fusebox_build_info", "The running build: always 1, its version, commit and target as labels."),
            &["version", "commit", "target"],
        ));
        build_info.with_label_values(&[crate::build::VERSION, crate::build::COMMIT.unwrap_or("unknown"), crate::build::TARGET]).set(1);
        reg(Box::new(build_info));
        // process_cpu_seconds_total, process_resident_memory_bytes,
        // process_open_fds, process_start_time_seconds, ... (Linux).
        #[cfg(target_os = "linux")]
        reg(Box::new(prometheus::process_collector::ProcessCollector::for_self()));
        let circuit_state = must(IntGaugeVec::new(
            Opts::new("fusebox_circuit_state", "Circuit state per upstream: 1 for the current state, 0 for the others."),
            &["upstream", "state"],
        ));
        let transitions = must(IntCounterVec::new(
            Opts::new("fusebox_circuit_transitions_total", "Circuit state transitions, by the rule that caused them."),
            &["upstream", "from", "to", "reason"],
        ));
        let shadow_transitions = must(IntCounterVec::new(
            Opts::new(
                "fusebox_circuit_shadow_transitions_total",
                "Would-be transitions of circuits in metrics-only mode (nothing was rejected).",
            ),
            &["upstream", "from", "to", "reason"],
        ));
        let requests = must(IntCounterVec::new(
            Opts::new("fusebox_requests_total", "Proxied requests by outcome and response code class."),
            &["upstream", "outcome", "code_class"],
        ));
        let rejected = must(IntCounterVec::new(
            Opts::new("fusebox_rejected_total", "Requests answered by fusebox without calling the upstream."),
            &["upstream", "reason"],
        ));
        let duration = must(HistogramVec::new(
            HistogramOpts::new(
                "fusebox_request_duration_seconds",
                "Time from admission to the end of the exchange (response body complete, cut or stalled).",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["upstream"],
        ));
        let in_flight =
            must(IntGaugeVec::new(Opts::new("fusebox_in_flight_requests", "Requests in flight to the upstream."), &["upstream"]));
        let health_checks =
            must(IntCounterVec::new(Opts::new("fusebox_health_checks_total", "Active health probes by result."), &["upstream", "result"]));
        let endpoint_ejections = must(IntCounterVec::new(
            Opts::new("fusebox_endpoint_ejections_total", "Endpoints taken out of balancing by outlier detection or health checks."),
            &["upstream", "endpoint", "reason"],
        ));
        let endpoint_ejected = must(IntGaugeVec::new(
            Opts::new("fusebox_endpoint_ejected", "1 while an endpoint is ejected (not balanced to), 0 otherwise."),
            &["upstream", "endpoint"],
        ));
        let retries = must(IntCounterVec::new(
            Opts::new("fusebox_retries_total", "Retried attempts by the fault that caused them and the retry's result."),
            &["upstream", "reason", "result"],
        ));
        let client_errors = must(IntCounterVec::new(
            Opts::new("fusebox_client_errors_total", "Requests that failed by the client's fault (never counted against an upstream)."),
            &["upstream", "reason"],
        ));
        let op = |name: &str| name.replacen("fusebox_", "fusebox_operation_", 1);
        let ops = OperationFamilies {
            circuit_state: must(IntGaugeVec::new(
                Opts::new(op("fusebox_circuit_state"), "Circuit state per operation: 1 for the current state, 0 for the others."),
                &["upstream", "operation", "state"],
            )),
            transitions: must(IntCounterVec::new(
                Opts::new(op("fusebox_circuit_transitions_total"), "Operation circuit transitions, by the rule that caused them."),
                &["upstream", "operation", "from", "to", "reason"],
            )),
            shadow_transitions: must(IntCounterVec::new(
                Opts::new(
                    op("fusebox_circuit_shadow_transitions_total"),
                    "Would-be transitions of operation circuits in metrics-only mode.",
                ),
                &["upstream", "operation", "from", "to", "reason"],
            )),
            requests: must(IntCounterVec::new(
                Opts::new(op("fusebox_requests_total"), "Requests of an operation by outcome and response code class."),
                &["upstream", "operation", "outcome", "code_class"],
            )),
            rejected: must(IntCounterVec::new(
                Opts::new(op("fusebox_rejected_total"), "Requests of an operation answered by fusebox without calling the upstream."),
                &["upstream", "operation", "reason"],
            )),
            duration: must(HistogramVec::new(
                HistogramOpts::new(
                    op("fusebox_request_duration_seconds"),
                    "Time from admission to the end of the exchange, per operation.",
                )
                .buckets(DURATION_BUCKETS.to_vec()),
                &["upstream", "operation"],
            )),
            in_flight: must(IntGaugeVec::new(
                Opts::new(op("fusebox_in_flight_requests"), "Requests of an operation in flight to the upstream."),
                &["upstream", "operation"],
            )),
        };
        reg(Box::new(ops.circuit_state.clone()));
        reg(Box::new(ops.transitions.clone()));
        reg(Box::new(ops.shadow_transitions.clone()));
        reg(Box::new(ops.requests.clone()));
        reg(Box::new(ops.rejected.clone()));
        reg(Box::new(ops.duration.clone()));
        reg(Box::new(ops.in_flight.clone()));
        let reloads = must(IntCounterVec::new(Opts::new("fusebox_config_reloads_total", "Config reload attempts by result."), &["result"]));
        let last_reload_success =
            must(Gauge::new("fusebox_config_last_reload_success_timestamp_seconds", "Unix time of the last successful config load."));
        let last_reload_ok =
            must(IntGauge::new("fusebox_config_last_reload_successful", "1 if the last config reload attempt succeeded, 0 if it failed."));
        last_reload_ok.set(1);
        let config_generation = must(IntGauge::new("fusebox_config_generation", "Generation number of the running config."));
        let websocket_clients = must(IntGauge::new("fusebox_websocket_clients", "Connected state WebSocket clients."));
        let websocket_messages = must(IntCounter::new("fusebox_websocket_messages_total", "Messages sent to state WebSocket clients."));
        let websocket_drops =
            must(IntCounter::new("fusebox_websocket_dropped_total", "Updates a slow WebSocket client missed (it got a snapshot instead)."));
        reg(Box::new(circuit_state.clone()));
        reg(Box::new(transitions.clone()));
        reg(Box::new(shadow_transitions.clone()));
        reg(Box::new(requests.clone()));
        reg(Box::new(rejected.clone()));
        reg(Box::new(duration.clone()));
        reg(Box::new(in_flight.clone()));
        reg(Box::new(health_checks.clone()));
        reg(Box::new(endpoint_ejections.clone()));
        reg(Box::new(endpoint_ejected.clone()));
        reg(Box::new(retries.clone()));
        reg(Box::new(client_errors.clone()));
        reg(Box::new(reloads.clone()));
        reg(Box::new(last_reload_success.clone()));
        reg(Box::new(config_generation.clone()));
        reg(Box::new(last_reload_ok.clone()));
        reg(Box::new(websocket_clients.clone()));
        reg(Box::new(websocket_messages.clone()));
        reg(Box::new(websocket_drops.clone()));
        let store_write_errors = must(IntCounter::new(
            "fusebox_store_write_errors_total",
            "Store commits that failed (full disk, I/O error); their writes are lost and the store reports degraded.",
        ));
        reg(Box::new(store_write_errors.clone()));
        let open_connections = must(IntGaugeVec::new(
            Opts::new("fusebox_open_connections", "Open downstream (client) connections per listener: data or admin."),
            &["listener"],
        ));
        let request_bytes = must(IntCounterVec::new(
            Opts::new("fusebox_request_bytes_total", "Request body bytes sent to the upstream (bytes in from clients)."),
            &["upstream"],
        ));
        let response_bytes = must(IntCounterVec::new(
            Opts::new("fusebox_response_bytes_total", "Response body bytes received from the upstream and passed to clients (bytes out)."),
            &["upstream"],
        ));
        let endpoint_requests = must(IntCounterVec::new(
            Opts::new("fusebox_endpoint_requests_total", "Attempts sent to one endpoint, by their outcome for that endpoint."),
            &["upstream", "endpoint", "outcome"],
        ));
        let endpoint_duration = must(HistogramVec::new(
            HistogramOpts::new(
                "fusebox_endpoint_request_duration_seconds",
                "Time of one attempt on one endpoint, from its start to the end of its response body (or its fault).",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["upstream", "endpoint"],
        ));
        let trace = super::trace::TraceMetrics {
            dropped: must(IntCounter::new(
                "fusebox_trace_spans_dropped_total",
                "Finished spans dropped because the export queue was full (a slow or dead collector).",
            )),
            exported: must(IntCounter::new("fusebox_trace_spans_exported_total", "Spans the OTLP collector accepted.")),
            export_failures: must(IntCounter::new(
                "fusebox_trace_export_failures_total",
                "OTLP export requests that failed or timed out (their spans are dropped).",
            )),
        };
        reg(Box::new(trace.dropped.clone()));
        reg(Box::new(trace.exported.clone()));
        reg(Box::new(trace.export_failures.clone()));
        for listener in ["data", "admin"] {
            open_connections.with_label_values(&[listener]);
        }
        reg(Box::new(open_connections.clone()));
        reg(Box::new(request_bytes.clone()));
        reg(Box::new(response_bytes.clone()));
        reg(Box::new(endpoint_requests.clone()));
        reg(Box::new(endpoint_duration.clone()));
        for r in ["success", "failure"] {
            reloads.with_label_values(&[r]);
        }
        Metrics {
            registry,
            circuit_state,
            transitions,
            shadow_transitions,
            requests,
            rejected,
            duration,
            in_flight,
            health_checks,
            endpoint_ejections,
            endpoint_ejected,
            retries,
            client_errors,
            ops,
            reloads,
            last_reload_success,
            last_reload_ok,
            config_generation,
            websocket_clients,
            websocket_messages,
            websocket_drops,
            store_write_errors,
            trace,
            open_connections,
            request_bytes,
            response_bytes,
            endpoint_requests,
            endpoint_duration,
            recording: Arc::new(AtomicBool::new(true)),
        }
    }

    /// The registry every series is on (for series registered later, such
    /// as the fleet's).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Turns per-request recording on or off (live).
    pub fn set_request_metrics(&self, on: bool) {
        self.recording.store(on, Ordering::Relaxed);
    }

    /// Resolves (and so exports at zero) every series of one upstream.
    pub fn upstream(&self, name: &str) -> UpstreamMetrics {
        let requests: Vec<OnceLock<IntCounter>> = (0..OUTCOMES.len() * CODE_CLASSES.len()).map(|_| OnceLock::new()).collect();
        let rejected = REJECT_REASONS.iter().map(|r| self.rejected.with_label_values(&[name, r])).collect();
        let state = CircuitState::ALL.iter().map(|s| self.circuit_state.with_label_values(&[name, s.as_str()])).collect();
        for result in ["success", "failure"] {
            self.health_checks.with_label_values(&[name, result]);
        }
        // The automatic transitions exist from the start, so `increase()`
        // sees the first trip too.
        for (from, to, rule) in [
            ("closed", "open", "consecutive"),
            ("closed", "open", "failure-rate"),
            ("closed", "open", "slow-rate"),
            ("open", "half-open", "reset-timeout"),
            ("open", "half-open", "evidence"),
            ("half-open", "closed", "probe"),
            ("half-open", "open", "probe"),
        ] {
            self.transitions.with_label_values(&[name, from, to, rule]);
        }
        let m = UpstreamMetrics {
            name: name.to_string(),
            operation: None,
            requests,
            requests_vec: self.requests.clone(),
            rejected,
            duration: self.duration.with_label_values(&[name]),
            in_flight: self.in_flight.with_label_values(&[name]),
            state,
            transitions: self.transitions.clone(),
            shadow_transitions: self.shadow_transitions.clone(),
            health_checks: self.health_checks.clone(),
            endpoint_ejections: self.endpoint_ejections.clone(),
            endpoint_ejected: self.endpoint_ejected.clone(),
            retries: self.retries.clone(),
            client_errors: self.client_errors.clone(),
            recording: self.recording.clone(),
            request_bytes: self.request_bytes.with_label_values(&[name]),
            response_bytes: self.response_bytes.with_label_values(&[name]),
            endpoint_requests: self.endpoint_requests.clone(),
            endpoint_duration: self.endpoint_duration.clone(),
        };
        for (outcome, class) in
            [(Outcome::Success, 1), (Outcome::Failure, 4), (Outcome::Failure, 5), (Outcome::Rejected, 4), (Outcome::Timeout, 5)]
        {
            m.counter(outcome, class);
        }
        m
    }

    /// The handles of the circuit of operation `operation` of `upstream`:
    /// the per-circuit series carry `{upstream, operation}`; endpoint,
    /// retry and client-error series are its upstream's.
    pub fn operation(&self, upstream: &str, operation: &str) -> UpstreamMetrics {
        let o = &self.ops;
        let requests: Vec<OnceLock<IntCounter>> = (0..OUTCOMES.len() * CODE_CLASSES.len()).map(|_| OnceLock::new()).collect();
        let rejected = REJECT_REASONS.iter().map(|r| o.rejected.with_label_values(&[upstream, operation, r])).collect();
        let state = CircuitState::ALL.iter().map(|s| o.circuit_state.with_label_values(&[upstream, operation, s.as_str()])).collect();
        for (from, to, rule) in [("closed", "open", "consecutive"), ("closed", "open", "failure-rate"), ("closed", "open", "slow-rate")] {
            o.transitions.with_label_values(&[upstream, operation, from, to, rule]);
        }
        let m = UpstreamMetrics {
            name: upstream.to_string(),
            operation: Some(operation.to_string()),
            requests,
            requests_vec: o.requests.clone(),
            rejected,
            duration: o.duration.with_label_values(&[upstream, operation]),
            in_flight: o.in_flight.with_label_values(&[upstream, operation]),
            state,
            transitions: o.transitions.clone(),
            shadow_transitions: o.shadow_transitions.clone(),
            health_checks: self.health_checks.clone(),
            endpoint_ejections: self.endpoint_ejections.clone(),
            endpoint_ejected: self.endpoint_ejected.clone(),
            retries: self.retries.clone(),
            client_errors: self.client_errors.clone(),
            recording: self.recording.clone(),
            request_bytes: self.request_bytes.with_label_values(&[upstream]),
            response_bytes: self.response_bytes.with_label_values(&[upstream]),
            endpoint_requests: self.endpoint_requests.clone(),
            endpoint_duration: self.endpoint_duration.clone(),
        };
        m.counter(Outcome::Success, 1);
        m
    }

    /// Drops every series of a removed operation's circuit.
    pub fn remove_operation(&self, upstream: &str, operation: &str) {
        let o = &self.ops;
        for out in OUTCOMES {
            for c in CODE_CLASSES {
                let _ = o.requests.remove_label_values(&[upstream, operation, out, c]);
            }
        }
        for r in REJECT_REASONS {
            let _ = o.rejected.remove_label_values(&[upstream, operation, r]);
        }
        for s in CircuitState::ALL {
            let _ = o.circuit_state.remove_label_values(&[upstream, operation, s.as_str()]);
        }
        let _ = o.duration.remove_label_values(&[upstream, operation]);
        let _ = o.in_flight.remove_label_values(&[upstream, operation]);
    }

    /// Drops every series of a removed upstream.
    pub fn remove_upstream(&self, name: &str) {
        for o in OUTCOMES {
            for c in CODE_CLASSES {
                let _ = self.requests.remove_label_values(&[name, o, c]);
            }
        }
        for r in REJECT_REASONS {
            let _ = self.rejected.remove_label_values(&[name, r]);
        }
        for s in CircuitState::ALL {
            let _ = self.circuit_state.remove_label_values(&[name, s.as_str()]);
        }
        for result in ["success", "failure"] {
            let _ = self.health_checks.remove_label_values(&[name, result]);
        }
        let _ = self.duration.remove_label_values(&[name]);
        let _ = self.in_flight.remove_label_values(&[name]);
        let _ = self.request_bytes.remove_label_values(&[name]);
        let _ = self.response_bytes.remove_label_values(&[name]);
        // Transition series carry history operators alert on; keep them.
    }

    /// Drops the series of an endpoint that is gone.
    pub fn remove_endpoint(&self, upstream: &str, endpoint: &str) {
        let _ = self.endpoint_ejected.remove_label_values(&[upstream, endpoint]);
        for outcome in ENDPOINT_OUTCOMES {
            let _ = self.endpoint_requests.remove_label_values(&[upstream, endpoint, outcome]);
        }
        let _ = self.endpoint_duration.remove_label_values(&[upstream, endpoint]);
    }

    /// The open-connections gauge of one listener (`data` or `admin`).
    pub fn open_connections(&self, listener: &str) -> IntGauge {
        self.open_connections.with_label_values(&[listener])
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        let families = self.registry.gather();
        if TextEncoder::new().encode(&families, &mut out).is_err() {
            out.clear();
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

// === impl UpstreamMetrics ===

impl UpstreamMetrics {
    /// `upstream` (and `operation`, for an operation's circuit), then `rest`.
    fn labels<'a>(&'a self, rest: &[&'a str]) -> Vec<&'a str> {
        let mut v = Vec::with_capacity(rest.len() + 2);
        v.push(self.name.as_str());
        if let Some(op) = &self.operation {
            v.push(op.as_str());
        }
        v.extend_from_slice(rest);
        v
    }

    fn counter(&self, outcome: Outcome, class: usize) -> &IntCounter {
        self.requests[outcome as usize * CODE_CLASSES.len() + class]
            .get_or_init(|| self.requests_vec.with_label_values(&self.labels(&[OUTCOMES[outcome as usize], CODE_CLASSES[class]])))
    }

    fn recording(&self) -> bool {
        self.recording.load(Ordering::Relaxed)
    }

    /// Counts a request in flight; returns whether it did, so the caller
    /// decrements only what it incremented (recording can be toggled live).
    pub fn in_flight_inc(&self) -> bool {
        let on = self.recording();
        if on {
            self.in_flight.inc();
        }
        on
    }

    pub fn request(&self, outcome: Outcome, status: Option<u16>, seconds: f64) {
        if !self.recording() {
            return;
        }
        self.counter(outcome, code_class(status)).inc();
        if outcome != Outcome::Rejected {
            self.duration.observe(seconds);
        }
    }

    /// A request answered by fusebox with `status` (503 or a fallback's).
    pub fn rejected(&self, reason: Option<RejectReason>, status: u16) {
        if !self.recording() {
            return;
        }
        let idx = match reason {
            Some(RejectReason::CircuitOpen) => 0,
            Some(RejectReason::HalfOpenFull) => 1,
            None => 2,
            Some(RejectReason::Ramp) => 3,
        };
        self.rejected[idx].inc();
        self.counter(Outcome::Rejected, code_class(Some(status))).inc();
    }

    /// A request answered `upstream_starting`: its endpoint refused the
    /// connection before it ever answered, within `startupGrace`.
    pub fn starting(&self) {
        if !self.recording() {
            return;
        }
        self.rejected[4].inc();
        self.counter(Outcome::Rejected, code_class(Some(503))).inc();
    }

    /// A request answered `no_endpoint`: a hostname upstream with no
    /// address resolved.
    pub fn no_endpoint(&self) {
        if !self.recording() {
            return;
        }
        self.rejected[5].inc();
        self.counter(Outcome::Rejected, code_class(Some(503))).inc();
    }

    pub fn set_state(&self, current: CircuitState) {
        for (s, g) in CircuitState::ALL.iter().zip(&self.state) {
            g.set(i64::from(*s == current));
        }
    }

    pub fn transition(&self, from: CircuitState, to: CircuitState, rule: &str) {
        self.transitions.with_label_values(&self.labels(&[from.as_str(), to.as_str(), rule])).inc();
    }

    /// A would-be transition of a circuit in metrics-only mode: kept apart
    /// from `transition` so alerts on real trips never fire for it.
    pub fn shadow_transition(&self, from: CircuitState, to: CircuitState, rule: &str) {
        self.shadow_transitions.with_label_values(&self.labels(&[from.as_str(), to.as_str(), rule])).inc();
    }

    /// The ejection gauge of one endpoint, exported at 0 from the start.
    pub fn endpoint_gauge(&self, endpoint: &str) -> IntGauge {
        self.endpoint_ejected.with_label_values(&[&self.name, endpoint])
    }

    /// The request series of one endpoint, exported at 0 from the start.
    pub fn endpoint_series(&self, endpoint: &str) -> EndpointMetrics {
        let labels = |outcome: &str| self.endpoint_requests.with_label_values(&[&self.name, endpoint, outcome]);
        EndpointMetrics {
            requests: [labels(ENDPOINT_OUTCOMES[0]), labels(ENDPOINT_OUTCOMES[1]), labels(ENDPOINT_OUTCOMES[2])],
            duration: self.endpoint_duration.with_label_values(&[&self.name, endpoint]),
            recording: self.recording.clone(),
        }
    }

    /// Drops the series of an endpoint that is gone.
    pub fn remove_endpoint(&self, endpoint: &str) {
        let _ = self.endpoint_ejected.remove_label_values(&[&self.name, endpoint]);
        for outcome in ENDPOINT_OUTCOMES {
            let _ = self.endpoint_requests.remove_label_values(&[&self.name, endpoint, outcome]);
        }
        let _ = self.endpoint_duration.remove_label_values(&[&self.name, endpoint]);
    }

    pub fn endpoint_ejection(&self, endpoint: &str, reason: &str) {
        self.endpoint_ejections.with_label_values(&[&self.name, endpoint, reason]).inc();
    }

    /// A retried attempt: `reason` is the fault it retried, `result`
    /// `success`, `failure` or `budget_exhausted` (not retried).
    pub fn retry(&self, reason: &str, result: &str) {
        self.retries.with_label_values(&[&self.name, reason, result]).inc();
    }

    pub fn client_error(&self, reason: &str) {
        self.client_errors.with_label_values(&[&self.name, reason]).inc();
    }

    pub fn health_check(&self, healthy: bool) {
        let result = if healthy { "success" } else { "failure" };
        self.health_checks.with_label_values(&[&self.name, result]).inc();
    }
}

// === impl EndpointMetrics ===

impl EndpointMetrics {
    /// One attempt's outcome for its endpoint (`Rejected` is never one)
    /// and its duration.
    pub fn attempt(&self, outcome: Outcome, seconds: f64) {
        if !self.recording.load(Ordering::Relaxed) {
            return;
        }
        let i = match outcome {
            Outcome::Success => 0,
            Outcome::Failure | Outcome::Rejected => 1,
            Outcome::Timeout => 2,
        };
        self.requests[i].inc();
        self.duration.observe(seconds);
    }
}
