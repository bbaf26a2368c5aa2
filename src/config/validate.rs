//! The checks that turn the parsed file ([`RawConfig`]) into a [`Config`]:
//! every range, every cross reference, every file a key names, and the
//! conversion into typed values. It merges the layers of an upstream's keys
//! first (`defaults`), then checks the merged value once (and `defaults:`
//! on its own, so a bad value there is an error even where every upstream
//! overrides it); it collects all the errors it finds instead of stopping
//! at the first one.
//!
//! Must not: expand `${NAME}` or word structural errors (`env`, `keys`:
//! a file that fails there never reaches these checks); write a default
//! value of its own (they are all in `defaults`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::Uri;

use super::defaults::{self, Section, Written};
use super::keys::suggest;
use super::locate::locate;
use super::model::{
    RawAuth, RawBreaker, RawClient, RawConfig, RawDefaults, RawFallback, RawFleet, RawHealthCheck, RawJwt, RawListenerTls,
    RawOutlierDetection, RawQuorum, RawRetry, RawTimeouts, RawTracing, RawUpstream, StatusSpec,
};
use super::{
    read_small_file, AdminConfig, AuthConfig, ClientConfig, Config, ConfigError, Endpoint, Fallback, FleetConfig, HealthCheck, JwtConfig,
    JwtKey, ListenerTls, LoadBalancing, OtlpConfig, OutlierDetection, Protocol, Quorum, RetryOn, RetryPolicy, RouteConfig, ShutdownConfig,
    Timeouts, TracingConfig, UpstreamConfig, UpstreamTls, MAX_FILE_BYTES,
};
use crate::breaker::{Policy, StatusSet};

/// The longest duration any key accepts: time arithmetic on it can never
/// overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 86_400);

/// The shortest HS256 secret (RFC 7518 3.2: at least the hash's size).
pub const MIN_HS256_SECRET: usize = 32;

/// Checks a parsed file whose text (after `${NAME}` expansion) is `text`,
/// the text errors are located in.
pub fn config(raw: RawConfig, text: &str) -> Result<Config, Vec<ConfigError>> {
    let mut v = Validator { text, errors: Vec::new() };
    let config = v.config(raw);
    if v.errors.is_empty() {
        return Ok(config);
    }
    // A bad `defaults:` key is seen once per upstream; report it once.
    let mut errors: Vec<ConfigError> = Vec::with_capacity(v.errors.len());
    for e in v.errors {
        if !errors.contains(&e) {
            errors.push(e);
        }
    }
    Err(errors)
}

struct Validator<'a> {
    text: &'a str,
    errors: Vec<ConfigError>,
}

impl Validator<'_> {
    fn error(&mut self, path: &str, message: impl Into<String>) {
        let (line, column) = match locate(self.text, path) {
            Some((l, c)) => (Some(l), Some(c)),
            None => (None, None),
        };
        self.errors.push(ConfigError { path: path.to_string(), line, column, message: message.into() });
    }

    /// A listener's `tls` (`tls` or `admin.tls` at `at`): both files named
    /// and present (their contents are checked by `app::preflight`).
    fn listener_tls(&mut self, at: &str, t: RawListenerTls) -> Option<ListenerTls> {
        match (t.cert_file, t.key_file) {
            (Some(c), Some(k)) => {
                for (key, f) in [("certFile", &c), ("keyFile", &k)] {
                    if let Err(e) = std::fs::metadata(f) {
                        self.error(&format!("{at}.{key}"), format!("cannot read `{f}`: {e}"));
                    }
                }
                Some(ListenerTls { cert_file: c.into(), key_file: k.into() })
            }
            _ => {
                self.error(at, "needs both certFile and keyFile");
                None
            }
        }
    }

    fn config(&mut self, raw: RawConfig) -> Config {
        let listen = self.addr("listen", raw.listen.as_deref(), defaults::LISTEN);
        let admin_raw = raw.admin.unwrap_or_default();
        let mut allowed_origins = Vec::new();
        for (i, o) in admin_raw.allowed_origins.unwrap_or_default().into_iter().enumerate() {
            let o = o.trim().trim_end_matches('/').to_ascii_lowercase();
            match o.parse::<Uri>() {
                Ok(u) if u.scheme().is_some() && u.authority().is_some() && u.path() == "/" => allowed_origins.push(o),
                _ => self.error(&format!("admin.allowedOrigins[{i}]"), format!("`{o}` is not an origin like https://ops.example.com")),
            }
        }
        let mut allowed_hosts = Vec::new();
        for (i, h) in admin_raw.allowed_hosts.unwrap_or_default().into_iter().enumerate() {
            let h = h.trim().to_ascii_lowercase();
            match host_pattern(&h) {
                Ok(()) => allowed_hosts.push(h),
                Err(why) => self.error(&format!("admin.allowedHosts[{i}]"), format!("`{h}` {why}")),
            }
        }
        let admin_tls = admin_raw.tls.and_then(|t| self.listener_tls("admin.tls", t));
        let admin = AdminConfig {
            listen: self.addr("admin.listen", admin_raw.listen.as_deref(), defaults::ADMIN_LISTEN),
            allowed_origins,
            allowed_hosts,
            tls: admin_tls,
        };
        if listen == admin.listen && listen.port() != 0 {
            self.error("admin.listen", "the admin listener must not share the data port");
        }
        let workers = raw.workers.unwrap_or(defaults::WORKERS);
        if workers > 1024 {
            self.error("workers", format!("{workers} is not between 0 (one per core) and 1024"));
        }
        let tls = raw.tls.and_then(|t| self.listener_tls("tls", t));
        let sd = raw.shutdown.unwrap_or_default();
        let builtin = ShutdownConfig::default();
        let shutdown = ShutdownConfig {
            drain_delay: self.duration("shutdown.drainDelay", sd.drain_delay.as_deref(), builtin.drain_delay),
            grace_period: self.duration("shutdown.gracePeriod", sd.grace_period.as_deref(), builtin.grace_period),
        };
        let store = raw.store.and_then(|s| s.path).map(PathBuf::from);
        let auth = match raw.auth {
            None | Some(RawAuth::None) => AuthConfig::None,
            Some(RawAuth::Jwt(jwt)) => self.jwt(jwt),
        };
        let has_defaults = raw.defaults.is_some();
        let file_defaults = raw.defaults.unwrap_or_default();
        if has_defaults {
            self.defaults_alone(&file_defaults);
        }
        let upstreams: Vec<UpstreamConfig> =
            raw.upstreams.0.into_iter().map(|(name, up)| self.upstream(&name, up, &file_defaults)).collect();
        if upstreams.is_empty() {
            self.error("upstreams", "a config must define at least one upstream (an empty file is never a valid config)");
        }
        if raw.routes.is_empty() {
            self.error("routes", "a config must define at least one route (an empty file is never a valid config)");
        }
        let names: Vec<&str> = upstreams.iter().map(|u| u.name.as_str()).collect();
        let mut routes = Vec::new();
        for (i, r) in raw.routes.into_iter().enumerate() {
            let path = format!("routes[{i}]");
            let m = r.matcher.unwrap_or_default();
            if let Some(p) = &m.path_prefix {
                if !p.starts_with('/') {
                    self.error(&format!("{path}.match.pathPrefix"), format!("`{p}` must start with `/`"));
                }
            }
            let Some(upstream) = r.upstream else {
                self.error(&path, "a route needs `upstream`");
                continue;
            };
            if !names.contains(&upstream.as_str()) {
                let hint = suggest(&upstream, &names).map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default();
                self.error(&format!("{path}.upstream"), format!("no upstream named `{upstream}`{hint}"));
            }
            let mut methods = None;
            if let Some(list) = &m.methods {
                let mut parsed = Vec::new();
                for (j, name) in list.iter().enumerate() {
                    match http::Method::from_bytes(name.trim().to_ascii_uppercase().as_bytes()) {
                        Ok(method) => parsed.push(method),
                        Err(_) => self.error(&format!("{path}.match.methods[{j}]"), format!("`{name}` is not an HTTP method")),
                    }
                }
                if parsed.is_empty() {
                    self.error(&format!("{path}.match.methods"), "lists no method (leave it out to match every method)");
                }
                methods = Some(parsed);
            }
            let operation = r.operation.map(|o| o.trim().to_string());
            if let Some(op) = &operation {
                if op.is_empty() || op.len() > 64 || !op.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
                    self.error(&format!("{path}.operation"), format!("`{op}` must be 1-64 characters of letters, digits, `-`, `_` or `.`"));
                }
            }
            let breaker = match (&operation, &r.breaker) {
                (None, Some(_)) => {
                    self.error(&format!("{path}.breaker"), "a route's breaker belongs to its operation: name one with `operation:`");
                    None
                }
                (Some(_), own) => {
                    let base = upstreams.iter().find(|u| u.name == upstream).map(|u| u.breaker.clone()).unwrap_or_default();
                    let mut p = self.breaker(&defaults::route_breaker(&path, own.as_ref()), base);
                    p.probe_trials = false;
                    Some(p)
                }
                (None, None) => None,
            };
            if let (Some(op), Some(b)) = (&operation, &breaker) {
                let same = routes.iter().find(|x: &&RouteConfig| x.upstream == upstream && x.operation.as_ref() == Some(op));
                if same.is_some_and(|x| x.breaker.as_ref() != Some(b)) {
                    self.error(
                        &format!("{path}.breaker"),
                        format!("operation `{upstream}/{op}` is on another route with other breaker keys"),
                    );
                }
            }
            let fallback = match (r.fallback, &operation) {
                (Some(_), None) => {
                    self.error(
                        &format!("{path}.fallback"),
                        "a route's fallback answers for its operation's circuit: name one with `operation:`",
                    );
                    None
                }
                (Some(f), Some(_)) => Some(self.fallback(&format!("{path}.fallback"), f)),
                (None, _) => None,
            };
            routes.push(RouteConfig {
                fallback,
                host: m.host.map(|h| h.to_ascii_lowercase()),
                path_prefix: m.path_prefix,
                methods,
                upstream,
                operation,
                breaker,
            });
        }
        let request_metrics = raw.metrics.and_then(|m| m.requests).unwrap_or(defaults::REQUEST_METRICS);
        let client = self.client(raw.client.unwrap_or_default());
        let access_log = raw.access_log.and_then(|a| a.enabled).unwrap_or(defaults::ACCESS_LOG);
        let tracing = self.tracing(raw.tracing.unwrap_or_default());
        let fleet = raw.fleet.and_then(|f| self.fleet(f));
        let mut readiness_upstreams = Vec::new();
        for (i, name) in raw.readiness.map(|r| r.upstreams).unwrap_or_default().into_iter().enumerate() {
            if !upstreams.iter().any(|u| u.name == name) {
                self.error(&format!("readiness.upstreams[{i}]"), format!("`{name}` is not an upstream of this file"));
            } else if !readiness_upstreams.contains(&name) {
                readiness_upstreams.push(name);
            }
        }
        Config {
            listen,
            workers,
            tls,
            shutdown,
            store,
            admin,
            auth,
            upstreams,
            routes,
            request_metrics,
            client,
            access_log,
            readiness_upstreams,
            tracing,
            fleet,
        }
    }

    /// `fleet:` (SPEC 10): a Redis URL and a fleet name are required.
    fn fleet(&mut self, raw: RawFleet) -> Option<FleetConfig> {
        let Some(url) = raw.redis.map(|u| u.trim().to_string()).filter(|u| !u.is_empty()) else {
            self.error("fleet.redis", "a fleet needs `redis: redis://host:6379/0` (or rediss:// for TLS)");
            return None;
        };
        let mut url = match url.parse::<Uri>() {
            Ok(u) if matches!(u.scheme_str(), Some("redis" | "rediss")) && u.authority().is_some() => url,
            _ => {
                self.error("fleet.redis", format!("`{}` is not a redis:// or rediss:// URL", crate::text::redact_url(&url)));
                return None;
            }
        };
        if let Some(file) = raw.password_file {
            match read_small_file(std::path::Path::new(&file)) {
                Ok(bytes) => {
                    let password = String::from_utf8_lossy(&bytes).trim().to_string();
                    let encoded: String = percent_encoding::utf8_percent_encode(&password, percent_encoding::NON_ALPHANUMERIC).to_string();
                    // redis://[user]:password@host: the file's password replaces the URL's.
                    if let Some((scheme, rest)) = url.split_once("://") {
                        let (user, host) = match rest.rsplit_once('@') {
                            Some((auth, host)) => (auth.split(':').next().unwrap_or_default().to_string(), host.to_string()),
                            None => (String::new(), rest.to_string()),
                        };
                        url = format!("{scheme}://{user}:{encoded}@{host}");
                    }
                }
                Err(e) => self.error("fleet.passwordFile", format!("cannot read `{file}`: {e}")),
            }
        }
        let name = raw.name.unwrap_or_default();
        if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
            self.error("fleet.name", format!("`{name}` must be 1-64 characters of letters, digits, `-`, `_` or `.`"));
        }
        let member = raw.member.map(|m| m.trim().to_string()).filter(|m| !m.is_empty()).unwrap_or_else(default_member);
        if member.len() > 128 || member.chars().any(|c| c.is_control() || c == ':') {
            self.error("fleet.member", format!("`{member}` must be at most 128 characters, without `:` or control characters"));
        }
        let quorum = match raw.quorum {
            None => Quorum::Members(2),
            Some(RawQuorum::Count(n)) if n >= 2 => Quorum::Members(n),
            Some(RawQuorum::Count(n)) => {
                self.error("fleet.quorum", format!("{n} is below 2: one member alone never opens the fleet"));
                Quorum::Members(2)
            }
            Some(RawQuorum::Share(text)) => match text.trim().strip_suffix('%').and_then(|p| p.trim().parse::<f64>().ok()) {
                Some(p) if p > 0.0 && p <= 100.0 => Quorum::Percent(p),
                _ => match text.trim().parse::<u32>() {
                    Ok(n) if n >= 2 => Quorum::Members(n),
                    _ => {
                        self.error("fleet.quorum", format!("`{text}` is neither a member count (2 or more) nor a share like 25%"));
                        Quorum::Members(2)
                    }
                },
            },
        };
        let heartbeat = self.duration("fleet.heartbeat", raw.heartbeat.as_deref(), Duration::from_secs(2));
        if heartbeat < Duration::from_millis(100) || heartbeat > Duration::from_secs(60) {
            self.error("fleet.heartbeat", format!("{heartbeat:?} must be between 100ms and 60s"));
        }
        Some(FleetConfig { redis: url, name, member, quorum, heartbeat })
    }

    /// `tracing:`, with the standard `OTEL_EXPORTER_OTLP_*` variables for
    /// what the file leaves out. Off (None) without an endpoint.
    fn tracing(&mut self, raw: RawTracing) -> Option<TracingConfig> {
        let env = |name: &str| std::env::var(name).ok().map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let sample_rate = raw.sample_rate.unwrap_or(0.0);
        if !(0.0..=1.0).contains(&sample_rate) || sample_rate.is_nan() {
            self.error("tracing.sampleRate", format!("`{sample_rate}` must be between 0 and 1"));
        }
        let otlp = raw.otlp.unwrap_or_default();
        // The file's endpoint, else the traces variable (a full URL), else
        // the base variable (plus /v1/traces).
        let (source, text) = match (otlp.endpoint, env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"), env("OTEL_EXPORTER_OTLP_ENDPOINT")) {
            (Some(e), _, _) => ("tracing.otlp.endpoint", e),
            (None, Some(e), _) => ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", e),
            (None, None, Some(e)) => ("OTEL_EXPORTER_OTLP_ENDPOINT", e),
            (None, None, None) => return None,
        };
        let endpoint = match text.trim().parse::<http::Uri>() {
            Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some() => {
                if matches!(u.path(), "" | "/") {
                    let base = text.trim().trim_end_matches('/');
                    format!("{base}/v1/traces").parse::<http::Uri>().unwrap_or(u)
                } else {
                    u
                }
            }
            _ => {
                self.error(source, format!("`{text}` is not an http:// or https:// URL"));
                return None;
            }
        };
        let mut headers = Vec::new();
        let from_env = env("OTEL_EXPORTER_OTLP_TRACES_HEADERS").or_else(|| env("OTEL_EXPORTER_OTLP_HEADERS")).unwrap_or_default();
        let env_pairs = from_env.split(',').filter_map(|kv| kv.split_once('=')).map(|(k, v)| {
            let v = percent_encoding::percent_decode_str(v.trim()).decode_utf8_lossy().into_owned();
            (k.trim().to_string(), v)
        });
        for (k, v) in env_pairs.chain(otlp.headers) {
            match (http::HeaderName::from_bytes(k.as_bytes()), http::HeaderValue::from_str(&v)) {
                (Ok(name), Ok(value)) => {
                    headers.retain(|(n, _): &(http::HeaderName, http::HeaderValue)| *n != name);
                    headers.push((name, value));
                }
                _ => self.error("tracing.otlp.headers", format!("`{k}` is not a valid header name and value")),
            }
        }
        let default_timeout =
            env("OTEL_EXPORTER_OTLP_TIMEOUT").and_then(|ms| ms.parse::<u64>().ok()).map_or(Duration::from_secs(10), Duration::from_millis);
        let timeout = self.duration("tracing.otlp.timeout", otlp.timeout.as_deref(), default_timeout);
        let service_name = raw.service_name.or_else(|| env("OTEL_SERVICE_NAME")).unwrap_or_else(|| "fusebox".to_string());
        Some(TracingConfig { sample_rate: sample_rate.clamp(0.0, 1.0), service_name, otlp: OtlpConfig { endpoint, headers, timeout } })
    }

    /// An upstream's or a route's `fallback`.
    fn fallback(&mut self, path: &str, f: RawFallback) -> Fallback {
        let status = match f.status.map_or(Ok(defaults::FALLBACK_STATUS), http::StatusCode::from_u16) {
            Ok(s) => s,
            Err(_) => {
                self.error(&format!("{path}.status"), "is not an HTTP status");
                defaults::FALLBACK_STATUS
            }
        };
        let mut headers = Vec::new();
        for (k, v) in &f.headers {
            match (http::HeaderName::try_from(k.as_str()), http::HeaderValue::try_from(v.as_str())) {
                (Ok(k), Ok(v)) => headers.push((k, v)),
                _ => self.error(&format!("{path}.headers.{k}"), "is not a valid header"),
            }
        }
        let body = f.body.unwrap_or_default();
        if body.len() > MAX_FILE_BYTES {
            self.error(&format!("{path}.body"), format!("is {} bytes, more than the 1 MiB allowed", body.len()));
        }
        Fallback { status, headers, body: bytes::Bytes::from(body) }
    }

    fn client(&mut self, raw: RawClient) -> ClientConfig {
        let d = ClientConfig::default();
        let c = ClientConfig {
            header_timeout: self.duration("client.headerTimeout", raw.header_timeout.as_deref(), d.header_timeout),
            idle_timeout: self.duration("client.idleTimeout", raw.idle_timeout.as_deref(), d.idle_timeout),
            max_connections: raw.max_connections.unwrap_or(d.max_connections),
        };
        if c.header_timeout.is_zero() {
            self.error("client.headerTimeout", "must be greater than zero");
        }
        if c.idle_timeout.is_zero() {
            self.error("client.idleTimeout", "must be greater than zero");
        }
        if c.max_connections == 0 || c.max_connections > 1_000_000 {
            self.error("client.maxConnections", format!("{} is not between 1 and 1000000", c.max_connections));
        }
        c
    }

    /// `outlierDetection`, merged (see `defaults`), checked.
    fn outlier(&mut self, s: &Section<RawOutlierDetection>) -> OutlierDetection {
        let mut o = OutlierDetection::default();
        if let Some(w) = s.get("consecutiveFailures", |r| r.consecutive_failures.as_ref()) {
            o.consecutive_failures = *w.value;
        }
        if let Some(w) = s.get("baseEjectionTime", |r| r.base_ejection_time.as_ref()) {
            o.base_ejection_time = self.duration(&w.at, Some(w.value), o.base_ejection_time);
            if o.base_ejection_time.is_zero() {
                self.error(&w.at, "must be greater than zero");
            }
        }
        o.max_ejection_time =
            self.written_duration(s.get("maxEjectionTime", |r| r.max_ejection_time.as_ref()).as_ref(), o.max_ejection_time);
        if let Some(w) = s.get("maxEjectionPercent", |r| r.max_ejection_percent.as_ref()) {
            let v = *w.value;
            if v > 100 {
                self.error(&w.at, format!("{v} is a percentage in [0, 100]"));
            }
            o.max_ejection_percent = v.min(100);
        }
        if o.max_ejection_time < o.base_ejection_time {
            self.error(
                &s.home,
                format!("maxEjectionTime ({:?}) is below baseEjectionTime ({:?})", o.max_ejection_time, o.base_ejection_time),
            );
        }
        o
    }

    /// `retry`, merged (see `defaults`), checked.
    fn retry(&mut self, s: &Section<RawRetry>) -> RetryPolicy {
        let mut r = RetryPolicy::default();
        if let Some(w) = s.get("attempts", |r| r.attempts.as_ref()) {
            let v = *w.value;
            if v > 10 {
                self.error(&w.at, format!("{v} is not between 0 and 10"));
            }
            r.attempts = v.min(10);
        }
        if let Some(w) = s.get("on", |r| r.on.as_ref()) {
            let mut on = RetryOn::default();
            for (i, item) in w.value.iter().enumerate() {
                let text = match item {
                    StatusSpec::Code(c) => c.to_string(),
                    StatusSpec::Text(t) => t.trim().to_string(),
                };
                match RetryOn::NAMES.iter().find(|(n, _)| *n == text) {
                    Some((_, bit)) => on.0 |= bit.0,
                    None => {
                        let names: Vec<&str> = RetryOn::NAMES.iter().map(|(n, _)| *n).collect();
                        let hint = suggest(&text, &names).map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default();
                        self.error(&format!("{}[{i}]", w.at), format!("`{text}` is not one of {}{hint}", names.join(", ")));
                    }
                }
            }
            r.on = on;
        }
        if let Some(w) = s.get("budget.ratio", |r| r.budget.as_ref().and_then(|b| b.ratio.as_ref())) {
            let v = *w.value;
            if !(0.0..=1000.0).contains(&v) {
                self.error(&w.at, format!("{v} is not a ratio between 0 and 1000"));
            }
            r.budget_ratio = v.clamp(0.0, 1000.0);
        }
        if let Some(w) = s.get("budget.minPerSecond", |r| r.budget.as_ref().and_then(|b| b.min_per_second.as_ref())) {
            r.budget_min_per_second = *w.value;
        }
        r
    }

    fn addr(&mut self, path: &str, value: Option<&str>, default: &str) -> SocketAddr {
        let text = value.unwrap_or(default);
        match parse_listen(text) {
            Some(a) => a,
            None => {
                self.error(path, format!("`{text}` is not an address like 0.0.0.0:8080 or :8080"));
                SocketAddr::from(([127, 0, 0, 1], 0))
            }
        }
    }

    fn duration(&mut self, path: &str, value: Option<&str>, default: Duration) -> Duration {
        match value {
            None => default,
            Some(text) => match humantime::parse_duration(text.trim()) {
                Ok(d) if d > MAX_DURATION => {
                    self.error(path, format!("`{text}` is longer than the longest duration allowed, 365 days"));
                    default
                }
                Ok(d) => d,
                Err(_) => {
                    // humantime's own message speaks of parser positions.
                    self.error(path, format!("`{text}` is not a duration: write a number and a unit, like 500ms, 30s, 2m or 1h"));
                    default
                }
            },
        }
    }

    /// A merged duration key: its written value, checked, or `default`.
    fn written_duration(&mut self, w: Option<&Written<String>>, default: Duration) -> Duration {
        match w {
            Some(w) => self.duration(&w.at, Some(w.value), default),
            None => default,
        }
    }

    /// A merged percentage key, in (0, 100]: its written value, checked, or
    /// `default`.
    fn percentage(&mut self, w: Option<Written<f64>>, default: f64) -> f64 {
        let Some(w) = w else { return default };
        let v = *w.value;
        if !(v > 0.0 && v <= 100.0) {
            self.error(&w.at, format!("{v} is not a percentage in (0, 100]"));
        }
        v
    }

    /// A merged count key, at least 1: its written value, checked, or
    /// `default`.
    fn at_least_one(&mut self, w: Option<Written<u32>>, default: u32) -> u32 {
        let Some(w) = w else { return default };
        if *w.value == 0 {
            self.error(&w.at, "0 is below the minimum of 1");
        }
        *w.value
    }

    fn jwt(&mut self, jwt: RawJwt) -> AuthConfig {
        let short = |len: usize| format!("is {len} bytes: an HS256 secret needs at least {MIN_HS256_SECRET} (RFC 7518 3.2)");
        let key = match (jwt.hs256_secret_env, jwt.hs256_secret_file, jwt.public_key_file) {
            (Some(var), None, None) => match std::env::var(&var) {
                Ok(secret) if secret.trim().len() >= MIN_HS256_SECRET => {
                    if let Some(why) = weak_secret(secret.trim().as_bytes()) {
                        self.error("auth.jwt.hs256SecretEnv", format!("environment variable `{var}` {why}"));
                        return AuthConfig::None;
                    }
                    JwtKey::Hs256 { source: format!("env {var}"), file: None, secret: secret.into_bytes() }
                }
                Ok(secret) if !secret.trim().is_empty() => {
                    self.error("auth.jwt.hs256SecretEnv", format!("environment variable `{var}` {}", short(secret.trim().len())));
                    return AuthConfig::None;
                }
                _ => {
                    self.error("auth.jwt.hs256SecretEnv", format!("environment variable `{var}` is not set or empty"));
                    return AuthConfig::None;
                }
            },
            (None, Some(file), None) => match read_small_file(std::path::Path::new(&file)) {
                Ok(secret) => {
                    let secret = secret.trim_ascii().to_vec();
                    if secret.len() < MIN_HS256_SECRET {
                        self.error("auth.jwt.hs256SecretFile", format!("`{file}` {}", short(secret.len())));
                        return AuthConfig::None;
                    }
                    if let Some(why) = weak_secret(&secret) {
                        self.error("auth.jwt.hs256SecretFile", format!("`{file}` {why}"));
                        return AuthConfig::None;
                    }
                    JwtKey::Hs256 { source: format!("file {file}"), file: Some(file.into()), secret }
                }
                Err(e) => {
                    self.error("auth.jwt.hs256SecretFile", format!("cannot read `{file}`: {e}"));
                    return AuthConfig::None;
                }
            },
            (None, None, Some(file)) => match read_small_file(std::path::Path::new(&file)) {
                Ok(pem) => {
                    let usable =
                        jsonwebtoken::DecodingKey::from_rsa_pem(&pem).is_ok() || jsonwebtoken::DecodingKey::from_ec_pem(&pem).is_ok();
                    if !usable {
                        self.error("auth.jwt.publicKeyFile", format!("`{file}` is neither an RSA nor an EC public key in PEM"));
                        return AuthConfig::None;
                    }
                    JwtKey::PublicKey { file: file.into(), pem }
                }
                Err(e) => {
                    self.error("auth.jwt.publicKeyFile", format!("cannot read `{file}`: {e}"));
                    return AuthConfig::None;
                }
            },
            _ => {
                self.error("auth.jwt", "needs exactly one of hs256SecretEnv, hs256SecretFile, publicKeyFile");
                return AuthConfig::None;
            }
        };
        let leeway = self.duration("auth.jwt.leeway", jwt.leeway.as_deref(), defaults::JWT_LEEWAY);
        if leeway > Duration::from_secs(3600) {
            self.error("auth.jwt.leeway", "is at most 1h");
        }
        AuthConfig::Jwt(JwtConfig {
            key,
            admin_role: jwt.admin_role.unwrap_or_else(|| defaults::JWT_ADMIN_ROLE.to_string()),
            role_claim: jwt.role_claim,
            require_for_reads: jwt.require_for_reads.unwrap_or(defaults::JWT_REQUIRE_FOR_READS),
            issuer: jwt.issuer,
            audience: jwt.audience,
            leeway,
        })
    }

    /// Every value written under `defaults:`, checked even where each
    /// upstream overrides it (a bad value in the file is an error wherever
    /// it stands): an upstream of `defaults:` alone is merged and checked,
    /// and what it finds at `defaults.` keys is kept (the checks across
    /// keys are each upstream's own).
    fn defaults_alone(&mut self, file_defaults: &RawDefaults) {
        let before = self.errors.len();
        let probe = RawUpstream { endpoints: vec!["http://127.0.0.1:1".to_string()], ..RawUpstream::default() };
        let _ = self.upstream("defaults", probe, file_defaults);
        let mut i = 0;
        self.errors.retain(|e| {
            i += 1;
            i <= before || e.path.starts_with("defaults.")
        });
    }

    fn upstream(&mut self, name: &str, raw: RawUpstream, file_defaults: &RawDefaults) -> UpstreamConfig {
        let path = format!("upstreams.{name}");
        if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
            self.error(&path, format!("`{name}` must be 1-64 characters of letters, digits, `-`, `_` or `.`"));
        }
        if raw.endpoints.is_empty() {
            self.error(&format!("{path}.endpoints"), "needs at least one endpoint");
        }
        let mut endpoints = Vec::new();
        for (i, e) in raw.endpoints.iter().enumerate() {
            match parse_endpoint(e) {
                Ok(ep) => endpoints.push(ep),
                Err(msg) => self.error(&format!("{path}.endpoints[{i}]"), msg),
            }
        }
        let load_balancing = match raw.load_balancing.as_deref() {
            None => defaults::LOAD_BALANCING,
            Some("round-robin") => LoadBalancing::RoundRobin,
            Some("least-request") => LoadBalancing::LeastRequest,
            Some(other) => {
                self.error(&format!("{path}.loadBalancing"), format!("`{other}` is not round-robin or least-request"));
                defaults::LOAD_BALANCING
            }
        };
        let protocol = match raw.protocol.as_deref() {
            None => defaults::PROTOCOL,
            Some("http1") => Protocol::Http1,
            Some("http2") | Some("h2c") => Protocol::Http2,
            Some(other) => {
                self.error(&format!("{path}.protocol"), format!("`{other}` is not http1 or http2"));
                defaults::PROTOCOL
            }
        };
        let layers = defaults::upstream(&path, &raw, file_defaults);
        let timeouts = self.timeouts(&layers.timeouts);
        let outlier_detection = self.outlier(&layers.outlier_detection);
        let retry = self.retry(&layers.retry);
        let dns_refresh = self.written_duration(layers.dns_refresh.as_ref(), defaults::DNS_REFRESH);
        if let Some(w) = layers.dns_refresh.filter(|_| dns_refresh < Duration::from_secs(1)) {
            self.error(&w.at, format!("{dns_refresh:?} is below the 1s minimum"));
        }
        let startup_grace = self.written_duration(layers.startup_grace.as_ref(), defaults::STARTUP_GRACE);
        let pool_idle = layers.pool.get("idleTimeout", |p| p.idle_timeout.as_ref());
        let pool_idle_timeout = self.written_duration(pool_idle.as_ref(), defaults::POOL_IDLE_TIMEOUT);
        let health_check = self.health_check(&layers.health_check);
        let mut breaker = self.breaker(&layers.breaker, Policy::default());
        breaker.trial_lease = timeouts.connect + timeouts.request;
        breaker.probe_trials = health_check.is_some();
        let max_concurrent_requests = layers.max_concurrent_requests.map_or(defaults::MAX_CONCURRENT_REQUESTS, |w| {
            if *w.value == 0 {
                self.error(&w.at, "0 is below the minimum of 1");
            }
            *w.value
        });
        let fallback = raw.fallback.map(|f| self.fallback(&format!("{path}.fallback"), f));
        let tls = match raw.tls {
            None => UpstreamTls::default(),
            Some(t) => {
                for (key, file) in [("caFile", &t.ca_file), ("certFile", &t.cert_file), ("keyFile", &t.key_file)] {
                    if let Some(f) = file {
                        if let Err(e) = std::fs::metadata(f) {
                            self.error(&format!("{path}.tls.{key}"), format!("cannot read `{f}`: {e}"));
                        }
                    }
                }
                if let Some(name) = &t.server_name {
                    if rustls::pki_types::ServerName::try_from(name.as_str()).is_err() {
                        self.error(&format!("{path}.tls.serverName"), format!("`{name}` is not a DNS name or IP address"));
                    }
                }
                if t.cert_file.is_some() != t.key_file.is_some() {
                    self.error(&format!("{path}.tls"), "a client certificate needs both certFile and keyFile");
                }
                if !endpoints.iter().any(|e| e.scheme == Scheme::HTTPS) {
                    self.error(&format!("{path}.tls"), "is only used by https:// endpoints, and this upstream has none");
                }
                UpstreamTls {
                    ca_file: t.ca_file.map(PathBuf::from),
                    server_name: t.server_name,
                    cert_file: t.cert_file.map(PathBuf::from),
                    key_file: t.key_file.map(PathBuf::from),
                }
            }
        };
        // Kept even when invalid (the file is rejected anyway), so routes
        // naming it do not report a second, misleading error.
        UpstreamConfig {
            name: name.to_string(),
            endpoints,
            load_balancing,
            protocol,
            breaker,
            health_check,
            timeouts,
            max_concurrent_requests,
            fallback,
            tls,
            outlier_detection,
            retry,
            dns_refresh,
            startup_grace,
            pool_idle_timeout,
        }
    }

    /// `timeouts`, merged (see `defaults`), checked.
    fn timeouts(&mut self, s: &Section<RawTimeouts>) -> Timeouts {
        let builtin = Timeouts::default();
        let t = Timeouts {
            connect: self.written_duration(s.get("connect", |t| t.connect.as_ref()).as_ref(), builtin.connect),
            request: self.written_duration(s.get("request", |t| t.request.as_ref()).as_ref(), builtin.request),
            idle: self.written_duration(s.get("idle", |t| t.idle.as_ref()).as_ref(), builtin.idle),
        };
        if t.connect.is_zero() || t.request.is_zero() || t.idle.is_zero() {
            self.error(&s.home, "timeouts must be greater than zero");
        }
        t
    }

    /// `healthCheck`, merged (see `defaults`), checked: none unless a layer
    /// writes it.
    fn health_check(&mut self, s: &Section<RawHealthCheck>) -> Option<HealthCheck> {
        if !s.is_written() {
            return None;
        }
        let path = s.get("path", |h| h.path.as_ref());
        if let Some(w) = path.as_ref().filter(|w| !w.value.starts_with('/')) {
            self.error(&w.at, "must start with `/`");
        }
        let path = path.map_or(defaults::HEALTH_CHECK_PATH, |w| w.value.as_str()).to_string();
        let written_interval = s.get("interval", |h| h.interval.as_ref());
        let interval = self.written_duration(written_interval.as_ref(), defaults::HEALTH_CHECK_INTERVAL);
        let timeout = self.written_duration(s.get("timeout", |h| h.timeout.as_ref()).as_ref(), defaults::HEALTH_CHECK_TIMEOUT);
        if let Some(w) = written_interval.filter(|_| interval < Duration::from_millis(100)) {
            self.error(&w.at, format!("{interval:?} is below the 100ms minimum"));
        }
        Some(HealthCheck { path, interval, timeout })
    }

    /// The `breaker` keys of `s`, merged (see `defaults`) and checked, over
    /// `base`: the built-in policy for an upstream, the upstream's for an
    /// operation.
    fn breaker(&mut self, s: &Section<RawBreaker>, base: Policy) -> Policy {
        let mut p = base;
        if let Some(w) = s.get("enabled", |b| b.enabled.as_ref()) {
            p.enabled = *w.value;
        }
        p.failure_threshold = self.at_least_one(s.get("failureThreshold", |b| b.failure_threshold.as_ref()), p.failure_threshold);
        p.failure_rate_threshold =
            self.percentage(s.get("failureRateThreshold", |b| b.failure_rate_threshold.as_ref()), p.failure_rate_threshold);
        p.minimum_request_count =
            self.at_least_one(s.get("minimumRequestCount", |b| b.minimum_request_count.as_ref()), p.minimum_request_count);
        if let Some(w) = s.get("monitoringWindow", |b| b.monitoring_window.as_ref()) {
            p.monitoring_window = self.duration(&w.at, Some(w.value), p.monitoring_window);
            if p.monitoring_window < Duration::from_secs(1) {
                self.error(&w.at, format!("{:?} is below the 1s minimum", p.monitoring_window));
            }
        }
        p.slow_call_duration =
            self.written_duration(s.get("slowCallDuration", |b| b.slow_call_duration.as_ref()).as_ref(), p.slow_call_duration);
        p.slow_call_rate_threshold =
            self.percentage(s.get("slowCallRateThreshold", |b| b.slow_call_rate_threshold.as_ref()), p.slow_call_rate_threshold);
        if let Some(w) = s.get("resetTimeout", |b| b.reset_timeout.as_ref()) {
            p.reset_timeout = self.duration(&w.at, Some(w.value), p.reset_timeout);
            if p.reset_timeout.is_zero() {
                self.error(&w.at, "must be greater than zero");
            }
        }
        let max_reset_timeout = s.get("maxResetTimeout", |b| b.max_reset_timeout.as_ref());
        p.max_reset_timeout = self.written_duration(max_reset_timeout.as_ref(), p.max_reset_timeout);
        if let Some(w) = s.get("jitter", |b| b.jitter.as_ref()) {
            let v = *w.value;
            if !(0.0..1.0).contains(&v) {
                self.error(&w.at, format!("{v} is not a fraction in [0, 1)"));
            }
            p.jitter = v;
        }
        if let Some(w) = s.get("halfOpenRequests", |b| b.half_open_requests.as_ref()) {
            let v = *w.value;
            if v == 0 || v > 1000 {
                self.error(&w.at, format!("{v} is not between 1 and 1000"));
            }
            p.half_open_requests = v;
        }
        p.min_healthy_period =
            self.written_duration(s.get("minHealthyPeriod", |b| b.min_healthy_period.as_ref()).as_ref(), p.min_healthy_period);
        p.recovery_ramp = self.written_duration(s.get("recoveryRamp", |b| b.recovery_ramp.as_ref()).as_ref(), p.recovery_ramp);
        if let Some(w) = s.get("failureStatuses", |b| b.failure_statuses.as_ref()) {
            let mut ranges = Vec::new();
            for (i, spec) in w.value.iter().enumerate() {
                let text = match spec {
                    StatusSpec::Code(c) => c.to_string(),
                    StatusSpec::Text(t) => t.clone(),
                };
                match StatusSet::parse_one(&text) {
                    Ok(r) => ranges.push(r),
                    Err(msg) => self.error(&format!("{}[{i}]", w.at), msg),
                }
            }
            p.failure_statuses = StatusSet(ranges);
        }
        if p.max_reset_timeout < p.reset_timeout {
            // At the section's own `maxResetTimeout` when it writes one.
            let own = format!("{}.maxResetTimeout", s.home);
            let at = if max_reset_timeout.is_some_and(|w| w.at == own) { own } else { s.home.clone() };
            self.error(&at, format!("maxResetTimeout ({:?}) is below resetTimeout ({:?})", p.max_reset_timeout, p.reset_timeout));
        }
        p
    }
}

/// Why an HS256 secret of the right length is still no secret: one byte
/// repeated (32 zero bytes from `head -c 32 /dev/zero`, a placeholder of
/// `x`s) carries no entropy at all.
fn weak_secret(secret: &[u8]) -> Option<String> {
    let first = *secret.first()?;
    secret.iter().all(|b| *b == first).then(|| {
        format!(
            "is one byte (0x{first:02x}) repeated {} times: an HS256 secret must be random (e.g. `openssl rand -base64 48`)",
            secret.len()
        )
    })
}

/// Checks one `admin.allowedHosts` entry (already lowercase): `*`, or a
/// host name with an optional `:port`. IP literals need no entry.
fn host_pattern(h: &str) -> Result<(), &'static str> {
    if h == "*" {
        return Ok(());
    }
    let (name, port) = match h.rsplit_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (h, None),
    };
    if port.is_some_and(|p| p.parse::<u16>().is_err()) {
        return Err("has a port that is not a number from 0 to 65535");
    }
    let label_ok = |l: &str| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if name.is_empty() || name.len() > 253 || !name.trim_end_matches('.').split('.').all(label_ok) {
        return Err("is not a host name like fusebox.internal or fusebox.internal:9901 (or `*` for any)");
    }
    Ok(())
}

fn parse_endpoint(text: &str) -> Result<Endpoint, String> {
    let uri: Uri = text.parse().map_err(|e| format!("`{text}` is not a URL: {e}"))?;
    let scheme = uri.scheme().cloned().ok_or_else(|| format!("`{text}` needs a scheme (http:// or https://)"))?;
    if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
        return Err(format!("`{text}`: scheme must be http or https"));
    }
    let authority: Authority = uri.authority().cloned().ok_or_else(|| format!("`{text}` needs a host"))?;
    if authority.host().is_empty() {
        return Err(format!("`{text}` needs a host"));
    }
    if uri.path() != "/" && !uri.path().is_empty() {
        return Err(format!("`{text}`: endpoints are scheme://host:port, without a path"));
    }
    Ok(Endpoint { scheme, authority })
}

/// A listen address: `IP:PORT`, `[IPv6]:PORT`, or `:PORT` for every IPv4
/// interface (`0.0.0.0:PORT`, as Go and most proxies read it).
fn parse_listen(text: &str) -> Option<SocketAddr> {
    match text.strip_prefix(':') {
        Some(port) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            port.parse::<u16>().ok().map(|p| SocketAddr::from(([0, 0, 0, 0], p)))
        }
        Some(_) => None,
        None => text.parse().ok(),
    }
}

/// A member id when `fleet.member` is not set: hostname-pid (a pod's name
/// is its hostname in Kubernetes).
fn default_member() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "fusebox".to_string());
    format!("{host}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_port_listens_on_every_interface() {
        assert_eq!(parse_listen(":8080"), Some(SocketAddr::from(([0, 0, 0, 0], 8080))));
        assert_eq!(parse_listen("127.0.0.1:9901"), Some(SocketAddr::from(([127, 0, 0, 1], 9901))));
        assert_eq!(parse_listen("[::1]:80").map(|a| a.is_ipv6()), Some(true));
        for bad in [":", ":http", ":-1", ":65536", "8080", "localhost:80", ": 80"] {
            assert_eq!(parse_listen(bad), None, "{bad}");
        }
        let config = crate::config::parse("listen: \":8080\"\nadmin: { listen: \":9901\" }\nauth: none\nupstreams: { a: { endpoints: [\"http://127.0.0.1:1\"] } }\nroutes: [{ match: { pathPrefix: / }, upstream: a }]\n")
            .expect("bare ports are valid");
        assert_eq!(config.listen, SocketAddr::from(([0, 0, 0, 0], 8080)));
        assert_eq!(config.admin.listen, SocketAddr::from(([0, 0, 0, 0], 9901)));
    }
}
