//! The hub: process-wide WebSocket state, the shutdown signal every
//! session watches and the messages rendered once and shared by every
//! session, plus the report `GET /health/websocket`.
//!
//! It must not hold a session's state or talk to a socket; its lock is
//! held only to take or store an `Arc<str>`, never while rendering.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::{Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::time::Instant;

use super::{HEARTBEAT, MAX_CLIENTS};
use crate::admin::AdminState;
use crate::clock;
use crate::http::{json_response, ProxyBody};

/// Process-wide WebSocket state: the shutdown signal every session watches
/// and the messages rendered once for all sessions. Client counts live in
/// [`Metrics`](crate::telemetry::Metrics).
pub struct Hub {
    pub(super) closing: watch::Sender<bool>,
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
    pub(super) fn snapshot_text(&self, generation: u64, render: impl FnOnce() -> Value) -> Arc<str> {
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
    pub(super) fn update_text(&self, service: &Arc<str>, key: UpdateKey, render: impl FnOnce() -> Value) -> Arc<str> {
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

    pub(super) fn is_closing(&self) -> bool {
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
