//! The endpoints beneath one upstream's circuit (docs/configuration.md: outlierDetection, retry): balancing over
//! the endpoints that are not ejected, passive outlier detection with
//! exponential ejection capped by `maxEjectionPercent`, the single probation
//! request that brings an ejected endpoint back, active health results per
//! endpoint, and hostname endpoints expanded to every address they resolve
//! to, re-resolved every `dnsRefresh`.
//!
//! Owns: each endpoint's [`Member`] (its address, connection pool, load and
//! outlier state), kept across reloads and re-resolutions while endpoint,
//! address and transport stay the same. Must not: touch circuits, classify
//! errors (callers pass a [`Fault`]) or hold a lock on the request path —
//! picking reads atomics; only an ejection or a return takes the set's
//! ejection lock.

use parking_lot::Mutex;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use http::uri::Scheme;
use prometheus::IntGauge;

use super::fault::{Fault, UpstreamFault};
use super::pool::{EndpointPool, Transport};
use crate::clock;
use crate::config::{Endpoint, LoadBalancing, OutlierDetection, UpstreamConfig};
use crate::telemetry::{EndpointMetrics, Outcome, UpstreamMetrics};

/// How long one DNS lookup may take before the old addresses are kept.
const DNS_TIMEOUT: Duration = Duration::from_secs(5);

/// All endpoints of one upstream (one config generation's view).
pub struct EndpointSet {
    upstream: Arc<str>,
    policy: OutlierDetection,
    balancing: LoadBalancing,
    dns_refresh: Duration,
    sources: Vec<Source>,
    members: ArcSwap<Vec<Arc<Member>>>,
    next: AtomicUsize,
    /// Held to decide an ejection against `maxEjectionPercent`, and for a
    /// re-resolution; never on the path of a successful request.
    changes: Mutex<()>,
    resolving: tokio::sync::Mutex<()>,
    resolved: AtomicBool,
    /// Whether its resolver runs ([`EndpointSet::start`]).
    started: AtomicBool,
    transport: Arc<Transport>,
    gauges: UpstreamMetrics,
}

/// One configured endpoint: an address, or a name to resolve.
#[derive(Clone)]
enum Source {
    Address(Endpoint, SocketAddr),
    Name(Endpoint, String, u16),
}

/// One address balanced to.
pub struct Member {
    /// The configured endpoint it came from (its authority is the `Host`
    /// of requests that come without one, and the TLS server name).
    pub endpoint: Endpoint,
    pub address: SocketAddr,
    /// `ip:port`, as shown in metrics, logs and the status API.
    pub label: Arc<str>,
    pool: Arc<EndpointPool>,
    load: AtomicUsize,
    consecutive: AtomicU32,
    /// Failures of this endpoint its circuit counted since its last counted
    /// success ([`EndpointSet::settle`]).
    counted: AtomicU32,
    /// `clock::ms` of the end of the ejection, plus one; 0 = in rotation.
    ejected_until: AtomicU64,
    /// Ejected or on probation (not yet returned).
    out: AtomicBool,
    /// The one probation request is in flight.
    probing: AtomicBool,
    gauge: IntGauge,
    /// Its attempts by outcome and their durations.
    series: EndpointMetrics,
    outlier: Mutex<Outlier>,
    /// When this endpoint appeared (fusebox started, or a reload or a DNS
    /// answer added it): its startup grace runs from here.
    born: Instant,
    /// It has answered once (any status, request or health probe).
    answered: AtomicBool,
}

#[derive(Default)]
struct Outlier {
    ejections: u32,
    reason: Option<String>,
    returned_at: Option<Instant>,
}

/// An endpoint picked for one attempt; frees its load slot when dropped.
pub struct EndpointLease {
    pub member: Arc<Member>,
    /// This attempt is the probation request of an ejected endpoint.
    probing: bool,
    /// When the attempt started (its duration ends at its outcome).
    started: Instant,
}

/// The state of one endpoint, for the status API and the WebSocket.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointView {
    pub address: String,
    /// `active`, `ejected` or `probation`.
    pub state: &'static str,
    pub ejected_until: Option<String>,
    pub reason: Option<String>,
    pub ejections: u32,
    pub consecutive_failures: u32,
    pub in_flight: usize,
}

// === impl EndpointSet ===

impl EndpointSet {
    /// The endpoints of `config`. Members of `previous` whose endpoint and
    /// address stay are taken over (pool and outlier state) when
    /// `same_transport`; hostname endpoints start unresolved.
    pub fn new(config: &UpstreamConfig, previous: Option<&EndpointSet>, same_transport: bool, gauges: UpstreamMetrics) -> Arc<EndpointSet> {
        let sources: Vec<Source> = config.endpoints.iter().map(Source::of).collect();
        let previous = previous.filter(|_| same_transport);
        let transport = match previous {
            Some(p) => p.transport.clone(),
            None => Arc::new(Transport::new(config)),
        };
        let old: Vec<Arc<Member>> = previous.map(|p| p.members.load().to_vec()).unwrap_or_default();
        let mut members = Vec::new();
        for s in &sources {
            match s {
                Source::Address(e, addr) => members.push(take_or_make(&old, e, *addr, &transport, &gauges)),
                Source::Name(e, ..) => {
                    // Keep the addresses this name had until it is resolved again.
                    members.extend(old.iter().filter(|m| m.endpoint == *e).cloned());
                }
            }
        }
        let has_names = sources.iter().any(|s| matches!(s, Source::Name(..)));
        let resolved = !has_names || previous.is_some_and(|p| p.resolved.load(Ordering::Acquire));
        let set = Arc::new(EndpointSet {
            upstream: Arc::from(config.name.as_str()),
            policy: config.outlier_detection,
            balancing: config.load_balancing,
            dns_refresh: config.dns_refresh,
            sources,
            members: ArcSwap::from_pointee(members),
            next: AtomicUsize::new(0),
            changes: Mutex::new(()),
            resolving: tokio::sync::Mutex::new(()),
            resolved: AtomicBool::new(resolved),
            started: AtomicBool::new(false),
            transport,
            gauges,
        });
        set
    }

    /// Starts re-resolving hostname endpoints every `dnsRefresh` (first at
    /// once), for as long as this set lives. Called once the generation
    /// holding it starts; a second call does nothing.
    pub fn start(self: &Arc<Self>) {
        let has_names = self.sources.iter().any(|s| matches!(s, Source::Name(..)));
        if has_names && !self.started.swap(true, Ordering::AcqRel) {
            spawn_resolver(Arc::downgrade(self));
        }
    }

    /// Closes every member's connections idle past the pool's idle timeout.
    pub fn reap_idle(&self, now: Instant) {
        for m in self.members.load().iter() {
            m.pool.reap(now);
        }
    }

    pub fn transport(&self) -> &Arc<Transport> {
        &self.transport
    }

    /// Every member now.
    pub fn members(&self) -> Arc<Vec<Arc<Member>>> {
        self.members.load_full()
    }

    /// Resolves hostname endpoints if that never succeeded yet (first
    /// requests after start), so they need not wait for the resolver.
    pub async fn ensure_resolved(&self) {
        if !self.is_resolved() {
            // Boxed: the lookup's state is large and rarely needed; inline it
            // would be carried (and moved) by every request's future.
            Box::pin(self.resolve()).await;
        }
    }

    /// Whether every hostname endpoint was resolved at least once.
    pub fn is_resolved(&self) -> bool {
        self.resolved.load(Ordering::Acquire)
    }

    /// Picks an endpoint for one attempt: round robin or least request over
    /// the endpoints in rotation, skipping `exclude` (the one that just
    /// failed) when another can serve. An ejected endpoint whose time is up
    /// gets exactly one probation request. `None` only when the set is
    /// empty (a hostname that resolved to nothing).
    pub fn pick(&self, exclude: Option<&Member>, now: Instant) -> Option<EndpointLease> {
        let members = self.members.load();
        let n = members.len();
        if n == 1 {
            return Some(EndpointLease::new(members[0].clone(), false, now));
        }
        let now_ms = clock::ms(now).saturating_add(1);
        let excluded = |m: &Member| exclude.is_some_and(|x| std::ptr::eq(x, m));
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        // An endpoint back from ejection first: it needs its one request.
        for i in 0..n {
            let m = &members[(start + i) % n];
            if !excluded(m) && m.probation_due(now_ms) && m.claim_probation() {
                return Some(EndpointLease::new(m.clone(), true, now));
            }
        }
        let in_rotation = |m: &&Arc<Member>| !excluded(m) && m.ejected_until.load(Ordering::Acquire) == 0;
        let chosen = match self.balancing {
            LoadBalancing::RoundRobin => (0..n).map(|i| &members[(start + i) % n]).find(in_rotation),
            // Ties rotate so equal endpoints share the load.
            LoadBalancing::LeastRequest => {
                (0..n).map(|i| &members[(start + i) % n]).filter(in_rotation).min_by_key(|m| m.load.load(Ordering::Relaxed))
            }
        };
        if let Some(m) = chosen {
            return Some(EndpointLease::new(m.clone(), false, now));
        }
        // Nothing else in rotation: the excluded one if it is, else the
        // ejected endpoint that returns first (never refuse for this).
        if let Some(x) = members.iter().find(|m| excluded(m) && m.ejected_until.load(Ordering::Acquire) == 0) {
            return Some(EndpointLease::new(x.clone(), false, now));
        }
        members.iter().min_by_key(|m| m.ejected_until.load(Ordering::Acquire)).map(|m| EndpointLease::new(m.clone(), false, now))
    }

    /// Whether another endpoint than `member` is in rotation.
    pub fn has_other(&self, member: &Member) -> bool {
        self.members.load().iter().any(|m| !std::ptr::eq(&**m, member) && m.ejected_until.load(Ordering::Acquire) == 0)
    }

    /// Records one attempt's result for its endpoint: `None` is a success,
    /// a fault that counts is a failure (the client's and fusebox's own
    /// faults change nothing).
    /// Returns whether this result ejected the endpoint.
    pub fn record(&self, lease: &mut EndpointLease, fault: Option<Fault>, now: Instant) -> bool {
        let m = lease.member.clone();
        let seconds = now.saturating_duration_since(lease.started).as_secs_f64();
        match fault {
            None => {
                m.series.attempt(Outcome::Success, seconds);
                if m.consecutive.load(Ordering::Relaxed) != 0 {
                    m.consecutive.store(0, Ordering::Relaxed);
                }
                if lease.probing {
                    lease.probing = false;
                    self.restore(&m, "its probation request succeeded", now);
                }
                false
            }
            Some(f) if f.counts() => {
                let timed_out = matches!(f, Fault::Upstream(UpstreamFault::Timeout | UpstreamFault::BodyStalled));
                m.series.attempt(if timed_out { Outcome::Timeout } else { Outcome::Failure }, seconds);
                let in_a_row = m.consecutive.fetch_add(1, Ordering::Relaxed).saturating_add(1);
                if lease.probing {
                    lease.probing = false;
                    self.eject(&m, "consecutive-failures", format!("its probation request failed: {f}"), now)
                } else if f == Fault::Upstream(UpstreamFault::Connect) && !m.is_out() && self.has_other(&m) {
                    // Could not connect while another endpoint is in
                    // rotation: out at once (nginx's max_fails=1), not
                    // after `consecutiveFailures` more delayed requests.
                    self.eject(&m, "connect-failure", format!("could not connect ({in_a_row} in a row)"), now)
                } else if self.policy.consecutive_failures > 0 && in_a_row >= self.policy.consecutive_failures && !m.is_out() {
                    self.eject(&m, "consecutive-failures", format!("{in_a_row} upstream faults in a row (last: {f})"), now)
                } else {
                    false
                }
            }
            Some(_) => false,
        }
    }

    /// Keeps count of the failures of `member` that its upstream's circuit
    /// counted (final outcomes of client requests), and returns how many of
    /// them to take back from the circuit when `ejected_now`: the part that
    /// failed is routed around, so they say nothing about the whole.
    pub fn settle(&self, member: &Member, failed: bool, ejected_now: bool) -> u32 {
        let forgive = if ejected_now { member.counted.swap(0, Ordering::Relaxed) } else { 0 };
        if failed {
            member.counted.fetch_add(1, Ordering::Relaxed);
        } else if member.counted.load(Ordering::Relaxed) != 0 {
            member.counted.store(0, Ordering::Relaxed);
        }
        forgive
    }

    /// An active health check's verdict on one endpoint.
    pub fn health(&self, member: &Arc<Member>, healthy: bool, now: Instant) {
        if healthy {
            member.consecutive.store(0, Ordering::Relaxed);
            if member.out.load(Ordering::Acquire) {
                self.restore(member, "it passed a health check", now);
            }
        } else if !member.out.load(Ordering::Acquire) || member.ejected_until.load(Ordering::Acquire) <= clock::ms(now).saturating_add(1) {
            self.eject(member, "health-check", "it failed a health check".to_string(), now);
        }
    }

    fn eject(&self, m: &Arc<Member>, rule: &'static str, why: String, now: Instant) -> bool {
        let _changes = self.changes.lock();
        let members = self.members.load();
        if !m.out.load(Ordering::Acquire) {
            let n = members.len();
            // Never the only endpoint (nothing to balance to instead, and
            // a lone endpoint never gets the probation request that would
            // bring it back); always one of two or more.
            let cap = if n < 2 { 0 } else { (n * self.policy.max_ejection_percent as usize / 100).max(1) };
            let out = members.iter().filter(|x| x.out.load(Ordering::Acquire)).count();
            if out >= cap {
                tracing::debug!(upstream = %self.upstream, endpoint = %m.label, "not ejected: maxEjectionPercent ({}%) reached: {why}", self.policy.max_ejection_percent);
                return false;
            }
        }
        let mut o = m.outlier.lock();
        if o.returned_at.is_some_and(|t| now.saturating_duration_since(t) >= self.policy.max_ejection_time) {
            // Healthy for a whole maxEjectionTime: start over from the base.
            o.ejections = 0;
        }
        o.ejections = o.ejections.saturating_add(1);
        let factor = 1u32.checked_shl(o.ejections.saturating_sub(1).min(31)).unwrap_or(u32::MAX);
        let time = self.policy.base_ejection_time.saturating_mul(factor).min(self.policy.max_ejection_time);
        let until = now.checked_add(time).unwrap_or(now);
        m.ejected_until.store(clock::ms(until).saturating_add(1).max(1), Ordering::Release);
        m.out.store(true, Ordering::Release);
        // A new ejection period: its probation is due at its end (a failed
        // probation request must not leave the claim taken for good).
        m.probing.store(false, Ordering::Release);
        m.consecutive.store(0, Ordering::Relaxed);
        o.reason = Some(format!("{rule}: {why}"));
        let ejections = o.ejections;
        drop(o);
        m.gauge.set(1);
        self.gauges.endpoint_ejection(&m.label, rule);
        tracing::warn!(upstream = %self.upstream, endpoint = %m.label, rule, seconds = time.as_secs_f64(), ejections, "endpoint {} of {} ejected for {:?}: {why}", m.label, self.upstream, time);
        true
    }

    fn restore(&self, m: &Arc<Member>, why: &str, now: Instant) {
        let _changes = self.changes.lock();
        if !m.out.swap(false, Ordering::AcqRel) {
            return;
        }
        m.ejected_until.store(0, Ordering::Release);
        m.probing.store(false, Ordering::Release);
        let mut o = m.outlier.lock();
        o.reason = None;
        o.returned_at = Some(now);
        drop(o);
        m.gauge.set(0);
        tracing::info!(upstream = %self.upstream, endpoint = %m.label, "endpoint {} of {} back in rotation: {why}", m.label, self.upstream);
    }

    /// Each endpoint's state, in order.
    pub fn view(&self, now: Instant) -> Vec<EndpointView> {
        let now_ms = clock::ms(now).saturating_add(1);
        self.members
            .load()
            .iter()
            .map(|m| {
                let until = m.ejected_until.load(Ordering::Acquire);
                let out = m.out.load(Ordering::Acquire);
                let o = m.outlier.lock();
                EndpointView {
                    address: m.label.to_string(),
                    state: match (out, until > now_ms) {
                        (false, _) => "active",
                        (true, true) => "ejected",
                        (true, false) => "probation",
                    },
                    ejected_until: (until > now_ms).then(|| clock::rfc3339(clock::wall(clock::from_ms(until - 1)))),
                    reason: o.reason.clone(),
                    ejections: o.ejections,
                    consecutive_failures: m.consecutive.load(Ordering::Relaxed),
                    in_flight: m.load.load(Ordering::Relaxed),
                }
            })
            .collect()
    }

    /// Resolves every hostname endpoint now; on failure the addresses it
    /// had are kept.
    pub async fn resolve(&self) {
        let _one = self.resolving.lock().await;
        let old = self.members.load_full();
        let mut members = Vec::with_capacity(old.len());
        let mut ok = true;
        for s in &self.sources {
            match s {
                Source::Address(e, addr) => {
                    if let Some(m) = old.iter().find(|m| m.endpoint == *e && m.address == *addr) {
                        members.push(m.clone());
                    }
                }
                Source::Name(e, host, port) => match lookup(host, *port).await {
                    Ok(addrs) => {
                        for a in addrs {
                            members.push(take_or_make(&old, e, a, &self.transport, &self.gauges));
                        }
                    }
                    Err(why) => {
                        ok = false;
                        tracing::warn!(upstream = %self.upstream, endpoint = %e, error = %why, "cannot resolve endpoint: keeping its last addresses");
                        members.extend(old.iter().filter(|m| m.endpoint == *e).cloned());
                    }
                },
            }
        }
        let _changes = self.changes.lock();
        let changed = members.len() != old.len() || members.iter().zip(old.iter()).any(|(a, b)| !Arc::ptr_eq(a, b));
        if changed {
            for gone in old.iter().filter(|m| !members.iter().any(|n| Arc::ptr_eq(n, m))) {
                self.gauges.remove_endpoint(&gone.label);
            }
            let list: Vec<&str> = members.iter().map(|m| &*m.label).collect();
            tracing::info!(upstream = %self.upstream, endpoints = ?list, "endpoints resolved");
            self.members.store(Arc::new(members));
        }
        if ok {
            self.resolved.store(true, Ordering::Release);
        }
    }
}

/// The member for `(endpoint, address)` from `old`, or a new one.
fn take_or_make(old: &[Arc<Member>], e: &Endpoint, addr: SocketAddr, transport: &Arc<Transport>, gauges: &UpstreamMetrics) -> Arc<Member> {
    if let Some(m) = old.iter().find(|m| m.endpoint == *e && m.address == addr) {
        return m.clone();
    }
    let label: Arc<str> = Arc::from(addr.to_string());
    let gauge = gauges.endpoint_gauge(&label);
    gauge.set(0);
    let series = gauges.endpoint_series(&label);
    Arc::new(Member {
        endpoint: e.clone(),
        address: addr,
        pool: EndpointPool::new(e.clone(), addr, transport.clone()),
        label,
        load: AtomicUsize::new(0),
        consecutive: AtomicU32::new(0),
        counted: AtomicU32::new(0),
        ejected_until: AtomicU64::new(0),
        out: AtomicBool::new(false),
        probing: AtomicBool::new(false),
        gauge,
        series,
        outlier: Mutex::new(Outlier::default()),
        born: clock::now(),
        answered: AtomicBool::new(false),
    })
}

/// Every address of `host`, IPv4 first like Envoy's `V4_PREFERRED`: when
/// there are IPv4 addresses only those are used (so `localhost` is one
/// endpoint, not a refused `::1` beside it).
async fn lookup(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    let found = tokio::time::timeout(DNS_TIMEOUT, tokio::net::lookup_host((host, port))).await;
    let mut addrs: Vec<SocketAddr> = match found {
        Err(_) => return Err(format!("lookup took longer than {DNS_TIMEOUT:?}")),
        Ok(Err(e)) => return Err(e.to_string()),
        Ok(Ok(a)) => a.collect(),
    };
    if addrs.iter().any(SocketAddr::is_ipv4) {
        addrs.retain(SocketAddr::is_ipv4);
    }
    addrs.sort();
    addrs.dedup();
    if addrs.is_empty() {
        return Err("no address".to_string());
    }
    Ok(addrs)
}

/// Re-resolves the set every `dnsRefresh` until it is gone (first at once).
fn spawn_resolver(set: Weak<EndpointSet>) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else { return };
    handle.spawn(async move {
        loop {
            let every = {
                let Some(set) = set.upgrade() else { return };
                set.resolve().await;
                set.dns_refresh
            };
            tokio::time::sleep(every).await;
        }
    });
}

// === impl Source ===

impl Source {
    fn of(e: &Endpoint) -> Source {
        let default_port = if e.scheme == Scheme::HTTPS { 443 } else { 80 };
        let port = e.authority.port_u16().unwrap_or(default_port);
        let host = e.authority.host();
        match host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            Ok(ip) => Source::Address(e.clone(), SocketAddr::new(ip, port)),
            Err(_) => Source::Name(e.clone(), host.to_string(), port),
        }
    }
}

// === impl Member ===

impl Member {
    pub fn pool(&self) -> &Arc<EndpointPool> {
        &self.pool
    }

    /// Ejected and its time is up: due its probation request.
    fn probation_due(&self, now_ms: u64) -> bool {
        let until = self.ejected_until.load(Ordering::Acquire);
        until != 0 && until <= now_ms && !self.probing.load(Ordering::Acquire)
    }

    fn claim_probation(&self) -> bool {
        self.probing.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    /// Starting: it never answered and appeared less than `grace` ago, so a
    /// refused connect to it is the app still starting, not a failure.
    pub fn is_starting(&self, grace: Duration, now: Instant) -> bool {
        !self.answered.load(Ordering::Relaxed) && now.saturating_duration_since(self.born) < grace
    }

    /// It answered (a response of any status): no longer starting.
    pub fn answered(&self) {
        if !self.answered.load(Ordering::Relaxed) {
            self.answered.store(true, Ordering::Relaxed);
        }
    }

    /// Whether the endpoint is out of rotation (ejected or on probation).
    pub fn is_out(&self) -> bool {
        self.out.load(Ordering::Acquire)
    }

    pub fn ejected_at(&self, now: Instant) -> Option<SystemTime> {
        let until = self.ejected_until.load(Ordering::Acquire);
        (until > clock::ms(now).saturating_add(1)).then(|| clock::wall(clock::from_ms(until - 1)))
    }
}

// === impl EndpointLease ===

impl EndpointLease {
    fn new(member: Arc<Member>, probing: bool, started: Instant) -> EndpointLease {
        member.load.fetch_add(1, Ordering::Relaxed);
        EndpointLease { member, probing, started }
    }
}

impl Drop for EndpointLease {
    fn drop(&mut self) {
        self.member.load.fetch_sub(1, Ordering::Relaxed);
        if self.probing {
            // Ended without a result (client gone): the next request probes.
            self.member.probing.store(false, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    //! The set's ejection rules with explicit instants (no sockets, no
    //! sleeps): what one result does to one endpoint.
    use std::time::Duration;

    use super::*;
    use crate::runtime::fault::{ClientFault, UpstreamFault};
    use crate::telemetry::metrics::Metrics;

    fn set(endpoints: &[&str]) -> Arc<EndpointSet> {
        let yaml = format!(
            "upstreams:\n  api:\n    endpoints: [{}]\n    outlierDetection: {{ consecutiveFailures: 3, baseEjectionTime: 30s }}\nroutes:\n  - {{ match: {{ pathPrefix: / }}, upstream: api }}\n",
            endpoints.join(", ")
        );
        let config = crate::config::parse(&yaml).expect("a valid config");
        EndpointSet::new(&config.upstreams[0], None, false, Metrics::new().upstream("api"))
    }

    fn lease_of(set: &EndpointSet, label: &str, now: Instant) -> EndpointLease {
        for _ in 0..8 {
            let lease = set.pick(None, now).expect("an endpoint");
            if &*lease.member.label == label {
                return lease;
            }
        }
        panic!("{label} never picked");
    }

    fn state(set: &EndpointSet, label: &str, now: Instant) -> &'static str {
        set.view(now).into_iter().find(|v| v.address == label).map_or("?", |v| v.state)
    }

    const A: &str = "127.0.0.1:1";
    const B: &str = "127.0.0.1:2";

    #[test]
    fn a_connect_failure_ejects_at_once_while_another_endpoint_serves() {
        let now = clock::now();
        let s = set(&["http://127.0.0.1:1", "http://127.0.0.1:2"]);
        let mut lease = lease_of(&s, A, now);
        assert!(s.record(&mut lease, Some(Fault::Upstream(UpstreamFault::Connect)), now), "ejected by one connect failure");
        assert_eq!(state(&s, A, now), "ejected");
        // maxEjectionPercent (50 of 2: one): the other stays in.
        let mut other = lease_of(&s, B, now);
        assert!(!s.record(&mut other, Some(Fault::Upstream(UpstreamFault::Connect)), now), "never both");
        assert_eq!(state(&s, B, now), "active");
    }

    #[test]
    fn a_lone_endpoint_is_never_ejected() {
        let now = clock::now();
        let s = set(&["http://127.0.0.1:1"]);
        for _ in 0..10 {
            let mut lease = s.pick(None, now).expect("the endpoint");
            assert!(!s.record(&mut lease, Some(Fault::Upstream(UpstreamFault::Connect)), now));
        }
        assert_eq!(state(&s, A, now), "active");
    }

    #[test]
    fn other_faults_eject_after_consecutive_failures_and_a_success_resets_the_count() {
        let now = clock::now();
        let s = set(&["http://127.0.0.1:1", "http://127.0.0.1:2"]);
        let cut = Some(Fault::Upstream(UpstreamFault::BodyBroken));
        for _ in 0..2 {
            assert!(!s.record(&mut lease_of(&s, A, now), cut, now));
        }
        assert!(!s.record(&mut lease_of(&s, A, now), None, now), "a success");
        for _ in 0..2 {
            assert!(!s.record(&mut lease_of(&s, A, now), cut, now));
        }
        assert!(s.record(&mut lease_of(&s, A, now), cut, now), "the third in a row ejects");
        // Its probation comes at the end of the ejection.
        let later = now + Duration::from_secs(31);
        assert_eq!(state(&s, A, later), "probation");
    }

    #[test]
    fn faults_that_are_nobodys_count_for_nothing() {
        let now = clock::now();
        let s = set(&["http://127.0.0.1:1", "http://127.0.0.1:2"]);
        for f in [
            Fault::Upstream(UpstreamFault::Starting),
            Fault::Upstream(UpstreamFault::KeepAliveRace),
            Fault::Client(ClientFault::MalformedBody),
        ] {
            for _ in 0..5 {
                assert!(!s.record(&mut lease_of(&s, A, now), Some(f), now), "{f:?}");
            }
        }
        assert_eq!(state(&s, A, now), "active");
    }
}
