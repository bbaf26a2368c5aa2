//! The YAML file as written: serde types that mirror docs/configuration.md key for
//! key. Every field is optional here so defaults can be layered (the
//! layers and the built-in values live in `defaults`); nothing in this file
//! checks ranges or cross references (that is `validate`), and nothing here
//! is ever handed to the data path. The same types, through their
//! `JsonSchema` derives, are the file's JSON Schema (`config::schema`).

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// The whole file.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawConfig {
    pub listen: Option<String>,
    pub workers: Option<usize>,
    pub tls: Option<RawListenerTls>,
    pub shutdown: Option<RawShutdown>,
    pub store: Option<RawStore>,
    pub admin: Option<RawAdmin>,
    pub auth: Option<RawAuth>,
    pub defaults: Option<RawDefaults>,
    pub metrics: Option<RawMetrics>,
    pub client: Option<RawClient>,
    pub access_log: Option<RawAccessLog>,
    pub readiness: Option<RawReadiness>,
    pub tracing: Option<RawTracing>,
    pub fleet: Option<RawFleet>,
    #[serde(default)]
    pub upstreams: UniqueMap<RawUpstream>,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawListenerTls {
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawShutdown {
    pub drain_delay: Option<String>,
    pub grace_period: Option<String>,
}

/// An upstream's keep-alive connections.
#[derive(Debug, Default, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawPool {
    pub idle_timeout: Option<String>,
}

/// What `/readyz` waits for besides the listeners.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawReadiness {
    /// Upstreams that must have answered once.
    #[serde(default)]
    pub upstreams: Vec<String>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawStore {
    pub path: Option<String>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawMetrics {
    /// Per-request series (requests, durations, in-flight, rejections).
    pub requests: Option<bool>,
}

/// The data listener's side of each connection.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawClient {
    pub header_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub max_connections: Option<usize>,
}

/// Sidecars that share what they know through Redis (docs/configuration.md: Fleet).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawFleet {
    /// `redis://[user:pass@]host:port/db` or `rediss://...` (TLS).
    pub redis: Option<String>,
    /// Sidecars with the same name share state (keys `fusebox:{name}:...`).
    pub name: Option<String>,
    /// This sidecar's id in the fleet (default hostname-pid).
    pub member: Option<String>,
    /// Members that must open a circuit on their own evidence before the
    /// fleet opens it: a count (at least 2) or a share like "25%".
    pub quorum: Option<RawQuorum>,
    /// How often a member says it is alive; gone after 3 missed.
    pub heartbeat: Option<String>,
    /// A file holding the Redis password (instead of one in the URL).
    pub password_file: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum RawQuorum {
    Count(u32),
    Share(String),
}

/// Trace context and OTLP export (docs/configuration.md: Tracing).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawTracing {
    /// Share of requests without trace context that start a trace (0-1).
    pub sample_rate: Option<f64>,
    /// `service.name` of the exported spans (default `OTEL_SERVICE_NAME`, else `fusebox`).
    pub service_name: Option<String>,
    pub otlp: Option<RawOtlp>,
}

/// OTLP over HTTP/protobuf.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawOtlp {
    /// `http(s)://host:port` (then `/v1/traces`) or the full traces URL.
    pub endpoint: Option<String>,
    /// Extra request headers (e.g. an authorization for the collector).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Longest one export may take.
    pub timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawAccessLog {
    pub enabled: Option<bool>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawAdmin {
    pub listen: Option<String>,
    /// Browser origins besides the admin listener's own that may call
    /// mutations and open the WebSocket.
    pub allowed_origins: Option<Vec<String>>,
    /// Host names (optional `:port`, or `*`) the admin listener answers
    /// for besides its own address, `localhost` and IP literals.
    pub allowed_hosts: Option<Vec<String>>,
    /// TLS on the admin listener (`https://`, `wss://`).
    pub tls: Option<RawListenerTls>,
}

/// `auth: none` or `auth: { jwt: {...} }`.
#[derive(Debug)]
pub enum RawAuth {
    None,
    Jwt(RawJwt),
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawAuthMap {
    pub jwt: Option<RawJwt>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawJwt {
    pub hs256_secret_env: Option<String>,
    pub hs256_secret_file: Option<String>,
    pub public_key_file: Option<String>,
    pub admin_role: Option<String>,
    pub role_claim: Option<String>,
    pub require_for_reads: Option<bool>,
    /// Checked against the token's `iss` when set.
    pub issuer: Option<String>,
    /// Checked against the token's `aud` when set.
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat` (default 30s).
    pub leeway: Option<String>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawDefaults {
    pub breaker: Option<RawBreaker>,
    pub health_check: Option<RawHealthCheck>,
    pub timeouts: Option<RawTimeouts>,
    pub max_concurrent_requests: Option<usize>,
    pub outlier_detection: Option<RawOutlierDetection>,
    pub retry: Option<RawRetry>,
    pub dns_refresh: Option<String>,
    pub startup_grace: Option<String>,
    pub pool: Option<RawPool>,
}

/// Passive outlier detection per endpoint.
#[derive(Debug, Default, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawOutlierDetection {
    pub consecutive_failures: Option<u32>,
    pub base_ejection_time: Option<String>,
    pub max_ejection_time: Option<String>,
    pub max_ejection_percent: Option<u32>,
}

#[derive(Debug, Default, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawRetry {
    pub attempts: Option<u32>,
    pub on: Option<Vec<StatusSpec>>,
    pub budget: Option<RawRetryBudget>,
}

#[derive(Debug, Default, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawRetryBudget {
    pub ratio: Option<f64>,
    pub min_per_second: Option<u32>,
}

#[derive(Debug, Default, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawBreaker {
    /// The architecture seed's switch: false counts but never rejects.
    pub enabled: Option<bool>,
    pub failure_threshold: Option<u32>,
    pub failure_rate_threshold: Option<f64>,
    pub minimum_request_count: Option<u32>,
    pub monitoring_window: Option<String>,
    pub slow_call_duration: Option<String>,
    pub slow_call_rate_threshold: Option<f64>,
    pub reset_timeout: Option<String>,
    pub max_reset_timeout: Option<String>,
    pub jitter: Option<f64>,
    pub half_open_requests: Option<u32>,
    pub min_healthy_period: Option<String>,
    pub recovery_ramp: Option<String>,
    pub failure_statuses: Option<Vec<StatusSpec>>,
}

/// `500`, `"500-599"` or `"5xx"`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum StatusSpec {
    Code(u16),
    Text(String),
}

#[derive(Debug, Default, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawHealthCheck {
    pub path: Option<String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawTimeouts {
    pub connect: Option<String>,
    pub request: Option<String>,
    pub idle: Option<String>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawUpstream {
    #[serde(default)]
    pub endpoints: Vec<String>,
    pub load_balancing: Option<String>,
    pub protocol: Option<String>,
    pub breaker: Option<RawBreaker>,
    pub health_check: Option<RawHealthCheck>,
    pub timeouts: Option<RawTimeouts>,
    pub max_concurrent_requests: Option<usize>,
    pub fallback: Option<RawFallback>,
    pub tls: Option<RawUpstreamTls>,
    pub outlier_detection: Option<RawOutlierDetection>,
    pub retry: Option<RawRetry>,
    pub dns_refresh: Option<String>,
    pub startup_grace: Option<String>,
    pub pool: Option<RawPool>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawFallback {
    pub status: Option<u16>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub body: Option<String>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawUpstreamTls {
    pub ca_file: Option<String>,
    pub server_name: Option<String>,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawRoute {
    #[serde(rename = "match")]
    pub matcher: Option<RawMatch>,
    pub upstream: Option<String>,
    /// A circuit of its own for this route's calls (`upstream/operation`).
    pub operation: Option<String>,
    /// That operation's breaker keys, over its upstream's.
    pub breaker: Option<RawBreaker>,
    /// What that operation's open circuit answers (over its upstream's).
    pub fallback: Option<RawFallback>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawMatch {
    pub path_prefix: Option<String>,
    pub host: Option<String>,
    pub methods: Option<Vec<String>>,
}

// === impl RawAuth ===

impl<'de> Deserialize<'de> for RawAuth {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct AuthVisitor;
        impl<'de> Visitor<'de> for AuthVisitor {
            type Value = RawAuth;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`none` or a map with `jwt`")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawAuth, E> {
                if v == "none" {
                    Ok(RawAuth::None)
                } else {
                    Err(E::custom(format!("auth must be `none` or a map with `jwt`, found `{v}`")))
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawAuth, A::Error> {
                let m = RawAuthMap::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                match m.jwt {
                    Some(jwt) => Ok(RawAuth::Jwt(jwt)),
                    None => Err(serde::de::Error::custom("auth map needs a `jwt` entry")),
                }
            }
        }
        d.deserialize_any(AuthVisitor)
    }
}

impl JsonSchema for RawAuth {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "RawAuth".into()
    }

    fn json_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let jwt = g.subschema_for::<RawJwt>();
        schemars::json_schema!({
            "description": "`none` (no authentication: a loud warning at start) or `{ jwt: {...} }`.",
            "oneOf": [
                { "const": "none" },
                { "type": "object", "properties": { "jwt": jwt }, "required": ["jwt"], "additionalProperties": false }
            ]
        })
    }
}

// === impl UniqueMap ===

impl<T: JsonSchema> JsonSchema for UniqueMap<T> {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        format!("Map_of_{}", T::schema_name()).into()
    }

    fn json_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let value = g.subschema_for::<T>();
        schemars::json_schema!({ "type": ["object", "null"], "additionalProperties": value })
    }
}

/// A name-keyed map that keeps file order and refuses duplicate keys
/// (a plain map would let the second `market-data:` silently win).
#[derive(Debug)]
pub struct UniqueMap<T>(pub Vec<(String, T)>);

impl<T> Default for UniqueMap<T> {
    fn default() -> Self {
        UniqueMap(Vec::new())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for UniqueMap<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct MapVisitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for MapVisitor<T> {
            type Value = UniqueMap<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of names")
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(UniqueMap(Vec::new()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out: Vec<(String, T)> = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    if out.iter().any(|(k, _)| *k == key) {
                        return Err(serde::de::Error::custom(format!("duplicate name `{key}`")));
                    }
                    let value = map.next_value::<T>()?;
                    out.push((key, value));
                }
                Ok(UniqueMap(out))
            }
        }
        d.deserialize_map(MapVisitor(std::marker::PhantomData))
    }
}
