//! `fusebox healthcheck [URL]`: one plain-HTTP GET with a deadline, for
//! Docker's `HEALTHCHECK` in an image that has no curl or shell. Healthy
//! means a 2xx status line within the timeout; anything else (refused,
//! slow, non-2xx, not HTTP) is unhealthy, with one line saying why.
//!
//! Must not: follow redirects, speak TLS, read more than the status line
//! (a body is never needed), or start a runtime: it is a blocking call of
//! a few hundred bytes, over before a tokio runtime would have started.

use std::io::{Read as _, Write as _};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use tokio::time::Instant;

/// What `HEALTHCHECK` probes by default: the admin listener's liveness.
pub const DEFAULT_URL: &str = "http://127.0.0.1:9901/livez";

/// The most of the answer read: a status line fits with room to spare.
const MAX_HEAD: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("`{0}` is not an http:// URL with a host (healthcheck speaks plain HTTP only)")]
    Url(String),
    #[error("cannot resolve {0}")]
    Resolve(String),
    #[error("{addr}: {source}")]
    Io { addr: String, source: std::io::Error },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the answer is not HTTP: {0}")]
    NotHttp(String),
    #[error("status {0}")]
    Status(u16),
}

/// GETs `url`; `Ok(status)` for a 2xx within `timeout`.
pub fn probe(url: &str, timeout: Duration) -> Result<u16, HealthError> {
    let uri: http::Uri = url.parse().map_err(|_| HealthError::Url(url.to_string()))?;
    if uri.scheme_str() != Some("http") {
        return Err(HealthError::Url(url.to_string()));
    }
    let authority = uri.authority().ok_or_else(|| HealthError::Url(url.to_string()))?;
    let host = authority.host().trim_start_matches('[').trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(80);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let deadline = Instant::now() + timeout;
    let addr = (host, port)
        .to_socket_addrs()
        .map_err(|_| HealthError::Resolve(authority.to_string()))?
        .next()
        .ok_or_else(|| HealthError::Resolve(authority.to_string()))?;
    let io = |source: std::io::Error| match source.kind() {
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => HealthError::Timeout(timeout),
        _ => HealthError::Io { addr: addr.to_string(), source },
    };
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(io)?;
    let left = || deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    stream.set_write_timeout(Some(left())).map_err(io)?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: fusebox-healthcheck\r\nConnection: close\r\nAccept: */*\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(io)?;
    let mut head = Vec::with_capacity(128);
    let mut buf = [0u8; 256];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < MAX_HEAD {
        if Instant::now() >= deadline {
            return Err(HealthError::Timeout(timeout));
        }
        stream.set_read_timeout(Some(left())).map_err(io)?;
        match stream.read(&mut buf).map_err(io)? {
            0 => break,
            n => head.extend_from_slice(&buf[..n.min(MAX_HEAD - head.len())]),
        }
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let status = status_of(&line).ok_or_else(|| HealthError::NotHttp(crate::text::escape_controls(&line).chars().take(80).collect()))?;
    if (200..300).contains(&status) {
        Ok(status)
    } else {
        Err(HealthError::Status(status))
    }
}

/// The status code of an `HTTP/1.x NNN reason` line.
fn status_of(line: &str) -> Option<u16> {
    let mut parts = line.splitn(3, ' ');
    let version = parts.next()?;
    let code = parts.next()?;
    (version.starts_with("HTTP/1.") && code.len() == 3).then(|| code.parse().ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_status_line() {
        assert_eq!(status_of("HTTP/1.1 200 OK"), Some(200));
        assert_eq!(status_of("HTTP/1.0 503"), Some(503));
        assert_eq!(status_of("SSH-2.0-OpenSSH"), None);
        assert_eq!(status_of("HTTP/1.1 2000 x"), None);
    }

    #[test]
    fn refuses_what_it_cannot_probe() {
        for url in ["https://127.0.0.1/livez", "127.0.0.1:9901", "http:///x"] {
            assert!(matches!(probe(url, Duration::from_millis(100)), Err(HealthError::Url(_))), "{url}");
        }
    }
}
