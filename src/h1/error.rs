//! The codec's one error type: what went wrong ([`ErrorKind`]), decided
//! where it happened, so the caller can tell "the request never reached the
//! upstream" (retry) from "it failed after sending" from "the upstream
//! answered garbage".
//!
//! Must not: decide statuses, metrics or retries; that is the caller's one
//! `match` over [`ErrorKind`].

use std::fmt;
use std::io;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What went wrong, and so whose fault it was and whether a retry is safe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// No byte of the request was written: the connection was found closed
    /// or reset. Safe to retry on another connection.
    NotSent,
    /// A reused connection was closed (EOF or reset) before any byte of the
    /// response arrived: the upstream closed it while idle, racing our
    /// request (RFC 9112 §9.3.1), so it did not process the request. Safe to
    /// retry on another connection.
    ClosedIdle,
    /// A fresh connection was closed before any byte of the response. The
    /// upstream may have seen the request.
    Closed,
    /// Writing the request failed after some of it was sent.
    Write,
    /// Reading the response failed (an I/O error, after sending).
    Read,
    /// The connection ended inside the response head or body.
    Incomplete,
    /// The response is not valid HTTP/1.x (bad status line or field,
    /// obs-fold, invalid or conflicting `content-length`, bad chunk, ...).
    Malformed,
    /// The response head, its trailers or its chunk extensions are over the
    /// codec's limits.
    TooLarge,
    /// The request body (the caller's stream) failed.
    RequestBody,
    /// The request cannot be framed (conflicting or invalid framing headers,
    /// or a body that does not match its `content-length`). The caller's
    /// fault; nothing is sent if it is found before writing.
    InvalidRequest,
}

/// A failed exchange. [`Error::kind`] classifies it; the source, when there
/// is one, is the I/O error or the request body's error.
pub struct Error {
    kind: ErrorKind,
    what: &'static str,
    source: Option<BoxError>,
}

// === impl ErrorKind ===

impl ErrorKind {
    fn describe(self) -> &'static str {
        match self {
            ErrorKind::NotSent => "request not sent: connection closed",
            ErrorKind::ClosedIdle => "reused connection closed before the response",
            ErrorKind::Closed => "connection closed before the response",
            ErrorKind::Write => "writing the request failed",
            ErrorKind::Read => "reading the response failed",
            ErrorKind::Incomplete => "connection closed inside the response",
            ErrorKind::Malformed => "malformed response",
            ErrorKind::TooLarge => "response over the limits",
            ErrorKind::RequestBody => "request body failed",
            ErrorKind::InvalidRequest => "request cannot be framed",
        }
    }
}

// === impl Error ===

impl Error {
    pub(super) fn new(kind: ErrorKind, what: &'static str) -> Error {
        Error { kind, what, source: None }
    }

    pub(super) fn io(kind: ErrorKind, what: &'static str, e: io::Error) -> Error {
        Error { kind, what, source: Some(Box::new(e)) }
    }

    pub(super) fn request_body(e: BoxError) -> Error {
        Error { kind: ErrorKind::RequestBody, what: "the request body's stream failed", source: Some(e) }
    }

    pub(super) fn malformed(what: &'static str) -> Error {
        Error::new(ErrorKind::Malformed, what)
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The request never reached the upstream ([`ErrorKind::NotSent`],
    /// [`ErrorKind::ClosedIdle`]): retrying it on another connection cannot
    /// repeat its effects. The request body may still have been consumed if
    /// it was not empty; only the caller knows whether it can replay it.
    pub fn is_retryable(&self) -> bool {
        matches!(self.kind, ErrorKind::NotSent | ErrorKind::ClosedIdle)
    }

    /// The upstream broke the protocol or the connection after the request
    /// was sent (as opposed to the caller's request or body).
    pub fn is_upstream_fault(&self) -> bool {
        !matches!(self.kind, ErrorKind::RequestBody | ErrorKind::InvalidRequest)
    }

    /// A short, fixed description of the cause (no network data in it).
    pub fn detail(&self) -> &'static str {
        self.what
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("h1::Error");
        d.field("kind", &self.kind).field("what", &self.what);
        if let Some(s) = &self.source {
            d.field("source", s);
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.describe(), self.what)?;
        if let Some(s) = &self.source {
            write!(f, ": {s}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(|s| &**s as &(dyn std::error::Error + 'static))
    }
}
