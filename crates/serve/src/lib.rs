//! The OpenAI-compatible server.
//!
//! - [`scheduler`]: continuous batching over the model's paged key/value pool, on its own thread;
//! - [`openai`]: the `/v1` handlers, streaming server-sent events or answering whole, with the
//!   response cache and conversation sessions; [`ws`]: the same over a WebSocket;
//! - [`http`]: the accept loop, with a header-read timeout and graceful shutdown;
//! - [`admin`]: `/admin/*` (reload, keys, usage);
//! - [`auth`]: API keys and JWTs, then role checks per route group, as layers;
//! - [`limits`]: requests and tokens per minute per caller, in process or in Redis;
//! - [`backend`]: Redis behind deadlines and a circuit breaker, so an outage degrades to local
//!   state instead of stalling requests;
//! - [`telemetry`]: Prometheus metrics as a layer, and `/metrics`;
//! - [`prompt`]: prompt bounds, and tokenization of large prompts off the async runtime;
//! - [`template`]: chat templates; [`store`]: memory or Redis key-value store; [`state`]: what
//!   the handlers share; [`config`]: the server's settings; [`error`]: OpenAI-shaped errors;
//!   [`types`]: the vocabulary several of them speak (roles, chat messages).
//!
//! Open routes: `/health`, `/ready` and `/openapi.json`. Everything else needs credentials, and
//! each route group a role: `readonly` reads, `user` generates, `admin` administers.

pub mod admin;
pub mod auth;
pub mod backend;
pub mod body;
pub mod bounds;
pub mod config;
pub mod error;
pub mod http;
pub mod limits;
pub mod openai;
pub mod prompt;
pub mod scheduler;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod template;
pub mod types;
pub mod ws;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{Method, Request, StatusCode, Uri};
use axum::serve::{Listener, ListenerExt};
use axum::{middleware, Extension, Json, Router};
use tokio::net::{TcpListener, TcpStream};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use error::ApiError;

pub use auth::Authenticator;
pub use backend::Redis;
pub use config::ServeConfig;
pub use limits::RateLimits;
pub use prompt::PromptBounds;
pub use scheduler::{Scheduler, SchedulerConfig};
pub use state::{AppState, Options, Served};
pub use store::Store;
pub use types::{Message, Role};

#[derive(OpenApi)]
#[openapi(
    info(title = "TruthGPT serve", description = "An OpenAI-compatible server with continuous batching."),
    modifiers(&BearerAuth),
    tags((name = "openai", description = "OpenAI-compatible generation"), (name = "admin", description = "Admin role only"),
        (name = "ops", description = "Health and monitoring")),
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some("An API key or a JWT"))
            .build();
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// Every route of the server, with its OpenAPI document at `/openapi.json`. The document is
/// built from the same routes, so it cannot miss one.
pub fn router(state: AppState) -> Router {
    let (router, doc) = routes(&state).split_for_parts();
    router
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(Extension(Arc::new(doc)))
        // Layers run outermost last-added: the request id exists before the trace span opens.
        .route_layer(middleware::from_fn(telemetry::record))
        .layer(middleware::from_fn(prompt::return_memory_after_large))
        .layer(DefaultBodyLimit::max(state.max_body_bytes))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(TraceLayer::new_for_http().make_span_with(|request: &Request<_>| {
            // Only the path: credentials travel in headers, which are never logged.
            let id = request.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("-");
            tracing::info_span!("request", id, method = %request.method(), path = %request.uri().path())
        }).on_response(DefaultOnResponse::new().level(tracing::Level::INFO)))
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .with_state(state)
}

/// Unknown paths and wrong methods answer in OpenAI's error shape too, not with an empty body.
async fn no_route(method: Method, uri: Uri) -> ApiError {
    let message = format!("{method} {}: no such route", uri.path());
    ApiError::new(StatusCode::NOT_FOUND, "invalid_request_error", Some("not_found"), message)
}

async fn wrong_method(method: Method, uri: Uri) -> ApiError {
    let message = format!("{} does not take {method}", uri.path());
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        Some("method_not_allowed"),
        message,
    )
}

/// Binds `address` for [`router`]'s server. Each accepted connection sends small writes at once
/// (TCP_NODELAY): otherwise Nagle's algorithm holds a token's SSE event until the client
/// acknowledges the previous one, and with delayed ACKs streams stall up to 40 ms.
pub async fn listen(address: &str) -> std::io::Result<impl Listener<Io = TcpStream, Addr = SocketAddr>> {
    let listener = TcpListener::bind(address).await?;
    Ok(listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!("could not set TCP_NODELAY on a connection: {e}");
        }
    }))
}

/// The routes and their document, before layers that apply to all of them.
pub fn routes(state: &AppState) -> OpenApiRouter<AppState> {
    // Metrics recorded before the recorder exists are lost: install it first.
    telemetry::handle();
    let role = |min: Role| middleware::from_fn_with_state(min, auth::require_role);
    let readonly = OpenApiRouter::new()
        .routes(routes!(openai::models))
        .routes(routes!(openai::usage))
        .routes(routes!(telemetry::metrics))
        .route_layer(role(Role::Readonly));
    let user = OpenApiRouter::new()
        .routes(routes!(openai::completions))
        .routes(routes!(openai::chat_completions))
        .routes(routes!(ws::stream))
        .route_layer(role(Role::User));
    let admin = OpenApiRouter::new()
        .routes(routes!(admin::reload))
        .routes(routes!(admin::keys))
        .routes(routes!(admin::usage))
        .route_layer(role(Role::Admin));
    // The caller is identified before any limit is spent.
    let protected = readonly
        .merge(user)
        .merge(admin)
        .route_layer(middleware::from_fn_with_state(state.limits.clone(), limits::limit))
        .route_layer(middleware::from_fn_with_state(state.auth.clone(), auth::authenticate));
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health))
        .routes(routes!(ready))
        .routes(routes!(openapi))
        .merge(protected)
}

/// The process is up.
#[utoipa::path(get, path = "/health", tag = "ops", responses((status = 200, body = String)))]
async fn health() -> &'static str {
    "ok"
}

/// Ready while the scheduler takes requests.
#[utoipa::path(get, path = "/ready", tag = "ops", responses((status = 200, body = String), (status = 503, body = String)))]
async fn ready(State(state): State<AppState>) -> (StatusCode, &'static str) {
    if state.served().scheduler.is_running() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "the scheduler has stopped")
    }
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "ops", responses((status = 200, description = "OpenAPI 3.1")))]
async fn openapi(Extension(doc): Extension<Arc<utoipa::openapi::OpenApi>>) -> Json<utoipa::openapi::OpenApi> {
    Json(doc.as_ref().clone())
}

#[cfg(test)]
mod tests {
    use axum::serve::Listener;

    #[tokio::test]
    async fn accepted_connections_send_small_writes_at_once() {
        let mut listener = super::listen("127.0.0.1:0").await.unwrap();
        let _client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (accepted, _) = listener.accept().await;
        assert!(accepted.nodelay().unwrap(), "Nagle's algorithm would delay streamed tokens");
    }
}
