//! A generation: one published config with everything the data path
//! needs (upstreams with their circuits, endpoints and pools, the router),
//! and the runtime overrides the admin API lays over the YAML.
//!
//! Building a generation ([`Generation::build`]) has no side effects: it
//! carries circuits and pools over from the previous generation by name and
//! creates what is new, and spawns, writes and removes nothing. Starting it
//! ([`Generation::start`], right before it is published) does the rest:
//! drops overrides whose YAML changed, writes the ones that hold to the
//! store, starts DNS re-resolution and pool reapers, and unregisters the
//! metrics of upstreams and endpoints that are gone.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::broadcast;

use super::route::Router;
use super::upstream::{Circuit, CircuitEvent, Upstream};
use crate::config::{render, Config, UpstreamConfig};
use crate::telemetry::trace::Tracer;
use crate::telemetry::Metrics;

/// One published config with everything the data path needs, built once
/// per (re)load. Requests hold an `Arc` to the generation they started on.
pub struct Generation {
    pub number: u64,
    pub config: Arc<Config>,
    pub upstreams: HashMap<String, Arc<Upstream>>,
    pub router: Router,
    /// Trace context and span export, when `tracing:` is on.
    pub tracer: Option<Arc<Tracer>>,
}

/// The pieces a generation is built from that outlive generations.
pub struct Shared {
    pub metrics: Metrics,
    pub events: broadcast::Sender<CircuitEvent>,
    /// Runtime breaker overrides set through the admin API, by upstream.
    pub overrides: Mutex<HashMap<String, RuntimeOverride>>,
    /// The embedded store, when `store.path` is set: every generation
    /// built writes the overrides that still hold.
    pub persist: Option<Arc<crate::store::Store>>,
    /// The name of a circuit whose reported status changed without a
    /// transition (healthy -> degraded after a failure, degraded ->
    /// healthy when the window clears), for the WebSocket.
    pub status_changes: broadcast::Sender<Arc<str>>,
}

/// A runtime change of one upstream's breaker settings (admin `PUT
/// .../config`). It holds while the YAML of that upstream stays `base`;
/// a reload that changes or removes the upstream drops it.
#[derive(Debug, Clone)]
pub struct RuntimeOverride {
    pub base: UpstreamConfig,
    pub failure_threshold: u32,
    pub reset_timeout: Duration,
    pub min_healthy_period: Duration,
    pub request_limit: Option<usize>,
    /// The architecture seed's switch, monitoring window and health check
    /// interval, when the body named them.
    pub enabled: Option<bool>,
    pub monitoring_window: Option<Duration>,
    pub health_check_interval: Option<Duration>,
    pub applied_at: SystemTime,
    pub applied_by: String,
}

impl RuntimeOverride {
    /// Whether this override still holds over `config`: its upstream
    /// `name` is there with the YAML it was applied over.
    fn holds_over(&self, config: &Config, name: &str) -> bool {
        config.upstream(name).is_some_and(|yaml| *yaml == self.base)
    }

    fn apply(&self, uc: &mut UpstreamConfig) {
        uc.breaker.failure_threshold = self.failure_threshold;
        uc.breaker.reset_timeout = self.reset_timeout;
        uc.breaker.max_reset_timeout = uc.breaker.max_reset_timeout.max(self.reset_timeout);
        uc.breaker.min_healthy_period = self.min_healthy_period;
        if let Some(limit) = self.request_limit {
            uc.max_concurrent_requests = limit;
        }
        if let Some(enabled) = self.enabled {
            uc.breaker.enabled = enabled;
        }
        if let Some(window) = self.monitoring_window {
            uc.breaker.monitoring_window = window;
        }
        if let (Some(interval), Some(hc)) = (self.health_check_interval, uc.health_check.as_mut()) {
            hc.interval = interval;
        }
    }
}

impl Shared {
    pub fn new(metrics: Metrics, events: broadcast::Sender<CircuitEvent>) -> Shared {
        let (status_changes, _) = broadcast::channel(1024);
        Shared { metrics, events, overrides: Mutex::new(HashMap::new()), persist: None, status_changes }
    }
}

// === impl RuntimeOverride ===

impl RuntimeOverride {
    /// The stored form: the settings, who applied them and when, and the
    /// upstream's YAML it was applied over (so a restart with a changed
    /// upstream drops it, as a reload would).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "base": render::upstream_key(&self.base),
            "failureThreshold": self.failure_threshold,
            "resetTimeoutMs": u64::try_from(self.reset_timeout.as_millis()).unwrap_or(u64::MAX),
            "minHealthyPeriodMs": u64::try_from(self.min_healthy_period.as_millis()).unwrap_or(u64::MAX),
            "requestLimit": self.request_limit,
            "enabled": self.enabled,
            "monitoringWindowMs": self.monitoring_window.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            "healthCheckIntervalMs": self.health_check_interval.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            "appliedAtMs": crate::store::unix_ms(self.applied_at),
            "appliedBy": self.applied_by,
        })
    }

    /// The override stored by [`RuntimeOverride::to_json`], if `base` (the
    /// upstream's YAML now) is the one it was applied over.
    ///
    /// Stores written before the key was stable hold the `Debug` rendering
    /// of the upstream instead: it is accepted once, while it still matches,
    /// and the override is written back with the stable key when its
    /// generation starts.
    pub fn from_json(v: &serde_json::Value, base: &UpstreamConfig) -> Option<RuntimeOverride> {
        let stored = v["base"].as_str()?;
        if stored != render::upstream_key(base) && stored != format!("{base:?}") {
            return None;
        }
        Some(RuntimeOverride {
            base: base.clone(),
            failure_threshold: u32::try_from(v["failureThreshold"].as_u64()?).ok()?,
            reset_timeout: Duration::from_millis(v["resetTimeoutMs"].as_u64()?),
            min_healthy_period: Duration::from_millis(v["minHealthyPeriodMs"].as_u64()?),
            request_limit: v["requestLimit"].as_u64().and_then(|l| usize::try_from(l).ok()),
            enabled: v["enabled"].as_bool(),
            monitoring_window: v["monitoringWindowMs"].as_u64().map(Duration::from_millis),
            health_check_interval: v["healthCheckIntervalMs"].as_u64().map(Duration::from_millis),
            applied_at: SystemTime::UNIX_EPOCH + Duration::from_millis(v["appliedAtMs"].as_u64()?),
            applied_by: v["appliedBy"].as_str()?.to_string(),
        })
    }
}

// === impl Generation ===

impl Generation {
    /// Builds generation `number` from a checked config, carrying over the
    /// circuit (state, counters, window, backoff) and the connection pool
    /// of every upstream that keeps its name. No side effects beyond
    /// registering the metrics of new circuits: nothing is spawned,
    /// written or dropped until [`Generation::start`].
    pub fn build(number: u64, config: Config, previous: Option<&Generation>, shared: &Shared, now: Instant) -> Generation {
        let mut upstreams = HashMap::with_capacity(config.upstreams.len());
        // The overrides that still hold over this config (`start` drops the others).
        let overrides: HashMap<String, RuntimeOverride> = shared
            .overrides
            .lock()
            .iter()
            .filter(|(name, o)| o.holds_over(&config, name))
            .map(|(name, o)| (name.clone(), o.clone()))
            .collect();
        for yaml in &config.upstreams {
            let mut effective = yaml.clone();
            if let Some(o) = overrides.get(&yaml.name) {
                o.apply(&mut effective);
            }
            let uc = &effective;
            let prev = previous.and_then(|g| g.upstreams.get(&uc.name));
            let circuit = match prev {
                Some(p) => {
                    if p.config.breaker != uc.breaker {
                        p.circuit.set_policy(uc.breaker.clone());
                    }
                    p.circuit.clone()
                }
                None => Arc::new(Circuit::new(
                    &uc.name,
                    uc.breaker.clone(),
                    shared.metrics.upstream(&uc.name),
                    (shared.events.clone(), shared.status_changes.clone()),
                    now,
                )),
            };
            upstreams.insert(uc.name.clone(), Arc::new(Upstream::new(uc.clone(), circuit, prev.map(|p| &**p))));
        }
        // The operations' circuits (docs/configuration.md: Routes), after their upstreams.
        for route in &config.routes {
            let (Some(op), Some(name), Some(policy)) = (&route.operation, route.circuit_name(), &route.breaker) else { continue };
            let Some(parent) = upstreams.get(&route.upstream).cloned() else { continue };
            if upstreams.contains_key(&name) {
                continue;
            }
            let prev = previous.and_then(|g| g.upstreams.get(&name));
            let circuit = match prev {
                Some(p) => {
                    if p.config.breaker != *policy {
                        p.circuit.set_policy(policy.clone());
                    }
                    p.circuit.clone()
                }
                None => Arc::new(Circuit::new(
                    &name,
                    policy.clone(),
                    shared.metrics.operation(&route.upstream, op),
                    (shared.events.clone(), shared.status_changes.clone()),
                    now,
                )),
            };
            upstreams.insert(name, Arc::new(Upstream::operation(&parent, op, (policy.clone(), route.fallback.clone()), circuit)));
        }
        let router = Router::new(&config.routes, &upstreams);
        // The exporter (and its queue) stays while `tracing:` does.
        let tracer = config.tracing.as_ref().map(|t| match previous.and_then(|g| g.tracer.as_ref()).filter(|p| p.config == *t) {
            Some(same) => same.clone(),
            None => Tracer::new(t.clone(), shared.metrics.trace.clone()),
        });
        Generation { number, config: Arc::new(config), upstreams, router, tracer }
    }

    /// Starts this generation, just before it is published in place of
    /// `previous`: drops the runtime overrides its YAML no longer holds and
    /// writes the rest to the store, starts re-resolving hostname
    /// endpoints, and unregisters the metrics of circuits and endpoints
    /// that are gone. Needs a runtime for the resolvers (without one, names
    /// are resolved on first use).
    pub fn start(&self, previous: Option<&Generation>, shared: &Shared) {
        if let Some(t) = &self.tracer {
            t.start_exporter();
        }
        {
            let mut overrides = shared.overrides.lock();
            overrides.retain(|name, o| {
                let keep = o.holds_over(&self.config, name);
                if !keep {
                    tracing::info!(upstream = %name, "runtime override dropped: the YAML of this upstream changed");
                }
                keep
            });
            if let Some(store) = &shared.persist {
                store.overrides(overrides.iter().map(|(name, o)| (name.clone(), o.to_json())).collect());
            }
        }
        for up in self.upstreams.values().filter(|u| u.operation.is_none()) {
            up.endpoints.start();
        }
        let upstreams = &self.upstreams;
        if let Some(prev) = previous {
            for name in prev.upstreams.keys() {
                if !upstreams.contains_key(name) {
                    match &prev.upstreams[name].operation {
                        Some((upstream, op)) => shared.metrics.remove_operation(upstream, op),
                        None => shared.metrics.remove_upstream(name),
                    }
                }
                if let (Some(old), new) = (prev.upstreams.get(name), upstreams.get(name)) {
                    // Endpoints that are gone take their ejection gauge along.
                    for m in old.endpoints.members().iter() {
                        if !new.is_some_and(|n| n.endpoints.members().iter().any(|k| Arc::ptr_eq(k, m))) {
                            shared.metrics.remove_endpoint(name, &m.label);
                        }
                    }
                }
            }
        }
    }

    /// Upstreams sorted by name, for stable reports.
    pub fn sorted_upstreams(&self) -> Vec<&Arc<Upstream>> {
        let mut v: Vec<_> = self.upstreams.values().collect();
        v.sort_by(|a, b| a.config.name.cmp(&b.config.name));
        v
    }
}
