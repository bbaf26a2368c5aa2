//! Connections to one upstream's endpoints.
//!
//! HTTP/1.1 upstreams get a pool of keep-alive connections per endpoint
//! ([`EndpointPool`]), each connection driven by hyper's
//! `client::conn::http1`. A request takes the most recently used idle
//! connection (warm, and lets the rest expire), and its [`Lease`] rides along
//! with the response body: the connection goes back to the pool only when
//! the body has ended, so a connection with unread bytes is never reused.
//! A request that a reused connection closed before sending it is retried
//! once on a fresh connection (the upstream's keep-alive timeout raced us).
//! HTTP/2 upstreams share one multiplexed connection through hyper-util's
//! client.
//!
//! Owns: connecting (TCP, connect timeout, TLS, SNI), idle reuse, idle
//! expiry (on use, and swept by [`EndpointPool::reap`], which the app's
//! ticker calls: no task per pool) and the one retry. Must not: classify
//! results or touch circuits (`proxy::forward` does), spawn anything when
//! built, or hold a lock across an await; each endpoint's idle list has its
//! own lock, held for a push or a pop.

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use http::header::{self, HeaderValue};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tower_service::Service;

use crate::clock;
use crate::config::{Endpoint, Protocol, UpstreamConfig};
use crate::http::{BoxError, ProxyBody};
use crate::tls;

/// hyper-util's pooled client, used for HTTP/2 upstreams.
pub type H2Client = Client<HttpsConnector<HttpConnector>, ProxyBody>;

/// How long a connection may sit idle in a pool before it is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often idle connections are swept ([`EndpointPool::reap`]).
pub const REAP_EVERY: Duration = Duration::from_secs(15);
/// Most idle connections kept per endpoint; more are closed when returned.
pub const MAX_IDLE_PER_ENDPOINT: usize = 1024;

/// One upstream's way of connecting: its protocol, connect timeout and TLS.
/// Shared by its endpoints' pools, and carried across reloads while those
/// settings stay the same.
pub struct Transport {
    http: HttpConnector,
    tls: rustls::ClientConfig,
    /// `tls.serverName`, when set: the name every endpoint is checked against.
    server_name: Option<String>,
    protocol: Protocol,
}

/// The keep-alive connections to one endpoint.
pub struct EndpointPool {
    endpoint: Endpoint,
    /// `scheme://address`, what the connector dials.
    target: Uri,
    /// TCP, then TLS for `https` endpoints with the endpoint's name as SNI.
    connector: HttpsConnector<HttpConnector>,
    /// The HTTP/2 client, for `protocol: http2` upstreams.
    h2: Option<H2Client>,
    /// For requests that came without a `Host` (HTTP/1.0 clients).
    host: Option<HeaderValue>,
    transport: Arc<Transport>,
    /// Oldest at the front, most recently used at the back.
    /// One idle list per worker thread ([`worker`]): a worker takes and
    /// returns its own connections, so no list is shared between threads
    /// on the request path (and a hyper connection is never woken from
    /// another worker's thread).
    idle: Box<[Mutex<VecDeque<Idle>>]>,
}

struct Idle {
    sender: http1::SendRequest<ProxyBody>,
    since: Instant,
}

/// Why a request got no response head.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// It never left fusebox (connect failed, or the connection closed
    /// before it was written): `request` comes back, where it can.
    #[error("request not sent: {error}")]
    NotSent { error: BoxError, request: Option<Box<Request<ProxyBody>>> },
    /// It was written, at least in part, and the exchange failed before a
    /// complete response head. `reused`: on a pooled keep-alive connection.
    #[error("exchange failed: {error}")]
    Failed { error: BoxError, reused: bool },
}

/// A pooled connection in use by one exchange. [`Lease::release`] returns it
/// once the response body has ended; dropping it instead closes it.
pub struct Lease {
    sender: http1::SendRequest<ProxyBody>,
    pool: Arc<EndpointPool>,
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
        http.set_keepalive(Some(Duration::from_secs(60)));
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
        Transport { http, tls, server_name: config.tls.server_name.clone(), protocol: config.protocol }
    }

    /// The connector for one endpoint: it dials the address it is given
    /// and checks the server's certificate against `tls.serverName` or the
    /// endpoint's own host name.
    fn connector(&self, endpoint: &Endpoint) -> HttpsConnector<HttpConnector> {
        let name =
            self.server_name.clone().unwrap_or_else(|| endpoint.authority.host().trim_start_matches('[').trim_end_matches(']').to_string());
        let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(self.tls.clone()).https_or_http();
        let builder = match rustls::pki_types::ServerName::try_from(name) {
            Ok(sni) => builder.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(sni)),
            Err(_) => builder,
        };
        match self.protocol {
            Protocol::Http1 => builder.enable_http1().wrap_connector(self.http.clone()),
            Protocol::Http2 => builder.enable_http2().wrap_connector(self.http.clone()),
        }
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
        let connector = transport.connector(&endpoint);
        let h2 = (transport.protocol == Protocol::Http2).then(|| {
            let mut client = Client::builder(TokioExecutor::new());
            client
                .timer(TokioTimer::new())
                .pool_timer(TokioTimer::new())
                .pool_idle_timeout(IDLE_TIMEOUT)
                .pool_max_idle_per_host(MAX_IDLE_PER_ENDPOINT)
                .http2_only(true);
            client.build(connector.clone())
        });
        let idle = (0..shards()).map(|_| Mutex::new(VecDeque::new())).collect();
        Arc::new(EndpointPool { endpoint, target, connector, h2, host, transport, idle })
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    pub fn transport(&self) -> &Arc<Transport> {
        &self.transport
    }

    /// Sends `req` (origin-form URI) to this endpoint. HTTP/1.1 exchanges
    /// return the connection's [`Lease`]; HTTP/2 ones need none.
    ///
    /// A reused connection that turns out closed before the request was
    /// written is replaced by a new one, once. A request that never left
    /// comes back in [`SendError::NotSent`], so it can be tried elsewhere.
    pub async fn send(self: &Arc<Self>, mut req: Request<ProxyBody>) -> Result<(Response<Incoming>, Option<Lease>), SendError> {
        if let Some(h2) = &self.h2 {
            match self.absolute(req.uri()) {
                Ok(uri) => *req.uri_mut() = uri,
                Err(error) => return Err(SendError::NotSent { error, request: Some(Box::new(req)) }),
            }
            return match h2.request(req).await {
                Ok(resp) => Ok((resp, None)),
                Err(e) if e.is_connect() => Err(SendError::NotSent { error: Box::new(e), request: None }),
                Err(e) => Err(SendError::Failed { error: Box::new(e), reused: false }),
            };
        }
        if !req.headers().contains_key(header::HOST) {
            if let Some(host) = &self.host {
                req.headers_mut().insert(header::HOST, host.clone());
            }
        }
        let (sender, reused) = match self.checkout().await {
            Ok(found) => found,
            Err(error) => return Err(SendError::NotSent { error, request: Some(Box::new(req)) }),
        };
        match self.exchange(sender, req, reused).await {
            Err(SendError::NotSent { error, request: Some(req) }) if reused => {
                tracing::debug!(endpoint = %self.endpoint, error = %error, "pooled connection closed before the request was sent: retrying on a new one");
                // Boxed: the rare path keeps its state out of every request's.
                Box::pin(self.fresh(*req)).await
            }
            other => other,
        }
    }

    /// One request on one connection.
    async fn exchange(
        self: &Arc<Self>,
        mut sender: http1::SendRequest<ProxyBody>,
        req: Request<ProxyBody>,
        reused: bool,
    ) -> Result<(Response<Incoming>, Option<Lease>), SendError> {
        match sender.try_send_request(req).await {
            Ok(resp) => Ok((resp, Some(Lease { sender, pool: self.clone() }))),
            Err(mut e) => match e.take_message() {
                Some(req) => Err(SendError::NotSent { error: Box::new(e.into_error()), request: Some(Box::new(req)) }),
                None => Err(SendError::Failed { error: Box::new(e.into_error()), reused }),
            },
        }
    }

    /// Opens a new connection to this endpoint (it is not pooled until its
    /// first exchange ends).
    pub async fn fresh(self: &Arc<Self>, req: Request<ProxyBody>) -> Result<(Response<Incoming>, Option<Lease>), SendError> {
        if self.h2.is_some() {
            return Box::pin(self.send(req)).await;
        }
        match Box::pin(self.connect()).await {
            Ok(sender) => self.exchange(sender, req, false).await,
            Err(error) => Err(SendError::NotSent { error, request: Some(Box::new(req)) }),
        }
    }

    fn absolute(&self, uri: &Uri) -> Result<Uri, BoxError> {
        let path = uri.path_and_query().cloned().unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        let authority = self.target.authority().map_or_else(|| self.endpoint.authority.clone(), Clone::clone);
        Ok(Uri::builder().scheme(self.endpoint.scheme.clone()).authority(authority).path_and_query(path).build()?)
    }

    /// The warmest usable idle connection, or a new one. The flag says
    /// whether it was reused.
    async fn checkout(&self) -> Result<(http1::SendRequest<ProxyBody>, bool), BoxError> {
        let now = clock::now();
        // Alive but not ready: still sending a request body the upstream
        // answered early. Never waited for (that could take as long as the
        // client's upload); kept for later, oldest first.
        let mut busy = Vec::new();
        let mut found = None;
        loop {
            // (The lock guard must not live across the await below.)
            let Some(mut idle) = self.own().lock().pop_back() else { break };
            if idle.sender.is_closed() || now.saturating_duration_since(idle.since) >= IDLE_TIMEOUT {
                continue;
            }
            let ready = idle.sender.is_ready() || std::future::poll_fn(|cx| Poll::Ready(idle.sender.poll_ready(cx))).await.is_ready();
            if ready {
                found = Some(idle.sender);
                break;
            }
            if !idle.sender.is_closed() {
                busy.push(idle);
            }
        }
        if !busy.is_empty() {
            let mut pool = self.own().lock();
            for idle in busy.into_iter().rev() {
                if pool.len() < MAX_IDLE_PER_ENDPOINT {
                    pool.push_front(idle);
                }
            }
        }
        match found {
            Some(sender) => Ok((sender, true)),
            // Boxed: the connect future is large and rarely needed, and the
            // exchange future is moved into a timeout on every request.
            None => Ok((Box::pin(self.connect()).await?, false)),
        }
    }

    async fn connect(&self) -> Result<http1::SendRequest<ProxyBody>, BoxError> {
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx)).await?;
        let io = connector.call(self.target.clone()).await?;
        let (sender, conn) = http1::Builder::new().handshake(io).await?;
        let endpoint = self.endpoint.to_string();
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(%endpoint, error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    fn put(&self, sender: http1::SendRequest<ProxyBody>) {
        if sender.is_closed() {
            return;
        }
        let now = clock::now();
        let mut idle = self.own().lock();
        // The oldest are at the front: drop what expired while we are here.
        while idle.front().is_some_and(|i| now.saturating_duration_since(i.since) >= IDLE_TIMEOUT) {
            idle.pop_front();
        }
        if idle.len() < MAX_IDLE_PER_ENDPOINT {
            idle.push_back(Idle { sender, since: now });
        }
    }

    /// Closes connections idle past [`IDLE_TIMEOUT`] (and dead ones). The
    /// app's ticker calls it every [`REAP_EVERY`] for every endpoint of the
    /// current generation; idle connections are also expired on use.
    pub fn reap(&self, now: Instant) {
        for shard in &self.idle {
            let expired: VecDeque<Idle> = {
                let mut idle = shard.lock();
                let (keep, expired) =
                    idle.drain(..).partition(|i| !i.sender.is_closed() && now.saturating_duration_since(i.since) < IDLE_TIMEOUT);
                *idle = keep;
                expired
            };
            // Dropped outside the lock.
            drop(expired);
        }
    }

    /// This worker's idle list.
    fn own(&self) -> &Mutex<VecDeque<Idle>> {
        &self.idle[worker() % self.idle.len()]
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

// === impl Lease ===

impl Lease {
    /// The exchange is complete (its response body ended): the connection
    /// may serve the next request.
    pub fn release(self) {
        self.pool.put(self.sender);
    }
}
