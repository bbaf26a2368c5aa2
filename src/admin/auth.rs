//! Who is calling the admin side: JWT verification (HS256 secret, or an
//! RS256/ES256 public key), role extraction (`role` string or `roles` array,
//! or the configured claim), and per-caller rate limiting of mutations (a
//! bounded GCRA table on the crate's clock), plus the tokio-clock adapter
//! `governor` reads for the WebSocket's message limit.
//!
//! `jsonwebtoken` checks the signature, `alg`, `iss`, `aud` and a `u64`
//! `exp`/`nbf`; this module adds what it lets through: a `crit` header
//! (RFC 7515 4.1.11: refused, fusebox understands no extension) and
//! `exp`/`nbf`/`iat` that are not numbers (it skips a string `nbf`).
//! It must not decide what an endpoint does; it answers "who, and may they".

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use base64::Engine as _;
use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
use parking_lot::Mutex;
use serde_json::Value;

use crate::config::{AuthConfig, JwtConfig, JwtKey};

/// The verified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// `sub` of the token (or `anonymous` with `auth: none`).
    pub subject: String,
    pub admin: bool,
    /// The token's `exp` (Unix seconds) plus the leeway: a session that
    /// outlives it ends. `None` with `auth: none`.
    pub expires_at: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no token: send `Authorization: Bearer <JWT>`")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("the token lacks the `{0}` role")]
    Forbidden(String),
}

/// Checks tokens for one config generation.
pub struct Authorizer {
    mode: Mode,
}

// One per config generation: the size difference is irrelevant.
#[allow(clippy::large_enum_variant)]
enum Mode {
    Open,
    /// The configured key could not be used: every token is refused.
    DenyAll,
    Jwt {
        key: DecodingKey,
        validation: Validation,
        admin_role: String,
        role_claim: Option<String>,
        require_for_reads: bool,
    },
}

// === impl Authorizer ===

impl Authorizer {
    pub fn new(config: &AuthConfig) -> Result<Authorizer, String> {
        let mode = match config {
            AuthConfig::None => Mode::Open,
            AuthConfig::Jwt(jwt) => Self::jwt(jwt)?,
        };
        Ok(Authorizer { mode })
    }

    fn jwt(jwt: &JwtConfig) -> Result<Mode, String> {
        let (key, alg) = match &jwt.key {
            JwtKey::Hs256 { secret, .. } => (DecodingKey::from_secret(secret), Algorithm::HS256),
            JwtKey::PublicKey { pem, file } => {
                if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
                    (k, Algorithm::RS256)
                } else if let Ok(k) = DecodingKey::from_ec_pem(pem) {
                    (k, Algorithm::ES256)
                } else {
                    return Err(format!("{} is neither an RSA nor an EC public key in PEM", file.display()));
                }
            }
        };
        let mut validation = Validation::new(alg);
        validation.leeway = jwt.leeway.as_secs();
        validation.validate_nbf = true;
        validation.validate_exp = true;
        // `exp` is required: a token that never expires is refused.
        validation.required_spec_claims = HashSet::from(["exp".to_string()]);
        match &jwt.issuer {
            Some(iss) => {
                validation.set_issuer(&[iss]);
                validation.required_spec_claims.insert("iss".to_string());
            }
            None => validation.iss = None,
        }
        match &jwt.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                validation.required_spec_claims.insert("aud".to_string());
            }
            None => validation.validate_aud = false,
        }
        Ok(Mode::Jwt {
            key,
            validation,
            admin_role: jwt.admin_role.clone(),
            role_claim: jwt.role_claim.clone(),
            require_for_reads: jwt.require_for_reads,
        })
    }

    /// Whether reads (status, health, history) need a token.
    pub fn reads_need_token(&self) -> bool {
        matches!(self.mode, Mode::Jwt { require_for_reads: true, .. } | Mode::DenyAll)
    }

    pub fn deny_all() -> Authorizer {
        Authorizer { mode: Mode::DenyAll }
    }

    /// Verifies `token` (None: no token was sent).
    pub fn verify(&self, token: Option<&str>) -> Result<Principal, AuthError> {
        let (key, validation, admin_role, role_claim) = match &self.mode {
            Mode::Open => return Ok(Principal { subject: "anonymous".to_string(), admin: true, expires_at: None }),
            Mode::DenyAll => return Err(AuthError::Invalid("the configured verification key is unusable".to_string())),
            Mode::Jwt { key, validation, admin_role, role_claim, .. } => (key, validation, admin_role, role_claim),
        };
        let token = token.filter(|t| !t.is_empty()).ok_or(AuthError::Missing)?;
        let data = decode::<Value>(token, key, validation).map_err(|e| AuthError::Invalid(e.to_string()))?;
        if header_has_crit(token) {
            return Err(AuthError::Invalid(
                "the token's header lists critical extensions (`crit`) fusebox does not understand (RFC 7515 4.1.11)".to_string(),
            ));
        }
        let claims = data.claims;
        let now = crate::clock::unix_secs(std::time::SystemTime::now()).saturating_add(validation.leeway) as f64;
        let Some(exp) = numeric_date(&claims, "exp")? else {
            return Err(AuthError::Invalid("`exp` must be a number of seconds since the epoch".to_string()));
        };
        // jsonwebtoken only checks an `nbf` that parses as a u64: a string
        // or a fraction would slip through.
        if numeric_date(&claims, "nbf")?.is_some_and(|nbf| nbf > now) {
            return Err(AuthError::Invalid("the token is not valid yet (`nbf`)".to_string()));
        }
        if numeric_date(&claims, "iat")?.is_some_and(|iat| iat > now) {
            return Err(AuthError::Invalid("`iat` is not a time in the past".to_string()));
        }
        let roles = roles(&claims, role_claim.as_deref());
        Ok(Principal {
            subject: claims.get("sub").and_then(Value::as_str).unwrap_or("unknown").to_string(),
            admin: roles.iter().any(|r| r == admin_role),
            expires_at: Some((exp as u64).saturating_add(validation.leeway)),
        })
    }

    /// Verifies and requires the admin role.
    pub fn admin(&self, token: Option<&str>) -> Result<Principal, AuthError> {
        let p = self.verify(token)?;
        if p.admin {
            Ok(p)
        } else {
            let role = match &self.mode {
                Mode::Jwt { admin_role, .. } => admin_role.clone(),
                Mode::Open | Mode::DenyAll => "admin".to_string(),
            };
            Err(AuthError::Forbidden(role))
        }
    }
}

/// A NumericDate claim (RFC 7519 2): absent, or a finite number of seconds
/// at or after the epoch; any other type refuses the token.
fn numeric_date(claims: &Value, name: &str) -> Result<Option<f64>, AuthError> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => match v.as_f64() {
            Some(t) if t.is_finite() && t >= 0.0 => Ok(Some(t)),
            _ => Err(AuthError::Invalid(format!("`{name}` must be a number of seconds since the epoch"))),
        },
    }
}

/// Whether the (already verified) token's JOSE header has a `crit`
/// member. Called after `decode`, so the header is known to be base64url
/// JSON; anything unreadable here counts as critical.
fn header_has_crit(token: &str) -> bool {
    let Some(encoded) = token.split('.').next() else { return true };
    let Ok(bytes) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(encoded.trim_end_matches('=')) else { return true };
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(header)) => header.contains_key("crit"),
        _ => true,
    }
}

fn roles(claims: &Value, claim: Option<&str>) -> Vec<String> {
    let names: &[&str] = match claim {
        Some(c) => &[c][..],
        None => &["role", "roles"],
    };
    let mut out = Vec::new();
    for name in names {
        match claims.get(*name) {
            Some(Value::String(s)) => out.push(s.clone()),
            Some(Value::Array(a)) => out.extend(a.iter().filter_map(Value::as_str).map(str::to_owned)),
            _ => {}
        }
    }
    out
}

/// The bearer token of an `Authorization` header.
pub fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token.trim())
}

/// Mutations per caller: a GCRA (a burst of `per_window`, then one every
/// `window / per_window`), keyed by the token's subject.
///
/// Bounded: at most `capacity` callers are tracked. A full table first
/// forgets callers whose allowance is whole again (they are
/// indistinguishable from new ones), then the half closest to that (the
/// least recent and least busy): a flood of new subjects costs the
/// flooders' own history, never a refusal of someone who did nothing.
/// A refusal's wait is the exact time until that caller's next allowed
/// request.
pub struct RateLimiter {
    /// Each tracked caller's theoretical arrival time: the caller is
    /// allowed while it is at most `window` ahead of now.
    callers: Mutex<HashMap<String, Instant>>,
    /// `window / per_window`: what one request adds.
    interval: Duration,
    /// `interval * per_window`: how far ahead a caller may run.
    window: Duration,
    capacity: usize,
}

/// Callers the mutation limit tracks at once.
const MAX_CALLERS: usize = 10_000;

// === impl RateLimiter ===

impl RateLimiter {
    pub fn new(per_window: u32, window: Duration) -> RateLimiter {
        RateLimiter::with_capacity(per_window, window, MAX_CALLERS)
    }

    /// [`RateLimiter::new`] tracking at most `capacity` callers (at least 2).
    pub fn with_capacity(per_window: u32, window: Duration, capacity: usize) -> RateLimiter {
        let burst = per_window.max(1);
        let interval = (window / burst).max(Duration::from_nanos(1));
        RateLimiter { callers: Mutex::new(HashMap::new()), interval, window: interval * burst, capacity: capacity.max(2) }
    }

    /// Ok, or the time until the caller may try again.
    pub fn check(&self, caller: &str) -> Result<(), Duration> {
        self.check_at(caller, crate::clock::now())
    }

    /// [`RateLimiter::check`] at `now`.
    pub fn check_at(&self, caller: &str, now: Instant) -> Result<(), Duration> {
        let mut callers = self.callers.lock();
        let known = callers.get(caller).copied();
        let next = known.filter(|t| *t > now).unwrap_or(now) + self.interval;
        let ahead = next.saturating_duration_since(now);
        if ahead > self.window {
            return Err(ahead - self.window);
        }
        if known.is_none() && callers.len() >= self.capacity {
            make_room(&mut callers, now, self.capacity);
        }
        callers.insert(caller.to_owned(), next);
        Ok(())
    }

    /// Callers tracked now.
    pub fn len(&self) -> usize {
        self.callers.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Frees room in a full table: drops callers that are whole again, then,
/// if more than half of `capacity` is left, those least ahead of now down
/// to half. Linear, and then good for at least `capacity / 2` new callers.
fn make_room(callers: &mut HashMap<String, Instant>, now: Instant, capacity: usize) {
    callers.retain(|_, t| *t > now);
    let half = capacity / 2;
    if callers.len() > half {
        let mut times: Vec<Instant> = callers.values().copied().collect();
        let evict = callers.len() - half;
        let (_, cut, _) = times.select_nth_unstable(evict - 1);
        let cut = *cut;
        callers.retain(|_, t| *t > cut);
    }
}

/// `governor`'s clock on the crate's one clock (tokio's): paused test time
/// reaches the mutation limit and the WebSocket's message limit.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct LimiterClock;

impl governor::clock::Clock for LimiterClock {
    type Instant = Instant;

    fn now(&self) -> Instant {
        crate::clock::now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_exact_wait() {
        let limit = RateLimiter::new(10, Duration::from_secs(60));
        let t0 = crate::clock::from_ms(1_000);
        for _ in 0..10 {
            assert_eq!(limit.check_at("ops", t0), Ok(()));
        }
        assert_eq!(limit.check_at("ops", t0), Err(Duration::from_secs(6)), "one more every 6 s");
        assert_eq!(limit.check_at("ops", t0 + Duration::from_millis(1500)), Err(Duration::from_millis(4500)));
        assert_eq!(limit.check_at("ops", t0 + Duration::from_secs(6)), Ok(()), "allowed exactly when told");
        assert_eq!(limit.check_at("ops", t0 + Duration::from_secs(6)), Err(Duration::from_secs(6)));
        assert_eq!(limit.check_at("other", t0), Ok(()), "callers are apart");
    }

    #[test]
    fn a_full_table_evicts_instead_of_refusing_newcomers() {
        let limit = RateLimiter::with_capacity(10, Duration::from_secs(60), 100);
        let t0 = crate::clock::from_ms(1_000);
        // A misbehaving caller, then a flood of new ones at the same instant.
        for _ in 0..10 {
            assert_eq!(limit.check_at("noisy", t0), Ok(()));
        }
        for i in 0..10_000 {
            assert_eq!(limit.check_at(&format!("flood-{i}"), t0), Ok(()), "subject {i} was never seen misbehaving");
            assert!(limit.len() <= 100, "bounded");
        }
        assert_eq!(limit.check_at("fresh", t0), Ok(()));
        assert!(limit.check_at("noisy", t0).is_err(), "the busiest caller is the last one forgotten");
    }
}
