//! Who is calling the admin side: JWT verification (HS256 secret, or an
//! RS256/ES256 public key), role extraction (`role` string or `roles` array,
//! or the configured claim), and per-caller rate limiting of mutations
//! (with the tokio-clock adapter `governor` reads, shared with the
//! WebSocket's message limit).
//! It must not decide what an endpoint does; it answers "who, and may they".

use std::collections::HashSet;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use governor::state::keyed::HashMapStateStore;
use governor::Quota;
use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
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
        let claims = data.claims;
        // jsonwebtoken checks a numeric `exp`; anything else is refused here.
        let exp = claims.get("exp").and_then(Value::as_f64).filter(|e| e.is_finite() && *e >= 0.0);
        let Some(exp) = exp else {
            return Err(AuthError::Invalid("`exp` must be a number of seconds since the epoch".to_string()));
        };
        if let Some(iat) = claims.get("iat") {
            let now = crate::clock::unix_secs(std::time::SystemTime::now());
            match iat.as_f64() {
                Some(t) if t <= now.saturating_add(validation.leeway) as f64 => {}
                _ => return Err(AuthError::Invalid("`iat` is not a time in the past".to_string())),
            }
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

/// Mutations per caller: a GCRA through `governor` (a burst of
/// `per_window`, then one every `window / per_window`). Bounded: past
/// `MAX_CALLERS` tracked callers, those whose allowance is whole again are
/// forgotten; while it is still full, every caller is refused for a window.
pub struct RateLimiter {
    callers: governor::RateLimiter<String, HashMapStateStore<String>, LimiterClock>,
    window: Duration,
}

const MAX_CALLERS: usize = 10_000;

impl RateLimiter {
    pub fn new(per_window: u32, window: Duration) -> RateLimiter {
        let burst = NonZeroU32::new(per_window).unwrap_or(NonZeroU32::MIN);
        let period = (window / burst.get()).max(Duration::from_nanos(1));
        let quota = Quota::with_period(period).expect("a period of at least 1 ns").allow_burst(burst);
        RateLimiter { callers: governor::RateLimiter::hashmap_with_clock(quota, LimiterClock), window }
    }

    /// Ok, or the time until the caller may try again.
    pub fn check(&self, caller: &str) -> Result<(), Duration> {
        if self.callers.len() >= MAX_CALLERS {
            self.callers.retain_recent();
            self.callers.shrink_to_fit();
            if self.callers.len() >= MAX_CALLERS {
                return Err(self.window);
            }
        }
        self.callers.check_key(&caller.to_string()).map_err(|refused| refused.wait_time_from(crate::clock::now()))
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
