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
//! itself: its outgoing queue is bounded, and when it falls behind its
//! backlog is dropped and it gets the next full snapshot instead.
//!
//! The parts, in the order a client meets them:
//!
//! - `handshake`: the RFC 6455 upgrade, the token and the echoed
//!   subprotocol;
//! - `session`: one client's loop (client messages, batched updates,
//!   snapshots, heartbeat, falling behind) and its close;
//! - `socket`: the socket's types, the writer task and the ways a session
//!   ends;
//! - `rate`: the per-session limit on client messages;
//! - `hub`: the shutdown signal and the renders shared by every session,
//!   and `GET /health/websocket`;
//! - `json`: the message pieces (`seq` spliced into a shared rendering,
//!   service entries, transitions).

mod handshake;
mod hub;
mod json;
mod rate;
mod session;
mod socket;

use std::time::Duration;

pub use handshake::upgrade;
pub use hub::{health, Hub};

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
/// Client messages allowed per connection per minute (a burst of this
/// many, then one every 60 s / this); past it each message gets error
/// 4029, past twice that rate the connection is closed with 4029.
pub const MESSAGES_PER_MINUTE: u32 = 60;
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
