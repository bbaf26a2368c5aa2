//! Blame, typed: every way a proxied request can go wrong, by whose fault
//! it was — the client's, the upstream's or fusebox's own — mapped once to
//! the status and JSON code the client sees, the metric outcome, whether a
//! circuit or an endpoint counts it, and which `retry.on` condition (if
//! any) may try it again. Call sites classify a cause into a [`Fault`];
//! they never decide status, metrics or breaker effect themselves.
//!
//! Owns the taxonomy and the classification of transport errors; must not
//! touch circuits, endpoints or metrics (the caller acts on the answers).

use std::fmt;

use http::StatusCode;

use crate::config::RetryOn;
use crate::telemetry::metrics::Outcome;

/// Why a proxied request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Client(ClientFault),
    Upstream(UpstreamFault),
    Local(LocalFault),
}

/// The client's fault: never counted for any circuit or endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFault {
    /// The request body broke mid-way (malformed chunk, truncated upload).
    MalformedBody,
    /// The upload paused longer than `timeouts.idle`.
    UploadStalled,
    /// A request fusebox refuses before routing (no `Host`, two of them).
    BadRequest(&'static str),
}

/// The upstream's fault: counted for its endpoint and (as the final outcome
/// of a client request) for its circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFault {
    /// Could not connect (refused, unreachable, connect timeout, TLS
    /// handshake): the request never reached it.
    Connect,
    /// No response head within `timeouts.request` after the request body.
    Timeout,
    /// The connection closed or reset before a response head.
    Reset,
    /// It answered something that is not HTTP.
    Protocol,
    /// The response body paused longer than `timeouts.idle`.
    BodyStalled,
    /// The response body broke mid-way.
    BodyBroken,
    /// It answered with a status in `failureStatuses` (forwarded as it is;
    /// counted for its endpoint).
    Status(u16),
    /// Refused the connection while its upstream has never answered, within
    /// `startupGrace` of the endpoint appearing: the app beside the sidecar
    /// is still starting. Excused: counted by no circuit and no endpoint, answered
    /// 503 `upstream_starting` with `Retry-After: 1`.
    Starting,
}

/// fusebox's own fault (out of file descriptors, memory): answered with the
/// overloaded 503, never counted against an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalFault {
    Resources,
    /// A hostname upstream with no address resolved (yet).
    NoEndpoint,
}

// === impl Fault ===

impl Fault {
    /// The status fusebox answers with.
    pub fn status(self) -> StatusCode {
        match self {
            Fault::Client(ClientFault::UploadStalled) => StatusCode::REQUEST_TIMEOUT,
            Fault::Client(_) => StatusCode::BAD_REQUEST,
            Fault::Upstream(UpstreamFault::Timeout) => StatusCode::GATEWAY_TIMEOUT,
            Fault::Upstream(UpstreamFault::Starting) => StatusCode::SERVICE_UNAVAILABLE,
            Fault::Upstream(_) => StatusCode::BAD_GATEWAY,
            Fault::Local(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The `error.code` of the JSON body.
    pub fn code(self) -> &'static str {
        match self {
            Fault::Client(ClientFault::MalformedBody) => "bad_request_body",
            Fault::Client(ClientFault::UploadStalled) => "request_body_timeout",
            Fault::Client(ClientFault::BadRequest(_)) => "bad_request",
            // One code for every 502, as the first release answered; the
            // message and the metrics say which fault it was.
            Fault::Upstream(UpstreamFault::Timeout) => "upstream_timeout",
            Fault::Upstream(UpstreamFault::Starting) => "upstream_starting",
            Fault::Upstream(_) => "upstream_unavailable",
            Fault::Local(LocalFault::Resources) => "overloaded",
            Fault::Local(LocalFault::NoEndpoint) => "no_endpoint",
        }
    }

    /// The `outcome` of `fusebox_requests_total`, for faults counted there
    /// (the client's and fusebox's own are counted elsewhere).
    pub fn outcome(self) -> Option<Outcome> {
        match self {
            Fault::Upstream(UpstreamFault::Timeout) => Some(Outcome::Timeout),
            Fault::Upstream(UpstreamFault::Starting) => Some(Outcome::Rejected),
            Fault::Upstream(_) => Some(Outcome::Failure),
            Fault::Client(_) | Fault::Local(_) => None,
        }
    }

    /// Whether circuits and endpoints count it as a failure.
    pub fn counts(self) -> bool {
        matches!(self, Fault::Upstream(f) if f != UpstreamFault::Starting)
    }

    /// Seconds a client should wait before trying again, when fusebox
    /// knows (`Retry-After`).
    pub fn retry_after(self) -> Option<u64> {
        match self {
            Fault::Upstream(UpstreamFault::Starting) => Some(1),
            _ => None,
        }
    }

    /// Whether the response carries `x-fusebox-overloaded: true`.
    pub fn overloaded(self) -> bool {
        matches!(self, Fault::Local(_))
    }

    /// The `retry.on` condition that may try it again, if any. Only
    /// faults before a response head can be retried at all.
    pub fn retry_on(self) -> Option<RetryOn> {
        match self {
            Fault::Upstream(UpstreamFault::Connect | UpstreamFault::Starting) => Some(RetryOn::CONNECT_FAILURE),
            Fault::Upstream(UpstreamFault::Reset | UpstreamFault::Protocol) => Some(RetryOn::RESET),
            Fault::Upstream(UpstreamFault::Timeout) => Some(RetryOn::STATUS_504),
            _ => None,
        }
    }

    /// The label of `fusebox_client_errors_total` or of a retry's reason.
    pub fn label(self) -> &'static str {
        match self {
            Fault::Client(ClientFault::MalformedBody) => "bad_body",
            Fault::Client(ClientFault::UploadStalled) => "upload_stalled",
            Fault::Client(ClientFault::BadRequest(_)) => "bad_request",
            Fault::Upstream(UpstreamFault::Connect) => "connect-failure",
            Fault::Upstream(UpstreamFault::Timeout) => "timeout",
            Fault::Upstream(UpstreamFault::Reset) => "reset-before-response",
            Fault::Upstream(UpstreamFault::Protocol) => "protocol",
            Fault::Upstream(UpstreamFault::BodyStalled) => "body-stalled",
            Fault::Upstream(UpstreamFault::BodyBroken) => "body-broken",
            Fault::Upstream(UpstreamFault::Status(_)) => "status",
            Fault::Upstream(UpstreamFault::Starting) => "upstream-starting",
            Fault::Local(LocalFault::Resources) => "resources",
            Fault::Local(LocalFault::NoEndpoint) => "no-endpoint",
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fault::Client(ClientFault::MalformedBody) => "the request body was malformed or cut short",
            Fault::Client(ClientFault::UploadStalled) => "the request body stalled (timeouts.idle)",
            Fault::Client(ClientFault::BadRequest(why)) => why,
            Fault::Upstream(UpstreamFault::Connect) => "could not connect",
            Fault::Upstream(UpstreamFault::Timeout) => "no response in time (timeouts.request)",
            Fault::Upstream(UpstreamFault::Reset) => "connection closed before a response",
            Fault::Upstream(UpstreamFault::Protocol) => "invalid HTTP response",
            Fault::Upstream(UpstreamFault::BodyStalled) => "response body stalled (timeouts.idle)",
            Fault::Upstream(UpstreamFault::BodyBroken) => "response body broke mid-way",
            Fault::Upstream(UpstreamFault::Status(_)) => "answered with a failure status",
            Fault::Upstream(UpstreamFault::Starting) => "starting: it refused the connection and has not answered yet (startupGrace)",
            Fault::Local(LocalFault::Resources) => "fusebox is out of resources (file descriptors or memory)",
            Fault::Local(LocalFault::NoEndpoint) => "no endpoint address is resolved",
        })
    }
}

/// Whether an error chain holds an OS error that means fusebox itself is
/// out of resources (EMFILE, ENFILE, ENOBUFS, ENOMEM).
pub fn is_resource_exhaustion(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if matches!(io.raw_os_error(), Some(23 | 24 | 105 | 12)) {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

/// Whether an error chain holds a refused connection (ECONNREFUSED): the
/// address is reachable and nothing listens there (yet).
pub fn is_connection_refused(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

/// An error and its sources on one line.
pub fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let next = inner.to_string();
        if !s.ends_with(&next) {
            s.push_str(": ");
            s.push_str(&next);
        }
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_upstream_faults_count() {
        for f in [Fault::Client(ClientFault::MalformedBody), Fault::Client(ClientFault::UploadStalled), Fault::Local(LocalFault::Resources)]
        {
            assert!(!f.counts(), "{f:?}");
            assert!(f.retry_on().is_none());
        }
        assert_eq!(Fault::Client(ClientFault::UploadStalled).status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(Fault::Local(LocalFault::Resources).status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(Fault::Upstream(UpstreamFault::Reset).counts());
        assert_eq!(Fault::Upstream(UpstreamFault::Timeout).outcome(), Some(Outcome::Timeout));
    }

    #[test]
    fn a_starting_upstream_is_excused_and_answered_503_with_retry_after() {
        let f = Fault::Upstream(UpstreamFault::Starting);
        assert!(!f.counts());
        assert_eq!(f.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(f.code(), "upstream_starting");
        assert_eq!(f.retry_after(), Some(1));
        assert_eq!(f.retry_on(), Some(RetryOn::CONNECT_FAILURE));
        assert!(is_connection_refused(&std::io::Error::from(std::io::ErrorKind::ConnectionRefused)));
        assert!(!is_connection_refused(&std::io::Error::from(std::io::ErrorKind::TimedOut)));
    }

    #[test]
    fn emfile_is_ours() {
        let e = std::io::Error::from_raw_os_error(24);
        assert!(is_resource_exhaustion(&e));
        let e = std::io::Error::from_raw_os_error(111);
        assert!(!is_resource_exhaustion(&e));
    }
}
