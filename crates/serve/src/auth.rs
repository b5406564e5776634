//! Who is calling, as two tower layers: [`authenticate`] turns `Authorization: Bearer ...` (or
//! `x-api-key`) into a [`Principal`], and [`require_role`] guards each group of routes.
//!
//! - API keys are kept only as SHA-256 digests and compared in constant time, so neither memory
//!   dumps nor response timing give them away. Neither keys nor tokens are ever logged.
//! - JWTs are HS256 or RS256, with `exp` and `aud` required and `nbf` checked.
//! - Roles are ordered: `readonly` reads (`/v1/models`, `/v1/usage`, `/metrics`), `user` also
//!   generates, `admin` also reaches `/admin/*`.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use utoipa::ToSchema;

use crate::config::{JwtConfig, KeyConfig};
use crate::error::ApiError;
use crate::types::Role;

/// The caller of one request, put in its extensions by [`authenticate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The rate-limit bucket: `key:NAME` or `jwt:SUB`.
    pub id: Arc<str>,
    /// Usage and sessions are kept per tenant.
    pub tenant: Arc<str>,
    pub role: Role,
    /// When its credential stops being valid (a JWT's `exp` plus the leeway), in Unix seconds;
    /// checked again before each generation on a long-lived WebSocket
    /// ([`Authenticator::has_expired`]).
    pub expires_at: Option<u64>,
}

/// The time in Unix seconds. Production reads the system clock; tests build the authenticator
/// with one they move ([`Authenticator::with_clock`]), so expiry needs no waiting.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

fn system_clock() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// One configured key: its digest and whose it is.
#[derive(Debug, Clone)]
struct Key {
    digest: [u8; 32],
    principal: Principal,
}

/// What `/admin/keys` shows of a key: never the key, only an 8-hex-digit digest prefix.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct KeyInfo {
    pub name: String,
    pub tenant: String,
    pub role: Role,
    pub sha256_prefix: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthConfigError {
    #[error("key `{0}` needs exactly one of `key` and `sha256`")]
    KeySource(String),
    #[error("key `{0}`: `sha256` must be 64 hex digits")]
    Digest(String),
    #[error("two keys are named `{0}`")]
    DuplicateName(String),
    #[error("jwt: give `hs256_secret`, `rs256_public_key` or both")]
    NoJwtKey,
    #[error("jwt: `hs256_secret` must be at least 32 bytes")]
    ShortSecret,
    #[error("jwt: reading the RS256 public key {path}: {message}")]
    PublicKey { path: String, message: String },
}

struct Jwt {
    hs256: Option<DecodingKey>,
    rs256: Option<DecodingKey>,
    audience: String,
    issuer: Option<String>,
    leeway: u64,
}

/// The claims we read; `aud` is checked by the validation itself, `exp` and `nbf` against the
/// authenticator's clock.
#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    nbf: Option<u64>,
    #[serde(default)]
    tenant: Option<String>,
    role: Role,
}

/// Every credential the server accepts. With none configured the API is open, and callers are
/// `user`s of tenant `anonymous` (never `admin`).
pub struct Authenticator {
    keys: Vec<Key>,
    jwt: Option<Jwt>,
    clock: Clock,
}

impl Authenticator {
    pub fn new(keys: &[KeyConfig], jwt: Option<&JwtConfig>) -> Result<Self, AuthConfigError> {
        let mut parsed: Vec<Key> = Vec::with_capacity(keys.len());
        for k in keys {
            let digest = match (&k.key, &k.sha256) {
                (Some(key), None) => digest(key),
                (None, Some(hex)) => parse_hex(hex).ok_or_else(|| AuthConfigError::Digest(k.name.clone()))?,
                _ => return Err(AuthConfigError::KeySource(k.name.clone())),
            };
            if parsed.iter().any(|p| *p.principal.id == *format!("key:{}", k.name)) {
                return Err(AuthConfigError::DuplicateName(k.name.clone()));
            }
            let principal = Principal {
                id: format!("key:{}", k.name).into(),
                tenant: k.tenant.as_str().into(),
                role: k.role,
                expires_at: None,
            };
            parsed.push(Key { digest, principal });
        }
        let jwt = jwt.map(Jwt::new).transpose()?;
        Ok(Authenticator { keys: parsed, jwt, clock: Arc::new(system_clock) })
    }

    /// The same credentials, with time read from `clock` instead of the system's.
    pub fn with_clock(self, clock: Clock) -> Self {
        Authenticator { clock, ..self }
    }

    /// Whether `principal`'s credential has expired since it was checked.
    pub fn has_expired(&self, principal: &Principal) -> bool {
        principal.expires_at.is_some_and(|at| (self.clock)() > at)
    }

    /// Plain keys, as `--api-key` gives them: see [`KeyConfig::plain`].
    pub fn from_keys<S: AsRef<str>>(keys: &[S]) -> Self {
        Authenticator::new(&KeyConfig::plain(keys), None).expect("generated names are unique")
    }

    pub fn is_open(&self) -> bool {
        self.keys.is_empty() && self.jwt.is_none()
    }

    pub fn keys(&self) -> Vec<KeyInfo> {
        self.keys
            .iter()
            .map(|k| KeyInfo {
                name: k.principal.id.trim_start_matches("key:").to_string(),
                tenant: k.principal.tenant.to_string(),
                role: k.principal.role,
                sha256_prefix: k.digest[..4].iter().map(|b| format!("{b:02x}")).collect(),
            })
            .collect()
    }

    /// Who `credential` is, or why it is refused. Every key digest is compared, each in constant
    /// time; a credential shaped like a JWT is then checked as one.
    pub fn identify(&self, credential: &str) -> Result<Principal, &'static str> {
        let candidate = digest(credential);
        let matched = self.keys.iter().fold(None, |found, k| {
            if bool::from(k.digest.ct_eq(&candidate)) {
                Some(&k.principal)
            } else {
                found
            }
        });
        if let Some(principal) = matched {
            return Ok(principal.clone());
        }
        match &self.jwt {
            Some(jwt) if credential.split('.').count() == 3 => jwt.verify(credential, (self.clock)()),
            _ => Err("the API key is not valid"),
        }
    }
}

impl Jwt {
    fn new(config: &JwtConfig) -> Result<Self, AuthConfigError> {
        let hs256 = match &config.hs256_secret {
            Some(secret) if secret.len() < 32 => return Err(AuthConfigError::ShortSecret),
            Some(secret) => Some(DecodingKey::from_secret(secret.as_bytes())),
            None => None,
        };
        let rs256 = match &config.rs256_public_key {
            Some(path) => {
                let failed = |message: String| AuthConfigError::PublicKey {
                    path: path.display().to_string(),
                    message,
                };
                let pem = std::fs::read(path).map_err(|e| failed(e.to_string()))?;
                Some(DecodingKey::from_rsa_pem(&pem).map_err(|e| failed(e.to_string()))?)
            }
            None => None,
        };
        if hs256.is_none() && rs256.is_none() {
            return Err(AuthConfigError::NoJwtKey);
        }
        Ok(Jwt {
            hs256,
            rs256,
            audience: config.audience.clone(),
            issuer: config.issuer.clone(),
            leeway: config.leeway_secs,
        })
    }

    /// The token's caller at Unix time `now`.
    fn verify(&self, token: &str, now: u64) -> Result<Principal, &'static str> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| "the token is not a valid JWT")?;
        // The key is chosen by the algorithm we configured for it, never by the token alone.
        let key = match header.alg {
            Algorithm::HS256 => self.hs256.as_ref(),
            Algorithm::RS256 => self.rs256.as_ref(),
            _ => None,
        }
        .ok_or("the token's algorithm is not accepted")?;
        let mut validation = Validation::new(header.alg);
        validation.set_audience(&[&self.audience]);
        // Every claim we check must be present: jsonwebtoken checks `iss` only when a token has
        // one, so a token from another issuer sharing the key would get in by leaving it out.
        let mut required = vec!["exp", "aud", "sub"];
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        // Times are checked below, on our clock: jsonwebtoken's is always the system's.
        validation.validate_exp = false;
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::InvalidAudience => "the token is for another audience",
                ErrorKind::InvalidIssuer => "the token is from another issuer",
                ErrorKind::InvalidSignature => "the token's signature is not valid",
                ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => "the token names no issuer (iss)",
                _ => "the token is not valid",
            }
        })?;
        let Claims { sub, exp, nbf, tenant, role } = data.claims;
        // The leeway allows for clock skew both ways, as jsonwebtoken's own checks would.
        let expires_at = exp.saturating_add(self.leeway);
        if now > expires_at {
            return Err("the token has expired");
        }
        if nbf.is_some_and(|nbf| nbf > now.saturating_add(self.leeway)) {
            return Err("the token is not valid yet (nbf)");
        }
        let tenant = tenant.unwrap_or_else(|| sub.clone());
        Ok(Principal {
            id: format!("jwt:{sub}").into(),
            tenant: tenant.into(),
            role,
            expires_at: Some(expires_at),
        })
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn parse_hex(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0; 32];
    for (o, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *o = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

/// The credential a request presents, if any.
fn presented(request: &Request) -> Option<&str> {
    let headers = request.headers();
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
        .map(str::trim)
}

/// The first layer: identifies the caller or answers 401.
pub async fn authenticate(
    State(auth): State<Arc<Authenticator>>,
    mut request: Request,
    next: Next,
) -> Response {
    let principal = if auth.is_open() {
        Principal { id: "anonymous".into(), tenant: "anonymous".into(), role: Role::User, expires_at: None }
    } else {
        match presented(&request).map(|c| auth.identify(c)) {
            Some(Ok(principal)) => principal,
            Some(Err(reason)) => return unauthorized(reason),
            None => return unauthorized("no credentials: send `Authorization: Bearer KEY`"),
        }
    };
    request.extensions_mut().insert(principal);
    next.run(request).await
}

/// A route group's guard: 403 unless the caller's role is at least `min`.
pub async fn require_role(State(min): State<Role>, request: Request, next: Next) -> Response {
    match request.extensions().get::<Principal>() {
        Some(p) if p.role >= min => next.run(request).await,
        Some(p) => ApiError::new(
            StatusCode::FORBIDDEN,
            "permission_error",
            Some("insufficient_role"),
            format!("this route needs the `{min:?}` role; the caller is `{:?}`", p.role).to_lowercase(),
        )
        .into_response(),
        None => unauthorized("no credentials"),
    }
}

fn unauthorized(message: &str) -> Response {
    let mut response = ApiError::unauthorized(message).into_response();
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str, key: &str, role: Role) -> KeyConfig {
        KeyConfig { name: name.into(), key: Some(key.into()), sha256: None, tenant: name.into(), role }
    }

    #[test]
    fn only_configured_keys_are_accepted() {
        let auth = Authenticator::from_keys(&["alpha", "beta"]);
        assert_eq!(auth.identify("alpha").unwrap().tenant.as_ref(), "cli0");
        assert_eq!(auth.identify("beta").unwrap().role, Role::User);
        for wrong in ["alph", "", "alphaa", "a.b.c"] {
            assert!(auth.identify(wrong).is_err(), "{wrong}");
        }
        assert!(Authenticator::from_keys::<&str>(&[]).is_open());
    }

    #[test]
    fn digests_stand_in_for_keys_and_bad_configs_are_refused() {
        let hex: String = digest("secret").iter().map(|b| format!("{b:02x}")).collect();
        let by_digest = KeyConfig { sha256: Some(hex), key: None, ..key("ops", "", Role::Admin) };
        let auth = Authenticator::new(std::slice::from_ref(&by_digest), None).unwrap();
        assert_eq!(auth.identify("secret").unwrap().role, Role::Admin);
        assert_eq!(auth.keys()[0].sha256_prefix.len(), 8);

        let both = KeyConfig { key: Some("x".into()), ..by_digest.clone() };
        assert!(matches!(Authenticator::new(&[both], None), Err(AuthConfigError::KeySource(_))));
        let short = KeyConfig { sha256: Some("abc".into()), ..by_digest };
        assert!(matches!(Authenticator::new(&[short], None), Err(AuthConfigError::Digest(_))));
        let twins = [key("a", "1", Role::User), key("a", "2", Role::User)];
        assert!(matches!(Authenticator::new(&twins, None), Err(AuthConfigError::DuplicateName(_))));
        let jwt = JwtConfig {
            audience: "x".into(),
            issuer: None,
            hs256_secret: Some("short".into()),
            rs256_public_key: None,
            leeway_secs: 0,
        };
        assert!(matches!(Authenticator::new(&[], Some(&jwt)), Err(AuthConfigError::ShortSecret)));
    }
}
