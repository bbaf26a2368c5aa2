//! The state WebSocket, `GET /api/v2/ws/circuit-breaker` (docs/websocket.md),
//! and its report `GET /health/websocket`.
//!
//! It owns the handshake (upgrade on the admin request, token from the
//! `Sec-WebSocket-Protocol` header or `?token=`, the chosen subprotocol
//! echoed), one session per client (snapshot on connect, `service:update`
//! batched per service, a full snapshot every 5 s, client messages, limits,
//! heartbeat, close codes) and the [`Hub`] that closes every session with
//! 1001 at shutdown.
//!
//! It must not touch the data path: circuits only `send` on the shared
//! transition broadcast they already own; a session subscribes to it, reads
//! snapshots (one short per-circuit lock, like `/health`). Updates and
//! snapshots are rendered once and shared by every session (the hub's
//! render cache, locked only to take or store an `Arc<str>`), so thousands
//! of clients cost one serialization per change. A slow client only hurts
//! itself: its outgoing queue is
//! bounded, and when it falls behind its backlog is dropped and it gets the
//! next full snapshot instead.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use http::header::{CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL, SEC_WEBSOCKET_VERSION, UPGRADE};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use super::auth::{Authorizer, Principal};
use super::AdminState;
use crate::breaker::{Snapshot, Transition};
use crate::clock;
use crate::http::{error_response, ProxyBody};
use crate::http::{full, json_response};
use crate::runtime::probe::probe;
use crate::runtime::upstream::{CircuitEvent, Upstream};
use crate::telemetry::Metrics;

/// Where the state WebSocket is served on the admin listener.
pub const PATH: &str = "/api/v2/ws/circuit-breaker";
/// Largest client frame or message; larger ones close the socket with 1009.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024;
/// Server heartbeat (a Ping frame); a client silent for
/// [`SILENT_HEARTBEATS`] of them is dropped.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
pub const SILENT_HEARTBEATS: u32 = 3;
/// A full `services:state` this often.
pub const SNAPSHOT_EVERY: Duration = Duration::from_secs(5);
/// At most one `service:update` per service this often.
pub const BATCH: Duration = Duration::from_millis(100);
/// Client messages allowed per connection per minute; past it each message
/// gets error 4029, past twice it the connection is closed with 4029.
pub const MESSAGES_PER_MINUTE: u32 = 60;
const RATE_WINDOW: Duration = Duration::from_secs(60);
/// Messages waiting for one client's socket; when full the client is behind.
const QUEUE: usize = 64;
/// Bytes the codec may hold for one client that does not read.
const MAX_WRITE_BUFFER: usize = 8 * 1024 * 1024;
/// Connected clients at once (beyond: 503 at the handshake).
const MAX_CLIENTS: i64 = 16_384;
/// On-demand health checks running at once for one connection.
const MAX_PROBES: usize = 4;
/// Subprotocol values looked at for a token.
const MAX_OFFERED: usize = 8;
/// Transitions carried by one coalesced `service:update`.
const MAX_TRANSITIONS: usize = 16;
/// How long a close may take: sending the close frame, then waiting for the
/// client's answer.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Error codes of the protocol (also used as close codes).
pub const AUTH_FAILED: u16 = 4001;
pub const FORBIDDEN: u16 = 4003;
pub const INVALID_MESSAGE: u16 = 4004;
pub const RATE_LIMITED: u16 = 4029;

type Ws = WebSocketStream<TokioIo<Upgraded>>;
type WsSink = SplitSink<Ws, Message>;
type WsStream = SplitStream<Ws>;

/// Process-wide WebSocket state: the shutdown signal every session watches
/// and the messages rendered once for all sessions. Client counts live in
/// [`Metrics`].
pub struct Hub {
    closing: watch::Sender<bool>,
    renders: parking_lot::Mutex<Renders>,
}

/// How long a rendered message may be reused by other sessions. Within a
/// batch window, so no client sees older data than batching already allows.
const RENDER_FRESH: Duration = Duration::from_millis(100);

/// Messages rendered (without `seq`) and shared: with thousands of clients
/// a transition or a periodic snapshot is serialized once, not once per
/// client; each session splices its own `seq` into the text.
#[derive(Default)]
struct Renders {
    /// The latest `services:state`, by generation number.
    snapshot: Option<Rendered<u64>>,
    /// The latest `service:update` per service, by what it covers.
    updates: HashMap<Arc<str>, Rendered<UpdateKey>>,
}

struct Rendered<K> {
    at: Instant,
    key: K,
    text: Arc<str>,
}

/// What a `service:update` covers: the circuit's transition count and the
/// session's pending transitions (how many, the last one's time).
type UpdateKey = (u64, usize, Option<std::time::Instant>);

// === impl Hub ===

impl Hub {
    pub fn new() -> Hub {
        let (closing, _) = watch::channel(false);
        Hub { closing, renders: parking_lot::Mutex::new(Renders::default()) }
    }

    /// The `services:state` of `generation`, rendered at most once per
    /// [`RENDER_FRESH`].
    fn snapshot_text(&self, generation: u64, render: impl FnOnce() -> Value) -> Arc<str> {
        let now = Instant::now();
        if let Some(r) = &self.renders.lock().snapshot {
            if r.key == generation && now.saturating_duration_since(r.at) < RENDER_FRESH {
                return r.text.clone();
            }
        }
        let text: Arc<str> = Arc::from(render().to_string());
        self.renders.lock().snapshot = Some(Rendered { at: now, key: generation, text: text.clone() });
        text
    }

    /// The `service:update` of `service` covering `key`, rendered at most
    /// once per [`RENDER_FRESH`].
    fn update_text(&self, service: &Arc<str>, key: UpdateKey, render: impl FnOnce() -> Value) -> Arc<str> {
        let now = Instant::now();
        if let Some(r) = self.renders.lock().updates.get(service) {
            if r.key == key && now.saturating_duration_since(r.at) < RENDER_FRESH {
                return r.text.clone();
            }
        }
        let text: Arc<str> = Arc::from(render().to_string());
        let mut renders = self.renders.lock();
        if renders.updates.len() > 4096 {
            // Services removed by reloads: forget what went stale.
            renders.updates.retain(|_, r| now.saturating_duration_since(r.at) < RENDER_FRESH);
        }
        renders.updates.insert(service.clone(), Rendered { at: now, key, text: text.clone() });
        text
    }

    /// Tells every session to close with 1001 (going away), refuses new
    /// ones, and waits up to `within` for them to finish their close.
    pub async fn shutdown(&self, within: Duration) {
        self.closing.send_replace(true);
        let _ = tokio::time::timeout(within, self.closing.closed()).await;
    }

    fn is_closing(&self) -> bool {
        *self.closing.borrow()
    }
}

impl Default for Hub {
    fn default() -> Self {
        Hub::new()
    }
}

/// `GET /health/websocket`: clients connected, messages sent, drops.
pub fn health(state: &AdminState) -> Response<ProxyBody> {
    let m = &state.live.store.shared.metrics;
    json_response(
        StatusCode::OK,
        &json!({
            "status": if state.ws.is_closing() { "closing" } else { "ok" },
            "clients": m.websocket_clients.get(),
            "messagesSent": m.websocket_messages.get(),
            "drops": m.websocket_drops.get(),
            "heartbeatMs": HEARTBEAT.as_millis() as u64,
            "maxClients": MAX_CLIENTS,
            "timestamp": clock::timestamp(),
        }),
    )
}

// === handshake ===

/// Answers the upgrade request with 101 and starts the session once hyper
/// hands over the connection. Auth failures still complete the handshake,
/// so the client reads error 4001 and the close code instead of a bare
/// HTTP error browsers do not expose.
pub fn upgrade(mut req: Request<Incoming>, state: Arc<AdminState>) -> Response<ProxyBody> {
    let key = match handshake_key(&req) {
        Ok(k) => k,
        Err(resp) => return resp,
    };
    if state.ws.is_closing() {
        return error_response(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", "fusebox is shutting down");
    }
    if state.live.store.shared.metrics.websocket_clients.get() >= MAX_CLIENTS {
        return error_response(StatusCode::SERVICE_UNAVAILABLE, "too_many_clients", "too many WebSocket clients");
    }
    let offered = offered_protocols(req.headers());
    let query_token = query_param(req.uri().query(), "token");
    let (access, echo) = authenticate(&state.authorizer(), &offered, query_token.as_deref());

    let on_upgrade = hyper::upgrade::on(&mut req);
    let closing = state.ws.closing.subscribe();
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(ws_config())).await;
                run(ws, state, access, closing).await;
            }
            Err(e) => tracing::debug!(error = %e, "WebSocket upgrade did not complete"),
        }
    });

    let mut resp = Response::new(full(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        h.insert(SEC_WEBSOCKET_ACCEPT, v);
    }
    // Browsers drop a connection whose offered subprotocol is not echoed.
    if let Some(v) = echo.and_then(|p| HeaderValue::from_str(&p).ok()) {
        h.insert(SEC_WEBSOCKET_PROTOCOL, v);
    }
    resp
}

fn ws_config() -> WebSocketConfig {
    // The codec's own output buffer (pongs it queues by itself included) is
    // bounded too: a client that sends and never reads hits the bound and
    // is dropped instead of growing fusebox's memory.
    WebSocketConfig {
        max_message_size: Some(MAX_MESSAGE_BYTES),
        max_frame_size: Some(MAX_MESSAGE_BYTES),
        write_buffer_size: 128 * 1024,
        max_write_buffer_size: MAX_WRITE_BUFFER,
        ..WebSocketConfig::default()
    }
}

/// The `Sec-WebSocket-Key` of a valid RFC 6455 upgrade request, or the
/// HTTP answer to a request that is not one.
#[allow(clippy::result_large_err)]
fn handshake_key(req: &Request<Incoming>) -> Result<String, Response<ProxyBody>> {
    let h = req.headers();
    let upgrade_ok = has_token(h, UPGRADE, "websocket");
    if !upgrade_ok || !has_token(h, CONNECTION, "upgrade") {
        return Err(error_response(
            StatusCode::UPGRADE_REQUIRED,
            "upgrade_required",
            "this endpoint speaks WebSocket: send `Connection: Upgrade` and `Upgrade: websocket`",
        ));
    }
    if req.version() != Version::HTTP_11 {
        return Err(error_response(StatusCode::BAD_REQUEST, "bad_request", "the WebSocket handshake needs HTTP/1.1"));
    }
    if h.get(SEC_WEBSOCKET_VERSION).and_then(|v| v.to_str().ok()).map(str::trim) != Some("13") {
        let mut resp = error_response(StatusCode::UPGRADE_REQUIRED, "unsupported_version", "only WebSocket version 13 is supported");
        resp.headers_mut().insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        return Err(resp);
    }
    match h.get(SEC_WEBSOCKET_KEY).and_then(|v| v.to_str().ok()).map(str::trim) {
        Some(k) if !k.is_empty() => Ok(k.to_string()),
        _ => Err(error_response(StatusCode::BAD_REQUEST, "bad_request", "missing Sec-WebSocket-Key")),
    }
}

/// Whether a comma-separated header holds `token` (case-insensitive).
fn has_token(headers: &HeaderMap, name: http::header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The subprotocols the client offered, in order (at most [`MAX_OFFERED`]).
fn offered_protocols(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .take(MAX_OFFERED)
        .map(str::to_owned)
        .collect()
}

/// One query parameter, percent-decoded.
fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v))
    })
}

pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The outcome of the handshake's auth.
#[derive(Debug)]
enum Access {
    Granted(Principal),
    Denied(String),
}

/// Finds the caller: the first offered subprotocol that verifies as a token
/// (echoed), else `?token=`. The subprotocol echoed otherwise is the first
/// offered one, so browsers keep the connection long enough to read why.
fn authenticate(authorizer: &Authorizer, offered: &[String], query: Option<&str>) -> (Access, Option<String>) {
    let first = offered.first().cloned();
    let mut first_error = None;
    for p in offered {
        match authorizer.verify(Some(p)) {
            Ok(principal) => return (Access::Granted(principal), Some(p.clone())),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match authorizer.verify(query) {
        Ok(principal) => (Access::Granted(principal), first),
        Err(e) => {
            let message = match (query, first_error) {
                (None, None) => "authentication failed: send a JWT as the WebSocket subprotocol or as ?token=".to_string(),
                // Only subprotocols were offered: say why the first failed.
                (None, Some(first)) => format!("authentication failed: {first}"),
                (Some(_), _) => format!("authentication failed: {e}"),
            };
            (Access::Denied(message), first)
        }
    }
}

// === session ===

/// A message on its way to one client. `epoch` lets the writer drop the
/// backlog queued before the client fell behind.
struct Outgoing {
    epoch: u64,
    message: Message,
    /// A protocol message (counted in `websocket_messages`), not a Ping.
    counted: bool,
}

/// How a session ends.
enum End {
    /// Send this close frame, then wait briefly for the client's answer.
    Close(CloseFrame<'static>),
    /// A frame over the limit: close with 1009 and discard what the client
    /// is still sending (the codec cannot skip it).
    TooBig,
    /// The client sent Close: let the codec flush its answer.
    ClientClosed,
    /// The socket is gone.
    Gone,
}

/// Coalesced changes of one service not yet sent.
struct Pending {
    due: Instant,
    transitions: Vec<Transition>,
}

/// Fixed one-minute window of client messages.
struct RateWindow {
    start: Instant,
    count: u32,
}

enum Rate {
    Allowed,
    Limited,
    Exceeded,
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
    rate: RateWindow,
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
async fn run(ws: Ws, state: Arc<AdminState>, access: Access, mut closing: watch::Receiver<bool>) {
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
        rate: RateWindow { start: now, count: 0 },
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

/// Moves queued messages to the socket, up to and including a Close. Items
/// queued before the client fell behind (older epoch) are dropped; a close
/// on `close_rx` (used when the queue is full) jumps the queue, even past a
/// send stuck on a stalled socket. Returns the sink for the close linger,
/// or None when the socket failed.
async fn write_loop(
    mut sink: WsSink,
    mut rx: mpsc::Receiver<Outgoing>,
    mut close_rx: oneshot::Receiver<CloseFrame<'static>>,
    epoch: Arc<AtomicU64>,
    metrics: Metrics,
) -> Option<WsSink> {
    loop {
        let item = tokio::select! {
            biased;
            close = &mut close_rx => return send_close(sink, close.ok()).await,
            item = rx.recv() => match item {
                Some(item) => item,
                None => return Some(sink),
            },
        };
        if item.epoch < epoch.load(Ordering::Acquire) {
            if item.counted {
                metrics.websocket_drops.inc();
            }
            continue;
        }
        let is_close = matches!(item.message, Message::Close(_));
        let sent = tokio::select! {
            biased;
            close = &mut close_rx => return send_close(sink, close.ok()).await,
            r = sink.send(item.message) => r,
        };
        match sent {
            Ok(()) if is_close => return Some(sink),
            Ok(()) if item.counted => metrics.websocket_messages.inc(),
            Ok(()) => {}
            Err(_) => return None,
        }
    }
}

async fn send_close(mut sink: WsSink, frame: Option<CloseFrame<'static>>) -> Option<WsSink> {
    let frame = frame?;
    match tokio::time::timeout(CLOSE_TIMEOUT, sink.send(Message::Close(Some(frame)))).await {
        Ok(Ok(())) => Some(sink),
        _ => None,
    }
}

fn close_frame(code: u16, reason: &'static str) -> CloseFrame<'static> {
    CloseFrame { code: CloseCode::from(code), reason: reason.into() }
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
                                Message::Text(text) => self.on_message(Some(&text), &probe_tx, now),
                                Message::Binary(_) => self.on_message(None, &probe_tx, now),
                                Message::Close(_) => Some(End::ClientClosed),
                                // Each ping makes the codec queue a pong:
                                // pings count like messages.
                                Message::Ping(_) => self.on_ping(now),
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

    /// One client text message (None: a binary one).
    fn on_ping(&mut self, now: Instant) -> Option<End> {
        match self.rate.hit(now) {
            Rate::Allowed => None,
            Rate::Limited => {
                self.error(RATE_LIMITED, "rate limit exceeded: at most 60 messages (ping frames included) per minute");
                None
            }
            Rate::Exceeded => Some(End::Close(close_frame(RATE_LIMITED, "rate limit exceeded"))),
        }
    }

    fn on_message(&mut self, text: Option<&str>, probes: &mpsc::Sender<Value>, now: Instant) -> Option<End> {
        match self.rate.hit(now) {
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
        if self.out.capacity() == 0 {
            // Still full: retry shortly rather than build a snapshot (and
            // lock every circuit) only to drop it.
            if !self.need_snapshot {
                self.metrics.websocket_drops.inc();
                self.fall_behind();
            }
            self.snapshot_retry = Instant::now() + BATCH;
            return;
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

// === impl RateWindow ===

impl RateWindow {
    fn hit(&mut self, now: Instant) -> Rate {
        if now.saturating_duration_since(self.start) >= RATE_WINDOW {
            self.start = now;
            self.count = 0;
        }
        self.count = self.count.saturating_add(1);
        if self.count <= MESSAGES_PER_MINUTE {
            Rate::Allowed
        } else if self.count <= 2 * MESSAGES_PER_MINUTE {
            Rate::Limited
        } else {
            Rate::Exceeded
        }
    }
}

/// `text` (a JSON object) with `"seq": seq` added as its last member.
fn with_seq(text: &str, seq: u64) -> String {
    let body = text.trim_end().strip_suffix('}').unwrap_or(text);
    let mut message = String::with_capacity(body.len() + 32);
    message.push_str(body);
    if !body.trim_end().ends_with('{') {
        message.push(',');
    }
    message.push_str("\"seq\":");
    message.push_str(&seq.to_string());
    message.push('}');
    message
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn epoch_millis() -> u64 {
    clock::unix_millis(SystemTime::now())
}

/// One service's entry (`view::ServiceEntry`: the seeds' fields plus what
/// the dashboard shows: mode, when an open circuit goes half-open, the
/// trip rule, the last transition, the endpoints).
fn entry(u: &Upstream, s: &Snapshot, now: std::time::Instant) -> Value {
    super::view::ServiceEntry::of(u, s, now).to_json()
}

fn transition_json(t: &Transition) -> Value {
    super::view::TransitionView::of(t).to_json()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_is_spliced_into_a_shared_rendering() {
        let shared = json!({ "type": "service:update", "data": { "x": [1, 2] } }).to_string();
        for seq in [1, 42, u64::MAX] {
            let v: Value = serde_json::from_str(&with_seq(&shared, seq)).expect("still JSON");
            assert_eq!(v["seq"], seq);
            assert_eq!(v["type"], "service:update");
            assert_eq!(v["data"]["x"], json!([1, 2]));
        }
        let v: Value = serde_json::from_str(&with_seq("{}", 7)).expect("still JSON");
        assert_eq!(v, json!({ "seq": 7 }));
    }

    #[test]
    fn query_token_is_percent_decoded() {
        assert_eq!(query_param(Some("a=1&token=x%2Ey.z"), "token").as_deref(), Some("x.y.z"));
        assert_eq!(query_param(Some("token"), "token").as_deref(), Some(""));
        assert_eq!(query_param(Some("a=1"), "token"), None);
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(percent_decode("%zz%41"), "%zzA");
        assert_eq!(percent_decode("%+1"), "%+1");
    }

    #[test]
    fn offered_subprotocols_are_split_and_trimmed() {
        let mut h = HeaderMap::new();
        h.append(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static("fusebox.v1, a.b.c"));
        h.append(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(" d ,, "));
        assert_eq!(offered_protocols(&h), ["fusebox.v1", "a.b.c", "d"]);
        let many = vec!["x"; 20].join(",");
        h.insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_str(&many).unwrap());
        assert_eq!(offered_protocols(&h).len(), MAX_OFFERED);
    }

    #[test]
    fn rate_window_limits_then_closes() {
        let now = Instant::now();
        let mut w = RateWindow { start: now, count: 0 };
        for _ in 0..MESSAGES_PER_MINUTE {
            assert!(matches!(w.hit(now), Rate::Allowed));
        }
        for _ in 0..MESSAGES_PER_MINUTE {
            assert!(matches!(w.hit(now), Rate::Limited));
        }
        assert!(matches!(w.hit(now), Rate::Exceeded));
        assert!(matches!(w.hit(now + RATE_WINDOW), Rate::Allowed));
    }
}
