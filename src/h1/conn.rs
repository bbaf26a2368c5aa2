//! One HTTP/1.1 connection to an upstream and the exchange on it: write the
//! request while watching for the response, parse the final head, and hand
//! the connection to the response [`Body`] (or straight back through
//! [`Recycle`] when there is no body).
//!
//! Must not: spawn, time out, or keep a connection whose state is unknown
//! (any error or early end drops it, which closes it).

use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::Response;
use http_body::Body as HttpBody;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use super::body::Body;

/// `Keep-Alive` (RFC 9112 appendix C.2.2), looked up by name once per
/// response: a `&str` key would be parsed and hashed anew every time.
static KEEP_ALIVE: http::HeaderName = http::HeaderName::from_static("keep-alive");
use super::encode::{encode_head, Encoded, WriteError, Writer};
use super::error::{Error, ErrorKind};
use super::parse::{parse_head, Asked, Head};
use super::{Recycle, MAX_HEAD_BYTES, READ_CHUNK};

/// An HTTP/1.1 client connection: the stream and its two buffers, kept
/// across exchanges so a reused connection allocates nothing to start one.
pub struct Connection<IO> {
    pub(super) io: IO,
    /// Bytes read and not yet consumed.
    pub(super) read_buf: BytesMut,
    /// The request head (and small body frames) being written.
    write_buf: Vec<u8>,
    /// At least one exchange ended cleanly on it.
    pub(super) reused: bool,
    /// The upstream's `Keep-Alive: timeout=N` of its last response: how
    /// long it keeps the connection open idle.
    keep_alive: Option<Duration>,
}

// === impl Connection ===

impl<IO> Connection<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send,
{
    /// Wraps a connected stream (TCP, or TLS over TCP) that has carried no
    /// HTTP yet.
    pub fn new(io: IO) -> Connection<IO> {
        Connection { io, read_buf: BytesMut::new(), write_buf: Vec::new(), reused: false, keep_alive: None }
    }

    /// The connection carried an earlier exchange (so an EOF before the
    /// response is the keep-alive race, [`ErrorKind::ClosedIdle`]).
    pub fn is_reused(&self) -> bool {
        self.reused
    }

    /// Checks without waiting that an idle connection can carry a request:
    /// an idle HTTP/1.1 connection that is readable (EOF, an error, or
    /// bytes nobody asked for, like a 408) is dead. Reads at most a few
    /// bytes, which only happens when the connection is dead anyway.
    pub fn is_usable(&mut self) -> bool {
        if !self.read_buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        let mut probe = [0u8; 8];
        let mut probe = ReadBuf::new(&mut probe);
        matches!(Pin::new(&mut self.io).poll_read(&mut cx, &mut probe), Poll::Pending)
    }

    /// How long the upstream said (`Keep-Alive: timeout=N`, RFC 9112's
    /// hint) it keeps this connection open while idle, if it did.
    pub fn keep_alive_timeout(&self) -> Option<Duration> {
        self.keep_alive
    }

    /// Gives back the stream and any bytes read from it not yet consumed.
    pub fn into_parts(self) -> (IO, Bytes) {
        (self.io, self.read_buf.freeze())
    }

    /// Sends one request and waits for its final response head. The head's
    /// method, URI and headers are written as they are (see the framing
    /// rules in `h1.rs`); `recycle` receives the connection when the
    /// exchange ends cleanly and it may be reused.
    ///
    /// The head is encoded before this returns, so the future borrows
    /// nothing. Dropping the future closes the connection.
    pub fn send<B, R>(
        mut self,
        head: &http::request::Parts,
        body: B,
        recycle: R,
    ) -> impl Future<Output = Result<Response<Body<IO, R>>, Error>> + Send
    where
        B: HttpBody<Data = Bytes> + Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        R: Recycle<IO>,
    {
        let encoded = encode_head(&mut self.write_buf, head, body.is_end_stream(), &body.size_hint());
        async move {
            let encoded = encoded?;
            let mut body = pin!(body);
            let mut exchange =
                Exchange { writer: Writer::new(encoded.framing), writing: true, write_error: None, received: 0, fresh: false, scanned: 0 };
            let asked = Asked { head: encoded.head, connect: encoded.connect };
            let head = std::future::poll_fn(|cx| exchange.poll_head(cx, &mut self, body.as_mut(), asked)).await?;
            Ok(self.respond(head, &encoded, exchange.writing, recycle))
        }
    }

    /// Builds the response around the parsed head, recycling at once when
    /// there is no body to read.
    fn respond<R: Recycle<IO>>(mut self, head: Head, encoded: &Encoded, still_writing: bool, recycle: R) -> Response<Body<IO, R>> {
        // An early response leaves the request half sent: never reuse.
        let keep_alive = head.keep_alive && !encoded.close && !still_writing;
        if let Some(v) = head.parts.headers.get(&KEEP_ALIVE) {
            self.keep_alive = keep_alive_timeout(v.as_bytes());
        }
        let body = match head.framing {
            super::parse::Framing::Empty => {
                if keep_alive && self.read_buf.is_empty() {
                    self.reused = true;
                    recycle.recycle(self);
                }
                Body::empty()
            }
            framing => Body::new(self, framing, keep_alive, recycle),
        };
        Response::from_parts(head.parts, body)
    }

    /// Reads at most `limit` more bytes into the read buffer.
    pub(super) fn poll_read_buf(&mut self, cx: &mut Context<'_>, limit: usize) -> Poll<io::Result<usize>> {
        if self.read_buf.capacity() - self.read_buf.len() < limit.min(1024) {
            self.read_buf.reserve(READ_CHUNK.min(limit));
        }
        let mut limited = (&mut self.read_buf).limit(limit);
        let read = pin!(self.io.read_buf(&mut limited));
        read.poll(cx)
    }
}

impl<IO> std::fmt::Debug for Connection<IO> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("h1::Connection").field("buffered", &self.read_buf.len()).field("reused", &self.reused).finish()
    }
}

/// The state of one exchange until its final response head.
struct Exchange {
    writer: Writer,
    writing: bool,
    write_error: Option<(io::Error, u64)>,
    /// Response bytes received (interim heads included).
    received: u64,
    /// Bytes arrived since the last parse.
    fresh: bool,
    /// Bytes at the start of the read buffer known to hold no blank line.
    scanned: usize,
}

// === impl Exchange ===

impl Exchange {
    fn poll_head<IO, B>(
        &mut self,
        cx: &mut Context<'_>,
        conn: &mut Connection<IO>,
        mut body: Pin<&mut B>,
        asked: Asked,
    ) -> Poll<Result<Head, Error>>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send,
        B: HttpBody<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        loop {
            if self.writing {
                match self.writer.poll_write(cx, &mut conn.io, &mut conn.write_buf, body.as_mut()) {
                    Poll::Ready(Ok(())) => self.writing = false,
                    Poll::Ready(Err(WriteError::Request(e))) => return Poll::Ready(Err(e)),
                    Poll::Ready(Err(WriteError::Io { error, sent: 0 })) => {
                        return Poll::Ready(Err(Error::io(ErrorKind::NotSent, "the connection failed before the request", error)));
                    }
                    Poll::Ready(Err(WriteError::Io { error, sent })) => {
                        // The upstream may have answered and closed (a 413):
                        // a response already readable still counts.
                        self.writing = false;
                        self.write_error = Some((error, sent));
                        self.fresh = true;
                    }
                    Poll::Pending => {}
                }
            }
            if self.fresh {
                self.fresh = false;
                // A head is complete only at a blank line: look for one in
                // the new bytes before parsing, so a head trickling in
                // byte by byte costs linear time, not quadratic.
                // The first bytes are parsed at once, so a status line that
                // is not HTTP fails fast.
                let from = self.scanned.saturating_sub(2);
                let buffered = &conn.read_buf[from.min(conn.read_buf.len())..];
                if self.scanned == 0 || buffered.windows(2).any(|w| w == b"\n\n") || buffered.windows(3).any(|w| w == b"\n\r\n") {
                    if let Some(head) = parse_head(&mut conn.read_buf, asked)? {
                        return Poll::Ready(Ok(head));
                    }
                }
                // What is left holds no complete head, so no blank line.
                self.scanned = conn.read_buf.len();
                if self.scanned >= MAX_HEAD_BYTES {
                    return Poll::Ready(Err(Error::new(ErrorKind::TooLarge, "response head over the size limit")));
                }
            }
            let room = MAX_HEAD_BYTES.saturating_sub(conn.read_buf.len()).clamp(1, READ_CHUNK);
            match conn.poll_read_buf(cx, room) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(self.closed(conn, None))),
                Poll::Ready(Ok(n)) => {
                    self.received += n as u64;
                    self.fresh = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(self.closed(conn, Some(e)))),
                Poll::Pending if self.write_error.is_some() => return Poll::Ready(Err(self.closed(conn, None))),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Classifies the end of the connection before a complete head.
    fn closed<IO>(&mut self, conn: &Connection<IO>, read_error: Option<io::Error>) -> Error {
        let reset = |e: &io::Error| {
            matches!(e.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionAborted)
        };
        if self.received > 0 {
            return match read_error {
                Some(e) => Error::io(ErrorKind::Read, "reading the response head failed", e),
                None => Error::new(ErrorKind::Incomplete, "connection closed inside the response head"),
            };
        }
        // Nothing of the response arrived.
        let write_error = self.write_error.take();
        let raced = match (&read_error, &write_error) {
            (Some(e), _) => reset(e),
            (None, Some((e, _))) => reset(e),
            (None, None) => true,
        };
        if conn.reused && raced {
            let what = "the upstream closed the idle connection as the request was sent";
            return match read_error.or(write_error.map(|(e, _)| e)) {
                Some(e) => Error::io(ErrorKind::ClosedIdle, what, e),
                None => Error::new(ErrorKind::ClosedIdle, what),
            };
        }
        match (read_error, write_error) {
            (_, Some((e, _))) => Error::io(ErrorKind::Write, "writing the request failed", e),
            (Some(e), None) => Error::io(ErrorKind::Read, "reading the response failed", e),
            (None, None) => Error::new(ErrorKind::Closed, "connection closed before any response"),
        }
    }
}

/// `timeout=N` of a `Keep-Alive` header value (`timeout=5, max=100`).
fn keep_alive_timeout(value: &[u8]) -> Option<Duration> {
    let text = std::str::from_utf8(value).ok()?;
    text.split(',').find_map(|part| {
        let (k, v) = part.split_once('=')?;
        if !k.trim().eq_ignore_ascii_case("timeout") {
            return None;
        }
        v.trim().parse::<u64>().ok().map(|s| Duration::from_secs(s.min(86_400)))
    })
}

#[cfg(test)]
mod tests {
    use super::keep_alive_timeout;
    use std::time::Duration;

    #[test]
    fn keep_alive_timeout_is_read_from_the_header() {
        assert_eq!(keep_alive_timeout(b"timeout=5, max=100"), Some(Duration::from_secs(5)));
        assert_eq!(keep_alive_timeout(b"max=100, Timeout = 2"), Some(Duration::from_secs(2)));
        assert_eq!(keep_alive_timeout(b"max=100"), None);
        assert_eq!(keep_alive_timeout(b"timeout=soon"), None);
        assert_eq!(keep_alive_timeout(b"timeout=99999999999"), Some(Duration::from_secs(86_400)));
    }
}
