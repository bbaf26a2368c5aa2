//! The upstream HTTP/1.1 client codec: one request/response exchange at a
//! time on one connection, driven inline in the caller's task (no spawned
//! connection task, no dispatch channel), the way pingora's v1 client
//! replaced hyper's. It owns the wire format of the exchange and nothing
//! else:
//!
//! - writing the request head (and a small first body frame) into one
//!   buffer reused per connection, sent with one write call;
//! - the request body's framing (`content-length` or chunked);
//! - parsing the response head with `httparse`, skipping 1xx interim
//!   responses, and deciding the response body's framing (RFC 9112 §6.3);
//! - decoding the response body ([`Body`]) straight from the connection;
//! - deciding whether the connection may carry another request, and handing
//!   it back through [`Recycle`] when the body ends cleanly;
//! - typed errors that say whether the request reached the upstream
//!   ([`ErrorKind`]).
//!
//! Must not: spawn tasks, read clocks or set timeouts (the caller wraps the
//! futures in its deadlines; dropping a future or a [`Body`] closes the
//! connection), pool connections, retry, log, touch metrics, or add or
//! remove headers other than the framing it owns (below). Nothing the
//! network sends can make it panic or buffer without bound.
//!
//! # Request framing
//!
//! The head is written as given: method, the URI as it is (the proxy passes
//! origin-form), always `HTTP/1.1`, then the headers in `HeaderMap` order.
//! The only header the codec may add is the body's framing, and only when
//! the caller set neither `content-length` nor `transfer-encoding`:
//!
//! | request body                           | added header                  |
//! |----------------------------------------|-------------------------------|
//! | ends at once (`is_end_stream()`)       | none (no body on the wire)    |
//! | exact size hint `n`                    | `content-length: n`           |
//! | anything else                          | `transfer-encoding: chunked`  |
//!
//! A caller-set `content-length` is honoured and the body must match it; a
//! caller-set `transfer-encoding` must end in `chunked`; both at once are
//! refused ([`ErrorKind::InvalidRequest`], nothing sent).
//!
//! # Early responses
//!
//! While the request body is being written, the response is read too (both
//! are polled in the same task), so an upstream that answers early (a 413,
//! a 401) and stops reading cannot deadlock the exchange. Interim 1xx
//! responses (`100 Continue`) are skipped and writing goes on. A final
//! response that arrives before the request body is fully written ends the
//! writing: the rest of the request body is not sent, the response is
//! returned as usual, and the connection is not reused. If writing fails
//! after some bytes were sent, a response already readable is still
//! returned (the upstream's 413-then-close).
//!
//! `Expect: 100-continue` does not hold the body back: it is sent at once
//! (as hyper's client does), and the `100` is skipped like any interim
//! response.
//!
//! # Where it differs from hyper's client on purpose
//!
//! - A response with both `transfer-encoding` and `content-length`: the
//!   stale `content-length` is removed from the head (RFC 9112 §6.3: an
//!   intermediary must not forward it) and the connection is not reused
//!   (hyper keeps both fields and reuses it).
//! - Heads over [`MAX_HEAD_BYTES`] are refused (hyper reads up to ~408 KiB).
//! - A request body of unknown length is sent chunked whatever the method
//!   (hyper sends none for GET, HEAD and CONNECT); a caller-set
//!   `transfer-encoding` that does not end in `chunked`, or both framing
//!   headers, is refused rather than repaired.
//! - The request line always says `HTTP/1.1` (hyper copies an HTTP/1.0
//!   request's version, and downgrades after an HTTP/1.0 response).
//! - An early final response stops the request body (hyper goes on sending
//!   it).
//!
//! # Limits
//!
//! [`MAX_HEAD_BYTES`] per response head (interim heads each count on their
//! own), [`MAX_HEADERS`] fields per head, [`MAX_TRAILER_BYTES`] and
//! [`MAX_TRAILERS`] for a chunked body's trailers,
//! [`MAX_CHUNK_EXTENSION_BYTES`] of chunk extensions per body. A chunk-size
//! line costs O(1) memory whatever its length (it is decoded byte by byte;
//! sizes that overflow `u64` are refused). Reads are at most
//! [`READ_CHUNK`] bytes, and the read buffer holds at most one head plus one
//! read.
//!
//! # Use (what a pool does per request)
//!
//! 1. Take an idle [`Connection`] and check [`Connection::is_usable`] (an
//!    idle HTTP/1.1 connection with readable bytes or EOF is dead), or wrap
//!    a new stream with [`Connection::new`].
//! 2. [`Connection::send`] it the request head, body and a [`Recycle`]
//!    handle.
//! 3. Stream the returned [`Body`]. When it ends cleanly and the exchange
//!    allows keep-alive, the body hands the connection to the `Recycle`
//!    handle (at once, inside `send`, for bodiless responses). Dropping the
//!    body before its end closes the connection.
//! 4. On error, [`Error::is_retryable`] says the request never reached the
//!    upstream ([`ErrorKind::NotSent`], [`ErrorKind::ClosedIdle`]); anything
//!    else may have been processed.
//! 5. A `101` (or a 2xx to `CONNECT`) gives back the stream and the bytes
//!    read past the head through [`Body::into_upgraded`].

mod body;
mod conn;
mod decode;
mod encode;
mod error;
mod parse;

pub use body::{Body, Upgraded};
pub use conn::Connection;
pub use error::{Error, ErrorKind};

/// Most bytes in one response head (status line, fields, blank line).
/// Smaller than hyper's read buffer (~408 KiB); a head beyond it is
/// [`ErrorKind::TooLarge`].
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most fields in one response head (hyper's default too).
pub const MAX_HEADERS: usize = 100;
/// Most bytes in a chunked body's trailer section (hyper's limit too).
pub const MAX_TRAILER_BYTES: usize = 16 * 1024;
/// Most trailer fields (hyper's limit too).
pub const MAX_TRAILERS: usize = 100;
/// Most bytes of chunk extensions over one body (hyper's limit too).
pub const MAX_CHUNK_EXTENSION_BYTES: usize = 16 * 1024;
/// Most bytes asked of the connection in one read.
pub const READ_CHUNK: usize = 8 * 1024;

/// Where a connection goes when its exchange ended cleanly and it may carry
/// another request. The pool implements it (typically a handle holding an
/// `Arc` of the pool and the endpoint key), so handing a connection back
/// costs no allocation. It is called at most once per exchange, from inside
/// [`Connection::send`] or [`Body`]'s `poll_frame`, so it must not block.
/// A closure `FnOnce(Connection<IO>)` is a `Recycle`.
pub trait Recycle<IO>: Send {
    /// Takes back a connection that is idle and may be reused.
    fn recycle(self, conn: Connection<IO>);
}

impl<IO, F: FnOnce(Connection<IO>) + Send> Recycle<IO> for F {
    fn recycle(self, conn: Connection<IO>) {
        self(conn)
    }
}

/// A [`Recycle`] that drops the connection: one exchange per connection.
#[derive(Debug, Clone, Copy, Default)]
pub struct Discard;

impl<IO> Recycle<IO> for Discard {
    fn recycle(self, _conn: Connection<IO>) {}
}
