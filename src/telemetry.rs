//! Telemetry: the Prometheus registry and its typed handles (`metrics`), and
//! the tracing subscriber setup (`logging`), and distributed traces: trace
//! context, spans and their OTLP export (`trace`, `otlp`).
//!
//! The app owns one [`Metrics`]; each upstream gets pre-resolved handles
//! ([`UpstreamMetrics`]) so recording a request touches only atomics, never
//! a lock shared across upstreams. Label values come from config names only.

pub mod logging;
pub mod metrics;
pub mod otlp;
pub mod trace;

pub use metrics::{EndpointMetrics, Metrics, Outcome, UpstreamMetrics};
