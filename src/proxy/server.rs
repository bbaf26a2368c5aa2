//! The listeners' connection handling: accepts connections (each listener
//! at most its cap at once, the rest waiting in the kernel backlog; accept
//! errors such as running out of file descriptors back off instead of
//! spinning), serves HTTP/1.1 and h2c / h2 with upgrades, enforces each
//! connection's deadlines, and drains on shutdown.
//!
//! Caps: the data listener `client.maxConnections`, the admin listener
//! its own, both within their share of `RLIMIT_NOFILE` ([`FdBudget`]), so a flood of one listener
//! never makes the other's accepts fail with EMFILE. A listener at its cap
//! closes its idle keep-alive connections to make room for the waiting
//! ones (as nginx does when `worker_connections` runs out), so a flood of
//! idle connections cannot lock clients out until its idle timeout.
//!
//! Deadlines of a connection, on both listeners (all from `client:`, read per connection
//! so a reload applies to new ones): `headerTimeout` from accept to a
//! complete request head, protocol detection and TLS handshake included
//! (and for each later HTTP/1.1 head, from its first byte);
//! `idleTimeout` with no request in flight (HTTP/1.1: closed; h2: GOAWAY,
//! then closed); a write that stays blocked past the stall timeout (default
//! `idleTimeout`, per request through [`ConnControl`]) closes the
//! connection, dropping its in-flight responses and their bulkhead slots.
//! Malformed requests and oversized headers are answered by hyper (400 /
//! 431) before any routing, so they never reach a breaker.
//!
//! This module owns connection lifetimes; it must not route, forward or
//! answer requests (that is `forward` and `admin`), nor look into a request
//! beyond counting it in and out (that is `conn`).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus::IntGauge;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use super::conn::{later, ConnControl, ConnIo, Expiry, Slot, Timeouts};
use super::forward::{self, DataPlane};
use crate::config::ClientConfig;

/// Largest request head accepted (431 above it).
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// First pause after a failed accept; doubles on each failure in a row.
pub const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// Longest pause after failed accepts.
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// A listener at its connection cap tells its idle keep-alive connections
/// to close at most this often.
pub const CROWDED_EVERY: Duration = Duration::from_millis(100);

/// How a listener treats its connections; read again for every connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnPolicy {
    /// From accept to a complete request head (TLS handshake and protocol
    /// detection included).
    pub header_timeout: Duration,
    /// No request in flight this long: closed (h1) or GOAWAY (h2).
    pub idle_timeout: Option<Duration>,
    /// Default longest a write may stay blocked.
    pub stall_timeout: Option<Duration>,
    /// Connections served at once; the others wait in the backlog.
    pub max_connections: Option<usize>,
}

// === impl ConnPolicy ===

impl ConnPolicy {
    /// The admin listener: the data listener's deadlines (`client:`) and
    /// its own share of the file descriptors ([`FdBudget`]).
    pub fn admin(c: &ClientConfig) -> ConnPolicy {
        ConnPolicy {
            header_timeout: c.header_timeout,
            idle_timeout: Some(c.idle_timeout),
            stall_timeout: Some(c.idle_timeout),
            max_connections: Some(FdBudget::current().admin),
        }
    }

    /// One of `workers` data listeners, from `client:` (each worker takes
    /// its share of `maxConnections`, rounded up), never more than the
    /// data listener's share of the file descriptors ([`FdBudget`]).
    pub fn data(c: &ClientConfig, workers: usize) -> ConnPolicy {
        let max = c.max_connections.min(FdBudget::current().data);
        ConnPolicy {
            header_timeout: c.header_timeout,
            idle_timeout: Some(c.idle_timeout),
            stall_timeout: Some(c.idle_timeout),
            max_connections: Some(max.div_ceil(workers.max(1))),
        }
    }

    fn timeouts(&self) -> Timeouts {
        Timeouts { header: self.header_timeout, idle: self.idle_timeout }
    }
}

/// How the process's file descriptors (`RLIMIT_NOFILE`, read once after
/// [`raise_nofile_limit`]) are shared, so that no flood of one listener
/// can starve the other (EMFILE on accept) or the process's own files:
///
/// - [`FD_RESERVE`] are kept for the process itself (listeners, the store,
///   the config watcher, health checks, DNS, logs);
/// - the admin listener may hold a third of the rest (at most
///   [`ADMIN_MAX_CONNECTIONS`]);
/// - the data listener may hold half of what is left, as every proxied
///   connection may hold an upstream connection too (at most
///   `client.maxConnections`).
///
/// At 1,024 descriptors: admin 298, data 299; at 20,000: admin 6,624, data
/// 6,624; at 1,048,576: admin 10,000, data `client.maxConnections`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdBudget {
    pub admin: usize,
    pub data: usize,
}

/// Descriptors kept for the process's own files and sockets.
pub const FD_RESERVE: usize = 128;
/// The admin listener's connection cap however high the descriptor limit.
pub const ADMIN_MAX_CONNECTIONS: usize = 10_000;

// === impl FdBudget ===

impl FdBudget {
    /// The shares of `nofile` descriptors (each at least 8).
    pub fn of(nofile: u64) -> FdBudget {
        let usable = usize::try_from(nofile).unwrap_or(usize::MAX).saturating_sub(FD_RESERVE);
        let admin = (usable / 3).clamp(8, ADMIN_MAX_CONNECTIONS);
        let data = (usable.saturating_sub(admin) / 2).max(8);
        FdBudget { admin, data }
    }

    /// The budget of this process's soft `RLIMIT_NOFILE`, read once.
    pub fn current() -> FdBudget {
        static BUDGET: std::sync::OnceLock<FdBudget> = std::sync::OnceLock::new();
        *BUDGET.get_or_init(|| {
            let nofile = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft);
            let budget = FdBudget::of(nofile);
            tracing::debug!(nofile, admin = budget.admin, data = budget.data, "connection caps from the open file limit");
            budget
        })
    }
}

/// The connection builder for one connection under `policy`.
///
/// hyper's own HTTP/1.1 header read timer is off: it would cost a boxed
/// timer per request, and it also runs while a keep-alive connection waits
/// for its next request. The connection task's one watchdog enforces the
/// header and idle timeouts exactly (`conn`).
pub fn http_builder(_policy: &ConnPolicy) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(None).max_buf_size(MAX_HEADER_BYTES).keep_alive(true);
    builder.http2().timer(TokioTimer::new()).max_concurrent_streams(1024);
    builder
}

/// The data listener: serves the proxy until `stop` resolves, then stops
/// accepting and gives open connections `grace` to finish their requests.
/// With `tls`, every connection is TLS (ALPN picks h2 or HTTP/1.1).
pub async fn serve(
    listener: TcpListener,
    plane: Arc<DataPlane>,
    stop: impl Future<Output = ()>,
    grace: Duration,
    tls: Option<TlsAcceptor>,
) {
    let generations = plane.store.clone();
    let workers = plane.workers;
    let policy = move || ConnPolicy::data(&generations.load().config.client, workers);
    let open = plane.open_connections.clone();
    accept_loop(listener, stop, grace, tls, (policy, open), move |peer, ctl| {
        let plane = plane.clone();
        let peer_ip = forward::PeerIp::new(peer);
        let ctl = ctl.clone();
        service_fn(move |req: Request<Incoming>| {
            let in_flight = ctl.request_started(req.version());
            forward::handle(req, plane.clone(), peer_ip.clone(), (ctl.clone(), in_flight))
        })
    })
    .await;
}

/// What the connection tasks are told by their listener: its phase, and
/// how many times it found all its connection slots taken (each time,
/// idle keep-alive connections close to make room, as nginx does with its
/// reusable connections when `worker_connections` runs out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Signal {
    phase: Phase,
    crowded: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Serve,
    /// Finish the requests in flight, take no new ones.
    Drain,
    /// The grace period is over: close now.
    Close,
}

/// Accepts connections until `stop`, serving each with the service that
/// `make_service` builds for its peer (HTTP/1.1 with upgrades, or h2) under
/// the deadlines and limit of `policy()`, then drains. Shared by the data
/// and admin listeners.
pub async fn accept_loop<F, S, B, P>(
    listener: TcpListener,
    stop: impl Future<Output = ()>,
    grace: Duration,
    tls: Option<TlsAcceptor>,
    (policy, open): (P, IntGauge),
    make_service: F,
) where
    P: Fn() -> ConnPolicy,
    F: Fn(SocketAddr, &ConnControl) -> S,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (phase_tx, phase_rx) = watch::channel(Signal { phase: Phase::Serve, crowded: 0 });
    let mut slots: Option<Slots> = None;
    // The builder of the last policy seen (rebuilt when a reload changes it).
    let mut built: Option<(ConnPolicy, auto::Builder<TokioExecutor>)> = None;
    let mut backoff = Backoff::default();
    // When idle connections were last told to make room.
    let mut crowded_at: Option<Instant> = None;
    tokio::pin!(stop);
    'accept: loop {
        let permit = match policy().max_connections {
            None => None,
            Some(max) => {
                let slots = slots.get_or_insert_with(|| Slots::new(max));
                slots.resize(max);
                match slots.try_acquire() {
                    Some(permit) => Some(permit),
                    // Full: idle keep-alive connections make room (at most
                    // every CROWDED_EVERY: each signal wakes every
                    // connection), so a flood of them cannot lock new
                    // clients out until their idle timeout.
                    None => loop {
                        let now = Instant::now();
                        if crowded_at.is_none_or(|at| now.saturating_duration_since(at) >= CROWDED_EVERY) {
                            crowded_at = Some(now);
                            phase_tx.send_modify(|s| s.crowded = s.crowded.wrapping_add(1));
                        }
                        tokio::select! {
                            permit = slots.acquire() => break Some(permit),
                            () = tokio::time::sleep(CROWDED_EVERY) => continue,
                            () = &mut stop => break 'accept,
                        }
                    },
                }
            }
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => {
                    backoff.reset();
                    x
                }
                Err(e) if is_per_connection(&e) => {
                    tracing::debug!(error = %e, "accept: connection gone before it was accepted");
                    continue;
                }
                Err(e) => {
                    let pause = backoff.failed(&e);
                    tokio::select! {
                        () = tokio::time::sleep(pause) => continue,
                        () = &mut stop => break,
                    }
                }
            },
            () = &mut stop => break,
        };
        let accepted = Instant::now();
        let policy = policy();
        let builder = match &built {
            Some((p, b)) if *p == policy => b.clone(),
            _ => {
                let b = http_builder(&policy);
                built = Some((policy, b.clone()));
                b
            }
        };
        let _ = stream.set_nodelay(true);
        let ctl = ConnControl::new(accepted, policy.stall_timeout);
        let io = ConnIo::new(stream, ctl.clone(), Slot::new(permit, open.clone()));
        // The service counts its requests in flight on `ctl` (the data
        // path in its own response body; others wrap with `conn::Tracked`).
        let svc = make_service(peer, &ctl);
        let phase = phase_rx.clone();
        let tls = tls.clone();
        tokio::spawn(connection(io, tls, builder, svc, ctl, policy, accepted, phase, peer));
    }
    let name = match listener.local_addr() {
        Ok(addr) => addr.to_string(),
        Err(_) => "listener".to_string(),
    };
    drop(listener);
    drop(phase_rx);
    drain(phase_tx, grace, &name).await;
}

/// Accept errors that concern one connection (reset before it was
/// accepted), retried at once; every other error backs off.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset | io::ErrorKind::Interrupted)
}

/// One connection: the TLS handshake (if any), then HTTP under the watchdog.
#[allow(clippy::too_many_arguments)]
async fn connection<S, B>(
    io: ConnIo<TcpStream>,
    tls: Option<TlsAcceptor>,
    builder: auto::Builder<TokioExecutor>,
    svc: S,
    ctl: ConnControl,
    policy: ConnPolicy,
    accepted: Instant,
    mut phase: watch::Receiver<Signal>,
    peer: SocketAddr,
) where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let timeouts = policy.timeouts();
    match tls {
        None => watch_connection(&builder, TokioIo::new(io), svc, &ctl, timeouts, &mut phase, peer).await,
        Some(acceptor) => {
            let handshake = tokio::time::timeout_at(later(accepted, policy.header_timeout), acceptor.accept(io));
            match handshake.await {
                Ok(Ok(stream)) => watch_connection(&builder, TokioIo::new(stream), svc, &ctl, timeouts, &mut phase, peer).await,
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        }
    }
}

/// Serves one connection until it ends, racing it against its deadlines
/// and the listener's drain.
async fn watch_connection<I, S, B>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    svc: S,
    ctl: &ConnControl,
    timeouts: Timeouts,
    phase: &mut watch::Receiver<Signal>,
    peer: SocketAddr,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = builder.serve_connection_with_upgrades(io, svc);
    tokio::pin!(conn);
    // When graceful_shutdown was called (idle or drain): at most once.
    let mut shut_at: Option<Instant> = None;
    let mut watch_phase = true;
    let first_signal = *phase.borrow_and_update();
    let mut crowded = first_signal.crowded;
    if first_signal.phase != Phase::Serve {
        conn.as_mut().graceful_shutdown();
        shut_at = Some(Instant::now());
    }
    // One timer per connection, re-armed in place. Requests never wake the
    // watchdog (that cost two wake-ups and two timers per request): it
    // checks at least every `check` and then aims at the exact deadline, so
    // a deadline is never missed by more than nothing — the check interval
    // is shorter than every timeout.
    let check = (timeouts.header.min(timeouts.idle.unwrap_or(timeouts.header)) / 2).max(Duration::from_millis(1));
    let first = ctl.deadline(&timeouts, shut_at).map_or_else(|| later(Instant::now(), check), |(at, _)| at);
    let mut timer = Box::pin(tokio::time::sleep_until(first));
    loop {
        tokio::select! {
            biased;
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            () = timer.as_mut() => {
                let now = Instant::now();
                let next_check = later(now, check);
                let (at, why) = match ctl.deadline(&timeouts, shut_at) {
                    None => {
                        timer.as_mut().reset(next_check);
                        continue;
                    }
                    Some(d) => d,
                };
                if at > now {
                    timer.as_mut().reset(at.min(next_check));
                    continue;
                }
                match (why, shut_at) {
                    (Expiry::Header, _) => {
                        tracing::debug!(%peer, "no complete request head within client.headerTimeout: closing");
                        return;
                    }
                    (Expiry::Idle, Some(_)) => {
                        tracing::debug!(%peer, "still open after its shutdown: closing");
                        return;
                    }
                    (Expiry::Idle, None) => {
                        tracing::debug!(%peer, "idle for client.idleTimeout: shutting down");
                        conn.as_mut().graceful_shutdown();
                        shut_at = Some(now);
                        timer.as_mut().reset(next_check);
                    }
                }
            }
            r = phase.changed(), if watch_phase => {
                let p = match r {
                    Ok(()) => {
                        let signal = *phase.borrow_and_update();
                        if signal.crowded != crowded {
                            crowded = signal.crowded;
                            if shut_at.is_none() && ctl.is_idle() {
                                tracing::debug!(%peer, "listener at its connection cap: closing an idle keep-alive connection");
                                conn.as_mut().graceful_shutdown();
                                shut_at = Some(Instant::now());
                                timer.as_mut().reset(later(Instant::now(), check));
                            }
                        }
                        signal.phase
                    }
                    Err(_) => {
                        // The listener is gone without a drain: drain anyway.
                        watch_phase = false;
                        Phase::Drain
                    }
                };
                match p {
                    Phase::Serve => {}
                    Phase::Drain => {
                        if shut_at.is_none() {
                            conn.as_mut().graceful_shutdown();
                            shut_at = Some(Instant::now());
                            timer.as_mut().reset(later(Instant::now(), check));
                        }
                    }
                    Phase::Close => return,
                }
            }
        }
    }
}

/// Tells every connection to finish, and waits for them at most `grace`;
/// those still open then are closed.
async fn drain(phase: watch::Sender<Signal>, grace: Duration, listener: &str) {
    phase.send_modify(|s| s.phase = Phase::Drain);
    tokio::select! {
        () = phase.closed() => tracing::info!(listener, "all connections of {listener} drained"),
        () = tokio::time::sleep(grace) => {
            tracing::warn!(listener, "grace period over: closing the remaining connections of {listener}");
            phase.send_modify(|s| s.phase = Phase::Close);
        }
    }
}

/// The connection limit: a semaphore whose size follows the config. A
/// shrink below the connections open is paid back as they close.
struct Slots {
    sem: Arc<Semaphore>,
    limit: usize,
    /// Permits still to forget after a shrink.
    debt: usize,
}

// === impl Slots ===

impl Slots {
    fn new(limit: usize) -> Slots {
        let limit = limit.clamp(1, Semaphore::MAX_PERMITS);
        Slots { sem: Arc::new(Semaphore::new(limit)), limit, debt: 0 }
    }

    fn resize(&mut self, limit: usize) {
        let limit = limit.clamp(1, Semaphore::MAX_PERMITS);
        if limit > self.limit {
            let grow = limit - self.limit;
            let paid = grow.min(self.debt);
            self.debt -= paid;
            self.sem.add_permits(grow - paid);
        } else if limit < self.limit {
            let shrink = self.limit - limit;
            let forgotten = self.sem.forget_permits(shrink);
            self.debt = self.debt.saturating_add(shrink - forgotten);
        }
        self.limit = limit;
    }

    /// A slot for one connection if one is free now.
    fn try_acquire(&mut self) -> Option<OwnedSemaphorePermit> {
        loop {
            let permit = self.sem.clone().try_acquire_owned().ok()?;
            if self.debt > 0 {
                permit.forget();
                self.debt -= 1;
                continue;
            }
            return Some(permit);
        }
    }

    /// A slot for one connection, waiting while all are taken.
    async fn acquire(&mut self) -> OwnedSemaphorePermit {
        loop {
            // The semaphore is never closed.
            let Ok(permit) = self.sem.clone().acquire_owned().await else { return std::future::pending().await };
            if self.debt > 0 {
                permit.forget();
                self.debt -= 1;
                continue;
            }
            return permit;
        }
    }
}

/// Pauses after failed accepts: 10 ms doubling up to 1 s, reset by the
/// next accepted connection; a warning at most once a second.
struct Backoff {
    next: Duration,
    warned_at: Option<Instant>,
    quiet: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: ACCEPT_BACKOFF_MIN, warned_at: None, quiet: 0 }
    }
}

// === impl Backoff ===

impl Backoff {
    /// How long to pause after `e`.
    fn failed(&mut self, e: &io::Error) -> Duration {
        let pause = self.next;
        self.next = self.next.saturating_mul(2).min(ACCEPT_BACKOFF_MAX);
        let now = Instant::now();
        if self.warned_at.is_none_or(|at| now.saturating_duration_since(at) >= Duration::from_secs(1)) {
            tracing::warn!(error = %e, pause = ?pause, failures_not_logged = self.quiet, "accept failed (out of file descriptors or memory?): backing off");
            self.warned_at = Some(now);
            self.quiet = 0;
        } else {
            self.quiet = self.quiet.saturating_add(1);
        }
        pause
    }

    fn reset(&mut self) {
        self.next = ACCEPT_BACKOFF_MIN;
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (as Go's runtime and
/// nginx's `worker_rlimit_nofile` do): each connection takes a descriptor,
/// and the usual soft limit of 1024 is far below `client.maxConnections`.
pub fn raise_nofile_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open file limit (RLIMIT_NOFILE)"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open file limit (RLIMIT_NOFILE)"),
    }
}

/// The accept backlog: large enough that a burst of connections (every
/// dashboard reconnecting after a restart, a traffic spike) is not met with
/// dropped SYNs and 1 s client retransmits; the kernel caps it at somaxconn.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds a listener, naming the address in the error.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    listen(addr, false)
}

/// Binds one of several listeners on the same address (`SO_REUSEPORT`):
/// one per data-path worker, the kernel spreading new connections over
/// them, so no accept queue or lock is shared between workers.
pub async fn bind_shared(addr: SocketAddr) -> std::io::Result<TcpListener> {
    listen(addr, true)
}

fn listen(addr: SocketAddr, shared: bool) -> std::io::Result<TcpListener> {
    let named = |e: std::io::Error| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"));
    let socket = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }.map_err(named)?;
    socket.set_reuseaddr(true).map_err(named)?;
    if shared {
        socket.set_reuseport(true).map_err(named)?;
    }
    socket.bind(addr).map_err(named)?;
    socket.listen(LISTEN_BACKLOG).map_err(named)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_descriptor_budget_keeps_room_for_each_listener_and_the_process() {
        use super::{FdBudget, ADMIN_MAX_CONNECTIONS, FD_RESERVE};
        for nofile in [64_u64, 256, 1024, 4096, 20_000, 1 << 20, u64::MAX] {
            let b = FdBudget::of(nofile);
            assert!(b.admin >= 8 && b.data >= 8, "{nofile}: {b:?}");
            assert!(b.admin <= ADMIN_MAX_CONNECTIONS, "{nofile}: {b:?}");
            if nofile >= 1024 {
                // Data connections may hold an upstream connection each.
                let used = b.admin as u64 + 2 * b.data as u64 + FD_RESERVE as u64;
                assert!(used <= nofile, "{nofile}: {b:?} uses {used}");
            }
        }
        assert_eq!(FdBudget::of(1024), FdBudget { admin: 298, data: 299 });
        assert_eq!(FdBudget::of(20_000), FdBudget { admin: 6624, data: 6624 });
        assert_eq!(FdBudget::of(1 << 20).admin, ADMIN_MAX_CONNECTIONS);
    }

    use super::*;

    #[tokio::test]
    async fn slots_follow_the_limit_and_pay_back_a_shrink() {
        let mut slots = Slots::new(2);
        let a = slots.acquire().await;
        let b = slots.acquire().await;
        slots.resize(1);
        assert_eq!(slots.debt, 1, "both slots taken: the shrink is owed");
        drop(a);
        // The freed slot pays the debt: still full.
        assert!(tokio::time::timeout(Duration::from_millis(20), slots.acquire()).await.is_err());
        drop(b);
        let _c = slots.acquire().await;
        slots.resize(3);
        assert_eq!(slots.sem.available_permits(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_doubles_to_a_second_and_resets() {
        let mut b = Backoff::default();
        let e = io::Error::other("EMFILE");
        let pauses: Vec<_> = (0..9).map(|_| b.failed(&e)).collect();
        assert_eq!(pauses[0], Duration::from_millis(10));
        assert_eq!(pauses[1], Duration::from_millis(20));
        assert_eq!(pauses[7], Duration::from_secs(1));
        assert_eq!(pauses[8], Duration::from_secs(1));
        assert!(b.quiet > 0, "one warning a second");
        b.reset();
        assert_eq!(b.failed(&e), Duration::from_millis(10));
    }
}
