//! The wire shapes of a circuit, as types: one [`ServiceEntry`] per
//! circuit (the seeds' service entry — status, circuit, operations,
//! performance — plus the architecture seed's `running`/`circuitBreaker`,
//! the endpoints and the dashboard's extras) and [`TransitionView`]. The
//! status API, `/health/detailed`, the state WebSocket and `fusebox watch`
//! all speak these, so one field means one thing everywhere (`reason` is
//! the readable text, `rule` the rule's name).
//!
//! Owns the shapes and building them from a [`Snapshot`]; must not decide
//! anything about circuits or carry request data.

use serde::{Deserialize, Serialize};

use crate::breaker::{CircuitState, Snapshot, Transition};
use crate::clock;
use crate::runtime::endpoint::EndpointView;
use crate::runtime::upstream::Upstream;

/// One circuit (an upstream's, or an operation's `upstream/operation`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ServiceEntry {
    pub service: String,
    /// `healthy`, `degraded`, `failed` or `unknown`.
    pub status: String,
    pub running: bool,
    pub circuit_breaker: SeedCircuitBreaker,
    pub circuit: CircuitView,
    pub operations: OperationsView,
    pub performance: PerformanceView,
    pub endpoints: Vec<EndpointEntry>,
    pub upstream: String,
    pub operation: Option<String>,
}

/// The architecture seed's `circuitBreaker`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SeedCircuitBreaker {
    pub is_open: bool,
    pub failures: u64,
    pub last_failure: Option<String>,
    pub last_success: Option<String>,
    pub recovery_attempts: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CircuitView {
    pub state: String,
    pub failure_count: u64,
    pub last_failure: Option<String>,
    pub recovery_attempts: u64,
    pub mode: String,
    pub open_until: Option<String>,
    pub retry_in_ms: Option<u64>,
    pub total_incidents: u64,
    pub rejected: u64,
    pub in_flight: u64,
    pub trip: Option<TripView>,
    pub last_transition: Option<TransitionView>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TripView {
    pub rule: String,
    pub detail: String,
    /// The open phase came back from the store after a restart; `rule`
    /// and `detail` are still the original trip's.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub restored: bool,
}

/// One transition: `reason` is the readable text, `rule` the rule's name.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TransitionView {
    pub from: String,
    pub to: String,
    pub reason: String,
    pub rule: String,
    /// The same text as `reason` (kept for dashboards written before).
    pub detail: String,
    pub shadow: bool,
    pub at: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct OperationsView {
    pub total: u64,
    pub successful: u64,
    pub failed: u64,
    pub success_rate: f64,
    /// Always present (the seed's field is not optional): null before
    /// the first call.
    pub last_operation: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PerformanceView {
    pub average_operation_time_ms: f64,
    pub last_operation_time_ms: f64,
}

/// An endpoint as reported (`EndpointView` on the server side).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct EndpointEntry {
    pub address: String,
    pub state: String,
    pub ejected_until: Option<String>,
    pub reason: Option<String>,
    pub ejections: u32,
    pub consecutive_failures: u32,
    pub in_flight: usize,
}

fn stamp(t: Option<std::time::Instant>) -> Option<String> {
    t.map(|t| clock::rfc3339(clock::wall(t)))
}

// === impl ServiceEntry ===

impl ServiceEntry {
    /// The entry of `u` from its snapshot `s` taken at `now`.
    pub fn of(u: &Upstream, s: &Snapshot, now: std::time::Instant) -> ServiceEntry {
        let open = matches!(s.state, CircuitState::Open | CircuitState::ForcedOpen);
        let rate = if s.total > 0 { s.successful as f64 * 100.0 / s.total as f64 } else { 100.0 };
        ServiceEntry {
            service: u.config.name.clone(),
            status: s.status.as_str().to_string(),
            running: !open,
            circuit_breaker: SeedCircuitBreaker {
                is_open: open,
                failures: u64::from(s.failure_count),
                last_failure: stamp(s.last_failure),
                last_success: stamp(s.last_success),
                recovery_attempts: u64::from(s.recovery_attempts),
            },
            circuit: CircuitView {
                state: s.state.as_str().to_string(),
                failure_count: u64::from(s.failure_count),
                last_failure: stamp(s.last_failure),
                recovery_attempts: u64::from(s.recovery_attempts),
                mode: s.mode.as_str().to_string(),
                open_until: stamp(s.open_until),
                retry_in_ms: s.open_until.map(|t| u64::try_from(t.saturating_duration_since(now).as_millis()).unwrap_or(u64::MAX)),
                total_incidents: s.total_incidents,
                rejected: s.rejected,
                in_flight: u.circuit.in_flight() as u64,
                trip: s.trip.as_ref().map(|r| TripView { rule: r.rule().to_string(), detail: r.to_string(), restored: s.restored }),
                last_transition: s.last_transition.as_ref().map(TransitionView::of),
            },
            operations: OperationsView {
                total: s.total,
                successful: s.successful,
                failed: s.failed,
                success_rate: (rate * 100.0).round() / 100.0,
                last_operation: stamp(s.last_success.max(s.last_failure)),
            },
            performance: PerformanceView {
                average_operation_time_ms: s.average_duration.map_or(0.0, |d| d.as_secs_f64() * 1e3),
                last_operation_time_ms: s.last_duration.map_or(0.0, |d| d.as_secs_f64() * 1e3),
            },
            endpoints: u.endpoints.view(now).into_iter().map(EndpointEntry::from).collect(),
            upstream: u.operation.as_ref().map_or_else(|| u.config.name.clone(), |(up, _)| up.clone()),
            operation: u.operation.as_ref().map(|(_, op)| op.clone()),
        }
    }

    /// As JSON (the shapes cannot fail to serialize).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

// === impl TransitionView ===

impl TransitionView {
    pub fn of(t: &Transition) -> TransitionView {
        TransitionView {
            from: t.from.as_str().to_string(),
            to: t.to.as_str().to_string(),
            reason: t.reason.to_string(),
            rule: t.reason.rule().to_string(),
            detail: t.reason.to_string(),
            shadow: t.shadow,
            at: clock::rfc3339(clock::wall(t.at)),
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

impl From<EndpointView> for EndpointEntry {
    fn from(e: EndpointView) -> EndpointEntry {
        EndpointEntry {
            address: e.address,
            state: e.state.to_string(),
            ejected_until: e.ejected_until,
            reason: e.reason,
            ejections: e.ejections,
            consecutive_failures: e.consecutive_failures,
            in_flight: e.in_flight,
        }
    }
}
