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
pub mod view;
pub mod ws;

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::http::{error_response, ProxyBody};
use crate::runtime::Live;
use auth::{Authorizer, RateLimiter};

/// Admin mutations allowed per caller per minute.
const MUTATIONS_PER_MINUTE: u32 = 10;

/// The control plane's state, on top of the runtime's [`Live`].
pub struct AdminState {
    pub live: Arc<Live>,
    /// The token checker of the current generation's `auth:`, by
    /// generation number.
    auth: Mutex<Option<(u64, Arc<Authorizer>)>>,
    /// Rate limit of admin mutations per caller.
    pub mutations: RateLimiter,
    /// The last admin mutations (bounded), newest last.
    pub audit: Mutex<VecDeque<serde_json::Value>>,
    /// State WebSocket sessions: closed with 1001 at shutdown.
    pub ws: ws::Hub,
}

// === impl AdminState ===

impl AdminState {
    pub fn new(live: Arc<Live>) -> AdminState {
        AdminState {
            live,
            auth: Mutex::new(None),
            mutations: RateLimiter::new(MUTATIONS_PER_MINUTE, Duration::from_secs(60)),
            audit: Mutex::new(VecDeque::with_capacity(64)),
            ws: ws::Hub::new(),
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

/// CSRF defence (also with `auth: none`): a browser names the page that
/// sent a request in `Origin`; a mutation or a WebSocket handshake from any
/// origin but the admin listener's own (the `Host` it was reached at) or
/// one of `admin.allowedOrigins` is refused. Clients that are not browsers
/// send no `Origin` and are not affected.
fn same_origin(req: &Request<Incoming>, state: &AdminState) -> Result<(), Response<ProxyBody>> {
    let Some(origin) = req.headers().get(http::header::ORIGIN) else { return Ok(()) };
    let origin = origin.to_str().unwrap_or("null").trim().trim_end_matches('/').to_ascii_lowercase();
    let host = req.headers().get(http::header::HOST).and_then(|h| h.to_str().ok()).map(str::to_ascii_lowercase);
    let own = host.is_some_and(|h| origin == format!("http://{h}") || origin == format!("https://{h}"));
    let allowed = own || state.live.store.current().config.admin.allowed_origins.contains(&origin);
    if allowed {
        return Ok(());
    }
    tracing::warn!(origin = ?origin, path = req.uri().path(), "admin request from a foreign origin refused");
    Err(error_response(
        StatusCode::FORBIDDEN,
        "origin_not_allowed",
        "this origin may not call the admin API (add it to admin.allowedOrigins to allow it)",
    ))
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
