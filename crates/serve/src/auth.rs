//! API keys, as a tower layer over the `/v1` routes: `Authorization: Bearer KEY` (or `x-api-key`).
//! Keys are kept only as SHA-256 digests and compared in constant time, so neither memory dumps
//! nor response timing give them away; they never reach a log.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// The digests of the keys that may call the API; empty means the API is open.
#[derive(Debug, Clone, Default)]
pub struct ApiKeys {
    digests: Vec<[u8; 32]>,
}

impl ApiKeys {
    pub fn new<S: AsRef<str>>(keys: &[S]) -> Self {
        ApiKeys { digests: keys.iter().map(|k| digest(k.as_ref())).collect() }
    }

    pub fn is_open(&self) -> bool {
        self.digests.is_empty()
    }

    /// Whether `key` is one of the keys; every digest is compared, in constant time each.
    pub fn accepts(&self, key: &str) -> bool {
        let candidate = digest(key);
        self.digests.iter().fold(false, |found, d| found | bool::from(d.ct_eq(&candidate)))
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The middleware: passes requests with an accepted key, answers 401 otherwise.
pub async fn require_key(State(keys): State<Arc<ApiKeys>>, request: Request, next: Next) -> Response {
    if keys.is_open() {
        return next.run(request).await;
    }
    let headers = request.headers();
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()));
    match presented {
        Some(key) if keys.accepts(key.trim()) => next.run(request).await,
        Some(_) => unauthorized("the API key is not valid"),
        None => unauthorized("no API key: send `Authorization: Bearer KEY`"),
    }
}

fn unauthorized(message: &str) -> Response {
    let mut response = ApiError {
        status: StatusCode::UNAUTHORIZED,
        message: message.into(),
        kind: "invalid_request_error",
        code: Some("invalid_api_key"),
    }
    .into_response();
    response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_configured_keys_are_accepted() {
        let keys = ApiKeys::new(&["alpha", "beta"]);
        assert!(keys.accepts("alpha") && keys.accepts("beta"));
        assert!(!keys.accepts("alph") && !keys.accepts("") && !keys.accepts("alphaa"));
        assert!(ApiKeys::new::<&str>(&[]).is_open());
    }
}
