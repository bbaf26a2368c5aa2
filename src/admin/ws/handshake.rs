//! The handshake of the state WebSocket: the RFC 6455 upgrade on an admin
//! request (101 with the accept key, or the HTTP answer to a request that
//! is not an upgrade), the client limit, and who the client is (a token as
//! an offered subprotocol, echoed, or as `?token=`).
//!
//! It must not run the session: once hyper hands over the connection it
//! passes the socket and the auth outcome to `session::run`. A failed auth
//! still completes the handshake, so the client reads why.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL, SEC_WEBSOCKET_VERSION, UPGRADE};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use super::session::run;
use super::{MAX_CLIENTS, MAX_MESSAGE_BYTES, MAX_OFFERED, MAX_WRITE_BUFFER};
use crate::admin::auth::{Authorizer, Principal};
use crate::admin::AdminState;
use crate::http::{error_response, full, ProxyBody};

/// Answers the upgrade request with 101 and starts the session once hyper
/// hands over the connection. Auth failures still complete the handshake,
/// so the client reads error 4001 and the close code instead of a bare
/// HTTP error browsers do not expose.
pub fn upgrade(mut req: Request<Incoming>, state: Arc<AdminState>) -> Response<ProxyBody> {
    let key = match handshake_key(&req) {
        Ok(k) => k,
        Err(resp) => return resp,
    };
    if state.ws.is_closing() {
        return error_response(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", "fusebox is shutting down");
    }
    if state.live.store.shared.metrics.websocket_clients.get() >= MAX_CLIENTS {
        return error_response(StatusCode::SERVICE_UNAVAILABLE, "too_many_clients", "too many WebSocket clients");
    }
    let offered = offered_protocols(req.headers());
    let query_token = query_param(req.uri().query(), "token");
    let (access, echo) = authenticate(&state.authorizer(), &offered, query_token.as_deref());

    let on_upgrade = hyper::upgrade::on(&mut req);
    let closing = state.ws.closing.subscribe();
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(ws_config())).await;
                run(ws, state, access, closing).await;
            }
            Err(e) => tracing::debug!(error = %e, "WebSocket upgrade did not complete"),
        }
    });

    let mut resp = Response::new(full(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        h.insert(SEC_WEBSOCKET_ACCEPT, v);
    }
    // Browsers drop a connection whose offered subprotocol is not echoed.
    if let Some(v) = echo.and_then(|p| HeaderValue::from_str(&p).ok()) {
        h.insert(SEC_WEBSOCKET_PROTOCOL, v);
    }
    resp
}

fn ws_config() -> WebSocketConfig {
    // The codec's own output buffer (pongs it queues by itself included) is
    // bounded too: a client that sends and never reads hits the bound and
    // is dropped instead of growing fusebox's memory.
    WebSocketConfig {
        max_message_size: Some(MAX_MESSAGE_BYTES),
        max_frame_size: Some(MAX_MESSAGE_BYTES),
        write_buffer_size: 128 * 1024,
        max_write_buffer_size: MAX_WRITE_BUFFER,
        ..WebSocketConfig::default()
    }
}

/// The `Sec-WebSocket-Key` of a valid RFC 6455 upgrade request, or the
/// HTTP answer to a request that is not one.
#[allow(clippy::result_large_err)]
fn handshake_key(req: &Request<Incoming>) -> Result<String, Response<ProxyBody>> {
    let h = req.headers();
    let upgrade_ok = has_token(h, UPGRADE, "websocket");
    if !upgrade_ok || !has_token(h, CONNECTION, "upgrade") {
        return Err(error_response(
            StatusCode::UPGRADE_REQUIRED,
            "upgrade_required",
            "this endpoint speaks WebSocket: send `Connection: Upgrade` and `Upgrade: websocket`",
        ));
    }
    if req.version() != Version::HTTP_11 {
        return Err(error_response(StatusCode::BAD_REQUEST, "bad_request", "the WebSocket handshake needs HTTP/1.1"));
    }
    if h.get(SEC_WEBSOCKET_VERSION).and_then(|v| v.to_str().ok()).map(str::trim) != Some("13") {
        let mut resp = error_response(StatusCode::UPGRADE_REQUIRED, "unsupported_version", "only WebSocket version 13 is supported");
        resp.headers_mut().insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        return Err(resp);
    }
    match h.get(SEC_WEBSOCKET_KEY).and_then(|v| v.to_str().ok()).map(str::trim) {
        Some(k) if !k.is_empty() => Ok(k.to_string()),
        _ => Err(error_response(StatusCode::BAD_REQUEST, "bad_request", "missing Sec-WebSocket-Key")),
    }
}

/// Whether a comma-separated header holds `token` (case-insensitive).
fn has_token(headers: &HeaderMap, name: http::header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The subprotocols the client offered, in order (at most [`MAX_OFFERED`]).
fn offered_protocols(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .take(MAX_OFFERED)
        .map(str::to_owned)
        .collect()
}

/// One query parameter, form-decoded (`%XX`; `+` is a space, as
/// `URLSearchParams` writes it; a token is base64url, which has neither).
fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

/// The outcome of the handshake's auth.
#[derive(Debug)]
pub(super) enum Access {
    Granted(Principal),
    Denied(String),
}

/// Finds the caller: the first offered subprotocol that verifies as a token
/// (echoed), else `?token=`. The subprotocol echoed otherwise is the first
/// offered one, so browsers keep the connection long enough to read why.
fn authenticate(authorizer: &Authorizer, offered: &[String], query: Option<&str>) -> (Access, Option<String>) {
    let first = offered.first().cloned();
    let mut first_error = None;
    for p in offered {
        match authorizer.verify(Some(p)) {
            Ok(principal) => return (Access::Granted(principal), Some(p.clone())),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match authorizer.verify(query) {
        Ok(principal) => (Access::Granted(principal), first),
        Err(e) => {
            let message = match (query, first_error) {
                (None, None) => "authentication failed: send a JWT as the WebSocket subprotocol or as ?token=".to_string(),
                // Only subprotocols were offered: say why the first failed.
                (None, Some(first)) => format!("authentication failed: {first}"),
                (Some(_), _) => format!("authentication failed: {e}"),
            };
            (Access::Denied(message), first)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_token_is_percent_decoded() {
        assert_eq!(query_param(Some("a=1&token=x%2Ey.z"), "token").as_deref(), Some("x.y.z"));
        assert_eq!(query_param(Some("token"), "token").as_deref(), Some(""));
        assert_eq!(query_param(Some("a=1"), "token"), None);
        assert_eq!(query_param(Some("token=%4"), "token").as_deref(), Some("%4"));
        assert_eq!(query_param(Some("token=%zz%41"), "token").as_deref(), Some("%zzA"));
        assert_eq!(query_param(Some("token=%2B1"), "token").as_deref(), Some("+1"));
        // The `{service}` path segments of the admin API (admin/api.rs)
        // keep a `+` and a stray `%` as they are.
        assert_eq!(percent_encoding::percent_decode_str("%4%+1%zz%41").decode_utf8_lossy(), "%4%+1%zzA");
    }

    #[test]
    fn offered_subprotocols_are_split_and_trimmed() {
        let mut h = HeaderMap::new();
        h.append(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static("fusebox.v1, a.b.c"));
        h.append(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(" d ,, "));
        assert_eq!(offered_protocols(&h), ["fusebox.v1", "a.b.c", "d"]);
        let many = vec!["x"; 20].join(",");
        h.insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_str(&many).unwrap());
        assert_eq!(offered_protocols(&h).len(), MAX_OFFERED);
    }
}
