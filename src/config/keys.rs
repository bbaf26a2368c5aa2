//! The file's key names as an operator meets them: the keys fusebox knows,
//! the seed documents' names for some of them, "did you mean" suggestions,
//! and the wording of a structural error (an unknown key, a wrong type)
//! that stops parsing.
//!
//! Must not: check values or cross references (that is `validate`), or
//! change which keys are accepted (that is `model`'s serde types).

use super::ConfigError;

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
    "allowedHosts",
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
    "startupGrace",
    "pool",
    "idleTimeout",
    "readiness",
    "upstreams",
    "client",
    "headerTimeout",
    "idleTimeout",
    "maxConnections",
    "accessLog",
    "enabled",
    "metrics",
    "requests",
    "tracing",
    "sampleRate",
    "serviceName",
    "otlp",
    "endpoint",
    "fleet",
    "redis",
    "name",
    "member",
    "quorum",
    "heartbeat",
    "passwordFile",
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

/// A serde error as one [`ConfigError`]: its key path and position, Rust's
/// type names in words, and for an unknown key the nearest known one.
pub fn structural_error(e: serde_path_to_error::Error<serde_yaml::Error>) -> ConfigError {
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
    // A negative count: serde says "invalid type: integer `-3`, expected u32".
    if let Some(rest) = message.strip_prefix("invalid value: integer `-").or_else(|| message.strip_prefix("invalid type: integer `-")) {
        if let Some((digits, tail)) = rest.split_once('`') {
            if [", expected u16", ", expected u32", ", expected u64", ", expected usize"].contains(&tail) {
                message = format!("must be a positive whole number, got -{digits}");
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

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
    fn a_negative_count_says_so() {
        let err = parse("upstreams:\n  a:\n    endpoints: [http://x:1]\n    breaker: { failureThreshold: -3 }\nroutes: []\n")
            .expect_err("negative count");
        let e = &err.errors[0];
        assert_eq!(e.message, "must be a positive whole number, got -3", "{e:?}");
        assert!(e.path.ends_with("failureThreshold"), "{e:?}");
    }

    #[test]
    fn suggest_finds_typos() {
        assert_eq!(suggest("failureTreshold", KNOWN_KEYS), Some("failureThreshold"));
        assert_eq!(suggest("zzzzzzzzzzzz", KNOWN_KEYS), None);
    }
}
