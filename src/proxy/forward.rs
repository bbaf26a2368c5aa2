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
use crate::config::Protocol;

use super::client::Lease;
use super::respond;
use super::route::request_host;
use super::upstream::{BoxError, CallGuard, EndpointSlot, ProxyBody, Upstream};
use super::Generation;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Headers that describe one hop, never forwarded (RFC 9110 7.6.1).
static HOP_BY_HOP: [HeaderName; 8] = [
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
    let out = rewrite(req, up.config.protocol, peer, request_id, scheme, upgrade);
    let sent = tokio::time::timeout(up.config.timeouts.request, slot.pool().send(out)).await;
    // Phase 4: classify and record.
    let now = clock::now();
    let (mut resp, lease) = match sent {
        Err(_) => {
            guard.finish(None, true, now);
            return respond::gateway_timeout(&up.config.name);
        }
        Ok(Err(e)) => {
            guard.finish(None, false, now);
            let detail = describe(&*e);
            tracing::debug!(upstream = %up.config.name, endpoint = %slot.endpoint(), error = %detail, "upstream call failed");
            return respond::bad_gateway(&up.config.name, &detail);
        }
        Ok(Ok(sent)) => sent,
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
    let body = TrackedBody { inner: body, guard: Some(guard), lease, _slot: slot };
    Response::from_parts(parts, body.boxed_unsync())
}

/// Builds the upstream request: endpoint URI, hop-by-hop headers removed,
/// `x-forwarded-*` and `x-request-id` set.
fn rewrite(
    req: Request<Incoming>,
    protocol: Protocol,
    peer: PeerIp,
    request_id: &HeaderValue,
    scheme: &'static str,
    upgrade: bool,
) -> Request<ProxyBody> {
    let (mut parts, body) = req.into_parts();
    let path_and_query = parts.uri.path_and_query().cloned().unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    // The client's host: the URI authority (HTTP/2) or the Host header.
    let original_host = match parts.uri.authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => parts.headers.get(header::HOST).cloned(),
    };
    // Origin form; the endpoint's pool dials the endpoint.
    parts.uri = Uri::from(path_and_query);
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
    Request::from_parts(parts, body)
}

/// Removes hop-by-hop headers, including those named by `Connection`.
/// An upgrade keeps `Connection: upgrade` and `Upgrade`.
///
/// One pass over the names finds which are present (usually none, or just
/// `Connection`), so only those are looked up and removed.
fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = hop_by_hop_index(name) {
            present |= 1 << i;
        }
    }
    if present & 1 != 0 && connection_names_more(headers, upgrade) {
        let named: Vec<HeaderName> = connection_tokens(headers)
            .filter(|t| !is_plain_connection_token(t, upgrade))
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else if present & (1 << HOP_BY_HOP.len()) != 0 {
        headers.remove(header::UPGRADE);
    }
}

/// The comma-separated tokens of every `Connection` line.
fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers.get_all(header::CONNECTION).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).map(str::trim)
}

/// A `Connection` token that names no other header to drop: `keep-alive`
/// and `close` (the usual ones), or `upgrade` on an upgrade.
fn is_plain_connection_token(token: &str, upgrade: bool) -> bool {
    token.is_empty()
        || token.eq_ignore_ascii_case("keep-alive")
        || token.eq_ignore_ascii_case("close")
        || (upgrade && token.eq_ignore_ascii_case("upgrade"))
}

/// Whether `Connection` names headers beyond the plain tokens (rare: the
/// common `keep-alive` and `close` cost no allocation).
fn connection_names_more(headers: &HeaderMap, upgrade: bool) -> bool {
    connection_tokens(headers).any(|t| !is_plain_connection_token(t, upgrade))
}

/// The index of `name` in [`HOP_BY_HOP`], or its length for `upgrade`.
/// Names are lowercase; a match on the string is a length switch and one
/// compare, cheaper than comparing with each `HeaderName`.
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    Some(match name.as_str() {
        "connection" => 0,
        "keep-alive" => 1,
        "proxy-connection" => 2,
        "proxy-authenticate" => 3,
        "proxy-authorization" => 4,
        "te" => 5,
        "trailer" => 6,
        "transfer-encoding" => 7,
        "upgrade" => HOP_BY_HOP.len(),
        _ => return None,
    })
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

/// Keeps the client's `x-request-id` if it is sane, else makes one: 128
/// random bits in hex, from a per-thread generator seeded by the OS (ids
/// must not repeat, they need not be secret).
fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(REQUEST_ID) {
        if !v.is_empty() && v.len() <= 128 {
            return v.clone();
        }
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = [0u8; 32];
    for half in id.chunks_exact_mut(16) {
        let n = next_random();
        for (i, b) in half.iter_mut().enumerate() {
            *b = HEX[((n >> (60 - 4 * i)) & 0xf) as usize];
        }
    }
    HeaderValue::from_bytes(&id).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// wyrand: a fast 64-bit generator, one state per thread.
fn next_random() -> u64 {
    thread_local! {
        static STATE: std::cell::Cell<u64> = std::cell::Cell::new(rand::random());
    }
    STATE.with(|s| {
        let x = s.get().wrapping_add(0xa076_1d64_78bd_642f);
        s.set(x);
        let t = u128::from(x) * u128::from(x ^ 0xe703_7ed1_a0b4_28db);
        (t as u64) ^ ((t >> 64) as u64)
    })
}

fn describe(e: &(dyn std::error::Error + 'static)) -> String {
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

/// The upstream's response body on its way to the client. Holds the call's
/// bulkhead slot and endpoint slot until the body ends; a body that breaks
/// mid-way is recorded as a failure of the upstream. The connection goes
/// back to its pool only when the body has ended.
struct TrackedBody {
    inner: Incoming,
    guard: Option<CallGuard>,
    lease: Option<Lease>,
    _slot: EndpointSlot,
}

impl TrackedBody {
    fn ended(&mut self) {
        self.guard.take();
        if let Some(lease) = self.lease.take() {
            lease.release();
        }
    }
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Err(e))) => {
                this.lease.take();
                if let Some(g) = this.guard.take() {
                    g.circuit().with(|b| b.on_late_failure(clock::now()));
                }
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Ready(None) => {
                this.ended();
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

impl Drop for TrackedBody {
    fn drop(&mut self) {
        // An empty body (204, HEAD, `content-length: 0`) is never polled.
        if self.lease.is_some() && self.inner.is_end_stream() {
            self.ended();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_index_agrees_with_the_table() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name), Some(i), "{name}");
        }
        assert_eq!(hop_by_hop_index(&header::UPGRADE), Some(HOP_BY_HOP.len()));
        assert_eq!(hop_by_hop_index(&header::HOST), None);
        assert_eq!(hop_by_hop_index(&HeaderName::from_static("x-te")), None);
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, X-Custom-Hop, close"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-custom-hop", HeaderValue::from_static("1"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        strip_hop_by_hop(&mut h, false);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["content-type"]);

        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get(header::CONNECTION).map(HeaderValue::as_bytes), Some(&b"upgrade"[..]));
        assert_eq!(h.get(header::UPGRADE).map(HeaderValue::as_bytes), Some(&b"websocket"[..]));
    }
}
