//! The OpenAI-compatible server.
//!
//! - [`scheduler`]: continuous batching over the model's paged key/value pool, on its own thread;
//! - [`openai`]: the `/v1` handlers, streaming server-sent events or answering whole;
//! - [`error`]: errors in OpenAI's shape.

pub mod error;
pub mod openai;
pub mod scheduler;

use axum::routing::{get, post};
use axum::Router;

pub use openai::AppState;
pub use scheduler::{Scheduler, SchedulerConfig};

/// Every route of the server.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/models", get(openai::models))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/health", get(|| async { "ok" }))
        .with_state(state)
}
