//! `/admin/*`, for the `admin` role only: reload the model, list the keys (never the keys
//! themselves), and every tenant's usage.

use std::collections::BTreeMap;
use std::path::PathBuf;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::KeyInfo;
use crate::body::{self, BodyRejection, Object};
use crate::error::{ApiError, ErrorBody};
use crate::state::{AppState, TenantUsage};

#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct ReloadRequest {
    /// A model, run or Hugging Face directory; default: the one served now.
    #[serde(default)]
    pub model: Option<String>,
}

impl body::Request for ReloadRequest {}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReloadResponse {
    pub model: String,
    pub fingerprint: String,
}

/// Loads a model (default: the served directory again) and swaps it in; in-flight requests
/// finish on the old one. The response cache starts empty.
#[utoipa::path(post, path = "/admin/reload", tag = "admin", security(("bearer" = [])),
    request_body(content = ReloadRequest, description = "optional; an empty body reloads the served directory"),
    responses((status = 200, body = ReloadResponse), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn reload(
    State(state): State<AppState>,
    request: Result<Object<ReloadRequest>, BodyRejection>,
) -> Result<Json<ReloadResponse>, ApiError> {
    let request = match request {
        Ok(Object(request)) => request,
        Err(BodyRejection::Json(JsonRejection::MissingJsonContentType(_))) => ReloadRequest::default(),
        Err(e) => return Err(e.into()),
    };
    let served = state.reload(request.model.map(PathBuf::from)).await.map_err(ApiError::invalid)?;
    Ok(Json(ReloadResponse { model: served.model_id.clone(), fingerprint: served.fingerprint.clone() }))
}

/// The configured keys: name, tenant, role and the first 8 hex digits of the key's SHA-256.
#[utoipa::path(get, path = "/admin/keys", tag = "admin", security(("bearer" = [])),
    responses((status = 200, body = Vec<KeyInfo>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn keys(State(state): State<AppState>) -> Json<Vec<KeyInfo>> {
    Json(state.auth.keys())
}

/// Every tenant's requests and tokens since the server started.
#[utoipa::path(get, path = "/admin/usage", tag = "admin", security(("bearer" = [])),
    responses((status = 200, body = BTreeMap<String, TenantUsage>), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)))]
pub async fn usage(State(state): State<AppState>) -> Json<BTreeMap<String, TenantUsage>> {
    Json(state.usage.all())
}
