//! One client's socket: its types, the writer task that moves queued
//! messages to it (dropping a backlog the client fell behind on, letting a
//! close jump the queue), and the ways a session can end ([`End`]).
//!
//! It must not decide what to send or when a session ends: `session`
//! queues the messages, picks the [`End`] and runs the close.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::SinkExt;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::CLOSE_TIMEOUT;
use crate::telemetry::Metrics;

pub(super) type Ws = WebSocketStream<TokioIo<Upgraded>>;
pub(super) type WsSink = SplitSink<Ws, Message>;
pub(super) type WsStream = SplitStream<Ws>;

/// A message on its way to one client. `epoch` lets the writer drop the
/// backlog queued before the client fell behind.
pub(super) struct Outgoing {
    pub(super) epoch: u64,
    pub(super) message: Message,
    /// A protocol message (counted in `websocket_messages`), not a Ping.
    pub(super) counted: bool,
}

/// How a session ends.
pub(super) enum End {
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

/// Moves queued messages to the socket, up to and including a Close. Items
/// queued before the client fell behind (older epoch) are dropped; a close
/// on `close_rx` (used when the queue is full) jumps the queue, even past a
/// send stuck on a stalled socket. Returns the sink for the close linger,
/// or None when the socket failed.
pub(super) async fn write_loop(
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

pub(super) fn close_frame(code: u16, reason: &'static str) -> CloseFrame<'static> {
    CloseFrame { code: CloseCode::from(code), reason: reason.into() }
}
