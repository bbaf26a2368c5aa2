//! The two bodies of a proxied exchange, each with its idle deadline
//! (`timeouts.idle`):
//!
//! - [`ClientBody`]: the client's upload on its way to the upstream. It
//!   tells the data path when the upload ended (the request timeout runs
//!   from there) and whether it broke by the client's fault (malformed,
//!   cut short: 400; stalled: 408), so the upstream is never blamed for it.
//! - [`TrackedBody`]: the upstream's response on its way to the client. It
//!   holds the call's bulkhead slot, endpoint and pooled connection until
//!   the body ends, and records the exchange's one outcome then (unless it
//!   was decided at the response head): complete, a success of its
//!   endpoint and circuit with its real duration; broken or stalled, the
//!   upstream's failure of both (and the client's connection is aborted:
//!   the response cannot be completed honestly); abandoned by the client,
//!   nothing at all.
//!
//! Timers are armed only when a body actually waits, so a body that is
//! already in memory costs none. Must not: classify anything but body
//! events, or buffer.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use prometheus::IntCounter;
use tokio::sync::Notify;
use tokio::time::Sleep;

use super::conn::InFlight;
use crate::clock;
use crate::http::BoxError;
use crate::runtime::endpoint::{EndpointLease, EndpointSet};
use crate::runtime::fault::{ClientFault, Fault, UpstreamFault};
use crate::runtime::pool::UpstreamBody;
use crate::runtime::upstream::CallGuard;

/// How far the client's upload got, shared with the data path.
#[derive(Debug, Default)]
pub struct Upload {
    state: AtomicU8,
    ended: Notify,
}

const SENDING: u8 = 0;
const ENDED: u8 = 1;
const MALFORMED: u8 = 2;
const STALLED: u8 = 3;

impl Upload {
    /// The client's fault, if the upload broke by it.
    pub fn client_fault(&self) -> Option<ClientFault> {
        match self.state.load(Ordering::Acquire) {
            MALFORMED => Some(ClientFault::MalformedBody),
            STALLED => Some(ClientFault::UploadStalled),
            _ => None,
        }
    }

    /// Resolves once the upload has ended (or broke).
    pub async fn finished(&self) {
        loop {
            let notified = self.ended.notified();
            if self.state.load(Ordering::Acquire) != SENDING {
                return;
            }
            notified.await;
        }
    }

    fn set(&self, state: u8) {
        if self.state.compare_exchange(SENDING, state, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            self.ended.notify_waiters();
        }
    }
}

/// The error a [`ClientBody`] ends with (hyper aborts the upstream request).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BodyError(Fault);

/// The client's request body with its idle deadline.
pub struct ClientBody {
    inner: Incoming,
    upload: Arc<Upload>,
    idle: IdleDeadline,
    /// Bytes passed on so far, added to `sent` when the body goes.
    bytes: u64,
    sent: IntCounter,
}

impl ClientBody {
    /// `sent`: the upstream's request-bytes counter.
    pub fn new(inner: Incoming, upload: Arc<Upload>, idle: Duration, sent: IntCounter) -> ClientBody {
        ClientBody { inner, upload, idle: IdleDeadline::new(idle), bytes: 0, sent }
    }
}

impl Drop for ClientBody {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.sent.inc_by(self.bytes);
        }
    }
}

/// The length of a data frame (0 for trailers).
fn data_len(frame: &Frame<Bytes>) -> u64 {
    frame.data_ref().map_or(0, |d| d.len() as u64)
}

/// `timeouts.idle` on one body: the timer is armed only when the body
/// first waits, and pushed back by every frame.
struct IdleDeadline {
    idle: Duration,
    timer: Option<Pin<Box<Sleep>>>,
}

impl IdleDeadline {
    fn new(idle: Duration) -> IdleDeadline {
        IdleDeadline { idle, timer: None }
    }

    /// A frame went through.
    fn progress(&mut self) {
        if let Some(t) = self.timer.as_mut() {
            t.as_mut().reset(deadline(self.idle));
        }
    }

    /// The body is waiting: whether it has waited past the idle timeout
    /// (else the task is woken when it has).
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let idle = self.idle;
        let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline(idle))));
        timer.as_mut().poll(cx).is_ready()
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.idle.progress();
                this.bytes += data_len(&frame);
                if this.inner.is_end_stream() {
                    this.upload.set(ENDED);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.upload.set(MALFORMED);
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Ready(None) => {
                this.upload.set(ENDED);
                Poll::Ready(None)
            }
            Poll::Pending => {
                if this.idle.expired(cx) {
                    this.upload.set(STALLED);
                    return Poll::Ready(Some(Err(Box::new(BodyError(Fault::Client(ClientFault::UploadStalled))))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn deadline(idle: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(idle).unwrap_or(now)
}

/// The upstream's response body on its way to the client.
pub struct TrackedBody {
    inner: UpstreamBody,
    guard: Option<CallGuard>,
    endpoint: Option<(EndpointLease, Arc<EndpointSet>)>,
    idle: IdleDeadline,
    /// The request's count on its client connection (for its idle timer).
    in_flight: Option<InFlight>,
    /// The response's status while the exchange's outcome waits for the
    /// body's end; None when it was recorded at the response head.
    pending: Option<u16>,
    /// Bytes passed on so far, added to the upstream's response-bytes
    /// counter once, when the body ends or goes.
    bytes: u64,
}

impl TrackedBody {
    /// `pending`: the status of a response whose outcome is recorded when
    /// its body ends (None: recorded already).
    pub fn new(
        inner: UpstreamBody,
        guard: CallGuard,
        endpoint: (EndpointLease, Arc<EndpointSet>),
        idle: Duration,
        in_flight: InFlight,
        pending: Option<u16>,
    ) -> Self {
        TrackedBody {
            inner,
            bytes: 0,
            guard: Some(guard),
            endpoint: Some(endpoint),
            idle: IdleDeadline::new(idle),
            in_flight: Some(in_flight),
            pending,
        }
    }

    /// The body is complete: a success for its endpoint and circuit (the
    /// codec has given the upstream connection back to its pool already,
    /// if the exchange allowed it).
    /// Adds the bytes passed on to the upstream's counter (while the call's
    /// guard, which knows the upstream, is still here).
    fn count_bytes(&mut self) {
        if let (Some(g), n @ 1..) = (self.guard.as_ref(), self.bytes) {
            g.circuit().metrics.response_bytes.inc_by(n);
            self.bytes = 0;
        }
    }

    fn ended(&mut self) {
        self.count_bytes();
        self.in_flight.take();
        if let (Some(status), Some(mut guard), Some((mut lease, set))) = (self.pending.take(), self.guard.take(), self.endpoint.take()) {
            let now = clock::now();
            set.record(&mut lease, None, now);
            set.settle(&lease.member, false, false);
            guard.finish(Some(status), false, now);
        }
        self.guard.take();
        self.endpoint.take();
    }

    /// The upstream broke the body: its fault, for circuit and endpoint,
    /// unless the exchange was a failure already.
    fn broke(&mut self, fault: UpstreamFault) {
        self.count_bytes();
        self.in_flight.take();
        if let (Some(status), Some(mut guard), Some((mut lease, set))) = (self.pending.take(), self.guard.take(), self.endpoint.take()) {
            let now = clock::now();
            let ejected = set.record(&mut lease, Some(Fault::Upstream(fault)), now);
            // One bad replica is routed around: an ejection takes back
            // the failures it gave the circuit (as at the response head).
            let forgiven = set.settle(&lease.member, true, ejected);
            if forgiven > 0 {
                guard.forgive(forgiven, now);
            }
            guard.finish_broken(status, fault == UpstreamFault::BodyStalled, now);
        }
        self.guard.take();
        self.endpoint.take();
    }
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.idle.progress();
                this.bytes += data_len(&frame);
                // hyper stops polling once the body says it is at its end.
                if this.inner.is_end_stream() {
                    this.ended();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.broke(UpstreamFault::BodyBroken);
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.ended();
                Poll::Ready(None)
            }
            Poll::Pending => {
                if this.idle.expired(cx) {
                    this.broke(UpstreamFault::BodyStalled);
                    return Poll::Ready(Some(Err(Box::new(BodyError(Fault::Upstream(UpstreamFault::BodyStalled))))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        // Dropped at its end without a last poll: complete. Otherwise the
        // client went away mid-body: nothing is counted (the guard hands
        // its permit back uncounted).
        if self.pending.is_some() && self.inner.is_end_stream() {
            self.ended();
        }
        self.count_bytes();
    }
}
