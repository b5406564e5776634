//! Per-key rate limits, as a tower layer after authentication: a token bucket of requests per
//! minute for each API key (governor's GCRA). Answers carry `RateLimit-Policy` and `RateLimit`
//! (IETF httpapi draft); a request over the limit gets 429 with `Retry-After`.

use std::num::NonZeroU32;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use sha2::{Digest, Sha256};

use crate::error::ApiError;

type Limiter =
    RateLimiter<[u8; 32], DefaultKeyedStateStore<[u8; 32]>, DefaultClock, StateInformationMiddleware>;

/// A requests-per-minute budget for each key.
pub struct RateLimits {
    per_minute: u32,
    limiter: Limiter,
}

impl RateLimits {
    pub fn per_minute(requests: NonZeroU32) -> Self {
        let limiter =
            RateLimiter::keyed(Quota::per_minute(requests)).with_middleware::<StateInformationMiddleware>();
        RateLimits { per_minute: requests.get(), limiter }
    }
}

/// The bucket a request draws from: its API key's digest (keys are never kept in the clear).
fn bucket(request: &Request) -> [u8; 32] {
    let headers = request.headers();
    let key = headers
        .get(header::AUTHORIZATION)
        .or_else(|| headers.get("x-api-key"))
        .map(HeaderValue::as_bytes)
        .unwrap_or_default();
    Sha256::digest(key).into()
}

pub async fn limit(State(limits): State<Option<Arc<RateLimits>>>, request: Request, next: Next) -> Response {
    let Some(limits) = limits else { return next.run(request).await };
    let policy = HeaderValue::from_str(&format!("\"requests\";q={};w=60", limits.per_minute)).expect("ASCII");
    match limits.limiter.check_key(&bucket(&request)) {
        Ok(snapshot) => {
            let mut response = next.run(request).await;
            let remaining = snapshot.remaining_burst_capacity();
            let headers = response.headers_mut();
            headers.insert("ratelimit-policy", policy);
            let state = format!("\"requests\";r={remaining};t=60");
            headers.insert("ratelimit", HeaderValue::from_str(&state).expect("ASCII"));
            response
        }
        Err(not_until) => {
            let wait = not_until.wait_time_from(DefaultClock::default().now()).as_secs() + 1;
            let mut response = ApiError {
                status: StatusCode::TOO_MANY_REQUESTS,
                message: format!(
                    "rate limit of {} requests per minute reached; retry in {wait}s",
                    limits.per_minute
                ),
                kind: "rate_limit_error",
                code: Some("rate_limit_exceeded"),
            }
            .into_response();
            let headers = response.headers_mut();
            headers.insert(header::RETRY_AFTER, HeaderValue::from(wait));
            headers.insert("ratelimit-policy", policy);
            headers.insert(
                "ratelimit",
                HeaderValue::from_str(&format!("\"requests\";r=0;t={wait}")).expect("ASCII"),
            );
            response
        }
    }
}
