//! Telemetry: the Prometheus registry and its typed handles (`metrics`), and
//! the tracing subscriber setup (`logging`).
//!
//! The app owns one [`Metrics`]; each upstream gets pre-resolved handles
//! ([`UpstreamMetrics`]) so recording a request touches only atomics, never
//! a lock shared across upstreams. Label values come from config names only.

pub mod logging;
pub mod metrics;

pub use metrics::{EndpointMetrics, Metrics, Outcome, UpstreamMetrics};
