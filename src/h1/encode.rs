//! The request on the wire: the head encoded into the connection's reused
//! write buffer, and a writer that streams the body behind it with the
//! framing it owns (none, `content-length`, or chunked), coalescing the
//! head and small body frames into one write and sending large frames
//! with vectored writes, without copying them.
//!
//! Must not: read the connection, or add or remove headers other than the
//! framing header documented in `h1.rs`.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use http::header::{self, HeaderMap};
use http_body::Body as HttpBody;
use tokio::io::AsyncWrite;

use super::error::{Error, ErrorKind};
use super::parse::{content_length, has_token, is_chunked};

/// Body frames up to this size are copied behind the head (one write);
/// larger ones go out as their own slice of a vectored write.
const COPY_MAX: usize = 8 * 1024;
/// Stop staging frames once this much is waiting to be written.
const STAGE_MAX: usize = 16 * 1024;
/// A write buffer grown past this is freed after the exchange.
const KEEP_MAX: usize = 64 * 1024;

/// How the request body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    Chunked,
}

/// What the head said that the rest of the exchange needs.
#[derive(Debug, Clone, Copy)]
pub(super) struct Encoded {
    pub framing: Framing,
    /// The request asked to close the connection after this exchange.
    pub close: bool,
    pub head: bool,
    pub connect: bool,
}

/// Encodes the request head into `dst` (cleared first).
pub(super) fn encode_head(
    dst: &mut Vec<u8>,
    head: &http::request::Parts,
    body_empty: bool,
    hint: &http_body::SizeHint,
) -> Result<Encoded, Error> {
    let headers = &head.headers;
    let framing = match (headers.contains_key(header::TRANSFER_ENCODING), headers.contains_key(header::CONTENT_LENGTH)) {
        (true, true) => return Err(Error::new(ErrorKind::InvalidRequest, "both transfer-encoding and content-length")),
        (true, false) if is_chunked(headers) => Framing::Chunked,
        (true, false) => return Err(Error::new(ErrorKind::InvalidRequest, "transfer-encoding does not end in chunked")),
        (false, true) => match content_length(headers) {
            Some(0) if body_empty => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => return Err(Error::new(ErrorKind::InvalidRequest, "invalid content-length")),
        },
        (false, false) if body_empty => Framing::Empty,
        (false, false) => match hint.exact() {
            Some(n) => Framing::Length(n),
            None => Framing::Chunked,
        },
    };
    let added = !headers.contains_key(header::TRANSFER_ENCODING) && !headers.contains_key(header::CONTENT_LENGTH);

    dst.clear();
    dst.reserve(64 + headers.len() * 32);
    dst.extend_from_slice(head.method.as_str().as_bytes());
    dst.push(b' ');
    let uri = &head.uri;
    match uri.path_and_query() {
        Some(pq) if uri.scheme().is_none() && uri.authority().is_none() => dst.extend_from_slice(pq.as_str().as_bytes()),
        _ => {
            use std::io::Write as _;
            // Absolute or authority form: rare for a reverse proxy.
            write!(dst, "{uri}").map_err(|_| Error::new(ErrorKind::InvalidRequest, "unwritable URI"))?;
        }
    }
    dst.extend_from_slice(b" HTTP/1.1\r\n");
    write_fields(dst, headers);
    if added {
        match framing {
            Framing::Empty => {}
            Framing::Length(n) => {
                dst.extend_from_slice(b"content-length: ");
                push_decimal(dst, n);
                dst.extend_from_slice(b"\r\n");
            }
            Framing::Chunked => dst.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        }
    }
    dst.extend_from_slice(b"\r\n");

    let close = headers.get_all(header::CONNECTION).iter().any(|v| has_token(v, "close"));
    Ok(Encoded { framing, close, head: head.method == http::Method::HEAD, connect: head.method == http::Method::CONNECT })
}

fn write_fields(dst: &mut Vec<u8>, headers: &HeaderMap) {
    for (name, value) in headers {
        dst.extend_from_slice(name.as_str().as_bytes());
        dst.extend_from_slice(b": ");
        dst.extend_from_slice(value.as_bytes());
        dst.extend_from_slice(b"\r\n");
    }
}

fn push_decimal(dst: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    dst.extend_from_slice(&digits[i..]);
}

fn push_hex(dst: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b"0123456789ABCDEF"[(n & 0xf) as usize];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    dst.extend_from_slice(&digits[i..]);
}

/// Why writing stopped.
pub(super) enum WriteError {
    /// The connection failed; `sent` bytes had been written before.
    Io { error: io::Error, sent: u64 },
    /// The request body or its framing failed: the caller's fault.
    Request(Error),
}

/// Streams the staged head and the request body to the connection.
pub(super) struct Writer {
    framing: Framing,
    /// Head bytes and small frames, from `pos` on not yet written.
    pos: usize,
    /// A large frame, written after the staged bytes without a copy.
    data: Bytes,
    /// Written after `data` (a chunk's CRLF).
    tail: &'static [u8],
    /// Body bytes framed so far (checked against `content-length`).
    body_bytes: u64,
    /// Bytes that reached the connection.
    sent: u64,
    body_done: bool,
    /// Written since the last flush.
    dirty: bool,
}

// === impl Writer ===

impl Writer {
    pub(super) fn new(framing: Framing) -> Writer {
        Writer {
            framing,
            pos: 0,
            data: Bytes::new(),
            tail: b"",
            body_bytes: 0,
            sent: 0,
            body_done: framing == Framing::Empty,
            dirty: false,
        }
    }

    /// Writes until done (`Ready(Ok)`), blocked (`Pending`) or failed.
    /// `buf` is the connection's write buffer holding the staged bytes.
    pub(super) fn poll_write<IO, B>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut IO,
        buf: &mut Vec<u8>,
        mut body: Pin<&mut B>,
    ) -> Poll<Result<(), WriteError>>
    where
        IO: AsyncWrite + Unpin,
        B: HttpBody<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        loop {
            // Stage the body's next frame behind what is waiting, so the head
            // and a small body leave in one write.
            if !self.body_done && self.data.is_empty() && buf.len() - self.pos < STAGE_MAX {
                if let Poll::Ready(frame) = body.as_mut().poll_frame(cx) {
                    self.stage(frame, buf, io.is_write_vectored()).map_err(WriteError::Request)?;
                    continue;
                }
            }
            if self.pos < buf.len() || !self.data.is_empty() || !self.tail.is_empty() {
                ready!(self.poll_flush_staged(cx, io, buf))?;
                continue;
            }
            if self.dirty {
                ready!(Pin::new(&mut *io).poll_flush(cx)).map_err(|error| WriteError::Io { error, sent: self.sent })?;
                self.dirty = false;
            }
            if self.body_done {
                if buf.capacity() > KEEP_MAX {
                    *buf = Vec::new();
                }
                return Poll::Ready(Ok(()));
            }
            // The body is pending and everything staged is out.
            return Poll::Pending;
        }
    }

    fn stage<E>(&mut self, frame: Option<Result<http_body::Frame<Bytes>, E>>, buf: &mut Vec<u8>, vectored: bool) -> Result<(), Error>
    where
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if self.pos == buf.len() {
            buf.clear();
            self.pos = 0;
        }
        let frame = match frame {
            None => {
                self.body_done = true;
                return match self.framing {
                    Framing::Length(n) if self.body_bytes != n => {
                        Err(Error::new(ErrorKind::InvalidRequest, "request body shorter than its content-length"))
                    }
                    Framing::Chunked => {
                        buf.extend_from_slice(b"0\r\n\r\n");
                        Ok(())
                    }
                    _ => Ok(()),
                };
            }
            Some(Err(e)) => return Err(Error::request_body(e.into())),
            Some(Ok(frame)) => frame,
        };
        let mut data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                if let (Ok(trailers), Framing::Chunked) = (frame.into_trailers(), self.framing) {
                    // Trailers end a chunked body; a sized body has no room.
                    buf.extend_from_slice(b"0\r\n");
                    write_fields(buf, &trailers);
                    buf.extend_from_slice(b"\r\n");
                    self.body_done = true;
                }
                return Ok(());
            }
        };
        if data.is_empty() {
            return Ok(());
        }
        let len = data.len() as u64;
        self.body_bytes += len;
        match self.framing {
            Framing::Length(n) if self.body_bytes > n => {
                return Err(Error::new(ErrorKind::InvalidRequest, "request body longer than its content-length"));
            }
            Framing::Empty => return Err(Error::new(ErrorKind::InvalidRequest, "data in a request body declared empty")),
            Framing::Chunked => {
                push_hex(buf, len);
                buf.extend_from_slice(b"\r\n");
            }
            Framing::Length(_) => {}
        }
        let crlf: &'static [u8] = if self.framing == Framing::Chunked { b"\r\n" } else { b"" };
        if data.len() <= COPY_MAX || !vectored {
            buf.extend_from_slice(&data);
            buf.extend_from_slice(crlf);
            data.clear();
        } else {
            self.data = data;
            self.tail = crlf;
        }
        Ok(())
    }

    /// Writes the staged bytes, the large frame and its tail.
    fn poll_flush_staged<IO: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut IO,
        buf: &mut Vec<u8>,
    ) -> Poll<Result<(), WriteError>> {
        while self.pos < buf.len() || !self.data.is_empty() || !self.tail.is_empty() {
            let parts = [IoSlice::new(&buf[self.pos..]), IoSlice::new(&self.data), IoSlice::new(self.tail)];
            let n = if self.data.is_empty() && self.tail.is_empty() {
                ready!(Pin::new(&mut *io).poll_write(cx, &buf[self.pos..]))
            } else {
                ready!(Pin::new(&mut *io).poll_write_vectored(cx, &parts))
            }
            .map_err(|error| WriteError::Io { error, sent: self.sent })?;
            if n == 0 {
                return Poll::Ready(Err(WriteError::Io { error: io::ErrorKind::WriteZero.into(), sent: self.sent }));
            }
            self.sent += n as u64;
            self.dirty = true;
            let mut n = n;
            let staged = (buf.len() - self.pos).min(n);
            self.pos += staged;
            n -= staged;
            let from_data = self.data.len().min(n);
            self.data.advance(from_data);
            n -= from_data;
            self.tail = &self.tail[n.min(self.tail.len())..];
        }
        buf.clear();
        self.pos = 0;
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        for n in [0u64, 1, 9, 10, 255, 4096, u64::MAX] {
            let mut v = Vec::new();
            push_decimal(&mut v, n);
            assert_eq!(v, n.to_string().as_bytes());
            v.clear();
            push_hex(&mut v, n);
            assert_eq!(v, format!("{n:X}").as_bytes());
        }
    }
}
