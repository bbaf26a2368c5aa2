//! The response body: an `http_body::Body` that reads and decodes straight
//! from the connection it owns, and hands the connection back through
//! [`Recycle`] in the same poll that decodes the body's end, when the
//! exchange allows it. Also the way out for upgrades ([`Upgraded`]).
//!
//! Must not: hand back a connection with unread bytes, an unfinished
//! request, or `Connection: close`; or buffer more than one read.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};

use super::conn::Connection;
use super::decode::{Decoded, Decoder};
use super::error::{Error, ErrorKind};
use super::parse::Framing;
use super::{Recycle, READ_CHUNK};

/// A response body read from its connection. Dropping it before its end
/// closes the connection.
pub struct Body<IO, R> {
    /// `None` once the body ended (or never had one).
    conn: Option<Connection<IO>>,
    decoder: Decoder,
    upgrade: bool,
    keep_alive: bool,
    recycle: Option<R>,
    /// A frame decoded ahead of time (to see the end of a chunked body in
    /// the same poll as its last data).
    ahead: Option<Result<Frame<Bytes>, Error>>,
}

/// A connection after `101 Switching Protocols` (or a 2xx to CONNECT): the
/// stream, and the bytes the upstream sent after the head that were
/// already read.
#[derive(Debug)]
pub struct Upgraded<IO> {
    pub io: IO,
    pub read_buf: Bytes,
}

// === impl Body ===

impl<IO, R> Body<IO, R>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send,
    R: Recycle<IO>,
{
    pub(super) fn empty() -> Body<IO, R> {
        Body { conn: None, decoder: Decoder::Length(0), upgrade: false, keep_alive: false, recycle: None, ahead: None }
    }

    pub(super) fn new(conn: Connection<IO>, framing: Framing, keep_alive: bool, recycle: R) -> Body<IO, R> {
        let decoder = match framing {
            Framing::Length(n) => Decoder::Length(n),
            Framing::Chunked => Decoder::chunked(),
            Framing::Eof => Decoder::Eof,
            Framing::Empty | Framing::Upgrade => Decoder::Length(0),
        };
        Body { conn: Some(conn), decoder, upgrade: framing == Framing::Upgrade, keep_alive, recycle: Some(recycle), ahead: None }
    }

    /// The stream and the bytes read past the head, if the response
    /// switched protocols; otherwise the body back.
    pub fn into_upgraded(mut self) -> Result<Upgraded<IO>, Self> {
        match (self.upgrade, self.conn.take()) {
            (true, Some(conn)) => {
                let (io, read_buf) = conn.into_parts();
                Ok(Upgraded { io, read_buf })
            }
            (_, conn) => {
                self.conn = conn;
                Err(self)
            }
        }
    }

    /// The response switched protocols: see [`Body::into_upgraded`].
    pub fn is_upgrade(&self) -> bool {
        self.upgrade
    }

    /// The body ended: recycle the connection if the exchange allows it.
    fn finish(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        if self.keep_alive && conn.read_buf.is_empty() {
            if let Some(recycle) = self.recycle.take() {
                conn.reused = true;
                recycle.recycle(conn);
            }
        }
    }

    fn fail(&mut self, e: Error) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        self.conn = None;
        Poll::Ready(Some(Err(e)))
    }

    /// Decodes the next frame, reading when the buffer runs dry.
    fn poll_decode(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let decoded = match self.decoder.decode(&mut conn.read_buf) {
                Ok(d) => d,
                Err(e) => return self.fail(e),
            };
            match decoded {
                Decoded::Data(data) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Decoded::Trailers(t) => {
                    self.finish();
                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                }
                Decoded::End => {
                    self.finish();
                    return Poll::Ready(None);
                }
                Decoded::NeedMore => match conn.poll_read_buf(cx, READ_CHUNK) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(0)) => match self.decoder.on_eof() {
                        Ok(_) => {
                            self.finish();
                            return Poll::Ready(None);
                        }
                        Err(e) => return self.fail(e),
                    },
                    Poll::Ready(Ok(_)) => {}
                    Poll::Ready(Err(e)) => return self.fail(Error::io(ErrorKind::Read, "reading the response body failed", e)),
                },
            }
        }
    }

    /// After a data frame: if the rest of the body is already buffered (a
    /// chunked body's last-chunk line), decode it now so the end, and the
    /// connection's return, need no further poll.
    fn look_ahead(&mut self) {
        if self.decoder.is_done() {
            self.finish();
            return;
        }
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        if conn.read_buf.is_empty() || !matches!(self.decoder, Decoder::Chunked(_)) {
            return;
        }
        match self.decoder.decode(&mut conn.read_buf) {
            Ok(Decoded::Data(d)) => self.ahead = Some(Ok(Frame::data(d))),
            Ok(Decoded::Trailers(t)) => {
                self.finish();
                self.ahead = Some(Ok(Frame::trailers(t)));
            }
            Ok(Decoded::End) => self.finish(),
            Ok(Decoded::NeedMore) => {}
            Err(e) => {
                self.conn = None;
                self.ahead = Some(Err(e));
            }
        }
    }
}

impl<IO, R> http_body::Body for Body<IO, R>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send,
    R: Recycle<IO> + Unpin,
{
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        if let Some(frame) = this.ahead.take() {
            if frame.as_ref().is_ok_and(|f| f.is_data()) {
                this.look_ahead();
            }
            return Poll::Ready(Some(frame));
        }
        if this.upgrade {
            return Poll::Ready(None);
        }
        let polled = this.poll_decode(cx);
        if let Poll::Ready(Some(Ok(f))) = &polled {
            if f.is_data() {
                this.look_ahead();
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        (self.conn.is_none() || self.upgrade) && self.ahead.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        if self.upgrade {
            return SizeHint::with_exact(0);
        }
        let ahead = match &self.ahead {
            Some(Ok(f)) => f.data_ref().map_or(0, |d| d.len() as u64),
            _ => 0,
        };
        match (self.decoder.remaining(), &self.conn) {
            (_, None) => SizeHint::with_exact(ahead),
            (Some(n), Some(_)) => SizeHint::with_exact(n + ahead),
            (None, Some(_)) => {
                let mut h = SizeHint::new();
                h.set_lower(ahead);
                h
            }
        }
    }
}

impl<IO, R> fmt::Debug for Body<IO, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("h1::Body")
            .field("decoder", &self.decoder)
            .field("open", &self.conn.is_some())
            .field("upgrade", &self.upgrade)
            .finish()
    }
}
