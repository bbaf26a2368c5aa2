//! The request handler: route, admit, forward, classify/record, respond.
//! Bodies stream in both directions; nothing is buffered whole.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::clock;
use crate::config::{Endpoint, Protocol};

use super::respond;
use super::route::request_host;
use super::upstream::{BoxError, CallGuard, EndpointSlot, ProxyBody, Upstream};
use super::Generation;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Headers that describe one hop, never forwarded (RFC 9110 7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// What every request handler shares.
pub struct DataPlane {
    pub store: Arc<ArcSwap<Generation>>,
    /// `http` or `https`, for `x-forwarded-proto`.
    pub scheme: &'static str,
}

/// Entry point for one request on the data listener.
/// The client's IP as a header value, made once per connection.
#[derive(Clone)]
pub struct PeerIp(HeaderValue);

impl PeerIp {
    pub fn new(peer: SocketAddr) -> PeerIp {
        PeerIp(HeaderValue::from_str(&peer.ip().to_string()).unwrap_or_else(|_| HeaderValue::from_static("unknown")))
    }
}

pub async fn handle(req: Request<Incoming>, plane: Arc<DataPlane>, peer: PeerIp) -> Result<Response<ProxyBody>, Infallible> {
    let generation = plane.store.load_full();
    let request_id = request_id(req.headers());
    let log = tracing::enabled!(tracing::Level::DEBUG).then(|| (clock::now(), req.method().clone(), req.uri().path().to_owned()));
    let (upstream, mut resp) = match route(&generation, &req) {
        None => (None, respond::no_route(request_host(&req), req.uri().path())),
        Some(up) => {
            let resp = proxy(up.clone(), req, peer, &request_id, plane.scheme).await;
            (Some(up), resp)
        }
    };
    if let Some((started, method, path)) = log {
        let name = upstream.as_ref().map_or("-", |u| u.config.name.as_str());
        let ms = clock::now().saturating_duration_since(started).as_secs_f64() * 1e3;
        tracing::debug!(request_id = ?request_id, %method, %path, upstream = name, status = resp.status().as_u16(), ms, "request");
    }
    resp.headers_mut().entry(REQUEST_ID).or_insert(request_id);
    Ok(resp)
}

/// Phase 1: the first matching route.
fn route(generation: &Generation, req: &Request<Incoming>) -> Option<Arc<Upstream>> {
    generation.router.route(request_host(req), req.uri().path()).cloned()
}

/// Phases 2-5 for a routed request.
async fn proxy(
    up: Arc<Upstream>,
    mut req: Request<Incoming>,
    peer: PeerIp,
    request_id: &HeaderValue,
    scheme: &'static str,
) -> Response<ProxyBody> {
    // Phase 2: admit.
    let refused_status = up.config.fallback.as_ref().map_or(503, |f| f.status.as_u16());
    let mut guard = match up.circuit.admit(up.config.max_concurrent_requests, refused_status, clock::now()) {
        Ok(g) => g,
        Err(refusal) => return respond::refused(&up, &refusal),
    };
    // Phase 3: forward.
    let slot = up.pick();
    let upgrade = is_upgrade(&req);
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let out = match rewrite(req, slot.endpoint(), up.config.protocol, peer, request_id, scheme, upgrade) {
        Ok(out) => out,
        Err(resp) => return resp,
    };
    let sent = tokio::time::timeout(up.config.timeouts.request, up.client.request(out)).await;
    // Phase 4: classify and record.
    let now = clock::now();
    let mut resp = match sent {
        Err(_) => {
            guard.finish(None, true, now);
            return respond::gateway_timeout(&up.config.name);
        }
        Ok(Err(e)) => {
            guard.finish(None, false, now);
            let detail = describe(&e);
            tracing::debug!(upstream = %up.config.name, endpoint = %slot.endpoint(), error = %detail, "upstream call failed");
            return respond::bad_gateway(&up.config.name, &detail);
        }
        Ok(Ok(resp)) => resp,
    };
    guard.finish(Some(resp.status().as_u16()), false, now);
    // Phase 5: respond.
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_upgrade) = client_upgrade {
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            tokio::spawn(splice(client_upgrade, upstream_upgrade, guard, slot));
            let (parts, _) = resp.into_parts();
            return Response::from_parts(parts, respond::full(Bytes::new()));
        }
    }
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    let body = TrackedBody { inner: body, guard: Some(guard), _slot: slot };
    Response::from_parts(parts, body.boxed_unsync())
}

/// Builds the upstream request: endpoint URI, hop-by-hop headers removed,
/// `x-forwarded-*` and `x-request-id` set.
fn rewrite(
    req: Request<Incoming>,
    endpoint: &Endpoint,
    protocol: Protocol,
    peer: PeerIp,
    request_id: &HeaderValue,
    scheme: &'static str,
    upgrade: bool,
) -> Result<Request<ProxyBody>, Response<ProxyBody>> {
    let (mut parts, body) = req.into_parts();
    let path_and_query = parts.uri.path_and_query().cloned().unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    // The client's host: the URI authority (HTTP/2) or the Host header.
    let original_host = match parts.uri.authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => parts.headers.get(header::HOST).cloned(),
    };
    parts.uri = Uri::builder()
        .scheme(endpoint.scheme.clone())
        .authority(endpoint.authority.clone())
        .path_and_query(path_and_query)
        .build()
        .map_err(|_| bad_request("cannot build the upstream URI"))?;
    strip_hop_by_hop(&mut parts.headers, upgrade);
    let h = &mut parts.headers;
    if let Some(host) = original_host {
        if !h.contains_key(header::HOST) {
            h.insert(header::HOST, host.clone());
        }
        h.insert(X_FORWARDED_HOST, host);
    }
    // One comma-joined line: some upstreams read only the first
    // x-forwarded-for line, and the rightmost hop must be ours.
    let mut prev = h.get_all(X_FORWARDED_FOR).iter().peekable();
    let xff = if prev.peek().is_none() {
        Some(peer.0)
    } else {
        let mut joined = Vec::with_capacity(64);
        for v in prev {
            joined.extend_from_slice(v.as_bytes());
            joined.extend_from_slice(b", ");
        }
        joined.extend_from_slice(peer.0.as_bytes());
        HeaderValue::from_bytes(&joined).ok()
    };
    if let Some(v) = xff {
        h.insert(X_FORWARDED_FOR, v);
    }
    h.insert(X_FORWARDED_PROTO, HeaderValue::from_static(scheme));
    h.insert(REQUEST_ID, request_id.clone());
    parts.version = match protocol {
        Protocol::Http1 => Version::HTTP_11,
        Protocol::Http2 => Version::HTTP_2,
    };
    if protocol == Protocol::Http2 {
        parts.headers.remove(header::HOST);
    }
    let body = body.map_err(BoxError::from).boxed_unsync();
    Ok(Request::from_parts(parts, body))
}

fn bad_request(message: &str) -> Response<ProxyBody> {
    respond::json_response(StatusCode::BAD_REQUEST, &serde_json::json!({ "error": { "code": "bad_request", "message": message } }))
}

/// Removes hop-by-hop headers, including those named by `Connection`.
/// An upgrade keeps `Connection: upgrade` and `Upgrade`.
fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|n| !(upgrade && n == header::UPGRADE))
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")))
}

/// Keeps the client's `x-request-id` if it is sane, else makes one.
fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(REQUEST_ID) {
        if !v.is_empty() && v.len() <= 128 {
            return v.clone();
        }
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut n = rand::random::<u128>();
    let mut id = [0u8; 32];
    for b in id.iter_mut().rev() {
        *b = HEX[(n & 0xf) as usize];
        n >>= 4;
    }
    HeaderValue::from_bytes(&id).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

fn describe(e: &hyper_util::client::legacy::Error) -> String {
    use std::error::Error as _;
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// Copies bytes both ways between an upgraded client and upstream.
async fn splice(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade, guard: CallGuard, slot: EndpointSlot) {
    let _hold = (guard, slot);
    match tokio::try_join!(client, upstream) {
        Ok((c, u)) => {
            let mut c = TokioIo::new(c);
            let mut u = TokioIo::new(u);
            if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut u).await {
                tracing::debug!(error = %e, "upgraded connection ended");
            }
        }
        Err(e) => tracing::debug!(error = %e, "upgrade failed"),
    }
}

pin_project_lite::pin_project! {
    /// The upstream's response body on its way to the client. Holds the
    /// call's bulkhead slot and endpoint slot until the body ends; a body
    /// that breaks mid-way is recorded as a failure of the upstream.
    struct TrackedBody {
        #[pin]
        inner: Incoming,
        guard: Option<CallGuard>,
        _slot: EndpointSlot,
    }
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Err(e))) => {
                if let Some(g) = this.guard.take() {
                    g.circuit().with(|b| b.on_late_failure(clock::now()));
                }
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Ready(None) => {
                this.guard.take();
                Poll::Ready(None)
            }
            other => other.map_err(|e| Box::new(e) as BoxError),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
