//! The OpenAI-compatible server.
//!
//! - [`scheduler`]: continuous batching over the model's paged key/value pool, on its own thread;
//! - [`openai`]: the `/v1` handlers, streaming server-sent events or answering whole;
//! - [`auth`]: API keys, as a layer over the `/v1` routes;
//! - [`limits`]: per-key requests-per-minute limits, the layer after it;
//! - [`telemetry`]: Prometheus metrics, a layer around every route, and `/metrics`;
//! - [`error`]: errors in OpenAI's shape.
//!
//! `/health` (the process is up) and `/ready` (the scheduler is running) stay open; `/metrics`
//! needs a key like `/v1`.

pub mod auth;
pub mod error;
pub mod limits;
pub mod openai;
pub mod scheduler;
pub mod telemetry;

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::middleware;
use axum::routing::{get, post};
use axum::Router;

pub use auth::ApiKeys;
pub use limits::RateLimits;
pub use openai::AppState;
pub use scheduler::{Scheduler, SchedulerConfig};

/// Every route of the server; the `/v1` ones need one of `keys` (unless it is empty) and draw on
/// the key's rate limit.
pub fn router(state: AppState, keys: ApiKeys, limits: Option<RateLimits>) -> Router {
    // Metrics recorded before the recorder exists are lost: install it first.
    telemetry::handle();
    // Layers run outermost first: the key is checked before any limit is spent.
    let api = Router::new()
        .route("/v1/models", get(openai::models))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/metrics", get(telemetry::metrics))
        .route_layer(middleware::from_fn_with_state(limits.map(Arc::new), limits::limit))
        .route_layer(middleware::from_fn_with_state(Arc::new(keys), auth::require_key));
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/ready", get(ready))
        .merge(api)
        .route_layer(middleware::from_fn(telemetry::record))
        .with_state(state)
}

/// Ready while the scheduler thread takes requests.
async fn ready(State(state): State<AppState>) -> (StatusCode, &'static str) {
    if state.scheduler.is_running() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "the scheduler has stopped")
    }
}
