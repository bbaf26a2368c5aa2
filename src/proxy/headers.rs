//! The headers of a proxied exchange: the upstream request's head
//! (origin-form target, hop-by-hop headers removed, `Host` from an
//! absolute-form target per RFC 9112 3.2.2, `x-forwarded-*` and
//! `x-request-id` set), the response's hop-by-hop headers, upgrades and
//! request ids.
//!
//! Owns header rewriting only; must not look at bodies, endpoints or
//! circuits (that is `forward`).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Request, Uri, Version};

use crate::config::Protocol;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Headers that describe one hop, never forwarded (RFC 9110 7.6.1).
/// `Trailer` is not one of them: it announces trailers that are forwarded.
static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
];

/// Rewrites a client request's head for its upstream: origin-form URI,
/// hop-by-hop headers removed (an upgrade keeps its two), `Host` from an
/// absolute-form target, `x-forwarded-host`, `-for` (`peer` appended to
/// one comma-joined line), `-proto` and `x-request-id` set, the version of
/// the upstream's `protocol`.
pub fn rewrite(parts: &mut Parts, protocol: Protocol, peer: &HeaderValue, request_id: &HeaderValue, scheme: &'static str, upgrade: bool) {
    let path_and_query = parts.uri.path_and_query().cloned().unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    // The client's host: the target's authority (absolute form, HTTP/2)
    // wins over the Host header.
    let authority = parts.uri.authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok());
    let h = &mut parts.headers;
    if let Some(a) = authority {
        h.insert(header::HOST, a);
    }
    let original_host = h.get(header::HOST).cloned();
    // Origin form; the endpoint's pool dials the endpoint.
    parts.uri = Uri::from(path_and_query);
    strip_hop_by_hop(&mut parts.headers, upgrade);
    let h = &mut parts.headers;
    if let Some(host) = original_host {
        h.insert(X_FORWARDED_HOST, host);
    }
    // One comma-joined line: some upstreams read only the first
    // x-forwarded-for line, and the rightmost hop must be ours.
    let mut prev = h.get_all(X_FORWARDED_FOR).iter().peekable();
    let xff = if prev.peek().is_none() {
        Some(peer.clone())
    } else {
        let mut joined = Vec::with_capacity(64);
        for v in prev {
            joined.extend_from_slice(v.as_bytes());
            joined.extend_from_slice(b", ");
        }
        joined.extend_from_slice(peer.as_bytes());
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
}

/// Removes hop-by-hop headers, including those named by `Connection`.
/// An upgrade keeps `Connection: upgrade` and `Upgrade`.
///
/// One pass over the names finds which are present (usually none, or just
/// `Connection`), so only those are looked up and removed.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
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
        "transfer-encoding" => 6,
        "upgrade" => HOP_BY_HOP.len(),
        _ => return None,
    })
}

pub fn is_upgrade<B>(req: &Request<B>) -> bool {
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
/// random bits in hex, from fastrand's per-thread wyrand (seeded through
/// std's `RandomState`, i.e. by the OS; ids
/// must not repeat, they need not be secret).
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(REQUEST_ID) {
        if !v.is_empty() && v.len() <= 128 {
            return v.clone();
        }
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = [0u8; 32];
    for half in id.chunks_exact_mut(16) {
        let n = fastrand::u64(..);
        for (i, b) in half.iter_mut().enumerate() {
            *b = HEX[((n >> (60 - 4 * i)) & 0xf) as usize];
        }
    }
    HeaderValue::from_bytes(&id).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
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
