//! Text -> [`Config`]: `${NAME}` expansion, YAML parsing with key paths and
//! positions, layering of defaults, and every semantic check. It collects
//! all errors it can find instead of stopping at the first one; a structural
//! error (a typo'd key, a wrong type) stops parsing, so it is reported alone.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::Uri;

use super::model::{
    RawAuth, RawBreaker, RawConfig, RawDefaults, RawHealthCheck, RawJwt, RawOutlierDetection, RawRetry, RawTimeouts, RawUpstream,
    StatusSpec,
};
use super::ClientConfig;
use super::{
    AdminConfig, AuthConfig, Config, ConfigError, ConfigErrors, Endpoint, Fallback, HealthCheck, JwtConfig, JwtKey, ListenerTls,
    LoadBalancing, OutlierDetection, Protocol, RetryOn, RetryPolicy, RouteConfig, ShutdownConfig, Timeouts, UpstreamConfig,
};
use crate::breaker::{Policy, StatusSet};

/// Keys every map of the file may hold, for "did you mean" suggestions.
const KNOWN_KEYS: &[&str] = &[
    "listen",
    "workers",
    "tls",
    "shutdown",
    "store",
    "admin",
    "auth",
    "defaults",
    "upstreams",
    "routes",
    "certFile",
    "keyFile",
    "drainDelay",
    "gracePeriod",
    "path",
    "jwt",
    "hs256SecretEnv",
    "hs256SecretFile",
    "publicKeyFile",
    "adminRole",
    "roleClaim",
    "requireForReads",
    "issuer",
    "audience",
    "leeway",
    "allowedOrigins",
    "operation",
    "methods",
    "breaker",
    "healthCheck",
    "timeouts",
    "maxConcurrentRequests",
    "failureThreshold",
    "failureRateThreshold",
    "minimumRequestCount",
    "monitoringWindow",
    "slowCallDuration",
    "slowCallRateThreshold",
    "resetTimeout",
    "maxResetTimeout",
    "jitter",
    "halfOpenRequests",
    "minHealthyPeriod",
    "recoveryRamp",
    "failureStatuses",
    "interval",
    "timeout",
    "connect",
    "request",
    "endpoints",
    "loadBalancing",
    "protocol",
    "fallback",
    "status",
    "headers",
    "body",
    "caFile",
    "serverName",
    "match",
    "upstream",
    "pathPrefix",
    "host",
    "idle",
    "outlierDetection",
    "consecutiveFailures",
    "baseEjectionTime",
    "maxEjectionTime",
    "maxEjectionPercent",
    "retry",
    "attempts",
    "on",
    "budget",
    "ratio",
    "minPerSecond",
    "dnsRefresh",
    "client",
    "headerTimeout",
    "idleTimeout",
    "maxConnections",
    "accessLog",
    "enabled",
    "metrics",
    "requests",
];

/// Names the seed documents use for keys that are spelled otherwise here.
const SEED_SYNONYMS: &[(&str, &str)] = &[
    ("recoveryTimeout", "resetTimeout"),
    ("resetTimeoutMs", "resetTimeout"),
    ("expectedResponseTime", "slowCallDuration"),
    ("monitoringWindowMs", "monitoringWindow"),
    ("requestLimit", "maxConcurrentRequests"),
    ("minHealthyPeriodMs", "minHealthyPeriod"),
    ("healthCheckIntervalMs", "healthCheck.interval"),
];

/// The longest duration any key accepts: time arithmetic on it can never
/// overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 86_400);

/// The largest config, key or secret file, `${NAME}` expansion and
/// fallback body accepted.
pub const MAX_FILE_BYTES: usize = 1024 * 1024;
/// The largest a config text may grow to through `${NAME}` expansions.
const MAX_EXPANDED_BYTES: usize = 4 * MAX_FILE_BYTES;
/// The shortest HS256 secret (RFC 7518 3.2: at least the hash's size).
pub const MIN_HS256_SECRET: usize = 32;

/// Reads a config, key or secret file: a regular file (never a FIFO, a
/// device or a directory, which could block or never end) of at most 1 MiB.
pub fn read_small_file(path: &std::path::Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".to_string());
    }
    if meta.len() > MAX_FILE_BYTES as u64 {
        return Err(format!("{} bytes, more than the 1 MiB allowed", meta.len()));
    }
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_FILE_BYTES as u64 + 1).read_to_end(&mut bytes).map_err(|e| e.to_string())?;
    if bytes.len() > MAX_FILE_BYTES {
        return Err("grew past the 1 MiB allowed while being read".to_string());
    }
    Ok(bytes)
}

/// Parses and validates a whole config text.
pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
    let mut errors = Vec::new();
    let expanded = expand_env(text, &mut errors);
    let de = serde_yaml::Deserializer::from_str(&expanded);
    let raw: RawConfig = match serde_path_to_error::deserialize(de) {
        Ok(raw) => raw,
        Err(e) => {
            errors.push(structural_error(e));
            return Err(ConfigErrors { file: None, errors });
        }
    };
    if !errors.is_empty() {
        // An unset variable leaves a hole (`upstream: `): the checks below
        // would report what the hole causes as errors of their own.
        return Err(ConfigErrors { file: None, errors });
    }
    let mut v = Validator { text: &expanded, errors };
    let config = v.config(raw);
    if v.errors.is_empty() {
        Ok(config)
    } else {
        // A bad `defaults:` key is seen once per upstream; report it once.
        let mut errors: Vec<ConfigError> = Vec::with_capacity(v.errors.len());
        for e in v.errors {
            if !errors.contains(&e) {
                errors.push(e);
            }
        }
        Err(ConfigErrors { file: None, errors })
    }
}

fn structural_error(e: serde_path_to_error::Error<serde_yaml::Error>) -> ConfigError {
    let path = e.path().to_string();
    let path = if path == "." { String::new() } else { path };
    let inner = e.inner();
    let loc = inner.location();
    let mut message = inner.to_string();
    if let Some(cut) = message.find(" at line ") {
        message.truncate(cut);
    }
    // serde_yaml prefixes its own copy of the key path.
    if let Some(idx) = message.find(": ") {
        let head = &message[..idx];
        if !head.contains(' ') && !path.is_empty() {
            message = message[idx + 2..].to_string();
        }
    }
    // Rust's type names mean nothing to an operator.
    for (rust, human) in [
        ("expected u16", "expected a whole number"),
        ("expected u32", "expected a whole number"),
        ("expected u64", "expected a whole number"),
        ("expected usize", "expected a whole number"),
        ("expected i64", "expected a whole number"),
        ("expected f64", "expected a number"),
        ("expected a sequence", "expected a list"),
        ("expected a string", "expected text"),
    ] {
        if let Some(at) = message.find(rust) {
            message.replace_range(at..at + rust.len(), human);
        }
    }
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some(end) = rest.find('`') {
            let unknown = &rest[..end];
            // serde lists the keys this map takes: "expected one of `a`, `b`".
            let expected: Vec<&str> = rest[end + 1..].split('`').skip(1).step_by(2).collect();
            let candidates: &[&str] = if expected.is_empty() { KNOWN_KEYS } else { &expected };
            let synonym = SEED_SYNONYMS.iter().find(|(seed, _)| *seed == unknown).map(|(_, key)| *key);
            message = match synonym.or_else(|| suggest(unknown, candidates).filter(|best| *best != unknown)) {
                Some(key) if synonym.is_some() => {
                    format!("unknown key `{unknown}`: the seeds' `{unknown}` is `{key}` here (a duration like 30s where the seed took milliseconds)")
                }
                Some(best) => format!("unknown key `{unknown}` (did you mean `{best}`?)"),
                None if KNOWN_KEYS.contains(&unknown) && !expected.is_empty() => {
                    format!("`{unknown}` is not valid here (valid here: {})", expected.join(", "))
                }
                None => format!("unknown key `{unknown}`"),
            };
        }
    }
    ConfigError { path, line: loc.as_ref().map(|l| l.line()), column: loc.as_ref().map(|l| l.column()), message }
}

/// The closest candidate by edit distance, if close enough to be a typo.
pub fn suggest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (strsim::damerau_levenshtein(&word.to_lowercase(), &c.to_lowercase()), *c))
        .filter(|(d, c)| *d <= 3.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Replaces `${NAME}` with the environment value; comments are left alone.
fn expand_env(text: &str, errors: &mut Vec<ConfigError>) -> String {
    let mut out = String::with_capacity(text.len());
    for (n, line) in text.split_inclusive('\n').enumerate() {
        let code_end = comment_start(line).unwrap_or(line.len());
        let (code, comment) = line.split_at(code_end);
        let mut rest = code;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let Some(end) = after.find('}') else {
                out.push_str(&rest[start..]);
                rest = "";
                break;
            };
            let name = &after[..end];
            match std::env::var(name) {
                Ok(value) if value.len() > MAX_FILE_BYTES || out.len() + value.len() > MAX_EXPANDED_BYTES => errors.push(ConfigError {
                    path: String::new(),
                    line: Some(n + 1),
                    column: Some(code.len() - rest.len() + start + 1),
                    message: format!("environment variable `{name}` is too large to expand (at most 1 MiB each, 4 MiB in all)"),
                }),
                Ok(value) => out.push_str(&value),
                Err(_) => errors.push(ConfigError {
                    path: String::new(),
                    line: Some(n + 1),
                    column: Some(code.len() - rest.len() + start + 1),
                    message: format!("environment variable `{name}` is not set"),
                }),
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        out.push_str(comment);
    }
    out
}

fn comment_start(line: &str) -> Option<usize> {
    let bytes = line.as_bytes();
    let (mut single, mut double) = (false, false);
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'\'' if !double => single = !single,
            b'"' if !single => double = !double,
            b'#' if !single && !double && (i == 0 || bytes[i - 1].is_ascii_whitespace()) => return Some(i),
            _ => {}
        }
    }
    None
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

    fn config(&mut self, raw: RawConfig) -> Config {
        let listen = self.addr("listen", raw.listen.as_deref(), "0.0.0.0:8080");
        let admin_raw = raw.admin.unwrap_or_default();
        let mut allowed_origins = Vec::new();
        for (i, o) in admin_raw.allowed_origins.unwrap_or_default().into_iter().enumerate() {
            let o = o.trim().trim_end_matches('/').to_ascii_lowercase();
            match o.parse::<Uri>() {
                Ok(u) if u.scheme().is_some() && u.authority().is_some() && u.path() == "/" => allowed_origins.push(o),
                _ => self.error(&format!("admin.allowedOrigins[{i}]"), format!("`{o}` is not an origin like https://ops.example.com")),
            }
        }
        let admin = AdminConfig { listen: self.addr("admin.listen", admin_raw.listen.as_deref(), "127.0.0.1:9901"), allowed_origins };
        if listen == admin.listen && listen.port() != 0 {
            self.error("admin.listen", "the admin listener must not share the data port");
        }
        let workers = raw.workers.unwrap_or(0);
        if workers > 1024 {
            self.error("workers", format!("{workers} is not between 0 (one per core) and 1024"));
        }
        let tls = raw.tls.and_then(|t| match (t.cert_file, t.key_file) {
            (Some(c), Some(k)) => {
                for (key, f) in [("tls.certFile", &c), ("tls.keyFile", &k)] {
                    if let Err(e) = std::fs::metadata(f) {
                        self.error(key, format!("cannot read `{f}`: {e}"));
                    }
                }
                Some(ListenerTls { cert_file: c.into(), key_file: k.into() })
            }
            _ => {
                self.error("tls", "needs both certFile and keyFile");
                None
            }
        });
        let sd = raw.shutdown.unwrap_or_default();
        let shutdown = ShutdownConfig {
            drain_delay: self.duration("shutdown.drainDelay", sd.drain_delay.as_deref(), Duration::from_secs(5)),
            grace_period: self.duration("shutdown.gracePeriod", sd.grace_period.as_deref(), Duration::from_secs(30)),
        };
        let store = raw.store.and_then(|s| s.path).map(PathBuf::from);
        let auth = match raw.auth {
            None | Some(RawAuth::None) => AuthConfig::None,
            Some(RawAuth::Jwt(jwt)) => self.jwt(jwt),
        };
        let defaults = raw.defaults.unwrap_or_default();
        let mut upstreams = Vec::new();
        let raw_upstreams_empty = raw.upstreams.0.is_empty();
        for (name, up) in raw.upstreams.0 {
            if let Some(u) = self.upstream(&name, up, &defaults) {
                upstreams.push(u);
            }
        }
        if raw_upstreams_empty {
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
                    let mut p = self.breaker_over(base.clone(), &path, own.as_ref(), None);
                    p.trial_lease = base.trial_lease;
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
            routes.push(RouteConfig {
                host: m.host.map(|h| h.to_ascii_lowercase()),
                path_prefix: m.path_prefix,
                methods,
                upstream,
                operation,
                breaker,
            });
        }
        let request_metrics = raw.metrics.and_then(|m| m.requests).unwrap_or(true);
        let client = self.client(raw.client.unwrap_or_default());
        let access_log = raw.access_log.and_then(|a| a.enabled).unwrap_or(false);
        Config { listen, workers, tls, shutdown, store, admin, auth, upstreams, routes, request_metrics, client, access_log }
    }

    fn client(&mut self, raw: super::model::RawClient) -> ClientConfig {
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

    /// `outlierDetection`, the upstream's keys over `defaults:` over built-ins.
    fn outlier(&mut self, path: &str, own: Option<&RawOutlierDetection>, def: Option<&RawOutlierDetection>) -> OutlierDetection {
        let mut o = OutlierDetection::default();
        for (layer, raw) in [("defaults.outlierDetection".to_string(), def), (format!("{path}.outlierDetection"), own)] {
            let Some(r) = raw else { continue };
            let key = |k: &str| format!("{layer}.{k}");
            if let Some(v) = r.consecutive_failures {
                o.consecutive_failures = v;
            }
            if let Some(v) = &r.base_ejection_time {
                o.base_ejection_time = self.duration(&key("baseEjectionTime"), Some(v), o.base_ejection_time);
                if o.base_ejection_time.is_zero() {
                    self.error(&key("baseEjectionTime"), "must be greater than zero");
                }
            }
            if let Some(v) = &r.max_ejection_time {
                o.max_ejection_time = self.duration(&key("maxEjectionTime"), Some(v), o.max_ejection_time);
            }
            if let Some(v) = r.max_ejection_percent {
                if v > 100 {
                    self.error(&key("maxEjectionPercent"), format!("{v} is a percentage in [0, 100]"));
                }
                o.max_ejection_percent = v.min(100);
            }
        }
        if o.max_ejection_time < o.base_ejection_time {
            self.error(
                &format!("{path}.outlierDetection"),
                format!("maxEjectionTime ({:?}) is below baseEjectionTime ({:?})", o.max_ejection_time, o.base_ejection_time),
            );
        }
        o
    }

    /// `retry`, the upstream's keys over `defaults:` over built-ins.
    fn retry(&mut self, path: &str, own: Option<&RawRetry>, def: Option<&RawRetry>) -> RetryPolicy {
        let mut r = RetryPolicy::default();
        for (layer, raw) in [("defaults.retry".to_string(), def), (format!("{path}.retry"), own)] {
            let Some(raw) = raw else { continue };
            let key = |k: &str| format!("{layer}.{k}");
            if let Some(v) = raw.attempts {
                if v > 10 {
                    self.error(&key("attempts"), format!("{v} is not between 0 and 10"));
                }
                r.attempts = v.min(10);
            }
            if let Some(list) = &raw.on {
                let mut on = RetryOn::default();
                for (i, item) in list.iter().enumerate() {
                    let text = match item {
                        StatusSpec::Code(c) => c.to_string(),
                        StatusSpec::Text(t) => t.trim().to_string(),
                    };
                    match RetryOn::NAMES.iter().find(|(n, _)| *n == text) {
                        Some((_, bit)) => on.0 |= bit.0,
                        None => {
                            let names: Vec<&str> = RetryOn::NAMES.iter().map(|(n, _)| *n).collect();
                            let hint = suggest(&text, &names).map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default();
                            self.error(&format!("{}[{i}]", key("on")), format!("`{text}` is not one of {}{hint}", names.join(", ")));
                        }
                    }
                }
                r.on = on;
            }
            if let Some(b) = &raw.budget {
                if let Some(v) = b.ratio {
                    if !(0.0..=1000.0).contains(&v) {
                        self.error(&key("budget.ratio"), format!("{v} is not a ratio between 0 and 1000"));
                    }
                    r.budget_ratio = v.clamp(0.0, 1000.0);
                }
                if let Some(v) = b.min_per_second {
                    r.budget_min_per_second = v;
                }
            }
        }
        r
    }

    fn addr(&mut self, path: &str, value: Option<&str>, default: &str) -> SocketAddr {
        let text = value.unwrap_or(default);
        match text.parse() {
            Ok(a) => a,
            Err(_) => {
                self.error(path, format!("`{text}` is not an address like 0.0.0.0:8080"));
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

    fn jwt(&mut self, jwt: RawJwt) -> AuthConfig {
        let short = |len: usize| format!("is {len} bytes: an HS256 secret needs at least {MIN_HS256_SECRET} (RFC 7518 3.2)");
        let key = match (jwt.hs256_secret_env, jwt.hs256_secret_file, jwt.public_key_file) {
            (Some(var), None, None) => match std::env::var(&var) {
                Ok(secret) if secret.trim().len() >= MIN_HS256_SECRET => {
                    JwtKey::Hs256 { source: format!("env {var}"), secret: secret.into_bytes() }
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
                    JwtKey::Hs256 { source: format!("file {file}"), secret }
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
        let leeway = self.duration("auth.jwt.leeway", jwt.leeway.as_deref(), Duration::from_secs(30));
        if leeway > Duration::from_secs(3600) {
            self.error("auth.jwt.leeway", "is at most 1h");
        }
        AuthConfig::Jwt(JwtConfig {
            key,
            admin_role: jwt.admin_role.unwrap_or_else(|| "admin".to_string()),
            role_claim: jwt.role_claim,
            require_for_reads: jwt.require_for_reads.unwrap_or(false),
            issuer: jwt.issuer,
            audience: jwt.audience,
            leeway,
        })
    }

    fn upstream(&mut self, name: &str, raw: RawUpstream, defaults: &RawDefaults) -> Option<UpstreamConfig> {
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
            None | Some("round-robin") => LoadBalancing::RoundRobin,
            Some("least-request") => LoadBalancing::LeastRequest,
            Some(other) => {
                self.error(&format!("{path}.loadBalancing"), format!("`{other}` is not round-robin or least-request"));
                LoadBalancing::RoundRobin
            }
        };
        let protocol = match raw.protocol.as_deref() {
            None | Some("http1") => Protocol::Http1,
            Some("http2") | Some("h2c") => Protocol::Http2,
            Some(other) => {
                self.error(&format!("{path}.protocol"), format!("`{other}` is not http1 or http2"));
                Protocol::Http1
            }
        };
        let timeouts = self.timeouts(&path, raw.timeouts.as_ref(), defaults.timeouts.as_ref());
        let outlier_detection = self.outlier(&path, raw.outlier_detection.as_ref(), defaults.outlier_detection.as_ref());
        let retry = self.retry(&path, raw.retry.as_ref(), defaults.retry.as_ref());
        let dns_refresh = match (&raw.dns_refresh, &defaults.dns_refresh) {
            (Some(v), _) => self.duration(&format!("{path}.dnsRefresh"), Some(v), Duration::from_secs(30)),
            (None, Some(v)) => self.duration("defaults.dnsRefresh", Some(v), Duration::from_secs(30)),
            (None, None) => Duration::from_secs(30),
        };
        if dns_refresh < Duration::from_secs(1) {
            self.error(&format!("{path}.dnsRefresh"), format!("{dns_refresh:?} is below the 1s minimum"));
        }
        let health_check = self.health_check(&path, raw.health_check.as_ref(), defaults.health_check.as_ref());
        let mut breaker = self.breaker(&path, raw.breaker.as_ref(), defaults.breaker.as_ref());
        breaker.trial_lease = timeouts.connect + timeouts.request;
        breaker.probe_trials = health_check.is_some();
        let max_concurrent_requests = raw.max_concurrent_requests.or(defaults.max_concurrent_requests).unwrap_or(1000);
        if max_concurrent_requests == 0 {
            self.error(&format!("{path}.maxConcurrentRequests"), "0 is below the minimum of 1");
        }
        let fallback = raw.fallback.map(|f| {
            let status = match http::StatusCode::from_u16(f.status.unwrap_or(503)) {
                Ok(s) => s,
                Err(_) => {
                    self.error(&format!("{path}.fallback.status"), "is not an HTTP status");
                    http::StatusCode::SERVICE_UNAVAILABLE
                }
            };
            let mut headers = Vec::new();
            for (k, v) in &f.headers {
                match (http::HeaderName::try_from(k.as_str()), http::HeaderValue::try_from(v.as_str())) {
                    (Ok(k), Ok(v)) => headers.push((k, v)),
                    _ => self.error(&format!("{path}.fallback.headers.{k}"), "is not a valid header"),
                }
            }
            let body = f.body.unwrap_or_default();
            if body.len() > MAX_FILE_BYTES {
                self.error(&format!("{path}.fallback.body"), format!("is {} bytes, more than the 1 MiB allowed", body.len()));
            }
            Fallback { status, headers, body: bytes::Bytes::from(body) }
        });
        let tls = match raw.tls {
            None => super::UpstreamTls::default(),
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
                super::UpstreamTls {
                    ca_file: t.ca_file.map(PathBuf::from),
                    server_name: t.server_name,
                    cert_file: t.cert_file.map(PathBuf::from),
                    key_file: t.key_file.map(PathBuf::from),
                }
            }
        };
        // Kept even when invalid (the file is rejected anyway), so routes
        // naming it do not report a second, misleading error.
        Some(UpstreamConfig {
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
        })
    }

    fn timeouts(&mut self, path: &str, own: Option<&RawTimeouts>, def: Option<&RawTimeouts>) -> Timeouts {
        let pick = |f: fn(&RawTimeouts) -> Option<&String>| -> (Option<String>, String) {
            match own.and_then(f) {
                Some(v) => (Some(v.clone()), format!("{path}.timeouts")),
                None => (def.and_then(f).cloned(), "defaults.timeouts".to_string()),
            }
        };
        let (connect, cp) = pick(|t| t.connect.as_ref());
        let (request, rp) = pick(|t| t.request.as_ref());
        let (idle, ip) = pick(|t| t.idle.as_ref());
        let t = Timeouts {
            connect: self.duration(&format!("{cp}.connect"), connect.as_deref(), Duration::from_secs(2)),
            request: self.duration(&format!("{rp}.request"), request.as_deref(), Duration::from_secs(30)),
            idle: self.duration(&format!("{ip}.idle"), idle.as_deref(), Duration::from_secs(60)),
        };
        if t.connect.is_zero() || t.request.is_zero() || t.idle.is_zero() {
            self.error(&format!("{path}.timeouts"), "timeouts must be greater than zero");
        }
        t
    }

    fn health_check(&mut self, path: &str, own: Option<&RawHealthCheck>, def: Option<&RawHealthCheck>) -> Option<HealthCheck> {
        if own.is_none() && def.is_none() {
            return None;
        }
        let get = |f: fn(&RawHealthCheck) -> Option<&String>| own.and_then(f).or_else(|| def.and_then(f)).cloned();
        let hc_path = get(|h| h.path.as_ref()).unwrap_or_else(|| "/health".to_string());
        if !hc_path.starts_with('/') {
            self.error(&format!("{path}.healthCheck.path"), "must start with `/`");
        }
        let interval =
            self.duration(&format!("{path}.healthCheck.interval"), get(|h| h.interval.as_ref()).as_deref(), Duration::from_secs(30));
        let timeout = self.duration(&format!("{path}.healthCheck.timeout"), get(|h| h.timeout.as_ref()).as_deref(), Duration::from_secs(2));
        if interval < Duration::from_millis(100) {
            self.error(&format!("{path}.healthCheck.interval"), format!("{interval:?} is below the 100ms minimum"));
        }
        Some(HealthCheck { path: hc_path, interval, timeout })
    }

    fn breaker(&mut self, path: &str, own: Option<&RawBreaker>, def: Option<&RawBreaker>) -> Policy {
        self.breaker_over(Policy::default(), path, own, Some(("defaults.breaker".to_string(), def)))
    }

    /// `own` (at `path.breaker`) over `under` (a lower layer, if any) over
    /// `base`: the upstream's keys over `defaults:`, or a route's keys over
    /// its upstream's effective policy.
    fn breaker_over(&mut self, base: Policy, path: &str, own: Option<&RawBreaker>, under: Option<(String, Option<&RawBreaker>)>) -> Policy {
        let mut p = base;
        let (under_layer, def) = under.unwrap_or_else(|| (String::new(), None));
        // Lower layer first, then the own keys; errors name the layer.
        for (layer, raw) in [(under_layer, def), (format!("{path}.breaker"), own)] {
            let Some(b) = raw else { continue };
            let key = |k: &str| format!("{layer}.{k}");
            if let Some(v) = b.enabled {
                p.enabled = v;
            }
            if let Some(v) = b.failure_threshold {
                if v == 0 {
                    self.error(&key("failureThreshold"), "0 is below the minimum of 1");
                }
                p.failure_threshold = v;
            }
            if let Some(v) = b.failure_rate_threshold {
                if !(v > 0.0 && v <= 100.0) {
                    self.error(&key("failureRateThreshold"), format!("{v} is not a percentage in (0, 100]"));
                }
                p.failure_rate_threshold = v;
            }
            if let Some(v) = b.minimum_request_count {
                if v == 0 {
                    self.error(&key("minimumRequestCount"), "0 is below the minimum of 1");
                }
                p.minimum_request_count = v;
            }
            if let Some(v) = &b.monitoring_window {
                p.monitoring_window = self.duration(&key("monitoringWindow"), Some(v), p.monitoring_window);
                if p.monitoring_window < Duration::from_secs(1) {
                    self.error(&key("monitoringWindow"), format!("{:?} is below the 1s minimum", p.monitoring_window));
                }
            }
            if let Some(v) = &b.slow_call_duration {
                p.slow_call_duration = self.duration(&key("slowCallDuration"), Some(v), p.slow_call_duration);
            }
            if let Some(v) = b.slow_call_rate_threshold {
                if !(v > 0.0 && v <= 100.0) {
                    self.error(&key("slowCallRateThreshold"), format!("{v} is not a percentage in (0, 100]"));
                }
                p.slow_call_rate_threshold = v;
            }
            if let Some(v) = &b.reset_timeout {
                p.reset_timeout = self.duration(&key("resetTimeout"), Some(v), p.reset_timeout);
                if p.reset_timeout.is_zero() {
                    self.error(&key("resetTimeout"), "must be greater than zero");
                }
            }
            if let Some(v) = &b.max_reset_timeout {
                p.max_reset_timeout = self.duration(&key("maxResetTimeout"), Some(v), p.max_reset_timeout);
            }
            if let Some(v) = b.jitter {
                if !(0.0..1.0).contains(&v) {
                    self.error(&key("jitter"), format!("{v} is not a fraction in [0, 1)"));
                }
                p.jitter = v;
            }
            if let Some(v) = b.half_open_requests {
                if v == 0 || v > 1000 {
                    self.error(&key("halfOpenRequests"), format!("{v} is not between 1 and 1000"));
                }
                p.half_open_requests = v;
            }
            if let Some(v) = &b.min_healthy_period {
                p.min_healthy_period = self.duration(&key("minHealthyPeriod"), Some(v), p.min_healthy_period);
            }
            if let Some(v) = &b.recovery_ramp {
                p.recovery_ramp = self.duration(&key("recoveryRamp"), Some(v), p.recovery_ramp);
            }
            if let Some(list) = &b.failure_statuses {
                let mut ranges = Vec::new();
                for (i, s) in list.iter().enumerate() {
                    let text = match s {
                        StatusSpec::Code(c) => c.to_string(),
                        StatusSpec::Text(t) => t.clone(),
                    };
                    match StatusSet::parse_one(&text) {
                        Ok(r) => ranges.push(r),
                        Err(msg) => self.error(&format!("{}[{i}]", key("failureStatuses")), msg),
                    }
                }
                p.failure_statuses = StatusSet(ranges);
            }
        }
        if p.max_reset_timeout < p.reset_timeout {
            let max_src = own.and_then(|b| b.max_reset_timeout.as_ref()).map_or("lower", |_| path);
            let max_key = if max_src == path { format!("{path}.breaker.maxResetTimeout") } else { format!("{path}.breaker") };
            self.error(&max_key, format!("maxResetTimeout ({:?}) is below resetTimeout ({:?})", p.max_reset_timeout, p.reset_timeout));
        }
        p
    }
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

/// Best-effort 1-based (line, column) of a dotted key path such as
/// `upstreams.api.breaker.jitter` or `routes[2].upstream`, found by walking
/// the text key by key. Errors always carry the key path anyway.
pub fn locate(text: &str, path: &str) -> Option<(usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut line = 0usize;
    let mut col = 0usize;
    let mut found = false;
    for seg in split_path(path) {
        match seg {
            Seg::Key(key) => {
                let (l, c) = find_key(&lines, line, col, key)?;
                line = l;
                col = c;
                found = true;
            }
            Seg::Index(i) => {
                // A flow sequence on the key's own line: `key: [a, b]`.
                if found {
                    if let Some(c) = flow_item(lines[line], col, i) {
                        col = c;
                        continue;
                    }
                }
                // The i-th `-` item at the indentation of the first one,
                // within the block of the key (not in a later section).
                let parent = found.then(|| lines[line].len() - lines[line].trim_start().len());
                let mut seen = 0;
                let mut indent = None;
                let mut hit = None;
                for (n, l) in lines.iter().enumerate().skip(line + 1) {
                    let trimmed = l.trim_start();
                    if trimmed.is_empty() || trimmed.starts_with('#') {
                        continue;
                    }
                    let ind = l.len() - trimmed.len();
                    if !trimmed.starts_with('-') {
                        if indent.or(parent).is_some_and(|i| ind <= i) {
                            break;
                        }
                        continue;
                    }
                    match indent {
                        None => indent = Some(ind),
                        Some(i) if i != ind => continue,
                        _ => {}
                    }
                    if seen == i {
                        hit = Some((n, ind));
                        break;
                    }
                    seen += 1;
                }
                let (l, c) = hit?;
                line = l;
                col = c + 1;
                found = true;
            }
        }
    }
    found.then_some((line + 1, col + 1))
}

/// For a flow sequence (`key: [a, b]`) after the key at `key_col` on
/// `line`: the 0-based column of item `i`, or the key's when the item is not
/// on that line. None when the value is not a flow sequence.
fn flow_item(line: &str, key_col: usize, i: usize) -> Option<usize> {
    let rest = line.get(key_col..)?;
    let colon = rest.find(':')?;
    let after = &rest[colon + 1..];
    let open = key_col + colon + 1 + (after.len() - after.trim_start().len());
    if !line[open..].starts_with('[') {
        return None;
    }
    let (mut depth, mut seen, mut quote) = (0usize, 0usize, None::<u8>);
    for (at, &b) in line.as_bytes().iter().enumerate().skip(open) {
        if let Some(q) = quote {
            if b == q {
                quote = None;
            }
            continue;
        }
        match b {
            b'[' | b'{' => depth += 1,
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    break;
                }
            }
            b',' if depth == 1 => {
                seen += 1;
                continue;
            }
            _ => {}
        }
        if b == b'"' || b == b'\'' {
            quote = Some(b);
        }
        if depth == 1 && seen == i && !matches!(b, b' ' | b'[') {
            return Some(at);
        }
    }
    Some(key_col)
}

enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

fn split_path(path: &str) -> Vec<Seg<'_>> {
    let mut out = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let mut rest = part;
        if let Some(b) = rest.find('[') {
            if b > 0 {
                out.push(Seg::Key(&rest[..b]));
            }
            rest = &rest[b..];
            while let Some(stripped) = rest.strip_prefix('[') {
                let Some(end) = stripped.find(']') else { break };
                if let Ok(i) = stripped[..end].parse() {
                    out.push(Seg::Index(i));
                }
                rest = &stripped[end + 1..];
            }
        } else {
            out.push(Seg::Key(rest));
        }
    }
    out
}

fn find_key(lines: &[&str], from_line: usize, from_col: usize, key: &str) -> Option<(usize, usize)> {
    for (n, l) in lines.iter().enumerate().skip(from_line) {
        let start = if n == from_line { from_col } else { 0 };
        let code = &l[..comment_start(l).unwrap_or(l.len())];
        let mut search = start.min(code.len());
        while let Some(pos) = code[search..].find(key) {
            let at = search + pos;
            let before_ok = at == 0 || matches!(code.as_bytes()[at - 1], b' ' | b'{' | b',' | b'"' | b'\'' | b'-');
            let after = code[at + key.len()..].trim_start_matches(['"', '\'']).trim_start();
            if before_ok && after.starts_with(':') {
                return Some((n, at));
            }
            search = at + key.len();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_walks_nested_keys() {
        let text = "upstreams:\n  a:\n    endpoints: [http://x:1]\n    breaker:\n      jitter: 2\nroutes:\n  - { match: { pathPrefix: / }, upstream: a }\n  - { upstream: b }\n";
        assert_eq!(locate(text, "upstreams.a.breaker.jitter"), Some((5, 7)));
        assert_eq!(locate(text, "routes[1].upstream"), Some((8, 7)));
        assert_eq!(locate(text, "upstreams.a.endpoints[0]"), Some((3, 17)));
        let flow = "upstreams:\n  a:\n    endpoints: [http://x:1, \"b, c\", bad]\nroutes:\n  - { upstream: a }\n  - { upstream: a }\n";
        assert_eq!(locate(flow, "upstreams.a.endpoints[2]"), Some((3, 37)));
        assert_eq!(locate(flow, "upstreams.a.endpoints[5]"), Some((3, 5)), "off the end: the key");
    }

    #[test]
    fn a_key_in_the_wrong_map_is_not_suggested_as_itself() {
        let err = parse("timeouts: { connect: 2s }\nupstreams: {}\nroutes: []\n").expect_err("timeouts belongs under defaults");
        let msg = &err.errors[0].message;
        assert!(msg.contains("`timeouts` is not valid here"), "{msg}");
        assert!(msg.contains("defaults"), "lists the keys valid here: {msg}");
        assert!(!msg.contains("did you mean `timeouts`"), "{msg}");
        let err = parse("upstreams:\n  a:\n    endpoints: [http://x:1]\n    breakr: {}\nroutes: []\n").expect_err("typo");
        assert!(err.errors[0].message.contains("did you mean `breaker`?"), "{}", err.errors[0].message);
    }

    #[test]
    fn suggest_finds_typos() {
        assert_eq!(suggest("failureTreshold", KNOWN_KEYS), Some("failureThreshold"));
        assert_eq!(suggest("zzzzzzzzzzzz", KNOWN_KEYS), None);
    }
}
