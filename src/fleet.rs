//! A fleet of sidecars on Redis (SPEC 10): membership by heartbeat, operator
//! actions that apply on every member, shared verdicts with a quorum, and
//! one trial per recovery under a lease. Keys are `fusebox:{name}:...`:
//!
//! - `members` (a set of ids) and `member:{id}` (its snapshot, expiring
//!   after 3 missed heartbeats);
//! - `events`, the pub/sub channel of [`codec::Envelope`]s;
//! - `overrides`, a hash of the operator modes in force, applied first by a
//!   member that joins or reconnects;
//! - `audit`, a stream with one entry per fleet-wide action;
//! - `opened:{circuit}`, a hash of the members whose own evidence opened
//!   the circuit, and `lease:{circuit}`, the trial lease (`SET NX PX`).
//!
//! Must not: put Redis on the request path. Every Redis call runs on this
//! module's task with a deadline; what the data path or the admin API hand
//! over goes through a bounded queue (full: dropped and counted). Redis
//! down, slow or partitioned, each member keeps breaking on its own
//! evidence (holds are released) and re-syncs when it is back.

pub mod codec;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use redis::aio::MultiplexedConnection;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};

use crate::breaker::{CircuitState, Mode, Reason};
use crate::clock;
use crate::config::FleetConfig;
use crate::runtime::upstream::CircuitEvent;
use crate::runtime::Live;
use codec::{Action, Envelope, Message};

/// Every Redis call's deadline: past it the member counts Redis as gone.
pub const REDIS_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest pause between two connection attempts.
pub const RECONNECT_MAX: Duration = Duration::from_secs(1);
/// Messages waiting to be published; more are dropped (and counted).
pub const OUTBOX: usize = 1024;
/// The audit stream keeps about this many entries.
pub const AUDIT_MAX: usize = 10_000;

/// The fleet's series (registered only when `fleet:` is set).
#[derive(Clone)]
pub struct FleetMetrics {
    pub connected: IntGauge,
    pub members: IntGauge,
    pub verdicts: IntCounterVec,
    pub messages: IntCounterVec,
    pub leases: IntCounterVec,
}

impl FleetMetrics {
    pub fn register(registry: &Registry) -> FleetMetrics {
        let must = |r: prometheus::Result<()>| {
            if let Err(e) = r {
                tracing::warn!(error = %e, "fleet metric not registered");
            }
        };
        let connected = IntGauge::new("fusebox_fleet_connected", "1 while this member is connected to the fleet's Redis.").ok();
        let members = IntGauge::new("fusebox_fleet_members", "Live members of the fleet, this one included.").ok();
        let verdicts = IntCounterVec::new(
            Opts::new("fusebox_fleet_verdicts_total", "Circuits this member opened on the fleet's verdict (a quorum of members)."),
            &["upstream"],
        )
        .ok();
        let messages = IntCounterVec::new(
            Opts::new("fusebox_fleet_messages_total", "Fleet messages by direction (in/out) and result (ok/invalid/dropped/error)."),
            &["direction", "result"],
        )
        .ok();
        let leases = IntCounterVec::new(
            Opts::new("fusebox_fleet_trial_leases_total", "Trial leases tried, by result (won/lost/error)."),
            &["result"],
        )
        .ok();
        let (Some(connected), Some(members), Some(verdicts), Some(messages), Some(leases)) =
            (connected, members, verdicts, messages, leases)
        else {
            unreachable!("static metric definitions are valid")
        };
        must(registry.register(Box::new(connected.clone())));
        must(registry.register(Box::new(members.clone())));
        must(registry.register(Box::new(verdicts.clone())));
        must(registry.register(Box::new(messages.clone())));
        must(registry.register(Box::new(leases.clone())));
        for (d, r) in [("in", "ok"), ("in", "invalid"), ("out", "ok"), ("out", "dropped"), ("out", "error")] {
            messages.with_label_values(&[d, r]);
        }
        for r in ["won", "lost", "error"] {
            leases.with_label_values(&[r]);
        }
        FleetMetrics { connected, members, verdicts, messages, leases }
    }
}

/// One live member as the fleet API shows it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberView {
    pub id: String,
    pub version: String,
    pub started_at: String,
    pub heartbeat_at: String,
    pub circuits: Vec<Value>,
}

/// This member's side of the fleet.
pub struct Fleet {
    pub config: FleetConfig,
    started: SystemTime,
    connected: AtomicBool,
    last_error: Mutex<Option<(SystemTime, String)>>,
    members: Mutex<Vec<MemberView>>,
    outbox: mpsc::Sender<Envelope>,
    inbox: Mutex<Option<mpsc::Receiver<Envelope>>>,
    pub metrics: FleetMetrics,
    /// Circuits this member holds the trial lease of.
    leased: Mutex<HashSet<String>>,
}

impl Fleet {
    pub fn new(config: FleetConfig, metrics: FleetMetrics) -> Arc<Fleet> {
        let (outbox, rx) = mpsc::channel(OUTBOX);
        metrics.connected.set(0);
        Arc::new(Fleet {
            config,
            started: SystemTime::now(),
            connected: AtomicBool::new(false),
            last_error: Mutex::new(None),
            members: Mutex::new(Vec::new()),
            outbox,
            inbox: Mutex::new(Some(rx)),
            metrics,
            leased: Mutex::new(HashSet::new()),
        })
    }

    fn key(&self, rest: &str) -> String {
        format!("fusebox:{}:{rest}", self.config.name)
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// An operator action taken here, for every member (never waits).
    pub fn publish_action(&self, action: Action) {
        self.send(Envelope::new(&self.config.member, Message::Action(action)));
    }

    fn send(&self, e: Envelope) {
        if self.outbox.try_send(e).is_err() {
            self.metrics.messages.with_label_values(&["out", "dropped"]).inc();
        }
    }

    /// The fleet API's answer (`GET /api/admin/fleet`) and `/health/detailed`'s part.
    pub fn view(&self) -> Value {
        let error = self.last_error.lock().as_ref().map(|(at, e)| json!({ "at": clock::rfc3339(*at), "message": e }));
        let connected = self.is_connected();
        json!({
            "enabled": true,
            "name": self.config.name,
            "member": self.config.member,
            "status": if connected { "ok" } else { "degraded" },
            "connected": connected,
            "redis": crate::text::redact_url(&self.config.redis),
            "quorum": match self.config.quorum {
                crate::config::Quorum::Members(n) => json!(n),
                crate::config::Quorum::Percent(p) => json!(format!("{p}%")),
            },
            "heartbeatMs": u64::try_from(self.config.heartbeat.as_millis()).unwrap_or(u64::MAX),
            "lastError": error,
            "members": *self.members.lock(),
        })
    }

    fn set_error(&self, e: &str) {
        *self.last_error.lock() = Some((SystemTime::now(), e.to_string()));
    }
}

/// Runs the member until the app stops: connects, syncs, heartbeats, and
/// follows the channel; reconnects with a backoff after any Redis fault.
pub async fn run(fleet: Arc<Fleet>, live: std::sync::Weak<Live>) {
    let Some(mut outbox) = fleet.inbox.lock().take() else { return };
    let client = match redis::Client::open(fleet.config.redis.as_str()) {
        Ok(c) => c,
        Err(e) => {
            fleet.set_error(&format!("bad Redis URL: {e}"));
            tracing::error!(error = %e, "fleet: bad Redis URL; this member breaks alone");
            return;
        }
    };
    let mut backoff = Duration::from_millis(250);
    loop {
        let Some(state) = live.upgrade() else { return };
        let events = state.store.shared.events.subscribe();
        drop(state);
        match session(&fleet, &client, &live, events, &mut outbox).await {
            Ok(()) => return,
            Err(e) => {
                if fleet.connected.swap(false, Ordering::AcqRel) {
                    tracing::warn!(error = %e, "fleet: Redis lost; breaking on this member's own evidence until it is back");
                }
                fleet.metrics.connected.set(0);
                fleet.set_error(&e);
                if let Some(state) = live.upgrade() {
                    release_holds(&state);
                }
                fleet.leased.lock().clear();
            }
        }
        // Messages queued meanwhile are not kept: the re-sync on reconnect
        // republishes what matters.
        while outbox.try_recv().is_ok() {
            fleet.metrics.messages.with_label_values(&["out", "dropped"]).inc();
        }
        tokio::time::sleep(backoff).await;
        // At most a second between attempts: a connect to Redis is cheap,
        // and a member must re-sync within 2 s of Redis coming back.
        backoff = (backoff * 2).min(RECONNECT_MAX);
        if fleet.is_connected() {
            backoff = Duration::from_millis(250);
        }
    }
}

async fn timed<T>(what: &str, f: impl std::future::Future<Output = redis::RedisResult<T>>) -> Result<T, String> {
    match tokio::time::timeout(REDIS_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no answer within {REDIS_TIMEOUT:?}")),
    }
}

/// One connected stretch; Err when Redis failed, Ok when the app stopped.
async fn session(
    fleet: &Arc<Fleet>,
    client: &redis::Client,
    live: &std::sync::Weak<Live>,
    mut events: broadcast::Receiver<CircuitEvent>,
    outbox: &mut mpsc::Receiver<Envelope>,
) -> Result<(), String> {
    use futures_util::StreamExt;
    let mut conn: MultiplexedConnection = timed("connect", client.get_multiplexed_async_connection()).await?;
    let mut pubsub = timed("subscribe", client.get_async_pubsub()).await?;
    timed("subscribe", pubsub.subscribe(fleet.key("events"))).await?;
    let mut messages = pubsub.into_on_message();
    resync(fleet, live, &mut conn).await?;
    fleet.connected.store(true, Ordering::Release);
    fleet.metrics.connected.set(1);
    *fleet.last_error.lock() = None;
    tracing::info!(fleet = %fleet.config.name, member = %fleet.config.member, "fleet: connected to Redis");
    let mut beat = tokio::time::interval(fleet.config.heartbeat);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Leases and verdicts are looked at more often than the heartbeat.
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = beat.tick() => {
                let Some(state) = live.upgrade() else { return Ok(()) };
                heartbeat(fleet, &state, &mut conn).await?;
            }
            _ = tick.tick() => {
                let Some(state) = live.upgrade() else { return Ok(()) };
                trials(fleet, &state, &mut conn).await?;
            }
            msg = messages.next() => {
                let Some(msg) = msg else { return Err("the subscription ended".to_string()) };
                let Some(state) = live.upgrade() else { return Ok(()) };
                match Envelope::decode(msg.get_payload_bytes()) {
                    Ok(e) => {
                        fleet.metrics.messages.with_label_values(&["in", "ok"]).inc();
                        if e.member != fleet.config.member {
                            receive(fleet, &state, &mut conn, e).await?;
                        }
                    }
                    Err(e) => {
                        fleet.metrics.messages.with_label_values(&["in", "invalid"]).inc();
                        tracing::debug!(error = %e, "fleet: message dropped");
                    }
                }
            }
            out = outbox.recv() => {
                let Some(out) = out else { return Ok(()) };
                publish(fleet, &mut conn, out).await?;
            }
            event = events.recv() => {
                let Some(state) = live.upgrade() else { return Ok(()) };
                match event {
                    Ok(event) => local_transition(fleet, &state, &mut conn, event).await?,
                    // Missed transitions: the next heartbeat republishes.
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                }
            }
        }
    }
}

fn now_ms() -> i64 {
    crate::store::unix_ms(SystemTime::now())
}

/// After (re)connecting: the operator modes in force on the fleet first,
/// then this member's own open circuits again.
async fn resync(fleet: &Fleet, live: &std::sync::Weak<Live>, conn: &mut MultiplexedConnection) -> Result<(), String> {
    let overrides: HashMap<String, String> =
        timed("overrides", redis::cmd("HGETALL").arg(fleet.key("overrides")).query_async(conn)).await?;
    let Some(state) = live.upgrade() else { return Ok(()) };
    for (circuit, text) in overrides {
        match serde_json::from_str::<Action>(&text) {
            Ok(action) => apply_action(&state, &action, "the fleet's mode in force"),
            Err(e) => tracing::debug!(circuit, error = %e, "fleet: unreadable override dropped"),
        }
    }
    let now = clock::now();
    let generation = state.store.current();
    for (name, up) in &generation.upstreams {
        let snap = up.circuit.snapshot(now);
        if let (CircuitState::Open, Some(trip)) = (snap.state, &snap.trip) {
            if own_evidence(trip) {
                record_opened(fleet, conn, name, &trip.to_string(), up.config.breaker.reset_timeout).await?;
            }
        }
    }
    Ok(())
}

/// A transition's reason that is this member's own evidence.
fn own_evidence(reason: &Reason) -> bool {
    matches!(reason, Reason::Consecutive { .. } | Reason::FailureRate { .. } | Reason::SlowRate { .. })
}

async fn record_opened(fleet: &Fleet, conn: &mut MultiplexedConnection, circuit: &str, text: &str, reset: Duration) -> Result<(), String> {
    let key = fleet.key(&format!("opened:{circuit}"));
    let entry = json!({ "atMs": now_ms(), "text": text }).to_string();
    let keep = u64::try_from(reset.as_millis()).unwrap_or(u64::MAX).saturating_mul(10).max(60_000);
    let mut p = redis::pipe();
    p.cmd("HSET").arg(&key).arg(&fleet.config.member).arg(entry).ignore().cmd("PEXPIRE").arg(&key).arg(keep).ignore();
    timed("opened", p.query_async::<()>(conn)).await
}

async fn publish(fleet: &Fleet, conn: &mut MultiplexedConnection, e: Envelope) -> Result<(), String> {
    let bytes = e.encode();
    if bytes.len() > codec::MAX_MESSAGE {
        fleet.metrics.messages.with_label_values(&["out", "dropped"]).inc();
        return Ok(());
    }
    let mut p = redis::pipe();
    p.cmd("PUBLISH").arg(fleet.key("events")).arg(&bytes).ignore();
    if let Message::Action(a) = &e.body {
        // The mode in force, for members that join later.
        match (a.kind.as_str(), a.mode.as_deref()) {
            ("force", Some("auto")) | ("reset", _) => {
                p.cmd("HDEL").arg(fleet.key("overrides")).arg(&a.circuit).ignore();
            }
            ("force", Some(_)) => {
                p.cmd("HSET").arg(fleet.key("overrides")).arg(&a.circuit).arg(serde_json::to_string(a).unwrap_or_default()).ignore();
            }
            _ => {}
        }
        // Audited once, in the fleet's stream, with the member that took it.
        p.cmd("XADD")
            .arg(fleet.key("audit"))
            .arg("MAXLEN")
            .arg("~")
            .arg(AUDIT_MAX)
            .arg("*")
            .arg("member")
            .arg(&e.member)
            .arg("action")
            .arg(serde_json::to_string(a).unwrap_or_default())
            .ignore();
    }
    match timed("publish", p.query_async::<()>(conn)).await {
        Ok(()) => {
            fleet.metrics.messages.with_label_values(&["out", "ok"]).inc();
            Ok(())
        }
        Err(e) => {
            fleet.metrics.messages.with_label_values(&["out", "error"]).inc();
            Err(e)
        }
    }
}

/// Applies an operator action of another member here (audited there).
fn apply_action(state: &Live, a: &Action, how: &str) {
    let generation = state.store.current();
    let Some(up) = generation.upstreams.get(&a.circuit) else { return };
    let now = clock::now();
    let action = format!("fleet: {} by {} ({how}): {}", a.mode.as_deref().unwrap_or(&a.kind), a.by, a.reason);
    match (a.kind.as_str(), a.mode.as_deref().and_then(Mode::parse)) {
        ("force", Some(mode)) => {
            let snap = up.circuit.snapshot(now);
            let ttl = a.ttl_ms.map(|ms| {
                // What is left of the TTL since the action was taken.
                let spent = u64::try_from(now_ms().saturating_sub(a.at_ms)).unwrap_or(0);
                Duration::from_millis(ms.saturating_sub(spent).max(1))
            });
            if snap.mode != mode || ttl.is_some() {
                up.circuit.force(mode, ttl, &action, now);
            }
        }
        ("reset", _) => {
            up.circuit.reset(&action, now);
        }
        ("config", _) => apply_config(state, a),
        _ => {}
    }
    if let Some(store) = &state.store.shared.persist {
        up.circuit.save(store);
    }
}

/// Another member's runtime override (`PUT .../config`, or its removal)
/// of an upstream this member has with the same YAML.
fn apply_config(state: &Live, a: &Action) {
    let generation = state.store.current();
    let Some(base) = generation.config.upstream(&a.circuit).cloned() else { return };
    let ms = |key: &str| a.config.as_ref().and_then(|c| c[key].as_u64()).map(Duration::from_millis);
    match &a.config {
        Some(c) => {
            let (Some(threshold), Some(reset), Some(healthy)) =
                (c["failureThreshold"].as_u64().and_then(|t| u32::try_from(t).ok()), ms("resetTimeoutMs"), ms("minHealthyPeriodMs"))
            else {
                tracing::debug!(circuit = %a.circuit, "fleet: config action without its keys dropped");
                return;
            };
            let o = crate::runtime::RuntimeOverride {
                base,
                failure_threshold: threshold.max(1),
                reset_timeout: reset.max(Duration::from_millis(1)),
                min_healthy_period: healthy,
                request_limit: c["requestLimit"].as_u64().and_then(|l| usize::try_from(l).ok()).filter(|l| *l > 0),
                enabled: c["enabled"].as_bool(),
                monitoring_window: ms("monitoringWindowMs").filter(|w| *w >= Duration::from_secs(1)),
                health_check_interval: ms("healthCheckIntervalMs").filter(|i| *i >= Duration::from_millis(100)),
                applied_at: SystemTime::now(),
                applied_by: format!("{} (fleet)", a.by),
            };
            state.store.shared.overrides.lock().insert(a.circuit.clone(), o);
        }
        None => {
            if state.store.shared.overrides.lock().remove(&a.circuit).is_none() {
                return;
            }
        }
    }
    state.store.apply((*generation.config).clone(), "fleet config override");
}

async fn receive(fleet: &Fleet, state: &Live, conn: &mut MultiplexedConnection, e: Envelope) -> Result<(), String> {
    match e.body {
        Message::Action(a) => {
            tracing::info!(circuit = %a.circuit, kind = %a.kind, member = %e.member, by = %a.by, "fleet: operator action from another member");
            apply_action(state, &a, &format!("on member {}", e.member));
        }
        Message::Opened { circuit, .. } => verdict(fleet, state, conn, &circuit).await?,
        Message::Trial { circuit, closed, text } => {
            let generation = state.store.current();
            if let Some(up) = generation.upstreams.get(&circuit) {
                let text = format!("fleet trial on member {}: {text}", e.member);
                up.circuit.with(|b| b.fleet_trial(closed, text, clock::now()));
            }
        }
    }
    Ok(())
}

/// Whether the members that opened `circuit` on their own evidence, alive
/// and within its reset period, make a quorum: then it opens here too.
async fn verdict(fleet: &Fleet, state: &Live, conn: &mut MultiplexedConnection, circuit: &str) -> Result<(), String> {
    let generation = state.store.current();
    let Some(up) = generation.upstreams.get(circuit).cloned() else { return Ok(()) };
    drop(generation);
    let opened: HashMap<String, String> =
        timed("opened", redis::cmd("HGETALL").arg(fleet.key(&format!("opened:{circuit}"))).query_async(conn)).await?;
    let alive: HashSet<String> = fleet.members.lock().iter().map(|m| m.id.clone()).collect();
    let reset_ms = i64::try_from(up.config.breaker.reset_timeout.as_millis()).unwrap_or(i64::MAX);
    let now = now_ms();
    let mut evidence: Vec<(String, i64, String)> = opened
        .into_iter()
        .filter_map(|(member, text)| {
            let v: Value = serde_json::from_str(&text).ok()?;
            let at = v["atMs"].as_i64()?;
            let words = v["text"].as_str().unwrap_or_default().chars().take(codec::MAX_TEXT).collect::<String>();
            (alive.contains(&member) && now.saturating_sub(at) <= reset_ms).then_some((member, at, words))
        })
        .collect();
    let live_members = alive.len().max(1);
    let needed = fleet.config.quorum.needed(live_members);
    if evidence.len() < needed {
        return Ok(());
    }
    evidence.sort_by_key(|(_, at, _)| *at);
    let last = evidence.last().map(|(_, _, t)| t.clone()).unwrap_or_default();
    let text = format!("{} of {} members opened {circuit}: {last}", evidence.len(), live_members);
    let t = clock::now();
    let opened_here = up.circuit.with(|b| {
        if b.state() == CircuitState::Open {
            // Open on its own evidence already: the fleet's one trial decides.
            b.hold_open(true);
            false
        } else {
            b.fleet_open(text.clone(), t)
        }
    });
    if opened_here {
        fleet.metrics.verdicts.with_label_values(&[up.config.name.as_str()]).inc();
        tracing::warn!(circuit, "fleet verdict: {text}");
    }
    Ok(())
}

async fn local_transition(fleet: &Fleet, state: &Live, conn: &mut MultiplexedConnection, event: CircuitEvent) -> Result<(), String> {
    let t = &event.transition;
    if t.shadow {
        return Ok(());
    }
    let circuit = event.upstream.to_string();
    if t.to == CircuitState::Open && own_evidence(&t.reason) {
        let reset = state.store.current().upstreams.get(&circuit).map_or(Duration::from_secs(60), |u| u.config.breaker.reset_timeout);
        record_opened(fleet, conn, &circuit, &t.reason.to_string(), reset).await?;
        fleet.send(Envelope::new(
            &fleet.config.member,
            Message::Opened { circuit: circuit.clone(), text: t.reason.to_string(), at_ms: now_ms() },
        ));
        // This member's own vote may complete the quorum.
        verdict(fleet, state, conn, &circuit).await?;
    }
    if t.to == CircuitState::Closed {
        timed("opened", redis::cmd("HDEL").arg(fleet.key(&format!("opened:{circuit}"))).arg(&fleet.config.member).query_async::<()>(conn))
            .await?;
    }
    // The lease holder's trial decided: tell the others.
    if t.from == CircuitState::HalfOpen && fleet.leased.lock().remove(&circuit) {
        let closed = t.to == CircuitState::Closed;
        fleet.send(Envelope::new(&fleet.config.member, Message::Trial { circuit: circuit.clone(), closed, text: t.reason.to_string() }));
        timed("lease", redis::cmd("DEL").arg(fleet.key(&format!("lease:{circuit}"))).query_async::<()>(conn)).await?;
    }
    Ok(())
}

/// Held circuits whose open period is over: one member wins the lease and
/// sends the trial; the others keep failing fast until it says.
async fn trials(fleet: &Fleet, state: &Live, conn: &mut MultiplexedConnection) -> Result<(), String> {
    let now = clock::now();
    let generation = state.store.current();
    for (name, up) in &generation.upstreams {
        if !up.circuit.with(|b| b.held_and_due(now)) {
            continue;
        }
        let lease_ms = u64::try_from((up.config.timeouts.connect + up.config.timeouts.request).as_millis()).unwrap_or(u64::MAX).max(1_000);
        let won: Option<String> = match timed(
            "lease",
            redis::cmd("SET")
                .arg(fleet.key(&format!("lease:{name}")))
                .arg(&fleet.config.member)
                .arg("NX")
                .arg("PX")
                .arg(lease_ms)
                .query_async(conn),
        )
        .await
        {
            Ok(v) => v,
            Err(e) => {
                fleet.metrics.leases.with_label_values(&["error"]).inc();
                return Err(e);
            }
        };
        if won.is_some() {
            fleet.metrics.leases.with_label_values(&["won"]).inc();
            fleet.leased.lock().insert(name.clone());
            up.circuit.with(|b| b.hold_open(false));
            up.circuit.tick(now);
            tracing::info!(circuit = %name, "fleet: this member won the trial lease");
        } else {
            fleet.metrics.leases.with_label_values(&["lost"]).inc();
        }
    }
    Ok(())
}

/// Says this member is alive (with a snapshot of its circuits), reads who
/// else is, and looks again at every circuit with fleet evidence.
async fn heartbeat(fleet: &Fleet, state: &Live, conn: &mut MultiplexedConnection) -> Result<(), String> {
    let now = clock::now();
    let generation = state.store.current();
    let mut names: Vec<&String> = generation.upstreams.keys().collect();
    names.sort();
    let circuits: Vec<Value> = names
        .iter()
        .filter_map(|n| {
            let s = generation.upstreams.get(*n)?.circuit.snapshot(now);
            Some(json!({ "name": n, "state": s.state.as_str(), "status": s.status.as_str(), "trip": s.trip.as_ref().map(|r| json!({ "rule": r.rule(), "detail": r.to_string() })) }))
        })
        .collect();
    let me = MemberView {
        id: fleet.config.member.clone(),
        version: crate::build::VERSION.to_string(),
        started_at: clock::rfc3339(fleet.started),
        heartbeat_at: clock::rfc3339(SystemTime::now()),
        circuits,
    };
    let ttl = u64::try_from(fleet.config.heartbeat.as_millis()).unwrap_or(u64::MAX).saturating_mul(3);
    let mut p = redis::pipe();
    p.cmd("SET")
        .arg(fleet.key(&format!("member:{}", fleet.config.member)))
        .arg(serde_json::to_string(&me).unwrap_or_default())
        .arg("PX")
        .arg(ttl)
        .ignore()
        .cmd("SADD")
        .arg(fleet.key("members"))
        .arg(&fleet.config.member)
        .ignore()
        .cmd("SMEMBERS")
        .arg(fleet.key("members"));
    let (ids,): (Vec<String>,) = timed("heartbeat", p.query_async(conn)).await?;
    let ids: Vec<String> = ids.into_iter().take(10_000).collect();
    let keys: Vec<String> = ids.iter().map(|id| fleet.key(&format!("member:{id}"))).collect();
    let found: Vec<Option<Vec<u8>>> =
        if keys.is_empty() { Vec::new() } else { timed("members", redis::cmd("MGET").arg(&keys).query_async(conn)).await? };
    let mut members = Vec::new();
    let mut gone = Vec::new();
    for (id, raw) in ids.iter().zip(found) {
        match raw.filter(|b| b.len() <= codec::MAX_MESSAGE).and_then(|b| serde_json::from_slice::<MemberView>(&b).ok()) {
            Some(m) => members.push(m),
            None => gone.push(id.clone()),
        }
    }
    if !gone.is_empty() {
        timed("members", redis::cmd("SREM").arg(fleet.key("members")).arg(&gone).query_async::<()>(conn)).await?;
    }
    members.sort_by(|a, b| a.id.cmp(&b.id));
    fleet.metrics.members.set(i64::try_from(members.len()).unwrap_or(i64::MAX));
    *fleet.members.lock() = members;
    // Evidence may have changed with the members (a verdict expires with
    // the members that made it; a new one may have formed).
    let names: Vec<String> = generation.upstreams.keys().cloned().collect();
    drop(generation);
    for name in names {
        verdict(fleet, state, conn, &name).await?;
    }
    Ok(())
}

/// Without Redis every member breaks on its own: no circuit stays held.
fn release_holds(state: &Live) {
    for up in state.store.current().upstreams.values() {
        up.circuit.with(|b| b.hold_open(false));
    }
}
