//! Minting admin tokens for `fusebox token`: an HS256 JWT signed with the
//! configured secret, carrying exactly the claims `auth` checks (`sub`, the
//! role claim, `iat`, `exp`, and `iss`/`aud` when the config requires
//! them), so an operator never assembles one by hand with openssl.
//!
//! Must not: mint for a public-key config (fusebox holds only the public
//! half; your identity provider signs those), print or log the secret, or
//! decide what a token may do (that is `auth`).

use std::time::{Duration, SystemTime};

use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{Map, Value};

use crate::config::{AuthConfig, JwtKey};

/// The longest `--ttl` accepted: a forgotten token should not outlive a
/// year of key rotations.
pub const MAX_TTL: Duration = Duration::from_secs(366 * 24 * 3600);

/// What to put in the token.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// `sub`: who the audit log will name.
    pub subject: String,
    /// The role; `None` takes the config's `adminRole`.
    pub role: Option<String>,
    pub ttl: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("`auth: none`: the admin API takes no token, so there is nothing to mint")]
    AuthNone,
    #[error(
        "auth.jwt verifies with a public key ({0}): tokens for it are signed with the private key, by your identity provider; fusebox holds only the public half and cannot mint one"
    )]
    PublicKey(String),
    #[error("--ttl must be more than 0s and at most 366 days")]
    Ttl,
    #[error("--sub must not be empty")]
    EmptySubject,
    #[error("cannot sign the token: {0}")]
    Sign(String),
}

/// A signed token for `auth` at `now`.
pub fn mint(auth: &AuthConfig, req: &TokenRequest, now: SystemTime) -> Result<String, TokenError> {
    let jwt = match auth {
        AuthConfig::None => return Err(TokenError::AuthNone),
        AuthConfig::Jwt(jwt) => jwt,
    };
    let secret = match &jwt.key {
        JwtKey::Hs256 { secret, .. } => secret,
        JwtKey::PublicKey { file, .. } => return Err(TokenError::PublicKey(file.display().to_string())),
    };
    if req.ttl.is_zero() || req.ttl > MAX_TTL {
        return Err(TokenError::Ttl);
    }
    if req.subject.trim().is_empty() {
        return Err(TokenError::EmptySubject);
    }
    let iat = crate::clock::unix_secs(now);
    let mut claims = Map::new();
    claims.insert("sub".to_string(), Value::from(req.subject.clone()));
    let role = req.role.clone().unwrap_or_else(|| jwt.admin_role.clone());
    claims.insert(jwt.role_claim.clone().unwrap_or_else(|| "role".to_string()), Value::from(role));
    claims.insert("iat".to_string(), Value::from(iat));
    claims.insert("exp".to_string(), Value::from(iat.saturating_add(req.ttl.as_secs().max(1))));
    if let Some(iss) = &jwt.issuer {
        claims.insert("iss".to_string(), Value::from(iss.clone()));
    }
    if let Some(aud) = &jwt.audience {
        claims.insert("aud".to_string(), Value::from(aud.clone()));
    }
    encode(&Header::default(), &Value::Object(claims), &EncodingKey::from_secret(secret)).map_err(|e| TokenError::Sign(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::auth::{AuthError, Authorizer};

    fn config(extra: &str) -> crate::Config {
        let dir = std::env::temp_dir().join(format!("fusebox-token-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let secret = dir.join("secret");
        std::fs::write(&secret, "0123456789abcdef0123456789abcdef").expect("write secret");
        let text = format!(
            "auth:\n  jwt: {{ hs256SecretFile: {}, adminRole: ops{extra} }}\nupstreams: {{ a: {{ endpoints: [\"http://127.0.0.1:1\"] }} }}\nroutes: [{{ match: {{ pathPrefix: / }}, upstream: a }}]\n",
            secret.display()
        );
        crate::config::parse(&text).expect("valid")
    }

    #[test]
    fn a_minted_token_passes_the_admin_check() {
        let c = config(", issuer: me, audience: fusebox, roleClaim: groups");
        let req = TokenRequest { subject: "alice".to_string(), role: None, ttl: Duration::from_secs(3600) };
        let token = mint(&c.auth, &req, SystemTime::now()).expect("mints");
        let p = Authorizer::new(&c.auth).expect("authorizer").admin(Some(&token)).expect("admin");
        assert_eq!(p.subject, "alice");
        // Another role is not admin; an expired token is refused.
        let viewer = mint(&c.auth, &TokenRequest { role: Some("viewer".to_string()), ..req.clone() }, SystemTime::now()).expect("mints");
        assert!(matches!(Authorizer::new(&c.auth).expect("authorizer").admin(Some(&viewer)), Err(AuthError::Forbidden(_))));
        let old = SystemTime::now() - Duration::from_secs(7200);
        let expired = mint(&c.auth, &req, old).expect("mints");
        assert!(matches!(Authorizer::new(&c.auth).expect("authorizer").admin(Some(&expired)), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn refuses_what_it_cannot_mint() {
        let req = TokenRequest { subject: "a".to_string(), role: None, ttl: Duration::from_secs(60) };
        assert_eq!(mint(&AuthConfig::None, &req, SystemTime::now()), Err(TokenError::AuthNone));
        let mut c = config("");
        if let AuthConfig::Jwt(j) = &mut c.auth {
            j.key = JwtKey::PublicKey { file: "/keys/rs.pem".into(), pem: Vec::new() };
        }
        assert!(matches!(mint(&c.auth, &req, SystemTime::now()), Err(TokenError::PublicKey(f)) if f == "/keys/rs.pem"));
        let c = config("");
        assert_eq!(mint(&c.auth, &TokenRequest { ttl: Duration::ZERO, ..req.clone() }, SystemTime::now()), Err(TokenError::Ttl));
        assert_eq!(mint(&c.auth, &TokenRequest { subject: " ".to_string(), ..req }, SystemTime::now()), Err(TokenError::EmptySubject));
    }
}
