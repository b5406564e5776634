//! `/v1/stream`: the same generations over a WebSocket. Each text message the client sends is
//! one request, a chat request if it has `messages` and a completion request otherwise; the
//! server answers with the chunks SSE would carry, one message each, then `[DONE]`. Errors come
//! as an `{"error": ...}` message, and the socket stays open for the next request. Each
//! generation after the first spends a request from the caller's requests/min, and a socket whose
//! JWT has expired is closed.

use axum::extract::ws::{close_code, CloseFrame, Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use axum::Extension;
use futures_util::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite;

use crate::auth::Principal;
use crate::body::from_object;
use crate::error::{ApiError, ErrorBody};
use crate::limits::Budget;
use crate::openai::{ChatRequest, CompletionRequest, Generation, Input};
use crate::state::AppState;

/// Upgrades to a WebSocket; each message is a completion or chat request, answered with chunks.
#[utoipa::path(get, path = "/v1/stream", tag = "openai", security(("bearer" = [])),
    responses(
        (status = 101, description = "Switching to a WebSocket"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 426, description = "Not a WebSocket upgrade", body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn stream(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
    budget: Option<Extension<Budget>>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let upgrade = upgrade.map_err(|e| ApiError {
        status: axum::http::StatusCode::UPGRADE_REQUIRED,
        ..ApiError::invalid(format!("{}: connect with a WebSocket client", e.body_text()))
    })?;
    let max = state.max_body_bytes;
    Ok(upgrade.max_message_size(max).on_upgrade(move |socket| serve(socket, state, caller, budget)))
}

async fn serve(mut socket: WebSocket, state: AppState, caller: Principal, budget: Option<Extension<Budget>>) {
    // The upgrade drew a request from the requests/min bucket; it pays for the first generation.
    let mut upgrade_paid = true;
    let mut stopping = state.socket_guard();
    loop {
        // At shutdown the socket closes between answers, never in the middle of one; a message
        // that arrived first is still answered.
        let message = tokio::select! {
            biased;
            message = socket.recv() => message,
            _ = stopping.wait_for(|&stop| stop) => None,
        };
        let message = match message {
            Some(Ok(message)) => message,
            Some(Err(e)) => {
                let _ = socket.send(WsMessage::Close(Some(close_frame(e, state.max_body_bytes)))).await;
                return;
            }
            None => {
                let _ = socket.send(WsMessage::Close(None)).await;
                return;
            }
        };
        let text = match message {
            WsMessage::Text(text) => text,
            WsMessage::Close(_) => return,
            _ => continue,
        };
        // A socket outlives the credential it was opened with: an expired token ends it.
        if state.auth.has_expired(&caller) {
            let expired = ApiError::unauthorized("the token has expired");
            let _ = socket.send(WsMessage::text(expired.body().to_string())).await;
            return;
        }
        let paid = std::mem::take(&mut upgrade_paid);
        let generation = async {
            if let (Some(Extension(budget)), false) = (&budget, paid) {
                budget.spend_request().await?;
            }
            request(&state, &caller, budget.clone(), text.as_str()).await
        };
        match generation.await {
            Ok((generation, include_usage)) => {
                // Chunks go out as they come; a failed send means the client left, and dropping
                // the generation cancels it.
                let mut chunks = Box::pin(generation.chunks(include_usage));
                while let Some(chunk) = chunks.next().await {
                    if socket.send(WsMessage::text(chunk.to_string())).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                if socket.send(WsMessage::text(e.body().to_string())).await.is_err() {
                    return;
                }
            }
        }
        if socket.send(WsMessage::text("[DONE]")).await.is_err() {
            return;
        }
    }
}

/// Why a socket is closed after a message could not be read: 1009 for one over the size limit
/// (whole or reassembled from fragments), naming the limit, else 1002.
fn close_frame(error: axum::Error, limit: usize) -> CloseFrame {
    match error.into_inner().downcast::<tungstenite::Error>().map(|e| *e) {
        Ok(tungstenite::Error::Capacity(_)) => CloseFrame {
            code: close_code::SIZE,
            reason: format!("message too big: the limit is {limit} bytes").into(),
        },
        _ => CloseFrame { code: close_code::PROTOCOL, reason: "the message could not be read".into() },
    }
}

async fn request(
    state: &AppState,
    caller: &Principal,
    budget: Option<Extension<Budget>>,
    text: &str,
) -> Result<(Generation, bool), ApiError> {
    let body: Value = serde_json::from_str(text).map_err(|e| ApiError::invalid(format!("not JSON: {e}")))?;
    let (input, params) = if body.get("messages").is_some() {
        let r: ChatRequest = from_object(body).map_err(ApiError::invalid)?;
        (Input::Chat { messages: r.messages, conversation: r.conversation_id }, r.params)
    } else {
        let r: CompletionRequest = from_object(body).map_err(ApiError::invalid)?;
        (Input::Completion(r.prompt), r.params)
    };
    let include_usage = params.stream_options.as_ref().is_some_and(|o| o.include_usage);
    Ok((Generation::start(state, caller, budget, input, params).await?, include_usage))
}
