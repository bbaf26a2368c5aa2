//! Connections to one upstream's endpoints.
//!
//! HTTP/1.1 upstreams get a pool of keep-alive connections per endpoint
//! ([`EndpointPool`]), each driven inline by fusebox's own codec
//! ([`crate::h1`]): no connection task, no dispatch channel. A request
//! takes the most recently used idle connection (warm, and lets the rest
//! expire) that is still usable (an idle connection with bytes or EOF to
//! read is dead); the connection rides along with the response body and
//! comes back through [`Recycler`] only when the body has ended cleanly on
//! a keep-alive exchange, so a connection with unread bytes is never
//! reused. A bodyless request that a reused connection lost before any
//! response byte (the upstream's keep-alive timeout raced us) goes once
//! more on a fresh connection when it is idempotent or was not sent at all.
//! HTTP/2 upstreams share one multiplexed connection through hyper-util's
//! client (the only use of hyper's client).
//!
//! Owns: connecting (TCP with connect timeout, `TCP_NODELAY` and keepalive;
//! TLS with SNI and ALPN `http/1.1`), idle reuse, idle expiry (on use, and
//! swept by [`EndpointPool::reap`], which the app's ticker calls: no task
//! per pool) and the one retry. Must not: classify results or touch
//! circuits (`proxy::forward` does), spawn anything, or hold a lock across
//! an await; each worker's idle list of an endpoint has its own lock, held
//! for a push or a pop.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::config::{Endpoint, Protocol, UpstreamConfig};
use crate::h1;
use crate::http::{BoxError, ProxyBody};
use crate::tls;

/// hyper-util's pooled client, used for HTTP/2 upstreams.
pub type H2Client = Client<HttpsConnector<HttpConnector>, ProxyBody>;

/// How long an HTTP/2 connection may sit idle in hyper's pool (HTTP/1.1
/// connections follow `pool.idleTimeout` and the upstream's `Keep-Alive`).
pub const H2_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often idle connections are swept ([`EndpointPool::reap`]).
pub const REAP_EVERY: Duration = Duration::from_secs(2);
/// Most idle connections kept per endpoint and worker; more are closed
/// when returned.
pub const MAX_IDLE_PER_ENDPOINT: usize = 1024;
/// TCP keepalive probes on upstream connections after this much silence.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// One upstream's way of connecting: its protocol, connect timeout and TLS.
/// Shared by its endpoints' pools, and carried across reloads while those
/// settings stay the same.
pub struct Transport {
    /// The HTTP/2 path's connector (hyper-util).
    http: HttpConnector,
    tls: rustls::ClientConfig,
    /// The HTTP/1.1 path's TLS: `tls` with ALPN `http/1.1`.
    h1_tls: tokio_rustls::TlsConnector,
    /// `tls.serverName`, when set: the name every endpoint is checked against.
    server_name: Option<String>,
    protocol: Protocol,
    connect_timeout: Duration,
    /// `pool.idleTimeout`.
    idle_timeout: Duration,
}

/// An upstream connection's byte stream: TCP, or TLS over TCP.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// The keep-alive connections to one endpoint.
pub struct EndpointPool {
    endpoint: Endpoint,
    /// The address dialled (one of those the endpoint's name resolves to).
    address: SocketAddr,
    /// `scheme://address`, what the HTTP/2 connector dials.
    target: Uri,
    /// The HTTP/2 client, for `protocol: http2` upstreams.
    h2: Option<H2Client>,
    /// The name TLS checks the certificate against (and sends as SNI).
    server_name: Option<rustls::pki_types::ServerName<'static>>,
    /// For requests that came without a `Host` (HTTP/1.0 clients).
    host: Option<HeaderValue>,
    transport: Arc<Transport>,
    /// One idle list per worker thread ([`worker`]): a worker takes and
    /// returns its own connections, so no list is shared between threads
    /// on the request path. Oldest at the front, most recently used at the
    /// back.
    idle: Box<[Mutex<VecDeque<Idle>>]>,
}

struct Idle {
    conn: h1::Connection<Stream>,
    since: Instant,
    /// How long it may stay idle: `pool.idleTimeout`, lowered by the
    /// upstream's `Keep-Alive: timeout=N` (to N - 1 s, or half of N
    /// below 2 s) so fusebox gives it up before the upstream closes it.
    ttl: Duration,
}

impl Idle {
    fn fresh(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.since) < self.ttl
    }
}

/// Gives a connection whose exchange ended cleanly back to its pool (the
/// codec calls it when the response body ends on a keep-alive exchange),
/// with the instant its request started.
pub struct Recycler(Arc<EndpointPool>, Instant);

/// An upstream response body: fusebox's HTTP/1.1 codec's, or hyper's for
/// HTTP/2.
// The HTTP/1.1 body carries its connection inline: boxing the common case
// would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
pub enum UpstreamBody {
    H1(h1::Body<Stream, Recycler>),
    H2(Incoming),
}

/// In a response's extensions: its request went a second time, on a fresh
/// connection, after a pooled one was lost to the keep-alive race (the
/// caller counts it with its retries).
#[derive(Debug, Clone, Copy)]
pub struct SentAgain;

/// Why a request got no response head.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// It never reached the upstream (connect failed, or the connection
    /// was found closed before a byte of it was written): it may go again
    /// elsewhere. `body` comes back when it was not consumed.
    #[error("request not sent: {error}")]
    NotSent { error: BoxError, body: Option<ProxyBody> },
    /// It was written, at least in part, and the exchange failed before a
    /// complete response head. `reused`: on a pooled keep-alive connection.
    #[error("exchange failed: {error}")]
    Failed { error: BoxError, reused: bool },
}

// === impl Transport ===

impl Transport {
    /// The transport for `config`. A TLS setting that cannot be loaded
    /// (unreadable CA file...) is logged and trusts nothing: the upstream's
    /// https calls then fail and count against its circuit, which is what an
    /// operator sees.
    pub fn new(config: &UpstreamConfig) -> Transport {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(config.timeouts.connect));
        http.set_nodelay(true);
        http.set_keepalive(Some(TCP_KEEPALIVE));
        http.enforce_http(false);
        // Plain-HTTP upstreams never load the system's trusted roots.
        let https = config.endpoints.iter().any(|e| e.scheme == http::uri::Scheme::HTTPS);
        let tls = if https {
            tls::client_config(&config.tls).unwrap_or_else(|e| {
                tracing::error!(upstream = %config.name, error = %e, "upstream TLS config unusable: its https calls will fail");
                tls::trust_nothing()
            })
        } else {
            tls::trust_nothing()
        };
        let mut h1_tls = tls.clone();
        h1_tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Transport {
            http,
            tls,
            h1_tls: tokio_rustls::TlsConnector::from(Arc::new(h1_tls)),
            server_name: config.tls.server_name.clone(),
            protocol: config.protocol,
            connect_timeout: config.timeouts.connect,
            idle_timeout: config.pool_idle_timeout,
        }
    }

    /// The name an endpoint's certificate is checked against:
    /// `tls.serverName`, or the endpoint's own host name.
    fn server_name(&self, endpoint: &Endpoint) -> String {
        self.server_name.clone().unwrap_or_else(|| endpoint.authority.host().trim_start_matches('[').trim_end_matches(']').to_string())
    }

    /// The HTTP/2 connector for one endpoint: it dials the address it is
    /// given and checks the server's certificate against
    /// [`Transport::server_name`].
    fn h2_connector(&self, endpoint: &Endpoint) -> HttpsConnector<HttpConnector> {
        let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(self.tls.clone()).https_or_http();
        let builder = match rustls::pki_types::ServerName::try_from(self.server_name(endpoint)) {
            Ok(sni) => builder.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(sni)),
            Err(_) => builder,
        };
        builder.enable_http2().wrap_connector(self.http.clone())
    }
}

// === impl EndpointPool ===

impl EndpointPool {
    /// The pool of connections to `endpoint` at `address` (one of the
    /// addresses its name resolves to, or its own).
    pub fn new(endpoint: Endpoint, address: SocketAddr, transport: Arc<Transport>) -> Arc<EndpointPool> {
        let target = Uri::builder().scheme(endpoint.scheme.clone()).authority(address.to_string()).path_and_query("/").build();
        let target = target.unwrap_or_else(|_| Uri::from_static("http://invalid"));
        let host = HeaderValue::from_str(endpoint.authority.as_str()).ok();
        let server_name = (endpoint.scheme == http::uri::Scheme::HTTPS)
            .then(|| rustls::pki_types::ServerName::try_from(transport.server_name(&endpoint)).ok())
            .flatten();
        let h2 = (transport.protocol == Protocol::Http2).then(|| {
            let mut client = Client::builder(TokioExecutor::new());
            client
                .timer(TokioTimer::new())
                .pool_timer(TokioTimer::new())
                .pool_idle_timeout(H2_IDLE_TIMEOUT)
                .pool_max_idle_per_host(MAX_IDLE_PER_ENDPOINT)
                .http2_only(true);
            client.build(transport.h2_connector(&endpoint))
        });
        let idle = (0..shards()).map(|_| Mutex::new(VecDeque::new())).collect();
        Arc::new(EndpointPool { endpoint, address, target, h2, server_name, host, transport, idle })
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    pub fn transport(&self) -> &Arc<Transport> {
        &self.transport
    }

    /// Sends the request `head` (origin-form URI) with `body` to this
    /// endpoint. `head` stays the caller's: a request that did not reach
    /// the upstream can go again.
    ///
    /// A bodyless request that a reused connection lost before any response
    /// byte goes once more on a new connection (if it was written, only
    /// when its method is idempotent). A request that never left comes back
    /// as [`SendError::NotSent`], with its body where it was not consumed.
    /// `now` is the request's instant: idle connections are aged and
    /// stamped with it (no clock read of the pool's own).
    /// `replay`: the whole body, when the caller buffered it: a request
    /// lost before a byte of it was taken goes once more with it.
    pub async fn send(
        self: &Arc<Self>,
        head: &mut Parts,
        body: ProxyBody,
        replay: Option<&Bytes>,
        now: Instant,
    ) -> Result<Response<UpstreamBody>, SendError> {
        if let Some(h2) = &self.h2 {
            return self.send_h2(h2, head, body).await;
        }
        if !head.headers.contains_key(header::HOST) {
            if let Some(host) = &self.host {
                head.headers.insert(header::HOST, host.clone());
            }
        }
        let bodyless = body.is_end_stream();
        let conn = match self.checkout(now) {
            Some(conn) => conn,
            // Boxed: the connect future is large and rarely needed.
            None => match Box::pin(self.connect()).await {
                Ok(conn) => conn,
                Err(error) => return Err(SendError::NotSent { error: Box::new(error), body: Some(body) }),
            },
        };
        let reused = conn.is_reused();
        match conn.send(head, body, Recycler(self.clone(), now)).await {
            Ok(resp) => Ok(resp.map(UpstreamBody::H1)),
            Err(e) if reused && bodyless && again_on_fresh(&e, &head.method) => {
                tracing::debug!(endpoint = %self.endpoint, error = %e, "pooled connection closed under the request: sending it again on a new one");
                // Boxed: the rare path keeps its state out of every request's.
                Box::pin(self.fresh(head, crate::http::empty(), now)).await
            }
            Err(e) if reused && e.kind() == h1::ErrorKind::NotSent && replay.is_some() => {
                tracing::debug!(endpoint = %self.endpoint, error = %e, "pooled connection closed before the request: sending it and its buffered body on a new one");
                let body = crate::http::full(replay.cloned().unwrap_or_default());
                Box::pin(self.fresh(head, body, now)).await
            }
            Err(e) => Err(send_error(e, reused)),
        }
    }

    /// A request sent again on a new connection (never a pooled one).
    async fn fresh(self: &Arc<Self>, head: &Parts, body: ProxyBody, now: Instant) -> Result<Response<UpstreamBody>, SendError> {
        let conn = match self.connect().await {
            Ok(conn) => conn,
            Err(error) => return Err(SendError::NotSent { error: Box::new(error), body: None }),
        };
        match conn.send(head, body, Recycler(self.clone(), now)).await {
            Ok(mut resp) => {
                resp.extensions_mut().insert(SentAgain);
                Ok(resp.map(UpstreamBody::H1))
            }
            Err(e) => Err(send_error(e, false)),
        }
    }

    async fn send_h2(&self, h2: &H2Client, head: &Parts, body: ProxyBody) -> Result<Response<UpstreamBody>, SendError> {
        let mut req = Request::new(body);
        *req.method_mut() = head.method.clone();
        *req.headers_mut() = head.headers.clone();
        *req.uri_mut() = match self.absolute(&head.uri) {
            Ok(uri) => uri,
            Err(error) => return Err(SendError::NotSent { error, body: Some(req.into_body()) }),
        };
        match h2.request(req).await {
            Ok(resp) => Ok(resp.map(UpstreamBody::H2)),
            Err(e) if e.is_connect() => Err(SendError::NotSent { error: Box::new(e), body: None }),
            Err(e) => Err(SendError::Failed { error: Box::new(e), reused: false }),
        }
    }

    fn absolute(&self, uri: &Uri) -> Result<Uri, BoxError> {
        let path = uri.path_and_query().cloned().unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        let authority = self.target.authority().map_or_else(|| self.endpoint.authority.clone(), Clone::clone);
        Ok(Uri::builder().scheme(self.endpoint.scheme.clone()).authority(authority).path_and_query(path).build()?)
    }

    /// The warmest usable idle connection of this worker, if any.
    fn checkout(&self, now: Instant) -> Option<h1::Connection<Stream>> {
        loop {
            // (The guard is dropped at the end of this statement.)
            let mut idle = self.own().lock().pop_back()?;
            if idle.fresh(now) && idle.conn.is_usable() {
                return Some(idle.conn);
            }
        }
    }

    /// A new connection: TCP within the connect timeout, then TLS for
    /// `https` endpoints.
    async fn connect(&self) -> io::Result<h1::Connection<Stream>> {
        let timeout = self.transport.connect_timeout;
        let tcp = match tokio::time::timeout(timeout, TcpStream::connect(self.address)).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(io::Error::new(io::ErrorKind::TimedOut, format!("connect to {} timed out after {timeout:?}", self.address)))
            }
        };
        tcp.set_nodelay(true)?;
        // Best effort: a dead peer is noticed on an idle connection.
        let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE));
        if self.endpoint.scheme != http::uri::Scheme::HTTPS {
            return Ok(h1::Connection::new(Stream::Plain(tcp)));
        }
        let Some(name) = self.server_name.clone() else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a name TLS can check", self.transport.server_name(&self.endpoint)),
            ));
        };
        let tls = match tokio::time::timeout(timeout, self.transport.h1_tls.connect(name, tcp)).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("TLS handshake with {} timed out after {timeout:?}", self.address),
                ))
            }
        };
        Ok(h1::Connection::new(Stream::Tls(Box::new(tls))))
    }

    /// Keeps `conn` idle since `now` (the start of its last request: a
    /// little early, so it expires a little early, never late).
    fn put(&self, conn: h1::Connection<Stream>, now: Instant) {
        let ttl = match conn.keep_alive_timeout() {
            Some(said) => {
                let margin = if said >= Duration::from_secs(2) { Duration::from_secs(1) } else { said / 2 };
                self.transport.idle_timeout.min(said.saturating_sub(margin))
            }
            None => self.transport.idle_timeout,
        };
        if ttl.is_zero() {
            return;
        }
        let mut idle = self.own().lock();
        // The oldest are at the front: drop what expired while we are here.
        while idle.front().is_some_and(|i| !i.fresh(now)) {
            idle.pop_front();
        }
        if idle.len() < MAX_IDLE_PER_ENDPOINT {
            idle.push_back(Idle { conn, since: now, ttl });
        }
    }

    /// Closes connections idle past their time (and dead ones). The
    /// app's ticker calls it every [`REAP_EVERY`] for every endpoint of the
    /// current generation; idle connections are also expired on use.
    pub fn reap(&self, now: Instant) {
        for shard in &self.idle {
            let expired: Vec<Idle> = {
                let mut idle = shard.lock();
                let mut expired = Vec::new();
                for mut i in std::mem::take(&mut *idle) {
                    if i.fresh(now) && i.conn.is_usable() {
                        idle.push_back(i);
                    } else {
                        expired.push(i);
                    }
                }
                expired
            };
            // Dropped (closed) outside the lock.
            drop(expired);
        }
    }

    /// This worker's idle list.
    fn own(&self) -> &Mutex<VecDeque<Idle>> {
        &self.idle[worker() % self.idle.len()]
    }
}

/// Whether a reused connection's failure may be answered by sending the
/// bodyless request once more on a new connection: it never left, or it
/// left, got no response byte before the close, and is idempotent.
fn again_on_fresh(e: &h1::Error, method: &Method) -> bool {
    match e.kind() {
        h1::ErrorKind::NotSent => true,
        h1::ErrorKind::ClosedIdle => matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE),
        _ => false,
    }
}

fn send_error(e: h1::Error, reused: bool) -> SendError {
    match e.kind() {
        h1::ErrorKind::NotSent => SendError::NotSent { error: Box::new(e), body: None },
        _ => SendError::Failed { error: Box::new(e), reused },
    }
}

/// Idle lists per pool: one per core (at most 64), whatever the number of
/// workers, so a pool needs no word of how many there are.
fn shards() -> usize {
    static SHARDS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *SHARDS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(64)))
}

thread_local! {
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Marks the calling thread as data-path worker `index` (`app` does, for
/// each worker thread it starts); other threads count as worker 0.
pub fn set_worker(index: usize) {
    WORKER.with(|w| w.set(index));
}

/// The data-path worker the calling thread is.
pub fn worker() -> usize {
    WORKER.with(std::cell::Cell::get)
}

// === impl Recycler ===

impl h1::Recycle<Stream> for Recycler {
    fn recycle(self, conn: h1::Connection<Stream>) {
        self.0.put(conn, self.1);
    }
}

// === impl UpstreamBody ===

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamBody::H1(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            UpstreamBody::H2(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::H1(b) => b.is_end_stream(),
            UpstreamBody::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::H1(b) => b.size_hint(),
            UpstreamBody::H2(b) => b.size_hint(),
        }
    }
}

// === impl Stream ===

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
