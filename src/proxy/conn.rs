//! One client connection's timing: the shared [`ConnControl`] (requests in
//! flight, when the connection went idle, when a new request head started,
//! the write stall timeout), the IO wrapper [`ConnIo`] that fails a write
//! stalled past that timeout, the in-flight count ([`InFlight`]: the data
//! path holds it in its response body; other services wrap themselves in
//! [`Tracked`]), and the deadline arithmetic the connection task's one
//! timer aims at (the task stamps what changed at its next check; the one
//! clock read on the request path is the first byte of a keep-alive
//! connection's next head, which starts its header timeout).
//!
//! It owns per-connection state only; it must not accept connections, read
//! config, route or answer requests, or hold anything shared between
//! connections. Every instant is on tokio's clock.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::{Request, Response, Version};
use prometheus::IntGauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};

/// An unset millisecond offset.
const UNSET: u64 = u64::MAX;
/// Used when a deadline overflows the clock: far enough to never fire.
const FAR: Duration = Duration::from_secs(86_400 * 365 * 10);

/// `base + d`, saturating at a deadline that never comes.
pub fn later(base: Instant, d: Duration) -> Instant {
    base.checked_add(d).or_else(|| base.checked_add(FAR)).unwrap_or(base)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(UNSET - 1)
}

/// A connection's shared control block: cheap to clone (one `Arc`). The
/// data path finds it in every request's extensions and may change the
/// write stall timeout for the rest of the connection.
#[derive(Clone)]
pub struct ConnControl(Arc<Shared>);

struct Shared {
    /// When the connection was accepted; every offset below is from here.
    start: Instant,
    /// Longest a write may stay pending, in ms; 0: no limit.
    stall_ms: AtomicU64,
    /// Requests whose response body has not ended yet.
    in_flight: AtomicUsize,
    /// Request heads seen on this connection.
    requests: AtomicU64,
    /// When `in_flight` last went to 0 (ms).
    idle_since_ms: AtomicU64,
    /// HTTP/1.1: when the first byte after going idle arrived (ms), UNSET
    /// while no new head has started.
    head_started_ms: AtomicU64,
    /// The connection speaks h2 (known from its first request).
    h2: AtomicBool,
    /// The last request in flight ended; the watchdog stamps `idle_since_ms`
    /// at its next check (no clock read on the request path).
    went_idle: AtomicBool,
}

/// Which deadline ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// No complete request head in time: close at once.
    Header,
    /// No request in flight for the idle timeout: shut down gracefully.
    Idle,
}

/// The timeouts the watchdog enforces on one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// From accept (or from the first byte of a later HTTP/1.1 head) to a
    /// complete request head.
    pub header: Duration,
    /// No request in flight this long: close (h1) or GOAWAY (h2).
    pub idle: Option<Duration>,
}

// === impl ConnControl ===

impl ConnControl {
    /// A control block for a connection accepted at `start`, whose writes
    /// may stall `stall` at most (None: no limit).
    pub fn new(start: Instant, stall: Option<Duration>) -> ConnControl {
        let ctl = ConnControl(Arc::new(Shared {
            start,
            stall_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(0),
            head_started_ms: AtomicU64::new(UNSET),
            h2: AtomicBool::new(false),
            went_idle: AtomicBool::new(false),
        }));
        if let Some(d) = stall {
            ctl.set_stall_timeout(d);
        }
        ctl
    }

    /// Longest a write to this client may stay pending before the
    /// connection is closed (and its in-flight responses dropped). Applies
    /// from the next write that blocks; zero removes the limit.
    pub fn set_stall_timeout(&self, d: Duration) {
        let ms = if d.is_zero() { 0 } else { millis(d).max(1) };
        self.0.stall_ms.store(ms, Ordering::Relaxed);
    }

    /// The current write stall timeout, None when writes may block forever.
    pub fn stall_timeout(&self) -> Option<Duration> {
        match self.0.stall_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    /// Requests in flight on this connection.
    pub fn in_flight(&self) -> usize {
        self.0.in_flight.load(Ordering::Acquire)
    }

    /// A keep-alive connection between requests: it has served one, none
    /// is in flight and no byte of the next has arrived. Such a connection
    /// costs a client nothing to lose, so a listener at its connection cap
    /// closes it to make room.
    pub fn is_idle(&self) -> bool {
        let s = &*self.0;
        s.in_flight.load(Ordering::Acquire) == 0
            && s.requests.load(Ordering::Relaxed) > 0
            && s.head_started_ms.load(Ordering::Relaxed) == UNSET
    }

    fn now_ms(&self) -> u64 {
        millis(Instant::now().saturating_duration_since(self.0.start))
    }

    fn at(&self, ms: u64) -> Instant {
        later(self.0.start, Duration::from_millis(ms))
    }

    /// A request head arrived: counted in until the returned guard drops.
    pub fn request_started(&self, version: Version) -> InFlight {
        self.0.in_flight.fetch_add(1, Ordering::AcqRel);
        self.0.requests.fetch_add(1, Ordering::Relaxed);
        self.0.head_started_ms.store(UNSET, Ordering::Relaxed);
        if version == Version::HTTP_2 {
            self.0.h2.store(true, Ordering::Relaxed);
        }
        InFlight(self.clone())
    }

    /// Bytes arrived from the client: on an idle HTTP/1.1 connection they
    /// start the next request head, which then has the header timeout.
    fn on_read(&self) {
        let s = &*self.0;
        if s.head_started_ms.load(Ordering::Relaxed) == UNSET
            && s.in_flight.load(Ordering::Acquire) == 0
            && s.requests.load(Ordering::Relaxed) > 0
            && !s.h2.load(Ordering::Relaxed)
        {
            // Stamped now (one clock read per request, at its first byte):
            // the header timeout runs from here exactly, and the watchdog
            // aims at it at its next check (it never waits longer than half
            // the shortest timeout).
            let _ = s.head_started_ms.compare_exchange(UNSET, self.now_ms(), Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// The next deadline of this connection and what it means; None while
    /// a request is in flight. `shut_at`: when the watchdog already shut
    /// the connection down for idleness; it then gets one more header
    /// timeout to finish closing (an h2 client that never acks the GOAWAY
    /// ping) and is closed at the next `Idle`.
    pub fn deadline(&self, t: &Timeouts, shut_at: Option<Instant>) -> Option<(Instant, Expiry)> {
        let s = &*self.0;
        // What happened since the last check, stamped now: a deadline runs
        // at most one check interval late, and requests read no clock.
        if s.went_idle.swap(false, Ordering::AcqRel) {
            if s.in_flight.load(Ordering::Acquire) == 0 {
                // Read after the count reached 0: never before the idle start.
                s.idle_since_ms.store(self.now_ms(), Ordering::Relaxed);
            } else {
                // Set just before its count went down: look again next time.
                s.went_idle.store(true, Ordering::Release);
            }
        }
        if s.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        if s.requests.load(Ordering::Relaxed) == 0 {
            return Some((later(s.start, t.header), Expiry::Header));
        }
        let idle_since = self.at(s.idle_since_ms.load(Ordering::Relaxed));
        if let Some(shut) = shut_at {
            return Some((later(shut.max(idle_since), t.header), Expiry::Idle));
        }
        let idle = t.idle.map(|i| (later(idle_since, i), Expiry::Idle));
        let head = match s.head_started_ms.load(Ordering::Relaxed) {
            UNSET => None,
            _ if s.h2.load(Ordering::Relaxed) => None,
            ms => Some((later(self.at(ms), t.header), Expiry::Header)),
        };
        match (idle, head) {
            (Some(i), Some(h)) => Some(if h.0 <= i.0 { h } else { i }),
            (i, h) => i.or(h),
        }
    }
}

/// One request counted in flight; dropping it counts it out.
pub struct InFlight(ConnControl);

impl Drop for InFlight {
    fn drop(&mut self) {
        let s = &*self.0 .0;
        // The flag first, then the count: a watchdog that sees the flag
        // stamps the idle start only once it also sees the count at 0.
        s.went_idle.store(true, Ordering::Release);
        s.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

// === ConnIo ===

/// The client's socket (under TLS, if any) with a write stall deadline: a
/// write, flush or shutdown that stays pending longer than the
/// connection's stall timeout fails with `TimedOut`, so hyper closes the
/// connection and drops what it was sending. Reads get no deadline here.
/// It also holds the connection's slot of `client.maxConnections`, so an
/// upgraded connection keeps its slot until the socket closes.
pub struct ConnIo<T> {
    inner: T,
    ctl: ConnControl,
    /// When the current run of pending writes began.
    stalled_since: Option<Instant>,
    sleep: Option<Pin<Box<Sleep>>>,
    _slot: Slot,
}

/// A connection's place in its listener: its slot under the connection cap
/// (if any) and its count in the listener's open-connections gauge, both
/// given back when the connection is dropped.
pub struct Slot {
    _permit: Option<OwnedSemaphorePermit>,
    open: IntGauge,
}

impl Slot {
    pub fn new(permit: Option<OwnedSemaphorePermit>, open: IntGauge) -> Slot {
        open.inc();
        Slot { _permit: permit, open }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.dec();
    }
}

impl<T> ConnIo<T> {
    pub fn new(inner: T, ctl: ConnControl, slot: Slot) -> ConnIo<T> {
        ConnIo { inner, ctl, stalled_since: None, sleep: None, _slot: slot }
    }

    /// Passes a ready write through; a pending one fails once it has been
    /// pending (with no write progress) past the stall timeout.
    fn deadline<R>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        if r.is_ready() {
            self.stalled_since = None;
            return r;
        }
        let Some(limit) = self.ctl.stall_timeout() else { return Poll::Pending };
        let since = *self.stalled_since.get_or_insert_with(Instant::now);
        let deadline = later(since, limit);
        let sleep = match &mut self.sleep {
            Some(s) => {
                if s.deadline() != deadline {
                    s.as_mut().reset(deadline);
                }
                s
            }
            None => self.sleep.insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "the client stopped reading: write stalled"))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ConnIo<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            this.ctl.on_read();
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ConnIo<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.deadline(cx, r)
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.deadline(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        this.deadline(cx, r)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.deadline(cx, r)
    }
}

// === Tracked ===

/// A service wrapper: counts each request in flight until its response
/// body ends or is dropped. (The service itself gets the connection's
/// [`ConnControl`] when it is made: no per-request extension.)
#[derive(Clone)]
pub struct Tracked<S> {
    inner: S,
    ctl: ConnControl,
}

impl<S> Tracked<S> {
    pub fn new(inner: S, ctl: ConnControl) -> Tracked<S> {
        Tracked { inner, ctl }
    }
}

impl<S, ReqB, B> hyper::service::Service<Request<ReqB>> for Tracked<S>
where
    S: hyper::service::Service<Request<ReqB>, Response = Response<B>>,
{
    type Response = Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn call(&self, req: Request<ReqB>) -> Self::Future {
        let guard = self.ctl.request_started(req.version());
        TrackedFuture { inner: self.inner.call(req), guard: Some(guard) }
    }
}

pin_project_lite::pin_project! {
    /// The wrapped service's future; moves the in-flight count into the
    /// response body (or drops it with the future).
    pub struct TrackedFuture<F> {
        #[pin]
        inner: F,
        guard: Option<InFlight>,
    }
}

impl<F, B, E> Future for TrackedFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<TrackedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let resp = ready!(this.inner.poll(cx))?;
        let guard = this.guard.take();
        Poll::Ready(Ok(resp.map(|inner| TrackedBody { inner, guard })))
    }
}

pin_project_lite::pin_project! {
    /// A response body that counts its request out when it ends, fails or
    /// is dropped.
    pub struct TrackedBody<B> {
        #[pin]
        inner: B,
        guard: Option<InFlight>,
    }
}

impl<B: http_body::Body> http_body::Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if !matches!(frame, Some(Ok(_))) {
            this.guard.take();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeouts() -> Timeouts {
        Timeouts { header: Duration::from_secs(1), idle: Some(Duration::from_secs(5)) }
    }

    #[tokio::test(start_paused = true)]
    async fn header_deadline_from_accept_then_idle_after_each_request() {
        let start = Instant::now();
        let ctl = ConnControl::new(start, Some(Duration::from_secs(5)));
        assert_eq!(ctl.deadline(&timeouts(), None), Some((start + Duration::from_secs(1), Expiry::Header)));
        tokio::time::advance(Duration::from_millis(200)).await;
        let g = ctl.request_started(Version::HTTP_11);
        assert_eq!(ctl.deadline(&timeouts(), None), None, "no deadline while a request is in flight");
        tokio::time::advance(Duration::from_secs(10)).await;
        drop(g);
        let idle_at = Instant::now();
        assert_eq!(ctl.deadline(&timeouts(), None), Some((idle_at + Duration::from_secs(5), Expiry::Idle)));
        // A byte of the next head: the header timeout from then.
        tokio::time::advance(Duration::from_secs(2)).await;
        ctl.on_read();
        assert_eq!(ctl.deadline(&timeouts(), None), Some((Instant::now() + Duration::from_secs(1), Expiry::Header)));
        // After an idle shutdown: one header timeout more, then closed.
        let shut = Instant::now();
        assert_eq!(ctl.deadline(&timeouts(), Some(shut)), Some((shut + Duration::from_secs(1), Expiry::Idle)));
    }

    #[tokio::test(start_paused = true)]
    async fn h2_reads_do_not_start_a_head() {
        let ctl = ConnControl::new(Instant::now(), None);
        drop(ctl.request_started(Version::HTTP_2));
        let idle_at = Instant::now();
        ctl.on_read();
        assert_eq!(ctl.deadline(&timeouts(), None), Some((idle_at + Duration::from_secs(5), Expiry::Idle)));
        assert_eq!(ctl.stall_timeout(), None);
        ctl.set_stall_timeout(Duration::from_micros(10));
        assert_eq!(ctl.stall_timeout(), Some(Duration::from_millis(1)));
    }

    #[test]
    fn later_saturates() {
        let now = Instant::now();
        assert!(later(now, Duration::MAX) > now);
    }
}
