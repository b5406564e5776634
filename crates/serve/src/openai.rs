//! The OpenAI API: `/v1/completions`, `/v1/chat/completions` and `/v1/models`, streamed as
//! server-sent events (`data: {chunk}` ... `data: [DONE]`) or answered whole.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, Stream, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use truthgpt_data::Tokenizer;
use truthgpt_model::{FinishReason, Sampling};

use crate::error::ApiError;
use crate::scheduler::{Event, Job, Scheduler, SubmitError, Usage};

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub scheduler: Scheduler,
    pub tokenizer: Arc<Tokenizer>,
    /// The id `/v1/models` lists and responses carry.
    pub model_id: String,
    pub created: u64,
}

/// `stop`: one string or several.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// The sampling fields both endpoints share.
#[derive(Debug, Clone, Deserialize)]
pub struct Params {
    #[serde(default)]
    pub model: Option<String>,
    pub max_tokens: Option<usize>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub seed: Option<u64>,
    pub stop: Option<Stop>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub n: Option<usize>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    pub prompt: String,
    #[serde(flatten)]
    pub params: Params,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    #[serde(flatten)]
    pub params: Params,
}

/// The default chat format, for tokenizers without a template: each message as
/// `<|role|>\ncontent\n`, then `<|assistant|>\n` for the reply.
pub fn chat_prompt(messages: &[Message]) -> String {
    let mut prompt = String::new();
    for m in messages {
        prompt.push_str(&format!("<|{}|>\n{}\n", m.role, m.content));
    }
    prompt.push_str("<|assistant|>\n");
    prompt
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

pub async fn models(State(state): State<AppState>) -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{"id": state.model_id, "object": "model", "created": state.created, "owned_by": "truthgpt"}],
    }))
}

pub async fn completions(
    State(state): State<AppState>,
    request: Result<Json<CompletionRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(request) = request?;
    respond(state, Kind::Completion, &request.prompt, request.params).await
}

pub async fn chat_completions(
    State(state): State<AppState>,
    request: Result<Json<ChatRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(request) = request?;
    if request.messages.is_empty() {
        return Err(ApiError::invalid("`messages` is empty"));
    }
    respond(state, Kind::Chat, &chat_prompt(&request.messages), request.params).await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Completion,
    Chat,
}

/// Checks the request, queues it, and answers with a stream or the whole text.
async fn respond(state: AppState, kind: Kind, prompt: &str, params: Params) -> Result<Response, ApiError> {
    if params.n.is_some_and(|n| n != 1) {
        return Err(ApiError::invalid("only `n` = 1 is supported"));
    }
    let ids = state.tokenizer.encode(prompt).map_err(|e| ApiError::invalid(e.to_string()))?;
    let max_seq_len = state.scheduler.max_seq_len;
    if ids.is_empty() {
        return Err(ApiError::invalid("the prompt is empty"));
    }
    if ids.len() >= max_seq_len {
        return Err(ApiError::invalid(format!(
            "the prompt has {} tokens; this model's context is {max_seq_len}",
            ids.len()
        )));
    }
    let max_tokens = params.max_tokens.unwrap_or(16).min(max_seq_len - ids.len());
    if max_tokens == 0 {
        return Err(ApiError::invalid("`max_tokens` must be at least 1"));
    }
    let sampling = Sampling {
        temperature: params.temperature.unwrap_or(1.0),
        top_p: params.top_p.unwrap_or(1.0),
        seed: params.seed.unwrap_or_else(rand_seed),
        ..Sampling::default()
    };
    sampling.validate().map_err(|e| ApiError::invalid(e.to_string()))?;
    let stop = match params.stop {
        None => vec![],
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) => v,
    };
    let (events, receiver) = mpsc::unbounded_channel();
    let job = Job { prompt: ids, max_tokens, sampling, stop, events, received: std::time::Instant::now() };
    state.scheduler.submit(job).map_err(|e| match e {
        SubmitError::Busy => ApiError::busy(),
        SubmitError::Stopped => ApiError::internal(e.to_string()),
    })?;
    let id = format!("{}-{:x}", if kind == Kind::Chat { "chatcmpl" } else { "cmpl" }, rand_seed());
    let reply = Reply { kind, id, model: state.model_id.clone(), created: now() };
    if params.stream {
        let include_usage = params.stream_options.is_some_and(|o| o.include_usage);
        Ok(Sse::new(reply.stream(receiver, include_usage)).into_response())
    } else {
        reply.whole(receiver).await
    }
}

/// A seed for requests that bring none.
fn rand_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    hasher.finish()
}

fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    }
}

fn usage(u: &Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    })
}

/// The envelope of one response's chunks.
struct Reply {
    kind: Kind,
    id: String,
    model: String,
    created: u64,
}

impl Reply {
    fn chunk(&self, choice: Option<Value>, usage: Option<Value>) -> Value {
        let object = if self.kind == Kind::Chat { "chat.completion.chunk" } else { "text_completion" };
        let mut chunk = json!({
            "id": self.id, "object": object, "created": self.created, "model": self.model,
            "choices": choice.into_iter().collect::<Vec<_>>(),
        });
        if let Some(usage) = usage {
            chunk["usage"] = usage;
        }
        chunk
    }

    fn delta(&self, text: Option<&str>, reason: Option<&str>) -> Value {
        match self.kind {
            Kind::Chat => {
                let delta = text.map_or(json!({}), |t| json!({"content": t}));
                json!({"index": 0, "delta": delta, "finish_reason": reason})
            }
            Kind::Completion => {
                json!({"index": 0, "text": text.unwrap_or(""), "finish_reason": reason, "logprobs": null})
            }
        }
    }

    /// SSE: a role chunk (chat), text chunks, a chunk with the finish reason, the usage chunk if
    /// asked for, then `[DONE]`. Dropping the stream (the client left) drops the receiver, which
    /// cancels the generation.
    fn stream(
        self,
        receiver: mpsc::UnboundedReceiver<Event>,
        include_usage: bool,
    ) -> impl Stream<Item = Result<SseEvent, Infallible>> {
        let first = (self.kind == Kind::Chat).then(|| {
            self.chunk(
                Some(
                    json!({"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}),
                ),
                None,
            )
        });
        let reply = Arc::new(self);
        let body = stream::unfold(Some(receiver), move |receiver| {
            let reply = reply.clone();
            async move {
                let mut receiver = receiver?;
                let events = match receiver.recv().await? {
                    Event::Text(text) => vec![reply.chunk(Some(reply.delta(Some(&text), None)), None)],
                    Event::Finished(u) => {
                        let mut events =
                            vec![reply
                                .chunk(Some(reply.delta(None, Some(finish_reason(u.finish_reason)))), None)];
                        if include_usage {
                            events.push(reply.chunk(None, Some(usage(&u))));
                        }
                        return Some((events, None));
                    }
                    Event::Failed(message) => {
                        return Some((
                            vec![
                                json!({"error": {"message": message, "type": "server_error", "code": null}}),
                            ],
                            None,
                        ))
                    }
                };
                Some((events, Some(receiver)))
            }
        });
        stream::iter(first)
            .chain(body.flat_map(stream::iter))
            .map(|chunk| SseEvent::default().data(chunk.to_string()))
            .chain(stream::once(async { SseEvent::default().data("[DONE]") }))
            .map(Ok)
    }

    /// The whole text once generation ends.
    async fn whole(self, mut receiver: mpsc::UnboundedReceiver<Event>) -> Result<Response, ApiError> {
        let mut text = String::new();
        loop {
            match receiver.recv().await {
                Some(Event::Text(piece)) => text.push_str(&piece),
                Some(Event::Finished(u)) => {
                    let reason = finish_reason(u.finish_reason);
                    let (object, choice) = match self.kind {
                        Kind::Chat => (
                            "chat.completion",
                            json!({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": reason}),
                        ),
                        Kind::Completion => (
                            "text_completion",
                            json!({"index": 0, "text": text, "finish_reason": reason, "logprobs": null}),
                        ),
                    };
                    return Ok(Json(json!({
                        "id": self.id, "object": object, "created": self.created, "model": self.model,
                        "choices": [choice], "usage": usage(&u),
                    }))
                    .into_response());
                }
                Some(Event::Failed(message)) => return Err(ApiError::invalid(message)),
                None => return Err(ApiError::internal("the scheduler stopped")),
            }
        }
    }
}
