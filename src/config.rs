//! Configuration: the YAML file (`model`), the checks that turn it into a
//! [`Config`] (`validate`), and the errors with line, column and key path
//! that `fusebox check` and a failed reload report.
//!
//! A `Config` that exists has passed every check: the data path never sees an
//! unchecked value. This module reads files and environment variables but
//! owns no runtime state: swapping configs live is `reload`'s job.

pub mod model;
pub mod reload;
pub mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::uri::{Authority, Scheme};

use crate::breaker::Policy;

pub use validate::parse;

/// A checked configuration, ready to be published.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// Tokio worker threads; 0 = one per core.
    pub workers: usize,
    pub tls: Option<ListenerTls>,
    pub shutdown: ShutdownConfig,
    pub store: Option<PathBuf>,
    pub admin: AdminConfig,
    pub auth: AuthConfig,
    pub upstreams: Vec<UpstreamConfig>,
    pub routes: Vec<RouteConfig>,
    /// Record per-request metrics (`metrics.requests`, default true).
    pub request_metrics: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShutdownConfig {
    /// How long `/readyz` fails before the listeners stop accepting.
    pub drain_delay: Duration,
    /// How long in-flight requests get to finish after that.
    pub grace_period: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthConfig {
    /// No authentication: allowed, with a loud warning at start.
    None,
    Jwt(JwtConfig),
}

#[derive(Clone, PartialEq, Eq)]
pub struct JwtConfig {
    pub key: JwtKey,
    pub admin_role: String,
    /// The claim roles are read from; `None` means `role` or `roles`.
    pub role_claim: Option<String>,
    pub require_for_reads: bool,
}

/// Where the verification key comes from. Secrets are resolved at load time
/// and never printed (see the `Debug` impl).
#[derive(Clone, PartialEq, Eq)]
pub enum JwtKey {
    Hs256 { source: String, secret: Vec<u8> },
    PublicKey { file: PathBuf, pem: Vec<u8> },
}

/// One upstream with every default already applied.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    pub name: String,
    pub endpoints: Vec<Endpoint>,
    pub load_balancing: LoadBalancing,
    pub protocol: Protocol,
    pub breaker: Policy,
    pub health_check: Option<HealthCheck>,
    pub timeouts: Timeouts,
    pub max_concurrent_requests: usize,
    pub fallback: Option<Fallback>,
    /// TLS to the upstream (for `https://` endpoints).
    pub tls: crate::tls::UpstreamTls,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub scheme: Scheme,
    pub authority: Authority,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadBalancing {
    RoundRobin,
    LeastRequest,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    /// HTTP/2 with prior knowledge (h2c).
    Http2,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    /// Time allowed until the upstream's response headers arrive.
    pub request: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fallback {
    pub status: http::StatusCode,
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    pub body: bytes::Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    pub host: Option<String>,
    pub path_prefix: Option<String>,
    pub upstream: String,
}

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key path, e.g. `upstreams.market-data.breaker.failureThreshold`.
    pub path: String,
    /// 1-based line and column, when known.
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

/// Every problem found in one file (never empty).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors {
    pub file: Option<PathBuf>,
    pub errors: Vec<ConfigError>,
}

// === impl Config ===

impl Config {
    /// Reads, expands `${NAME}` references, parses and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
            file: Some(path.to_path_buf()),
            errors: vec![ConfigError::at_root(format!("cannot read file: {e}"))],
        })?;
        parse(&text).map_err(|mut e| {
            e.file = Some(path.to_path_buf());
            e
        })
    }

    pub fn upstream(&self, name: &str) -> Option<&UpstreamConfig> {
        self.upstreams.iter().find(|u| u.name == name)
    }
}

// === impl JwtConfig ===

impl fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtConfig")
            .field("key", &self.key)
            .field("admin_role", &self.admin_role)
            .field("role_claim", &self.role_claim)
            .field("require_for_reads", &self.require_for_reads)
            .finish()
    }
}

impl fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwtKey::Hs256 { source, .. } => write!(f, "Hs256({source}, secret redacted)"),
            JwtKey::PublicKey { file, .. } => write!(f, "PublicKey({})", file.display()),
        }
    }
}

// === impl Endpoint ===

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.authority)
    }
}

// === impl ConfigError ===

impl ConfigError {
    pub fn at_root(message: impl Into<String>) -> ConfigError {
        ConfigError { path: String::new(), line: None, column: None, message: message.into() }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "line {l}, column {c}: ")?,
            (Some(l), None) => write!(f, "line {l}: ")?,
            _ => {}
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        match &self.file {
            Some(p) => write!(f, "{}: {n} error(s)", p.display())?,
            None => write!(f, "{n} config error(s)")?,
        }
        for e in &self.errors {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}
