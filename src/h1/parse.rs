//! Response heads: `httparse` over the read buffer, interim 1xx heads
//! skipped, the fields turned into an `http::response::Parts` sharing the
//! buffer's memory, and the body's framing and keep-alive decided by the
//! rules of RFC 9112 §6.3 (the same rules as hyper's `Client::decoder`).
//!
//! Must not: read or write the connection; it sees only bytes already read.

use std::mem::MaybeUninit;

use bytes::{Buf, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode, Version};

use super::error::{Error, ErrorKind};
use super::{MAX_HEADERS, MAX_HEAD_BYTES};

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    /// No body (HEAD, 204, 304, `content-length: 0`).
    Empty,
    /// `content-length: n`, n > 0.
    Length(u64),
    /// `transfer-encoding: ...chunked`.
    Chunked,
    /// Neither: the body runs to EOF.
    Eof,
    /// 101, or a 2xx to CONNECT: the connection now speaks another protocol.
    Upgrade,
}

/// What the request said that the response's framing depends on.
#[derive(Debug, Clone, Copy)]
pub(super) struct Asked {
    pub head: bool,
    pub connect: bool,
}

/// A final response head.
pub(super) struct Head {
    pub parts: http::response::Parts,
    pub framing: Framing,
    /// The response allows another exchange on this connection (HTTP
    /// version, `Connection`, framing); the caller adds its own conditions.
    pub keep_alive: bool,
}

/// Parses the final response head at the start of `buf`, consuming it and
/// any interim 1xx heads before it. `Ok(None)`: more bytes are needed.
pub(super) fn parse_head(buf: &mut BytesMut, asked: Asked) -> Result<Option<Head>, Error> {
    loop {
        let Some(head) = parse_one(buf, asked)? else {
            return Ok(None);
        };
        if let Some(head) = head {
            return Ok(Some(head));
        }
        // An interim response was consumed; the final one may follow.
    }
}

/// Fields of a head whose offsets are kept on the stack.
const SMALL_HEAD: usize = 16;

/// One head: `Ok(None)` partial, `Ok(Some(None))` an interim 1xx consumed.
fn parse_one(buf: &mut BytesMut, asked: Asked) -> Result<Option<Option<Head>>, Error> {
    if buf.is_empty() {
        return Ok(None);
    }
    let mut fields = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
    let mut res = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut res, buf, &mut fields);
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => {
            return Err(Error::new(ErrorKind::TooLarge, "response head over the size limit"));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Error::new(ErrorKind::TooLarge, "too many response header fields")),
        Err(e) => return Err(Error::malformed(parse_error(e))),
    };
    if len > MAX_HEAD_BYTES {
        return Err(Error::new(ErrorKind::TooLarge, "response head over the size limit"));
    }
    let code = res.code.ok_or(Error::malformed("no status code"))?;
    let status = StatusCode::from_u16(code).map_err(|_| Error::malformed("invalid status code"))?;
    if status.is_informational() && code != 101 {
        buf.advance(len);
        return Ok(Some(None));
    }
    let version = if res.version == Some(1) { Version::HTTP_11 } else { Version::HTTP_10 };

    // Record offsets so the fields can point into the frozen head. Most
    // heads have few fields: a small array on the stack (zeroing room for
    // all MAX_HEADERS cost more than the rest of the parse), a Vec beyond.
    let count = res.headers.len();
    let mut small = [(0usize, 0usize, 0usize, 0usize); SMALL_HEAD];
    let mut large = Vec::new();
    let spans: &mut [(usize, usize, usize, usize)] = if count <= SMALL_HEAD {
        &mut small[..count]
    } else {
        large.resize(count, (0, 0, 0, 0));
        &mut large
    };
    for (span, h) in spans.iter_mut().zip(res.headers.iter()) {
        let (n0, n1) = span_in(buf, h.name.as_bytes(), len).ok_or(Error::malformed("header name outside the head"))?;
        let (v0, v1) = span_in(buf, h.value, len).ok_or(Error::malformed("header value outside the head"))?;
        *span = (n0, n1, v0, v1);
    }
    let reason = match res.reason.filter(|r| Some(*r) != status.canonical_reason()) {
        Some(r) => Some(span_in(buf, r.as_bytes(), len).ok_or(Error::malformed("reason outside the head"))?),
        None => None,
    };

    let head = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(count);
    let mut keep_alive = version == Version::HTTP_11;
    let mut close = false;
    for &(n0, n1, v0, v1) in spans.iter() {
        let name = HeaderName::from_bytes(&head[n0..n1]).map_err(|_| Error::malformed("invalid header name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(v0..v1)).map_err(|_| Error::malformed("invalid header value"))?;
        if name == header::CONNECTION {
            close |= has_token(&value, "close");
            if version == Version::HTTP_10 && has_token(&value, "keep-alive") {
                keep_alive = true;
            }
        }
        headers.append(name, value);
    }
    keep_alive &= !close;

    let mut res = Response::new(());
    *res.status_mut() = status;
    *res.version_mut() = version;
    let (mut parts, ()) = res.into_parts();
    if let Some((r0, r1)) = reason {
        // Kept like hyper does, so the inbound server can write it back.
        if let Ok(reason) = hyper::ext::ReasonPhrase::try_from(head.slice(r0..r1)) {
            parts.extensions.insert(reason);
        }
    }
    let framing = framing(status, version, &mut headers, asked, &mut keep_alive)?;
    parts.headers = headers;
    if framing == Framing::Eof || framing == Framing::Upgrade {
        keep_alive = false;
    }
    Ok(Some(Some(Head { parts, framing, keep_alive })))
}

/// Where `part` (a slice httparse returned) lies in the head `buf[..len]`.
/// An empty part may be a static slice (httparse's empty reason), so it
/// maps to an empty range; anything else must lie inside the head.
fn span_in(buf: &[u8], part: &[u8], len: usize) -> Option<(usize, usize)> {
    if part.is_empty() {
        return Some((0, 0));
    }
    let start = (part.as_ptr() as usize).checked_sub(buf.as_ptr() as usize)?;
    let end = start.checked_add(part.len())?;
    (end <= len).then_some((start, end))
}

/// RFC 9112 §6.3, in hyper's order.
fn framing(status: StatusCode, version: Version, headers: &mut HeaderMap, asked: Asked, keep_alive: &mut bool) -> Result<Framing, Error> {
    match status.as_u16() {
        101 => return Ok(Framing::Upgrade),
        204 | 304 => return Ok(Framing::Empty),
        _ => {}
    }
    if asked.head {
        return Ok(Framing::Empty);
    }
    if asked.connect && status.is_success() {
        return Ok(Framing::Upgrade);
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        if version == Version::HTTP_10 {
            return Err(Error::malformed("transfer-encoding in an HTTP/1.0 response"));
        }
        if headers.contains_key(header::CONTENT_LENGTH) {
            // Transfer-Encoding wins; a message with both may be an attempt
            // at response splitting: the stale length must not be forwarded
            // (RFC 9112 §6.3 item 3) and the connection is not trusted again.
            headers.remove(header::CONTENT_LENGTH);
            *keep_alive = false;
        }
        return Ok(if is_chunked(headers) { Framing::Chunked } else { Framing::Eof });
    }
    if headers.contains_key(header::CONTENT_LENGTH) {
        return match content_length(headers) {
            Some(0) => Ok(Framing::Empty),
            Some(n) => Ok(Framing::Length(n)),
            None => Err(Error::malformed("invalid or conflicting content-length")),
        };
    }
    Ok(Framing::Eof)
}

/// All `content-length` values (comma lists too) agree on one number.
pub(super) fn content_length(headers: &HeaderMap) -> Option<u64> {
    let mut found = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for part in value.to_str().ok()?.split(',') {
            let n = digits(part.trim().as_bytes())?;
            if found.is_some_and(|f| f != n) {
                return None;
            }
            found = Some(n);
        }
    }
    found
}

fn digits(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    s.iter().try_fold(0u64, |n, &b| if b.is_ascii_digit() { n.checked_mul(10)?.checked_add(u64::from(b - b'0')) } else { None })
}

/// The last transfer coding is `chunked`.
pub(super) fn is_chunked(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .next_back()
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.rsplit(',').next())
        .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
}

/// A comma-separated header value holds `token` (case-insensitive).
pub(super) fn has_token(value: &HeaderValue, token: &str) -> bool {
    value.to_str().is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// Trailer fields after a chunked body's last chunk (`buf` ends with the
/// blank line).
pub(super) fn parse_trailers(buf: &[u8]) -> Result<HeaderMap, Error> {
    let mut fields = [httparse::EMPTY_HEADER; super::MAX_TRAILERS];
    match httparse::parse_headers(buf, &mut fields) {
        Ok(httparse::Status::Complete((_, fields))) => {
            let mut map = HeaderMap::with_capacity(fields.len());
            for f in fields.iter() {
                let name = HeaderName::from_bytes(f.name.as_bytes()).map_err(|_| Error::malformed("invalid trailer name"))?;
                let value = HeaderValue::from_bytes(f.value).map_err(|_| Error::malformed("invalid trailer value"))?;
                map.append(name, value);
            }
            Ok(map)
        }
        Ok(httparse::Status::Partial) => Err(Error::malformed("incomplete trailers")),
        Err(httparse::Error::TooManyHeaders) => Err(Error::new(ErrorKind::TooLarge, "too many trailer fields")),
        Err(e) => Err(Error::malformed(parse_error(e))),
    }
}

fn parse_error(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value (or obs-fold)",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status line",
        httparse::Error::Token => "invalid token",
        httparse::Error::TooManyHeaders => "too many header fields",
        httparse::Error::Version => "invalid HTTP version",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GET: Asked = Asked { head: false, connect: false };

    fn parse(s: &str) -> Result<Option<Head>, Error> {
        let mut buf = BytesMut::from(s.as_bytes());
        parse_head(&mut buf, GET)
    }

    #[test]
    fn fields_point_at_the_right_bytes() {
        let h = parse("HTTP/1.1 200 Fine\r\nA: 1\r\nbb: two\r\nA: 3\r\n\r\n").unwrap().unwrap();
        let got: Vec<_> = h.parts.headers.iter().map(|(n, v)| format!("{n}={}", v.to_str().unwrap())).collect();
        assert_eq!(got, ["a=1", "a=3", "bb=two"]);
        let reason = h.parts.extensions.get::<hyper::ext::ReasonPhrase>().unwrap();
        assert_eq!(reason.as_bytes(), b"Fine");
        // No reason at all (not even the space): an empty one.
        let h = parse("HTTP/1.1 299\r\nx-empty:\r\n\r\n").unwrap().unwrap();
        assert_eq!(h.parts.headers["x-empty"], "");
        assert_eq!(h.parts.extensions.get::<hyper::ext::ReasonPhrase>().unwrap().as_bytes(), b"");
        assert_eq!(h.framing, Framing::Eof);
        assert!(!h.keep_alive);
    }

    #[test]
    fn content_length_rules() {
        let mut m = HeaderMap::new();
        m.append(header::CONTENT_LENGTH, HeaderValue::from_static("5, 5"));
        m.append(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        assert_eq!(content_length(&m), Some(5));
        m.append(header::CONTENT_LENGTH, HeaderValue::from_static("6"));
        assert_eq!(content_length(&m), None);
        for bad in ["", "+5", "-1", "5a", "18446744073709551616"] {
            let mut m = HeaderMap::new();
            m.append(header::CONTENT_LENGTH, HeaderValue::from_str(bad).unwrap());
            assert_eq!(content_length(&m), None, "{bad:?}");
        }
    }
}
