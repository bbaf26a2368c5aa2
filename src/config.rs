//! Configuration: the checked [`Config`], the errors with line, column and
//! key path that `fusebox check` and a failed reload report, and [`parse`],
//! which turns a file's text into a `Config` in steps, one module each:
//! `env` expands `${NAME}`; `model` is the YAML as written (a structural
//! error is worded by `keys`); `validate` merges the layers of defaults
//! (`defaults`) and checks the result; `locate` finds the line and column
//! of a key path. `render` writes a `Config` back in the file's key names;
//! `schema` is the file's JSON Schema.
//!
//! A `Config` that exists has passed every check: the data path never sees an
//! unchecked value. This module reads files and environment variables but
//! builds no runtime object and owns no runtime state: what a config
//! becomes while fusebox runs, and swapping it live, is `runtime`'s job.

mod collect;
mod defaults;
mod env;
mod keys;
mod locate;
pub mod model;
pub mod render;
pub mod schema;
pub mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::uri::{Authority, Scheme};

use crate::breaker::Policy;

/// The largest config, key or secret file, `${NAME}` expansion and
/// fallback body accepted.
pub const MAX_FILE_BYTES: usize = 1024 * 1024;

/// An upstream's TLS settings (`tls:` of an upstream); `tls::client_config`
/// turns them into a rustls client config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamTls {
    pub ca_file: Option<PathBuf>,
    pub server_name: Option<String>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

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
    pub client: ClientConfig,
    /// One info line per request on target `fusebox::access`.
    pub access_log: bool,
    /// Upstreams that must have answered once before `/readyz` is 200.
    pub readiness_upstreams: Vec<String>,
    /// Trace context and span export (`tracing:`); None: off.
    pub tracing: Option<TracingConfig>,
    /// Shared state with the other sidecars of a fleet (`fleet:`); None: alone.
    pub fleet: Option<FleetConfig>,
}

/// `fleet:` (SPEC 10).
#[derive(Clone, PartialEq)]
pub struct FleetConfig {
    /// The Redis URL, password included (never printed: see `Debug`).
    pub redis: String,
    pub name: String,
    pub member: String,
    pub quorum: Quorum,
    pub heartbeat: Duration,
}

impl fmt::Debug for FleetConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetConfig")
            .field("redis", &crate::text::redact_url(&self.redis))
            .field("name", &self.name)
            .field("member", &self.member)
            .field("quorum", &self.quorum)
            .field("heartbeat", &self.heartbeat)
            .finish()
    }
}

/// How many members make a fleet verdict.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Quorum {
    Members(u32),
    /// A share of the live members (percent), never fewer than 2.
    Percent(f64),
}

impl Quorum {
    /// The members needed among `live`: never fewer than 2, so one member
    /// alone (a sidecar with a broken path of its own) never opens the fleet.
    pub fn needed(self, live: usize) -> usize {
        let n = match self {
            Quorum::Members(n) => n as usize,
            Quorum::Percent(p) => ((live as f64) * p / 100.0).ceil() as usize,
        };
        n.max(2)
    }
}

/// `tracing:` with the `OTEL_*` variables applied: on when an OTLP
/// endpoint is known (from the file or the environment).
#[derive(Debug, Clone, PartialEq)]
pub struct TracingConfig {
    /// Share of requests without trace context that start a trace.
    pub sample_rate: f64,
    pub service_name: String,
    pub otlp: OtlpConfig,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpConfig {
    /// The full URL spans are POSTed to (`.../v1/traces`).
    pub endpoint: http::Uri,
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    pub timeout: Duration,
}

/// Deadlines and limits of the data listener's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientConfig {
    /// From accept until a complete request head (before protocol detection too).
    pub header_timeout: Duration,
    /// Keep-alive idle (h1) or no open stream (h2, then GOAWAY).
    pub idle_timeout: Duration,
    /// Above it new data connections wait in the backlog.
    pub max_connections: usize,
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
    /// Origins (`scheme://host[:port]`) besides the listener's own allowed
    /// to call mutations and open the WebSocket from a browser.
    pub allowed_origins: Vec<String>,
    /// Host names, lowercase, each with an optional `:port` (or `*`: any
    /// host), that requests may name in `Host` besides the listener's own
    /// address, `localhost` and IP literals (DNS rebinding defence).
    pub allowed_hosts: Vec<String>,
    /// TLS on the admin listener (`https://`, `wss://`), rotated like the
    /// data listener's.
    pub tls: Option<ListenerTls>,
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
    pub issuer: Option<String>,
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`.
    pub leeway: Duration,
}

/// Where the verification key comes from. Secrets are resolved at load time
/// and never printed (see the `Debug` impl).
#[derive(Clone, PartialEq, Eq)]
pub enum JwtKey {
    /// `file` is set when the secret came from `hs256SecretFile`.
    Hs256 {
        source: String,
        file: Option<PathBuf>,
        secret: Vec<u8>,
    },
    PublicKey {
        file: PathBuf,
        pem: Vec<u8>,
    },
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
    pub tls: UpstreamTls,
    pub outlier_detection: OutlierDetection,
    pub retry: RetryPolicy,
    /// How often hostname endpoints are resolved again.
    pub dns_refresh: Duration,
    /// How long after it appears an endpoint that never answered is
    /// starting: a refused connect to it answers 503 `upstream_starting`
    /// and counts for nothing (0: off).
    pub startup_grace: Duration,
    /// Longest an upstream connection sits idle in its pool (lowered per
    /// connection by the upstream's `Keep-Alive: timeout=`).
    pub pool_idle_timeout: Duration,
}

/// Passive outlier detection, per endpoint (Envoy's, simplified).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierDetection {
    /// Upstream faults in a row that eject an endpoint; 0 turns it off.
    pub consecutive_failures: u32,
    pub base_ejection_time: Duration,
    pub max_ejection_time: Duration,
    pub max_ejection_percent: u32,
}

/// Which failed attempts may be tried again, and how many.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Extra attempts after the first.
    pub attempts: u32,
    pub on: RetryOn,
    /// Retries stay under `ratio` x requests of the last 10 s ...
    pub budget_ratio: f64,
    /// ... plus this many per second.
    pub budget_min_per_second: u32,
}

/// The `retry.on` conditions, as bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetryOn(pub u8);

impl RetryOn {
    pub const CONNECT_FAILURE: RetryOn = RetryOn(1);
    pub const RESET: RetryOn = RetryOn(2);
    pub const STATUS_502: RetryOn = RetryOn(4);
    pub const STATUS_503: RetryOn = RetryOn(8);
    pub const STATUS_504: RetryOn = RetryOn(16);
    /// The names `retry.on` accepts, with their bits.
    pub const NAMES: [(&'static str, RetryOn); 5] = [
        ("connect-failure", RetryOn::CONNECT_FAILURE),
        ("reset-before-response", RetryOn::RESET),
        ("502", RetryOn::STATUS_502),
        ("503", RetryOn::STATUS_503),
        ("504", RetryOn::STATUS_504),
    ];

    pub fn contains(self, other: RetryOn) -> bool {
        self.0 & other.0 == other.0
    }

    /// The bit for a response status, if `retry.on` can name it.
    pub fn for_status(status: u16) -> Option<RetryOn> {
        match status {
            502 => Some(RetryOn::STATUS_502),
            503 => Some(RetryOn::STATUS_503),
            504 => Some(RetryOn::STATUS_504),
            _ => None,
        }
    }

    pub fn names(self) -> Vec<&'static str> {
        RetryOn::NAMES.iter().filter(|(_, b)| self.contains(*b)).map(|(n, _)| *n).collect()
    }
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
    /// Time allowed until the upstream's response headers arrive, counted
    /// from the end of the request body.
    pub request: Duration,
    /// Longest pause of a proxied exchange in either direction (a stalled
    /// upload is the client's fault, a stalled response body the upstream's).
    pub idle: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fallback {
    pub status: http::StatusCode,
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    pub body: bytes::Bytes,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    pub host: Option<String>,
    pub path_prefix: Option<String>,
    /// Only these methods match (every method when `None`).
    pub methods: Option<Vec<http::Method>>,
    pub upstream: String,
    /// The operation whose circuit this route's calls also pass.
    pub operation: Option<String>,
    /// That operation's policy: the route's keys over its upstream's.
    pub breaker: Option<Policy>,
    /// What that operation's open circuit answers (else its upstream's).
    pub fallback: Option<Fallback>,
}

impl RouteConfig {
    /// `upstream/operation`, the name of an operation's circuit.
    pub fn circuit_name(&self) -> Option<String> {
        self.operation.as_ref().map(|op| format!("{}/{op}", self.upstream))
    }
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

/// Parses and validates a whole config text.
pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
    let mut errors = Vec::new();
    let expanded = env::expand_env(text, &mut errors);
    let de = serde_yaml::Deserializer::from_str(&expanded);
    let raw: model::RawConfig = match serde_path_to_error::deserialize(de) {
        Ok(raw) => raw,
        Err(e) => {
            // Every other structural error too, and the value errors of
            // what is left once the bad keys are taken out.
            let holes = !errors.is_empty();
            let collected = collect::after_first(&expanded, e);
            errors.extend(collected.errors);
            if let (Some(pruned), false) = (collected.pruned, holes) {
                if let Err(more) = validate::config(pruned, &expanded) {
                    let consequence = |e: &ConfigError| collected.removed.iter().any(|r| e.path.starts_with(r.as_str()));
                    errors.extend(more.into_iter().filter(|e| !consequence(e)));
                }
            }
            errors.sort_by_key(|e| (e.line.is_none(), e.line, e.column));
            return Err(ConfigErrors { file: None, errors });
        }
    };
    if !errors.is_empty() {
        // An unset variable leaves a hole (`upstream: `): the checks
        // would report what the hole causes as errors of their own.
        return Err(ConfigErrors { file: None, errors });
    }
    validate::config(raw, &expanded).map_err(|errors| ConfigErrors { file: None, errors })
}

/// Reads a config, key or secret file: a regular file (never a FIFO, a
/// device or a directory, which could block or never end) of at most 1 MiB.
///
/// The file is opened non-blocking (a FIFO put at the path after any check
/// of ours cannot hang the open), its type and size are taken from the open
/// descriptor (no race with a rename between a check and the open), and the
/// read is bounded: nothing of a refused file is kept. Blocking I/O all the
/// same: callers run it on the blocking pool, never on a runtime worker.
pub fn read_small_file(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY);
    }
    let file = options.open(path).map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err(format!("not a regular file (a {})", file_kind(&meta)));
    }
    if meta.len() > MAX_FILE_BYTES as u64 {
        return Err(format!("{} bytes, more than the 1 MiB allowed", meta.len()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_FILE_BYTES as u64 + 1).read_to_end(&mut bytes).map_err(|e| e.to_string())?;
    if bytes.len() > MAX_FILE_BYTES {
        return Err("grew past the 1 MiB allowed while being read".to_string());
    }
    Ok(bytes)
}

/// What a file that is not a regular file is, for the error.
fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    let t = meta.file_type();
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "FIFO";
        }
        if t.is_char_device() {
            return "character device";
        }
        if t.is_block_device() {
            return "block device";
        }
        if t.is_socket() {
            return "socket";
        }
    }
    if t.is_dir() {
        "directory"
    } else {
        "special file"
    }
}

// === impl Config ===

impl Config {
    /// Reads, expands `${NAME}` references, parses and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let unreadable = |e: String| ConfigErrors {
            file: Some(path.to_path_buf()),
            errors: vec![ConfigError::at_root(format!("cannot read file: {e}"))],
        };
        let bytes = read_small_file(path).map_err(unreadable)?;
        let text = String::from_utf8(bytes).map_err(|_| unreadable("not UTF-8 text".to_string()))?;
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

impl JwtKey {
    /// The file the key was read from, watched for rotations (a Secret
    /// volume rewritten by Kubernetes); None for an environment variable.
    pub fn file(&self) -> Option<&Path> {
        match self {
            JwtKey::Hs256 { file, .. } => file.as_deref(),
            JwtKey::PublicKey { file, .. } => Some(file),
        }
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
    /// A problem found after parsing (a file a key names is unusable), at
    /// key `path`, located in the file's `text` when it can be.
    pub fn located(text: &str, path: &str, message: impl Into<String>) -> ConfigError {
        let (line, column) = locate::locate(text, path).map_or((None, None), |(l, c)| (Some(l), Some(c)));
        ConfigError { path: path.to_string(), line, column, message: message.into() }
    }

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
        // Key paths and messages quote the file's own keys and values:
        // escaped, so a key with a line break stays on its line.
        if !self.path.is_empty() {
            write!(f, "{}: ", crate::text::escape_controls(&self.path))?;
        }
        f.write_str(&crate::text::escape_controls(&self.message))
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        match &self.file {
            Some(p) => write!(f, "{}: {n} error(s)", crate::text::escape_controls(&p.display().to_string()))?,
            None => write!(f, "{n} config error(s)")?,
        }
        for e in &self.errors {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}
