//! The admin listener (never the data port). Endpoints:
//!
//! - `GET /livez` — the process is up.
//! - `GET /readyz` — config loaded and listeners bound; 503 while draining.
//! - `GET /health` — overall status, cheap.
//! - `GET /health/detailed` — every upstream, config generation, last reload.
//! - `GET /health/circuit-breakers` — every circuit's state and counters.
//! - `GET /metrics` — Prometheus text format.
//! - `GET /api/v2/ws/circuit-breaker` — the state WebSocket (`ws`);
//!   `GET /health/websocket` its clients, messages and drops.
//! - `GET /dashboard` — the live dashboard page (`dashboard`).
//! - `/api/admin/...` — the admin API (`api`), JWT-protected mutations;
//!   `GET /api/admin/config` the effective config (`config_view`).
//!
//! Every request first passes the DNS rebinding check (its `Host` must be
//! one the listener answers for, else 421), then, for a mutation or the
//! WebSocket handshake, the CSRF check on `Origin` (else 403): both compare
//! with the listener's own address and the config, never with what the
//! request says about itself.
//!
//! This module owns request routing on that listener and the state only
//! the control plane uses ([`AdminState`]: token checker, mutation rate
//! limit, audit log, WebSocket sessions) on top of the runtime's
//! [`Live`]; it must not forward traffic to upstreams or change breaker
//! state except through `Circuit`.

pub mod api;
pub mod auth;
pub mod config_view;
pub mod dashboard;
pub mod health;
pub mod token;
pub mod view;
pub mod ws;

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::config::AdminConfig;
use crate::http::{error_response, ProxyBody};
use crate::runtime::Live;
use auth::{Authorizer, RateLimiter};

/// Admin mutations allowed per caller per minute.
const MUTATIONS_PER_MINUTE: u32 = 10;

/// The control plane's state, on top of the runtime's [`Live`].
pub struct AdminState {
    pub live: Arc<Live>,
    /// The admin listener's bound address (its port is the one allowed
    /// origins must name).
    pub listen: SocketAddr,
    /// The token checker of the current generation's `auth:`, by
    /// generation number.
    auth: Mutex<Option<(u64, Arc<Authorizer>)>>,
    /// Rate limit of admin mutations per caller.
    pub mutations: RateLimiter,
    /// The last admin mutations (bounded), newest last.
    pub audit: Mutex<VecDeque<serde_json::Value>>,
    /// State WebSocket sessions: closed with 1001 at shutdown.
    pub ws: ws::Hub,
    /// This sidecar's fleet, when `fleet:` is set (set once at start).
    pub fleet: std::sync::OnceLock<Arc<crate::fleet::Fleet>>,
}

// === impl AdminState ===

impl AdminState {
    pub fn new(live: Arc<Live>, listen: SocketAddr) -> AdminState {
        AdminState {
            live,
            listen,
            auth: Mutex::new(None),
            mutations: RateLimiter::new(MUTATIONS_PER_MINUTE, Duration::from_secs(60)),
            audit: Mutex::new(VecDeque::with_capacity(64)),
            ws: ws::Hub::new(),
            fleet: std::sync::OnceLock::new(),
        }
    }

    /// The authorizer for the running config (rebuilt after a reload that
    /// changed it). An unusable key falls back to refusing every token.
    pub fn authorizer(&self) -> Arc<Authorizer> {
        let generation = self.live.store.current();
        let mut cache = self.auth.lock();
        if let Some((n, a)) = cache.as_ref() {
            if *n == generation.number {
                return a.clone();
            }
        }
        let authorizer = match Authorizer::new(&generation.config.auth) {
            Ok(a) => Arc::new(a),
            Err(e) => {
                tracing::error!("auth config unusable, refusing all tokens: {e}");
                Arc::new(Authorizer::deny_all())
            }
        };
        *cache = Some((generation.number, authorizer.clone()));
        authorizer
    }
}

/// Routes one admin request.
pub async fn handle(req: Request<Incoming>, state: Arc<AdminState>) -> Result<Response<ProxyBody>, Infallible> {
    if let Err(resp) = known_host(&req, &state) {
        return Ok(resp);
    }
    let mutation = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let websocket = req.method() == Method::GET && req.uri().path() == ws::PATH;
    if mutation || websocket {
        if let Err(resp) = same_origin(&req, &state) {
            return Ok(resp);
        }
    }
    if mutation && req.uri().path().starts_with("/api/admin/") && has_body(&req) && !is_json(&req) {
        return Ok(error_response(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "admin mutations take a JSON body: send content-type: application/json",
        ));
    }
    if req.uri().path().starts_with("/api/admin/") {
        if let Some(resp) = api::handle(req, &state).await {
            return Ok(resp);
        }
        return Ok(error_response(StatusCode::NOT_FOUND, "not_found", "no such admin endpoint"));
    }
    if req.method() == Method::GET && req.uri().path() == ws::PATH {
        return Ok(ws::upgrade(req, state));
    }
    let path = req.uri().path().trim_end_matches('/');
    let path = if path.is_empty() { "/" } else { path };
    let Some(page) = PAGES.iter().find(|p| p.path == path) else {
        return Ok(error_response(StatusCode::NOT_FOUND, "not_found", "no such admin endpoint"));
    };
    // With `requireForReads`, detailed health and metrics need a token too
    // (Prometheus sends one with `authorization: { credentials: ... }`);
    // probes and the cheap `/health` stay open for kubelets and balancers.
    if page.guarded {
        let auth = state.authorizer();
        if auth.reads_need_token() {
            if let Err(e) = auth.verify(auth::bearer(req.headers())) {
                return Ok(error_response(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string()));
            }
        }
    }
    let head = req.method() == Method::HEAD && page.allow.contains("HEAD");
    if req.method() != Method::GET && !head {
        let mut resp =
            error_response(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", format!("this endpoint only answers {}", page.allow));
        resp.headers_mut().insert(http::header::ALLOW, http::HeaderValue::from_static(page.allow));
        return Ok(resp);
    }
    let resp = match page.page {
        Page::Livez => health::livez(),
        Page::Readyz => health::readyz(&state),
        Page::Health => health::summary(&state),
        Page::Detailed => health::detailed(&state),
        Page::CircuitBreakers => health::circuit_breakers(&state),
        Page::Metrics => health::metrics(&state),
        Page::WebSocket => ws::health(&state),
        Page::Dashboard => dashboard::page(),
    };
    Ok(resp)
}

/// The admin listener's pages outside `/api/admin/` and the WebSocket,
/// each written once: path, the methods it answers (the `Allow` of a 405),
/// and whether `auth.jwt.requireForReads` guards it.
struct PageRoute {
    path: &'static str,
    page: Page,
    allow: &'static str,
    guarded: bool,
}

#[derive(Clone, Copy)]
enum Page {
    Livez,
    Readyz,
    Health,
    Detailed,
    CircuitBreakers,
    Metrics,
    WebSocket,
    Dashboard,
}

const PAGES: &[PageRoute] = &[
    PageRoute { path: "/livez", page: Page::Livez, allow: "GET, HEAD", guarded: false },
    PageRoute { path: "/readyz", page: Page::Readyz, allow: "GET, HEAD", guarded: false },
    PageRoute { path: "/health", page: Page::Health, allow: "GET", guarded: false },
    PageRoute { path: "/health/detailed", page: Page::Detailed, allow: "GET", guarded: true },
    PageRoute { path: "/health/circuit-breakers", page: Page::CircuitBreakers, allow: "GET", guarded: true },
    PageRoute { path: "/metrics", page: Page::Metrics, allow: "GET", guarded: true },
    PageRoute { path: "/health/websocket", page: Page::WebSocket, allow: "GET", guarded: true },
    PageRoute { path: "/dashboard", page: Page::Dashboard, allow: "GET, HEAD", guarded: false },
];

/// DNS rebinding defence, on every path (a rebound page could read
/// `/metrics` or the status as well as force a circuit): the `Host` (and
/// the authority of an absolute-form or HTTP/2 request) must name the
/// listener as an operator would: its address or any IP literal (an IP
/// cannot be rebound; kubelets and Prometheus call by pod IP), `localhost`,
/// or one of `admin.allowedHosts` (`*`: any). A request without `Host`
/// (HTTP/1.0) passes. Anything else is 421 Misdirected Request.
fn known_host(req: &Request<Incoming>, state: &AdminState) -> Result<(), Response<ProxyBody>> {
    let header = req.headers().get(http::header::HOST).map(|h| h.to_str().unwrap_or("\u{fffd}"));
    let uri = req.uri().authority().map(http::uri::Authority::as_str);
    let config = state.live.store.current();
    for host in header.into_iter().chain(uri) {
        if !host_allowed(host, &config.config.admin) {
            tracing::warn!(host = ?host, path = req.uri().path(), "admin request for a foreign host refused (DNS rebinding?)");
            return Err(error_response(
                StatusCode::MISDIRECTED_REQUEST,
                "host_not_allowed",
                "this admin listener does not answer for that Host (call it by IP address or localhost, or add the name to admin.allowedHosts)",
            ));
        }
    }
    Ok(())
}

/// Whether the admin listener answers for `host` (a `Host` value,
/// `name[:port]`).
fn host_allowed(host: &str, admin: &AdminConfig) -> bool {
    if admin.allowed_hosts.iter().any(|h| h == "*") {
        return true;
    }
    let Ok(authority) = host.trim().parse::<http::uri::Authority>() else { return false };
    if authority.as_str().contains('@') {
        return false;
    }
    let name = authority.host().to_ascii_lowercase();
    name == "localhost" || ip_literal(&name).is_some() || named_host(&name, authority.port_u16(), admin)
}

/// `name` (lowercase) with the port it was given (if any) is one of
/// `admin.allowedHosts`; an entry with a port matches only that port.
fn named_host(name: &str, port: Option<u16>, admin: &AdminConfig) -> bool {
    admin.allowed_hosts.iter().any(|entry| match entry.rsplit_once(':') {
        Some((n, p)) => n == name && p.parse::<u16>().ok() == port,
        None => entry == name,
    })
}

/// An IPv4 literal or a bracketed IPv6 literal.
fn ip_literal(host: &str) -> Option<IpAddr> {
    match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6),
        None => host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4),
    }
}

/// CSRF defence (also with `auth: none`): a browser names the page that
/// sent a request in `Origin`; a mutation or a WebSocket handshake from any
/// other origin than these is refused:
///
/// - one of `admin.allowedOrigins`;
/// - `http`/`https` on the listener's own port with host `localhost`, a
///   loopback or the listener's own IP, a named `admin.allowedHosts` entry,
///   or the very IP literal the request was sent to (the dashboard opened
///   by pod IP). Never a name taken from `Host` (DNS rebinding), and not
///   any IP (a page served from another machine's IP on the same port).
///
/// Clients that are not browsers send no `Origin` and are not affected.
fn same_origin(req: &Request<Incoming>, state: &AdminState) -> Result<(), Response<ProxyBody>> {
    let Some(origin) = req.headers().get(http::header::ORIGIN) else { return Ok(()) };
    let origin = origin.to_str().unwrap_or("null").trim().trim_end_matches('/').to_ascii_lowercase();
    let host = req.headers().get(http::header::HOST).and_then(|h| h.to_str().ok());
    if origin_allowed(&origin, host, state.listen, &state.live.store.current().config.admin) {
        return Ok(());
    }
    tracing::warn!(origin = ?origin, path = req.uri().path(), "admin request from a foreign origin refused");
    Err(error_response(
        StatusCode::FORBIDDEN,
        "origin_not_allowed",
        "this origin may not call the admin API (add it to admin.allowedOrigins to allow it)",
    ))
}

/// See [`same_origin`]: `origin` lowercase without a trailing `/`, `host`
/// the request's `Host`, `listen` the listener's bound address.
fn origin_allowed(origin: &str, host: Option<&str>, listen: SocketAddr, admin: &AdminConfig) -> bool {
    if admin.allowed_origins.iter().any(|o| o == origin) {
        return true;
    }
    let Ok(uri) = origin.parse::<http::Uri>() else { return false };
    let default_port = match uri.scheme_str() {
        Some("http") => 80,
        Some("https") => 443,
        _ => return false,
    };
    let Some(authority) = uri.authority() else { return false };
    if authority.as_str().contains('@') || !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return false;
    }
    if authority.port_u16().unwrap_or(default_port) != listen.port() {
        return false;
    }
    let name = authority.host();
    if name == "localhost" || named_host(name, Some(listen.port()), admin) {
        return true;
    }
    let Some(ip) = ip_literal(name) else { return false };
    let sent_to = host.and_then(|h| h.trim().parse::<http::uri::Authority>().ok()).and_then(|a| ip_literal(&a.host().to_ascii_lowercase()));
    ip.is_loopback() || ip == listen.ip() || sent_to == Some(ip)
}

fn has_body(req: &Request<Incoming>) -> bool {
    use http_body::Body;
    !req.body().is_end_stream()
}

fn is_json(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admin(hosts: &[&str], origins: &[&str]) -> AdminConfig {
        AdminConfig {
            listen: "0.0.0.0:9901".parse().expect("an address"),
            allowed_origins: origins.iter().map(|o| o.to_string()).collect(),
            allowed_hosts: hosts.iter().map(|h| h.to_string()).collect(),
            tls: None,
        }
    }

    #[test]
    fn hosts_it_answers_for() {
        let a = admin(&["fusebox.internal", "ops.example:8443"], &[]);
        for ok in ["127.0.0.1:9901", "10.1.2.3", "[::1]:9901", "localhost:9901", "LOCALHOST", "fusebox.internal:1234", "ops.example:8443"] {
            assert!(host_allowed(ok, &a), "{ok}");
        }
        for bad in
            ["evil.example:9901", "ops.example", "ops.example:9901", "localhost.", "127.0.0.1.evil.example", "user@127.0.0.1", "", "::1"]
        {
            assert!(!host_allowed(bad, &a), "{bad}");
        }
        assert!(host_allowed("anything.example", &admin(&["*"], &[])));
    }

    #[test]
    fn origins_it_allows_never_come_from_host() {
        let listen: SocketAddr = "10.0.0.5:9901".parse().expect("an address");
        let a = admin(&["fusebox.internal"], &["https://ops.example.com"]);
        let ok = |o: &str, host: &str| origin_allowed(o, Some(host), listen, &a);
        assert!(ok("https://ops.example.com", "10.0.0.5:9901"));
        assert!(ok("http://localhost:9901", "localhost:9901"));
        assert!(ok("http://127.0.0.1:9901", "127.0.0.1:9901"));
        assert!(ok("https://fusebox.internal:9901", "10.0.0.5:9901"));
        assert!(ok("http://10.0.0.5:9901", "10.0.0.5:9901"), "its own IP");
        assert!(ok("http://10.9.9.9:9901", "10.9.9.9:9901"), "the IP the request was sent to");
        assert!(!ok("http://evil.example:9901", "evil.example:9901"), "rebinding");
        assert!(!ok("http://203.0.113.5:9901", "10.9.9.9:9901"), "another machine's IP");
        assert!(!ok("http://localhost", "localhost:9901"), "another port");
        assert!(!ok("ftp://localhost:9901", "localhost:9901"));
        assert!(!ok("null", "localhost:9901"));
    }
}
