//! Rate limits per caller ([`Principal::id`]): token buckets of requests per minute and of tokens
//! per minute, both GCRA (the algorithm governor implements). In one process governor keeps them;
//! with `--redis` a Lua script keeps them in Redis, on Redis's clock, so every replica draws on
//! the same buckets.
//!
//! [`limit`] is the layer: it spends one request and leaves a [`Budget`] in the request's
//! extensions, which the generation handlers spend once they know a request's size (prompt tokens
//! plus `max_tokens`); a WebSocket spends one more request for each generation after its first.
//! Answers carry `RateLimit-Policy` and `RateLimit` (IETF httpapi draft); an exhausted bucket gets
//! 429 with `Retry-After`.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use redis::aio::ConnectionManager;

use crate::auth::Principal;
use crate::error::ApiError;

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
    redis: Option<(ConnectionManager, redis::Script)>,
}

impl RateLimits {
    /// `None` when both limits are 0 (off).
    pub fn new(requests_per_minute: u32, tokens_per_minute: u32) -> Option<Self> {
        let requests = NonZeroU32::new(requests_per_minute).map(|n| Bucket::new("requests", n));
        let tokens = NonZeroU32::new(tokens_per_minute).map(|n| Bucket::new("tokens", n));
        (requests.is_some() || tokens.is_some()).then_some(RateLimits { requests, tokens, redis: None })
    }

    /// Keeps the buckets in Redis instead, shared with every process using the same server.
    pub fn shared(mut self, redis: ConnectionManager) -> Self {
        self.redis = Some((redis, redis::Script::new(GCRA)));
        self
    }

    async fn draw(&self, bucket: &Bucket, caller: &Arc<str>, cost: u32) -> Decision {
        let burst = bucket.per_minute.get();
        let Some(cost) = NonZeroU32::new(cost) else {
            return Decision { allowed: true, remaining: u64::from(burst), retry_after: Duration::ZERO };
        };
        if let Some((connection, script)) = &self.redis {
            let interval = 60_000_000 / u64::from(burst);
            let key = format!("truthgpt:limit:{}:{caller}", bucket.name);
            let mut connection = connection.clone();
            let result: redis::RedisResult<(u8, i64, i64)> =
                script.key(key).arg(interval).arg(burst).arg(cost.get()).invoke_async(&mut connection).await;
            match result {
                Ok((allowed, remaining, wait)) => {
                    return Decision {
                        allowed: allowed == 1,
                        remaining: remaining.max(0) as u64,
                        retry_after: Duration::from_micros(wait.max(0) as u64),
                    }
                }
                // Redis being down must not take the API down with it: fall back to this
                // process's buckets, and say so.
                Err(e) => {
                    tracing::warn!(error = %e, "rate limits: Redis failed; using this process's buckets");
                    metrics::counter!("ratelimit_backend_errors_total").increment(1);
                }
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

    /// Spends `tokens` of `caller`'s tokens-per-minute budget.
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

    pub async fn spend_tokens(&self, caller: &Arc<str>, tokens: usize) -> Result<(), ApiError> {
        self.fits(tokens)?;
        self.spend(self.tokens.as_ref(), caller, tokens as u32).await
    }

    /// Spends `cost` from `bucket` (none: no limit), or 429.
    async fn spend(&self, bucket: Option<&Bucket>, caller: &Arc<str>, cost: u32) -> Result<(), ApiError> {
        let Some(bucket) = bucket else { return Ok(()) };
        let decision = self.draw(bucket, caller, cost).await;
        if decision.allowed {
            Ok(())
        } else {
            Err(too_many(bucket, decision.retry_after))
        }
    }
}

fn too_many(bucket: &Bucket, wait: Duration) -> ApiError {
    let secs = wait.as_secs() + 1;
    ApiError::rate_limited(
        format!("rate limit of {} {} per minute reached; retry in {secs}s", bucket.per_minute, bucket.name),
        secs,
    )
}

/// The caller's budgets, for handlers that spend beyond the one request the layer drew: tokens
/// for each generation, and a request for each further generation on a WebSocket.
#[derive(Clone)]
pub struct Budget {
    limits: Arc<RateLimits>,
    caller: Arc<str>,
}

impl Budget {
    /// Whether a request of `tokens` could ever be admitted (it is refused with 400 if not).
    pub fn fits(&self, tokens: usize) -> Result<(), ApiError> {
        self.limits.fits(tokens)
    }

    pub async fn spend(&self, tokens: usize) -> Result<(), ApiError> {
        self.limits.spend_tokens(&self.caller, tokens).await
    }

    /// One more request from the caller's requests/min bucket, or 429.
    pub async fn spend_request(&self) -> Result<(), ApiError> {
        self.limits.spend(self.limits.requests.as_ref(), &self.caller, 1).await
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
        let secs = decision.retry_after.as_secs() + 1;
        let mut response = too_many(bucket, decision.retry_after).into_response();
        set_headers(response.headers_mut(), &limits, Some(("requests", 0, secs)));
        return response;
    }
    request.extensions_mut().insert(Budget { limits: limits.clone(), caller });
    let mut response = next.run(request).await;
    // A 429 from the handler is the tokens bucket's (the requests bucket let this one through).
    let refused_for_tokens = (response.status() == StatusCode::TOO_MANY_REQUESTS)
        .then(|| response.headers().get(header::RETRY_AFTER))
        .flatten()
        .map(|retry| retry.to_str().ok().and_then(|s| s.parse().ok()).unwrap_or(60));
    let state = match refused_for_tokens {
        Some(reset) => Some(("tokens", 0, reset)),
        None => limits.requests.is_some().then_some(("requests", decision.remaining, 60)),
    };
    set_headers(response.headers_mut(), &limits, state);
    response
}
