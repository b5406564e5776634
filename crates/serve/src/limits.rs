//! Rate limits per caller ([`Principal::id`]): token buckets of requests per minute and of tokens
//! per minute, both GCRA (the algorithm governor implements). In one process governor keeps them;
//! with `--redis` a Lua script keeps them in Redis, on Redis's clock, so every replica draws on
//! the same buckets; while Redis is unavailable ([`crate::backend`]), this process's again.
//!
//! [`limit`] is the layer: it spends one request and leaves a [`Budget`] in the request's
//! extensions, which the generation handlers spend once they know a request's size (prompt tokens
//! plus `max_tokens`); a WebSocket spends one more request for each generation after its first.
//! Answers carry `RateLimit-Policy` and `RateLimit` (IETF httpapi draft); an exhausted bucket gets
//! 429 with `Retry-After`.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::auth::Principal;
use crate::backend::Redis;
use crate::error::ApiError;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

type Limiter =
    RateLimiter<Arc<str>, DefaultKeyedStateStore<Arc<str>>, DefaultClock, StateInformationMiddleware>;

/// GCRA over Redis. KEYS[1]: the bucket; ARGV: microseconds per unit, burst, cost.
/// Returns {allowed, remaining, microseconds until the cost would fit}.
const GCRA: &str = r"
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + cost * interval
local allow_at = new_tat - burst * interval
if allow_at > now then
  return {0, math.floor((now - (tat - burst * interval)) / interval), allow_at - now}
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, math.floor((now - allow_at) / interval), 0}
";

/// One bucket kind, per caller.
struct Bucket {
    name: &'static str,
    per_minute: NonZeroU32,
    local: Limiter,
}

impl Bucket {
    fn new(name: &'static str, per_minute: NonZeroU32) -> Self {
        let local =
            RateLimiter::keyed(Quota::per_minute(per_minute)).with_middleware::<StateInformationMiddleware>();
        Bucket { name, per_minute, local }
    }

    fn policy(&self) -> String {
        format!("\"{}\";q={};w=60", self.name, self.per_minute)
    }

    /// This bucket refusing a draw that fits in `wait`.
    fn refusal(&self, wait: Duration) -> Refusal {
        Refusal { bucket: self.name, per_minute: self.per_minute, retry_secs: wait.as_secs() + 1 }
    }
}

/// What one draw on a bucket decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub remaining: u64,
    /// Until the draw would fit (zero when allowed).
    pub retry_after: Duration,
}

/// Requests and tokens per minute for every caller, in this process or in Redis.
pub struct RateLimits {
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
    redis: Option<(Redis, Arc<redis::Script>)>,
}

impl RateLimits {
    /// `None` when both limits are 0 (off).
    pub fn new(requests_per_minute: u32, tokens_per_minute: u32) -> Option<Self> {
        let requests = NonZeroU32::new(requests_per_minute).map(|n| Bucket::new("requests", n));
        let tokens = NonZeroU32::new(tokens_per_minute).map(|n| Bucket::new("tokens", n));
        (requests.is_some() || tokens.is_some()).then_some(RateLimits { requests, tokens, redis: None })
    }

    /// Keeps the buckets in Redis instead, shared with every process using the same server.
    pub fn shared(mut self, redis: Redis) -> Self {
        self.redis = Some((redis, Arc::new(redis::Script::new(GCRA))));
        self
    }

    async fn draw(&self, bucket: &Bucket, caller: &Arc<str>, cost: u32) -> Decision {
        let burst = bucket.per_minute.get();
        let Some(cost) = NonZeroU32::new(cost) else {
            return Decision { allowed: true, remaining: u64::from(burst), retry_after: Duration::ZERO };
        };
        if let Some((redis, script)) = &self.redis {
            let interval = 60_000_000 / u64::from(burst);
            let key = format!("truthgpt:limit:{}:{caller}", bucket.name);
            let script = script.clone();
            // Redis down or its circuit open: this process's buckets, at once.
            let drawn = redis
                .call("ratelimit", |mut c| async move {
                    let mut invocation = script.key(key);
                    invocation.arg(interval).arg(burst).arg(cost.get());
                    invocation.invoke_async::<(u8, i64, i64)>(&mut c).await
                })
                .await;
            if let Some((allowed, remaining, wait)) = drawn {
                return Decision {
                    allowed: allowed == 1,
                    remaining: remaining.max(0) as u64,
                    retry_after: Duration::from_micros(wait.max(0) as u64),
                };
            }
        }
        let clock = DefaultClock::default();
        match bucket.local.check_key_n(caller, cost) {
            Ok(Ok(snapshot)) => Decision {
                allowed: true,
                remaining: u64::from(snapshot.remaining_burst_capacity()),
                retry_after: Duration::ZERO,
            },
            Ok(Err(not_until)) => {
                Decision { allowed: false, remaining: 0, retry_after: not_until.wait_time_from(clock.now()) }
            }
            // More than a whole minute's budget: it would never fit.
            Err(_) => Decision { allowed: false, remaining: 0, retry_after: Duration::from_secs(60) },
        }
    }

    /// A request that needs more tokens than a whole minute's budget can never run: 400.
    fn fits(&self, tokens: usize) -> Result<(), ApiError> {
        match &self.tokens {
            Some(bucket) if tokens > bucket.per_minute.get() as usize => Err(ApiError::invalid(format!(
                "the request needs {tokens} tokens (prompt plus max_tokens); the limit is {} per minute",
                bucket.per_minute
            ))),
            _ => Ok(()),
        }
    }

    /// Spends `cost` from `bucket` (none: no limit), or says which bucket refused and for how long.
    async fn spend(&self, bucket: Option<&Bucket>, caller: &Arc<str>, cost: u32) -> Result<(), Refusal> {
        let Some(bucket) = bucket else { return Ok(()) };
        let decision = self.draw(bucket, caller, cost).await;
        if decision.allowed {
            Ok(())
        } else {
            Err(bucket.refusal(decision.retry_after))
        }
    }
}

/// A bucket that refused a draw: a 429, and the `RateLimit` header's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Refusal {
    bucket: &'static str,
    per_minute: NonZeroU32,
    /// Whole seconds until the draw would fit, rounded up (`Retry-After`).
    retry_secs: u64,
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        let message = format!(
            "rate limit of {} {} per minute reached; retry in {}s",
            r.per_minute, r.bucket, r.retry_secs
        );
        ApiError::rate_limited(message, r.retry_secs)
    }
}

/// The caller's budgets, for handlers that spend beyond the one request the layer drew: tokens
/// for each generation, and a request for each further generation on a WebSocket. It keeps the
/// last refusal, for the layer's `RateLimit` header.
#[derive(Clone)]
pub struct Budget {
    limits: Arc<RateLimits>,
    caller: Arc<str>,
    refused: Arc<Mutex<Option<Refusal>>>,
}

impl Budget {
    /// Whether a request of `tokens` could ever be admitted (it is refused with 400 if not).
    pub fn fits(&self, tokens: usize) -> Result<(), ApiError> {
        self.limits.fits(tokens)
    }

    /// Spends `tokens` of the caller's tokens-per-minute budget, or 429 (400 if they never fit).
    pub async fn spend(&self, tokens: usize) -> Result<(), ApiError> {
        self.fits(tokens)?;
        self.draw(self.limits.tokens.as_ref(), tokens as u32).await
    }

    /// One more request from the caller's requests/min bucket, or 429.
    pub async fn spend_request(&self) -> Result<(), ApiError> {
        self.draw(self.limits.requests.as_ref(), 1).await
    }

    async fn draw(&self, bucket: Option<&Bucket>, cost: u32) -> Result<(), ApiError> {
        let refusal = self.limits.spend(bucket, &self.caller, cost).await.err();
        if refusal.is_some() {
            *self.refused.lock().unwrap_or_else(|e| e.into_inner()) = refusal;
        }
        refusal.map_or(Ok(()), |r| Err(r.into()))
    }

    fn last_refusal(&self) -> Option<Refusal> {
        *self.refused.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `RateLimit-Policy` lists every bucket; `RateLimit` gives one bucket's state, `(name, remaining,
/// seconds to reset)`: the one that refused, else the requests bucket.
fn set_headers(headers: &mut HeaderMap, limits: &RateLimits, state: Option<(&str, u64, u64)>) {
    let policies: Vec<String> =
        [&limits.requests, &limits.tokens].into_iter().flatten().map(Bucket::policy).collect();
    if let Ok(policy) = HeaderValue::from_str(&policies.join(", ")) {
        headers.insert("ratelimit-policy", policy);
    }
    if let Some((name, remaining, reset)) = state {
        let state = format!("\"{name}\";r={remaining};t={reset}");
        headers.insert("ratelimit", HeaderValue::from_str(&state).expect("ASCII"));
    }
}

/// The layer after authentication: one request from the caller's bucket, or 429.
pub async fn limit(
    State(limits): State<Option<Arc<RateLimits>>>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(limits) = limits else { return next.run(request).await };
    let Some(caller) = request.extensions().get::<Principal>().map(|p| p.id.clone()) else {
        return ApiError::internal("rate limits run after authentication").into_response();
    };
    let decision = match &limits.requests {
        Some(bucket) => limits.draw(bucket, &caller, 1).await,
        None => Decision { allowed: true, remaining: 0, retry_after: Duration::ZERO },
    };
    if !decision.allowed {
        let bucket = limits.requests.as_ref().expect("only a bucket refuses");
        let refusal = bucket.refusal(decision.retry_after);
        let mut response = ApiError::from(refusal).into_response();
        set_headers(response.headers_mut(), &limits, Some((refusal.bucket, 0, refusal.retry_secs)));
        return response;
    }
    let budget = Budget { limits: limits.clone(), caller, refused: Arc::default() };
    request.extensions_mut().insert(budget.clone());
    let mut response = next.run(request).await;
    let state = match budget.last_refusal() {
        Some(refusal) => Some((refusal.bucket, 0, refusal.retry_secs)),
        None => limits.requests.is_some().then_some(("requests", decision.remaining, 60)),
    };
    set_headers(response.headers_mut(), &limits, state);
    response
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::StatusCode;
    use axum::routing::get;
    use axum::{middleware, Extension, Router};
    use tower::ServiceExt;

    use super::*;
    use crate::types::Role;

    /// The `RateLimit` header names the bucket the budget saw refuse, not whatever bucket a 429
    /// suggests: a handler's own 429 leaves it on the requests bucket.
    #[tokio::test]
    async fn the_header_names_the_bucket_that_refused() {
        let limits = Arc::new(RateLimits::new(10, 5).unwrap());
        let app = |handler_spends: usize| {
            let handler = move |Extension(budget): Extension<Budget>| async move {
                match handler_spends {
                    0 => ApiError::rate_limited("busy elsewhere".into(), 7).into_response(),
                    tokens => budget
                        .spend(tokens)
                        .await
                        .map_or_else(IntoResponse::into_response, |()| "ok".into_response()),
                }
            };
            let caller =
                Principal { id: "key:a".into(), tenant: "a".into(), role: Role::User, expires_at: None };
            Router::new()
                .route("/", get(handler))
                .route_layer(middleware::from_fn_with_state(Some(limits.clone()), limit))
                .layer(Extension(caller))
        };
        let call = |handler_spends| async move {
            let response =
                app(handler_spends).oneshot(Request::get("/").body(Body::empty()).unwrap()).await.unwrap();
            (response.status(), response.headers()["ratelimit"].to_str().unwrap().to_string())
        };
        let (status, state) = call(0).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert!(state.starts_with("\"requests\";r=9;"), "{state}");
        assert_eq!(call(5).await, (StatusCode::OK, "\"requests\";r=8;t=60".to_string()));
        let (status, state) = call(5).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert!(state.starts_with("\"tokens\";r=0;t="), "{state}");
    }
}
