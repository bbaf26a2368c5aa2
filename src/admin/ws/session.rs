//! One client's session, from the completed handshake to the closed
//! socket: the first snapshot, client messages (`subscribe:services`,
//! `ping`, `service:health_check`) under the rate limit, transitions and
//! status changes coalesced per service into `service:update`, the
//! periodic snapshot, the heartbeat, the token's expiry, falling behind
//! (backlog dropped, a full snapshot next) and the close.
//!
//! It must not touch the data path: it subscribes to the broadcasts the
//! circuits already send on and reads snapshots; renders shared by every
//! session come from the [`Hub`](super::Hub).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::handshake::Access;
use super::json::{entry, epoch_millis, transition_json, with_seq};
use super::rate::{MessageRate, Rate};
use super::socket::{close_frame, write_loop, End, Outgoing, Ws, WsSink, WsStream};
use super::{
    AUTH_FAILED, BATCH, CLOSE_TIMEOUT, FORBIDDEN, HEARTBEAT, INVALID_MESSAGE, MAX_PROBES, MAX_TRANSITIONS, QUEUE, RATE_LIMITED,
    SILENT_HEARTBEATS, SNAPSHOT_EVERY,
};
use crate::admin::auth::Principal;
use crate::admin::AdminState;
use crate::breaker::Transition;
use crate::clock;
use crate::runtime::probe::probe;
use crate::runtime::upstream::CircuitEvent;
use crate::telemetry::Metrics;

/// Coalesced changes of one service not yet sent.
struct Pending {
    due: Instant,
    transitions: Vec<Transition>,
}

struct Session {
    state: Arc<AdminState>,
    metrics: Metrics,
    principal: Option<Principal>,
    seq: u64,
    out: mpsc::Sender<Outgoing>,
    epoch: Arc<AtomicU64>,
    /// The client fell behind: the next thing it gets is a full snapshot.
    need_snapshot: bool,
    snapshot_retry: Instant,
    pending: HashMap<Arc<str>, Pending>,
    last_sent: HashMap<Arc<str>, Instant>,
    rate: MessageRate,
    last_activity: Instant,
    probes: usize,
}

/// Counts a client in `websocket_clients` while it lives.
struct ClientGuard(Metrics);

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.0.websocket_clients.dec();
    }
}

/// Runs one client from the completed handshake to the closed socket.
pub(super) async fn run(ws: Ws, state: Arc<AdminState>, access: Access, mut closing: watch::Receiver<bool>) {
    let metrics = state.live.store.shared.metrics.clone();
    metrics.websocket_clients.inc();
    let _guard = ClientGuard(metrics.clone());
    // Subscribe before the first snapshot, so no transition falls between.
    let mut events = state.live.store.shared.events.subscribe();
    let mut statuses = state.live.store.shared.status_changes.subscribe();
    let (sink, mut stream) = ws.split();
    let (out, rx) = mpsc::channel(QUEUE);
    let (close_tx, close_rx) = oneshot::channel();
    let epoch = Arc::new(AtomicU64::new(0));
    let mut writer = tokio::spawn(write_loop(sink, rx, close_rx, epoch.clone(), metrics.clone()));
    let now = Instant::now();
    let mut session = Session {
        state,
        metrics,
        principal: None,
        seq: 0,
        out,
        epoch,
        need_snapshot: false,
        snapshot_retry: now,
        pending: HashMap::new(),
        last_sent: HashMap::new(),
        rate: MessageRate::new(),
        last_activity: now,
        probes: 0,
    };
    let end = match access {
        Access::Denied(message) => {
            session.error(AUTH_FAILED, &message);
            End::Close(close_frame(AUTH_FAILED, "authentication failed"))
        }
        Access::Granted(principal) => {
            tracing::debug!(subject = ?principal.subject, "state WebSocket client connected");
            session.principal = Some(principal);
            session.send(json!({ "type": "connection:status", "status": "connected", "timestamp": clock::timestamp() }));
            session.send_snapshot();
            session.serve(&mut stream, (&mut events, &mut statuses), &mut closing, &mut writer).await
        }
    };
    finish(end, stream, writer, session, close_tx).await;
}

/// Sends the close (if any) after what is already queued, waits for the
/// writer, and lets the client answer before the socket is dropped, so it
/// reads the close frame rather than a reset.
async fn finish(
    end: End,
    mut stream: WsStream,
    mut writer: JoinHandle<Option<WsSink>>,
    session: Session,
    close_tx: oneshot::Sender<CloseFrame<'static>>,
) {
    let (frame, too_big) = match end {
        End::Gone => {
            writer.abort();
            return;
        }
        End::ClientClosed => {
            writer.abort();
            // Reading on flushes the codec's answer to the client's Close.
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, stream.next()).await;
            return;
        }
        End::Close(frame) => (frame, false),
        End::TooBig => (close_frame(1009, "message larger than 16 KiB"), true),
    };
    let mut session = session;
    if u16::from(frame.code) == 1001 {
        // Going away (shutdown, drain, a silent client): said first, in
        // the protocol's own words.
        session.send(json!({
            "type": "connection:status",
            "status": "disconnected",
            "reason": frame.reason.to_string(),
            "timestamp": clock::timestamp(),
        }));
    }
    let epoch = session.epoch.load(Ordering::Acquire);
    if let Err(TrySendError::Full(item)) = session.out.try_send(Outgoing { epoch, message: Message::Close(Some(frame)), counted: false }) {
        // Behind anyway: drop the backlog and close past it.
        session.epoch.fetch_add(1, Ordering::AcqRel);
        if let Message::Close(Some(frame)) = item.message {
            let _ = close_tx.send(frame);
        }
    }
    drop(session);
    let sink = match tokio::time::timeout(CLOSE_TIMEOUT, &mut writer).await {
        Ok(Ok(sink)) => sink,
        _ => {
            writer.abort();
            return;
        }
    };
    let deadline = Instant::now() + CLOSE_TIMEOUT;
    if too_big {
        // The codec is stuck on the oversized frame: discard raw bytes until
        // the client closes or the deadline passes.
        if let Some(Ok(mut ws)) = sink.map(|s| stream.reunite(s)) {
            let io = ws.get_mut();
            let mut buf = [0u8; 4096];
            while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, io.read(&mut buf)).await {
                if n == 0 {
                    break;
                }
            }
        }
    } else {
        while let Ok(Some(Ok(_))) = tokio::time::timeout_at(deadline, stream.next()).await {}
    }
}

// === impl Session ===

impl Session {
    async fn serve(
        &mut self,
        stream: &mut WsStream,
        (events, statuses): (&mut tokio::sync::broadcast::Receiver<CircuitEvent>, &mut tokio::sync::broadcast::Receiver<Arc<str>>),
        closing: &mut watch::Receiver<bool>,
        writer: &mut JoinHandle<Option<WsSink>>,
    ) -> End {
        let start = Instant::now();
        let mut heartbeat = tokio::time::interval_at(start + HEARTBEAT, HEARTBEAT);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut snapshots = tokio::time::interval_at(start + SNAPSHOT_EVERY, SNAPSHOT_EVERY);
        snapshots.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (probe_tx, mut probe_rx) = mpsc::channel::<Value>(MAX_PROBES);
        // The session ends when its token does.
        let expiry = self.principal.as_ref().and_then(|p| p.expires_at).map(|exp| {
            // `exp` comes from a token: checked, a far-future one never overflows.
            let left = UNIX_EPOCH
                .checked_add(Duration::from_secs(exp))
                .map_or(Duration::from_secs(365 * 86_400), |at| at.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO));
            start.checked_add(left).unwrap_or(start + Duration::from_secs(365 * 86_400))
        });
        loop {
            let wake = self.next_wake();
            tokio::select! {
                _ = sleep_until_opt(expiry) => {
                    self.error(AUTH_FAILED, "token expired: reconnect with a new token");
                    return End::Close(close_frame(AUTH_FAILED, "token expired"));
                }
                _ = closing.wait_for(|c| *c) => return End::Close(close_frame(1001, "fusebox is shutting down")),
                _ = &mut *writer => return End::Gone,
                frame = stream.next() => {
                    let now = Instant::now();
                    match frame {
                        None => return End::Gone,
                        Some(Err(WsError::Capacity(_))) => return End::TooBig,
                        // RFC 6455 7.4.1: a protocol violation is 1002,
                        // text that is not UTF-8 is 1007.
                        Some(Err(WsError::Protocol(e))) => return End::Close(CloseFrame { code: CloseCode::from(1002), reason: format!("protocol error: {e}").into() }),
                        Some(Err(WsError::Utf8)) => return End::Close(close_frame(1007, "text frame is not valid UTF-8")),
                        Some(Err(_)) => return End::Gone,
                        Some(Ok(msg)) => {
                            self.last_activity = now;
                            let end = match msg {
                                Message::Text(text) => self.on_message(Some(&text), &probe_tx),
                                Message::Binary(_) => self.on_message(None, &probe_tx),
                                Message::Close(_) => Some(End::ClientClosed),
                                // Each ping makes the codec queue a pong:
                                // pings count like messages.
                                Message::Ping(_) => self.on_ping(),
                                Message::Pong(_) | Message::Frame(_) => None,
                            };
                            if let Some(end) = end {
                                return end;
                            }
                        }
                    }
                }
                event = events.recv() => match event {
                    Ok(event) => self.on_event(event, Instant::now()),
                    Err(RecvError::Lagged(n)) => {
                        self.metrics.websocket_drops.inc_by(n);
                        self.fall_behind();
                    }
                    Err(RecvError::Closed) => return End::Close(close_frame(1001, "fusebox is shutting down")),
                },
                changed = statuses.recv() => match changed {
                    Ok(name) => self.on_status(name, Instant::now()),
                    Err(RecvError::Lagged(n)) => {
                        self.metrics.websocket_drops.inc_by(n);
                        self.fall_behind();
                    }
                    Err(RecvError::Closed) => {}
                },
                Some(result) = probe_rx.recv() => {
                    self.probes = self.probes.saturating_sub(1);
                    self.send(result);
                }
                _ = heartbeat.tick() => {
                    if Instant::now().saturating_duration_since(self.last_activity) >= HEARTBEAT * SILENT_HEARTBEATS {
                        tracing::debug!("state WebSocket client silent for {} heartbeats: dropped", SILENT_HEARTBEATS);
                        return End::Close(close_frame(1001, "no message or pong for 3 heartbeats"));
                    }
                    self.push(Message::Ping(Vec::new()), false);
                }
                _ = snapshots.tick() => self.send_snapshot(),
                _ = sleep_until_opt(wake) => self.flush(Instant::now()),
            }
            if self.need_snapshot && Instant::now() >= self.snapshot_retry {
                self.send_snapshot();
            }
        }
    }

    // --- client messages ---

    /// A Ping frame from the client: counted like a message.
    fn on_ping(&mut self) -> Option<End> {
        match self.rate.hit() {
            Rate::Allowed => None,
            Rate::Limited => {
                self.error(RATE_LIMITED, "rate limit exceeded: at most 60 messages (ping frames included) per minute");
                None
            }
            Rate::Exceeded => Some(End::Close(close_frame(RATE_LIMITED, "rate limit exceeded"))),
        }
    }

    /// One client text message (None: a binary one).
    fn on_message(&mut self, text: Option<&str>, probes: &mpsc::Sender<Value>) -> Option<End> {
        match self.rate.hit() {
            Rate::Allowed => {}
            Rate::Limited => {
                self.error(RATE_LIMITED, "rate limit exceeded: at most 60 messages per minute");
                return None;
            }
            Rate::Exceeded => {
                self.error(RATE_LIMITED, "rate limit exceeded twice over: closing");
                return Some(End::Close(close_frame(RATE_LIMITED, "rate limit exceeded")));
            }
        }
        let Some(text) = text else {
            self.error(INVALID_MESSAGE, "invalid message: binary frames are not supported, send JSON text");
            return None;
        };
        let msg = match serde_json::from_str::<Value>(text) {
            Ok(v) if v.is_object() => v,
            _ => {
                self.error(INVALID_MESSAGE, "invalid message: expected a JSON object with a `type`");
                return None;
            }
        };
        match msg.get("type").and_then(Value::as_str) {
            Some("subscribe:services") => self.send_all_services(),
            Some("ping") => {
                let echoed = msg.get("timestamp").cloned().unwrap_or(Value::Null);
                self.send(json!({ "type": "pong", "timestamp": echoed, "serverTime": epoch_millis() }));
            }
            Some("service:health_check") => self.health_check(&msg, probes),
            Some(other) => {
                let shown: String = other.chars().take(64).collect();
                self.error(INVALID_MESSAGE, &format!("unknown message type `{shown}`"));
            }
            None => self.error(INVALID_MESSAGE, "invalid message: missing string field `type`"),
        }
        None
    }

    /// Runs a probe off the session loop; its answer comes back on `probes`.
    fn health_check(&mut self, msg: &Value, probes: &mpsc::Sender<Value>) {
        if !self.principal.as_ref().is_some_and(|p| p.admin) {
            self.error(FORBIDDEN, "service:health_check needs the admin role");
            return;
        }
        let Some(name) = msg.get("service").and_then(Value::as_str) else {
            self.error(INVALID_MESSAGE, "service:health_check needs a string field `service`");
            return;
        };
        let Some(upstream) = self.state.live.store.current().upstreams.get(name).cloned() else {
            let shown: String = name.chars().take(64).collect();
            self.error(INVALID_MESSAGE, &format!("unknown service `{shown}`"));
            return;
        };
        if self.probes >= MAX_PROBES {
            self.error(RATE_LIMITED, "too many health checks in flight on this connection");
            return;
        }
        self.probes += 1;
        let tx = probes.clone();
        tokio::spawn(async move {
            let result = probe(&upstream).await;
            let _ = tx
                .send(json!({
                    "type": "service:health_check",
                    "service": upstream.config.name,
                    "healthy": result.healthy,
                    "latencyMs": result.latency.as_secs_f64() * 1e3,
                    "timestamp": clock::timestamp(),
                }))
                .await;
        });
    }

    // --- state changes ---

    fn on_event(&mut self, event: CircuitEvent, now: Instant) {
        if self.need_snapshot {
            // The snapshot about to be sent covers it.
            self.metrics.websocket_drops.inc();
            return;
        }
        let due = self.last_sent.get(&event.upstream).map_or(now, |t| (*t + BATCH).max(now));
        let p = self.pending.entry(event.upstream.clone()).or_insert_with(|| Pending { due, transitions: Vec::new() });
        if p.transitions.len() == MAX_TRANSITIONS {
            p.transitions.remove(0);
        }
        p.transitions.push(event.transition);
        if p.due <= now {
            self.flush(now);
        }
    }

    /// A status change without a transition (healthy -> degraded): an
    /// update of its own, batched like transitions.
    fn on_status(&mut self, name: Arc<str>, now: Instant) {
        if self.need_snapshot {
            return;
        }
        let due = self.last_sent.get(&name).map_or(now, |t| (*t + BATCH).max(now));
        self.pending.entry(name).or_insert_with(|| Pending { due, transitions: Vec::new() });
        if due <= now {
            self.flush(now);
        }
    }

    /// Sends every coalesced update that is due.
    fn flush(&mut self, now: Instant) {
        let due: Vec<Arc<str>> = self.pending.iter().filter(|(_, p)| p.due <= now).map(|(k, _)| k.clone()).collect();
        if due.is_empty() {
            return;
        }
        let generation = self.state.live.store.current();
        let at = clock::now();
        for name in due {
            let Some(pending) = self.pending.remove(&name) else {
                continue;
            };
            // A service removed by a reload: the next snapshot drops it.
            let Some(upstream) = generation.upstreams.get(&*name) else {
                continue;
            };
            let key =
                (upstream.circuit.version.load(Ordering::Relaxed), pending.transitions.len(), pending.transitions.last().map(|t| t.at));
            let text = self.state.ws.update_text(&name, key, || {
                // Every service's entry: the integration guide's client
                // replaces its whole list with `services`.
                let services: Vec<Value> =
                    generation.sorted_upstreams().into_iter().map(|u| entry(u, &u.circuit.snapshot(at), at)).collect();
                let this = services.iter().find(|e| e["service"] == *name).cloned().unwrap_or(Value::Null);
                let mut data = json!({
                    "status": this["status"],
                    "circuit": this["circuit"],
                    "operations": this["operations"],
                });
                if let Some(t) = pending.transitions.last() {
                    data["transition"] = transition_json(t);
                }
                if pending.transitions.len() > 1 {
                    data["transitions"] = pending.transitions.iter().map(transition_json).collect();
                }
                json!({
                    "type": "service:update",
                    "timestamp": clock::timestamp(),
                    "service": &*name,
                    "data": data,
                    "services": services,
                    // The architecture seed's flat `WebSocketMessage` fields.
                    "status": this["status"],
                    "circuit_breaker": this["circuitBreaker"],
                    "operations": this["operations"],
                    "performance": this["performance"],
                })
            });
            self.send_rendered(&text);
            self.last_sent.insert(name, now);
        }
        self.last_sent.retain(|_, t| now.saturating_duration_since(*t) < BATCH);
    }

    fn next_wake(&self) -> Option<Instant> {
        let flush = self.pending.values().map(|p| p.due).min();
        let retry = self.need_snapshot.then_some(self.snapshot_retry);
        match (flush, retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    // --- sending ---

    fn send_snapshot(&mut self) {
        // Behind: the client gets every service as a `service:update` (the
        // form all three seed clients read) before the snapshot.
        let resync = self.need_snapshot;
        if self.out.capacity() < if resync { 2 } else { 1 } {
            // Still full: retry shortly rather than build a snapshot (and
            // lock every circuit) only to drop it.
            if !self.need_snapshot {
                self.metrics.websocket_drops.inc();
                self.fall_behind();
            }
            self.snapshot_retry = Instant::now() + BATCH;
            return;
        }
        if resync {
            self.send_all_services();
        }
        let generation = self.state.live.store.current();
        let text = self.state.ws.snapshot_text(generation.number, || {
            let at = clock::now();
            let services: Vec<Value> = generation.sorted_upstreams().into_iter().map(|u| entry(u, &u.circuit.snapshot(at), at)).collect();
            json!({
                "type": "services:state",
                "timestamp": clock::timestamp(),
                "generation": generation.number,
                "services": services,
            })
        });
        self.need_snapshot = false;
        let sent = self.send_rendered(&text);
        if !sent {
            self.snapshot_retry = Instant::now() + BATCH;
        }
    }

    /// The answer to `subscribe:services`: a `service:update` carrying
    /// every service in `services` (no `service`/`data`), the shape the
    /// integration guide's client reads.
    fn send_all_services(&mut self) {
        let generation = self.state.live.store.current();
        let at = clock::now();
        let services: Vec<Value> = generation.sorted_upstreams().into_iter().map(|u| entry(u, &u.circuit.snapshot(at), at)).collect();
        self.send(json!({ "type": "service:update", "timestamp": clock::timestamp(), "services": services }));
    }

    fn error(&mut self, code: u16, message: &str) {
        self.send(json!({ "type": "error", "code": code, "message": message, "timestamp": clock::timestamp() }));
    }

    /// Stamps the next `seq` and queues the message. A message that finds
    /// the queue full is dropped and leaves a gap in `seq`.
    fn send(&mut self, mut message: Value) -> bool {
        self.seq += 1;
        message["seq"] = self.seq.into();
        self.push(Message::Text(message.to_string()), true)
    }

    /// Like [`Session::send`] for a message rendered once for every
    /// session: the text of a JSON object, into which `seq` is spliced.
    fn send_rendered(&mut self, text: &str) -> bool {
        self.seq += 1;
        self.push(Message::Text(with_seq(text, self.seq)), true)
    }

    fn push(&mut self, message: Message, counted: bool) -> bool {
        let item = Outgoing { epoch: self.epoch.load(Ordering::Acquire), message, counted };
        match self.out.try_send(item) {
            Ok(()) => true,
            Err(TrySendError::Full(item)) => {
                if item.counted {
                    self.metrics.websocket_drops.inc();
                    self.fall_behind();
                }
                false
            }
            // The writer is gone; the session loop sees it next.
            Err(TrySendError::Closed(_)) => false,
        }
    }

    /// The client is behind: what is queued is stale, the pending updates
    /// are superseded, and the next thing it gets is a full snapshot.
    fn fall_behind(&mut self) {
        if !self.need_snapshot {
            self.need_snapshot = true;
            self.snapshot_retry = Instant::now() + BATCH;
            self.epoch.fetch_add(1, Ordering::AcqRel);
        }
        let superseded: usize = self.pending.drain().map(|(_, p)| p.transitions.len()).sum();
        self.metrics.websocket_drops.inc_by(superseded as u64);
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
