//! `GET /dashboard`: one self-contained HTML page (inline CSS and script,
//! no build step, nothing fetched from outside) built into the binary. The
//! page is fed by the state WebSocket and calls the admin API for reset and
//! force; see `dashboard.html`.
//!
//! This module only serves the bytes; it must not compute any state (the
//! page gets everything from `ws` and `api`).

use http::{header, HeaderValue, Response};

use crate::http::full;
use crate::http::ProxyBody;

/// The page, compiled in.
pub const PAGE: &str = include_str!("dashboard.html");

/// The page, never cached (it changes with the binary), never framed.
pub fn page() -> Response<ProxyBody> {
    let mut resp = Response::new(full(PAGE));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self' ws: wss:; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    resp
}
