//! The OpenAI API: `/v1/completions`, `/v1/chat/completions`, `/v1/models` and `/v1/usage`,
//! streamed as server-sent events (`data: {chunk}` ... `data: [DONE]`) or answered whole.
//!
//! A request becomes a [`Generation`]: its reply envelope, its events (from the scheduler, or
//! from the response cache), and what to record when it finishes (usage, the cache entry, the
//! conversation). The SSE, whole-JSON and WebSocket answers all read the same chunks.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures_util::stream::{self, BoxStream, Stream, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use truthgpt_model::{FinishReason, Sampling, Usage};
use utoipa::ToSchema;

use crate::auth::Principal;
use crate::body::{self, BodyRejection, Object};
use crate::bounds::Bounds;
use crate::error::{ApiError, ErrorBody};
use crate::limits::Budget;
use crate::scheduler::{Event, Job, SchedulerError, Slot};
use crate::state::{AppState, Served, TenantUsage};
use crate::types::Message;

/// `stop` takes up to this many strings (as OpenAI's API), each at most `MAX_STOP_CHARS` long
/// (characters, as JSON Schema's `maxLength` counts them).
const MAX_STOP_STRINGS: usize = 4;
const MAX_STOP_CHARS: usize = 128;

/// `stop`: one string or several (at most 4, each at most 128 characters).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

/// Written by hand: the derive cannot state the bounds, and the document must say what
/// [`Asked::check`] refuses (schemathesis found 5 stop strings refused by a schema that allowed them).
impl utoipa::PartialSchema for Stop {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Type};
        let one = || ObjectBuilder::new().schema_type(Type::String).max_length(Some(MAX_STOP_CHARS));
        let many = ArrayBuilder::new().items(one()).max_items(Some(MAX_STOP_STRINGS));
        OneOfBuilder::new().item(one()).item(many).into()
    }
}

impl ToSchema for Stop {}

#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// `stream_options` from an object (or null) only: serde's derive would also read a struct from
/// an array, and `[]` would pass as no options.
fn object_or_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<StreamOptions>, D::Error> {
    use serde::de::Error;
    match Option::<serde_json::Map<String, Value>>::deserialize(d)? {
        None => Ok(None),
        Some(map) => StreamOptions::deserialize(Value::Object(map))
            .map(Some)
            .map_err(|e| D::Error::custom(format!("stream_options: {e}"))),
    }
}

/// The sampling fields both endpoints share.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct Params {
    /// Ignored: the server serves one model.
    #[serde(default)]
    pub model: Option<String>,
    /// Tokens to generate at most (default 16), cut to what the context leaves.
    #[schema(minimum = 1)]
    #[serde(default, deserialize_with = "integer_max_tokens")]
    pub max_tokens: Option<usize>,
    /// 0 is greedy (and cacheable); default 1.
    #[schema(minimum = 0.0, maximum = 2.0)]
    pub temperature: Option<f32>,
    /// Read as f64: a tiny positive value must not round to 0, which is out of range.
    #[schema(exclusive_minimum = 0.0, maximum = 1.0)]
    pub top_p: Option<f64>,
    /// Makes sampling reproducible (and cacheable).
    #[serde(default, deserialize_with = "integer_seed")]
    pub seed: Option<u64>,
    pub stop: Option<Stop>,
    #[serde(default)]
    pub stream: bool,
    #[serde(default, deserialize_with = "object_or_null")]
    pub stream_options: Option<StreamOptions>,
    /// Only 1.
    #[schema(minimum = 1, maximum = 1)]
    #[serde(default, deserialize_with = "integer_n")]
    pub n: Option<usize>,
}

fn integer_max_tokens<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    body::integer(d, "max_tokens")
}

fn integer_seed<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    body::integer(d, "seed")
}

fn integer_n<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    body::integer(d, "n")
}

/// The sampling fields' documented bounds, which both endpoints' bodies carry (flattened).
fn params_bounds() -> &'static Bounds {
    static BOUNDS: LazyLock<Bounds> = LazyLock::new(Bounds::of::<Params>);
    &BOUNDS
}

impl body::Request for CompletionRequest {
    fn bounds() -> &'static Bounds {
        params_bounds()
    }
}

impl body::Request for ChatRequest {
    fn bounds() -> &'static Bounds {
        params_bounds()
    }
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct CompletionRequest {
    #[schema(min_length = 1)]
    pub prompt: String,
    #[serde(flatten)]
    pub params: Params,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct ChatRequest {
    #[schema(min_items = 1)]
    pub messages: Vec<Message>,
    /// Keeps the conversation server-side: earlier turns are prepended, and the reply is kept.
    #[schema(pattern = "^[A-Za-z0-9._:-]{1,128}$")]
    pub conversation_id: Option<String>,
    #[serde(flatten)]
    pub params: Params,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UsageBody {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

impl From<&Usage> for UsageBody {
    fn from(u: &Usage) -> Self {
        UsageBody {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.prompt_tokens + u.completion_tokens,
        }
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CompletionChoice {
    pub index: u32,
    pub text: String,
    pub finish_reason: String,
    pub logprobs: Option<Value>,
}

/// A whole `/v1/completions` answer. Streamed, each event is a `text_completion` chunk of the
/// same shape with part of the text.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CompletionResponse {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    pub usage: UsageBody,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChatChoice {
    pub index: u32,
    pub message: Message,
    pub finish_reason: String,
}

/// A whole `/v1/chat/completions` answer. Streamed, each event is a `chat.completion.chunk`
/// with a `delta` instead of the `message`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChatResponse {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    pub usage: UsageBody,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ModelCard {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub owned_by: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ModelList {
    pub object: String,
    pub data: Vec<ModelCard>,
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The model served.
#[utoipa::path(get, path = "/v1/models", tag = "openai", security(("bearer" = [])),
    responses((status = 200, body = ModelList), (status = 401, body = ErrorBody)))]
pub async fn models(State(state): State<AppState>) -> Json<ModelList> {
    let served = state.served();
    Json(ModelList {
        object: "list".into(),
        data: vec![ModelCard {
            id: served.model_id.clone(),
            object: "model".into(),
            created: served.created,
            owned_by: "truthgpt".into(),
        }],
    })
}

/// The caller's tenant's requests and tokens since the server started.
#[utoipa::path(get, path = "/v1/usage", tag = "openai", security(("bearer" = [])),
    responses((status = 200, body = TenantUsage), (status = 401, body = ErrorBody)))]
pub async fn usage(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
) -> Json<TenantUsage> {
    Json(state.usage.of(&caller.tenant))
}

/// Text completion; `stream: true` answers with server-sent events.
#[utoipa::path(post, path = "/v1/completions", tag = "openai", security(("bearer" = [])),
    request_body = CompletionRequest,
    responses(
        (status = 200, description = "JSON, or with `stream` server-sent chunks ending `data: [DONE]`",
            content((CompletionResponse = "application/json"), (Object = "text/event-stream"))),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 429, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn completions(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
    budget: Option<Extension<Budget>>,
    request: Result<Object<CompletionRequest>, BodyRejection>,
) -> Result<Response, ApiError> {
    let Object(request) = request?;
    let stream = request.params.stream;
    let include_usage = include_usage(&request.params);
    let generation =
        Generation::start(&state, &caller, budget, Input::Completion(request.prompt), request.params).await?;
    Ok(generation.respond(stream, include_usage).await)
}

/// Chat completion; `stream: true` answers with server-sent events.
#[utoipa::path(post, path = "/v1/chat/completions", tag = "openai", security(("bearer" = [])),
    request_body = ChatRequest,
    responses(
        (status = 200, description = "JSON, or with `stream` server-sent chunks ending `data: [DONE]`",
            content((ChatResponse = "application/json"), (Object = "text/event-stream"))),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 429, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn chat_completions(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
    budget: Option<Extension<Budget>>,
    request: Result<Object<ChatRequest>, BodyRejection>,
) -> Result<Response, ApiError> {
    let Object(request) = request?;
    let stream = request.params.stream;
    let include_usage = include_usage(&request.params);
    let input = Input::Chat { messages: request.messages, conversation: request.conversation_id };
    let generation = Generation::start(&state, &caller, budget, input, request.params).await?;
    Ok(generation.respond(stream, include_usage).await)
}

fn include_usage(params: &Params) -> bool {
    params.stream_options.as_ref().is_some_and(|o| o.include_usage)
}

/// What is to be generated from.
pub(crate) enum Input {
    Completion(String),
    Chat { messages: Vec<Message>, conversation: Option<String> },
}

/// A deterministic request's answer, as the cache keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CachedAnswer {
    text: String,
    /// Ended by EOS or a stop string (else by length).
    stopped: bool,
    prompt_tokens: usize,
    completion_tokens: usize,
}

/// What to record when a generation ends. Dropped before it ends (the client left, or the
/// scheduler failed), it still books the prompt and the tokens generated so far to the tenant.
struct Finish {
    state: AppState,
    tenant: Arc<str>,
    cache_key: Option<String>,
    /// The conversation's key and its messages so far (the reply is appended).
    conversation: Option<(String, Vec<Message>)>,
    cached: bool,
    prompt_tokens: usize,
    /// Completion tokens so far, kept by the scheduler.
    progress: Arc<AtomicUsize>,
    booked: bool,
}

impl Drop for Finish {
    fn drop(&mut self) {
        if !self.booked {
            let generated = self.progress.load(Ordering::Relaxed);
            self.state.usage.add(&self.tenant, self.prompt_tokens, generated, self.cached);
        }
    }
}

impl Finish {
    async fn done(mut self, text: &str, usage: &Usage) {
        self.booked = true;
        self.state.usage.add(&self.tenant, usage.prompt_tokens, usage.completion_tokens, self.cached);
        if let (Some(key), Some(cache), false) = (self.cache_key.take(), &self.state.cache, self.cached) {
            let answer = CachedAnswer {
                text: text.to_string(),
                stopped: usage.finish_reason == FinishReason::Stop,
                prompt_tokens: usage.prompt_tokens,
                completion_tokens: usage.completion_tokens,
            };
            cache.set(key, serde_json::to_string(&answer).expect("serialisable").into()).await;
        }
        if let Some((key, mut messages)) = self.conversation.take() {
            messages.push(Message { role: "assistant".into(), content: text.to_string() });
            self.state
                .sessions
                .set(key, serde_json::to_string(&messages).expect("serialisable").into())
                .await;
        }
    }
}

/// One request on its way: the reply's envelope, its events, and what to record at the end.
pub(crate) struct Generation {
    reply: Reply,
    events: BoxStream<'static, Event>,
    finish: Finish,
}

fn valid_conversation_id(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b".-_:".contains(&b))
}

impl Generation {
    /// Checks the request, charges its tokens, and queues it (or finds it in the cache).
    pub(crate) async fn start(
        state: &AppState,
        caller: &Principal,
        budget: Option<Extension<Budget>>,
        input: Input,
        params: Params,
    ) -> Result<Self, ApiError> {
        if params.n.is_some_and(|n| n != 1) {
            return Err(ApiError::invalid("only `n` = 1 is supported"));
        }
        let served = state.served();
        let (kind, prompt, conversation) = prompt_of(state, &served, caller, input).await?;
        let ids = state.prompts.tokenize(&served.tokenizer, &served.uncached, prompt).await?;
        let asked = Asked::check(params, &ids, served.scheduler.max_seq_len)?;
        // Tokens/min pay for generation: charged on a cache miss only, but a request too large
        // for any minute's budget is refused either way.
        let needed = ids.len() + asked.max_tokens;
        if let Some(Extension(budget)) = &budget {
            budget.fits(needed)?;
        }
        let deterministic = asked.sampling.temperature == 0.0 || asked.seed.is_some();
        let cache_key = match &state.cache {
            Some(_) if deterministic => Some(cache_key(&served, &caller.tenant, &ids, &asked)),
            _ => None,
        };
        let hit = match &cache_key {
            Some(key) => lookup(state, key).await,
            None => None,
        };
        let cached = hit.is_some();
        let (prompt_tokens, progress) = (ids.len(), Arc::new(AtomicUsize::new(0)));
        let events = match hit {
            Some(answer) => answer.events(),
            None => {
                // A miss takes its place in the queue before it pays: a 503 spends no tokens.
                let slot = served.scheduler.reserve()?;
                if let Some(Extension(budget)) = &budget {
                    budget.spend(needed).await?;
                }
                queue(slot, ids, asked, progress.clone())
            }
        };
        let id = format!(
            "{}-{:x}",
            if matches!(kind, Kind::Chat { .. }) { "chatcmpl" } else { "cmpl" },
            rand_seed()
        );
        let reply = Reply { kind, id, model: served.model_id.clone(), created: now() };
        let finish = Finish {
            state: state.clone(),
            tenant: caller.tenant.clone(),
            cache_key,
            conversation,
            cached,
            prompt_tokens,
            progress,
            booked: false,
        };
        Ok(Generation { reply, events, finish })
    }

    async fn respond(self, stream: bool, include_usage: bool) -> Response {
        if stream {
            let events = self.chunks(include_usage).map(|chunk| SseEvent::default().data(chunk.to_string()));
            let done = stream::once(async { SseEvent::default().data("[DONE]") });
            Sse::new(events.chain(done).map(Ok::<_, Infallible>)).into_response()
        } else {
            self.whole().await.into_response()
        }
    }

    /// The chunks of a streamed answer: a role chunk (chat), text chunks, a chunk with the
    /// finish reason, then the usage chunk if asked for. A failure ends it with an error object.
    pub(crate) fn chunks(self, include_usage: bool) -> impl Stream<Item = Value> + Send {
        let Generation { reply, events, finish } = self;
        let reply = Arc::new(reply);
        let first = matches!(reply.kind, Kind::Chat { .. }).then(|| {
            reply.chunk(
                Some(
                    json!({"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}),
                ),
                None,
            )
        });
        let body = stream::unfold(Some((events, finish, String::new())), move |state| {
            let reply = reply.clone();
            async move {
                let (mut events, finish, mut text) = state?;
                match events.next().await {
                    Some(Event::Text(piece)) => {
                        text.push_str(&piece);
                        let chunk = reply.chunk(Some(reply.delta(Some(&piece), None)), None);
                        Some((vec![chunk], Some((events, finish, text))))
                    }
                    Some(Event::Finished(usage)) => {
                        finish.done(&text, &usage).await;
                        let reason = finish_reason(usage.finish_reason);
                        let mut chunks = vec![reply.chunk(Some(reply.delta(None, Some(reason))), None)];
                        if include_usage {
                            chunks.push(reply.chunk(None, Some(&usage)));
                        }
                        Some((chunks, None))
                    }
                    Some(Event::Failed(error)) => Some((vec![ApiError::from(error).body()], None)),
                    None => Some((vec![ApiError::internal("the scheduler stopped").body()], None)),
                }
            }
        });
        stream::iter(first).chain(body.flat_map(stream::iter))
    }

    /// The whole answer once generation ends.
    async fn whole(mut self) -> Result<Response, ApiError> {
        let mut text = String::new();
        loop {
            match self.events.next().await {
                Some(Event::Text(piece)) => text.push_str(&piece),
                Some(Event::Finished(usage)) => {
                    self.finish.done(&text, &usage).await;
                    return Ok(self.reply.whole(text, &usage));
                }
                Some(Event::Failed(error)) => return Err(error.into()),
                None => return Err(ApiError::internal("the scheduler stopped")),
            }
        }
    }
}

/// What a request asks the scheduler for, checked against the prompt and the model.
struct Asked {
    max_tokens: usize,
    sampling: Sampling,
    stop: Vec<String>,
    /// The request's own seed: greedy requests without one draw a random seed they never use.
    seed: Option<u64>,
}

impl Asked {
    fn check(params: Params, ids: &[u32], max_seq_len: usize) -> Result<Self, ApiError> {
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
            top_p: params.top_p.map_or(1.0, |p| {
                if p > 0.0 {
                    (p as f32).max(f32::MIN_POSITIVE)
                } else {
                    p as f32
                }
            }),
            seed: params.seed.unwrap_or_else(rand_seed),
            ..Sampling::default()
        };
        sampling.validate().map_err(|e| ApiError::invalid(e.to_string()))?;
        let stop = match params.stop {
            None => vec![],
            Some(Stop::One(s)) => vec![s],
            Some(Stop::Many(v)) => v,
        };
        // Every generated token is matched against every stop string, on the scheduler's thread.
        if stop.len() > MAX_STOP_STRINGS {
            return Err(ApiError::invalid(format!("`stop` takes at most {MAX_STOP_STRINGS} strings")));
        }
        if let Some(long) = stop.iter().find(|s| s.chars().count() > MAX_STOP_CHARS) {
            return Err(ApiError::invalid(format!(
                "a `stop` string is {} characters; the limit is {MAX_STOP_CHARS}",
                long.chars().count()
            )));
        }
        Ok(Asked { max_tokens, sampling, stop, seed: params.seed })
    }
}

/// Submits the job to the place `slot` holds; its events, as the scheduler sends them.
fn queue(
    slot: Slot,
    prompt: Vec<u32>,
    asked: Asked,
    progress: Arc<AtomicUsize>,
) -> BoxStream<'static, Event> {
    let (events, receiver) = mpsc::unbounded_channel();
    let Asked { max_tokens, sampling, stop, .. } = asked;
    let received = std::time::Instant::now();
    let waiting = slot.submit(Job { prompt, max_tokens, sampling, stop, events, received, progress });
    // Dropping this stream (the client left) drops the receiver, which cancels the job, and
    // `waiting`, which gives back its queue place if it is still queued.
    stream::unfold((receiver, waiting), |(mut r, waiting)| async move {
        r.recv().await.map(|e| (e, (r, waiting)))
    })
    .boxed()
}

impl CachedAnswer {
    /// The answer as the scheduler would have sent it.
    fn events(self) -> BoxStream<'static, Event> {
        let usage = Usage {
            finish_reason: if self.stopped { FinishReason::Stop } else { FinishReason::Length },
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
        };
        stream::iter([Event::Text(self.text), Event::Finished(usage)]).boxed()
    }
}

/// The one place the scheduler's errors become HTTP: what the request asked for is a 400, a
/// full queue a 503 with `Retry-After`, and what went wrong in the server a 500.
impl From<SchedulerError> for ApiError {
    fn from(error: SchedulerError) -> Self {
        match error {
            SchedulerError::Busy => ApiError::busy(),
            SchedulerError::TooLarge { .. } | SchedulerError::Sampling(_) => {
                ApiError::invalid(error.to_string())
            }
            SchedulerError::Stopped | SchedulerError::Generation(_) => ApiError::internal(error.to_string()),
        }
    }
}

/// The prompt a request generates from, its reply's kind, and (for a conversation) its key and
/// every message so far.
async fn prompt_of(
    state: &AppState,
    served: &Served,
    caller: &Principal,
    input: Input,
) -> Result<(Kind, String, Option<(String, Vec<Message>)>), ApiError> {
    let (messages, conversation) = match input {
        Input::Completion(prompt) => return Ok((Kind::Completion, prompt, None)),
        Input::Chat { messages, conversation } => (messages, conversation),
    };
    if messages.is_empty() {
        return Err(ApiError::invalid("`messages` is empty"));
    }
    let (history, key) = match conversation {
        Some(id) if !valid_conversation_id(&id) => {
            return Err(ApiError::invalid(
                "`conversation_id` must be 1 to 128 characters of A-Z a-z 0-9 . _ : -",
            ))
        }
        Some(id) => {
            // Tenants never see each other's conversations: the tenant is in the key, after its
            // length, since both tenants and ids may contain ':' (`acme` + `eu:1` is not
            // `acme:eu` + `1`).
            let key = format!("{}:{}:{id}", caller.tenant.len(), caller.tenant);
            let earlier: Vec<Message> = match state.sessions.get(&key).await {
                Some(json) => serde_json::from_str(&json).unwrap_or_default(),
                None => vec![],
            };
            (earlier.into_iter().chain(messages).collect(), Some((key, id)))
        }
        None => (messages, None),
    };
    let prompt = served.chat.render(&history).map_err(ApiError::invalid)?;
    let kind = Kind::Chat { conversation: key.as_ref().map(|(_, id)| id.clone()) };
    Ok((kind, prompt, key.map(|(key, _)| (key, history))))
}

/// The cached answer under `key`, counting the hit or miss.
async fn lookup(state: &AppState, key: &str) -> Option<CachedAnswer> {
    let cache = state.cache.as_ref()?;
    let hit = cache.get(key).await.and_then(|json| serde_json::from_str::<CachedAnswer>(&json).ok());
    metrics::counter!("cache_requests_total", "result" => if hit.is_some() { "hit" } else { "miss" })
        .increment(1);
    hit
}

/// The cache key: the model's fingerprint, the tenant, and everything that decides the text.
/// The seed is the request's, not the one drawn for it.
fn cache_key(served: &Served, tenant: &str, ids: &[u32], asked: &Asked) -> String {
    let request = json!({
        "tenant": tenant, "ids": ids, "max_tokens": asked.max_tokens, "temperature": asked.sampling.temperature,
        "top_p": asked.sampling.top_p, "seed": asked.seed, "stop": asked.stop,
    });
    let digest = Sha256::digest(request.to_string().as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}:{hex}", served.fingerprint)
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

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Completion,
    Chat { conversation: Option<String> },
}

/// The envelope of one response's chunks.
struct Reply {
    kind: Kind,
    id: String,
    model: String,
    created: u64,
}

impl Reply {
    fn chunk(&self, choice: Option<Value>, usage: Option<&Usage>) -> Value {
        let object =
            if matches!(self.kind, Kind::Chat { .. }) { "chat.completion.chunk" } else { "text_completion" };
        let mut chunk = json!({
            "id": self.id, "object": object, "created": self.created, "model": self.model,
            "choices": choice.into_iter().collect::<Vec<_>>(),
        });
        if let Some(usage) = usage {
            chunk["usage"] = json!(UsageBody::from(usage));
        }
        if let Kind::Chat { conversation: Some(id) } = &self.kind {
            chunk["conversation_id"] = json!(id);
        }
        chunk
    }

    fn delta(&self, text: Option<&str>, reason: Option<&str>) -> Value {
        match self.kind {
            Kind::Chat { .. } => {
                let delta = text.map_or(json!({}), |t| json!({"content": t}));
                json!({"index": 0, "delta": delta, "finish_reason": reason})
            }
            Kind::Completion => {
                json!({"index": 0, "text": text.unwrap_or(""), "finish_reason": reason, "logprobs": null})
            }
        }
    }

    fn whole(self, text: String, usage: &Usage) -> Response {
        let finish_reason = finish_reason(usage.finish_reason).to_string();
        match self.kind {
            Kind::Chat { conversation } => Json(ChatResponse {
                id: self.id,
                object: "chat.completion".into(),
                created: self.created,
                model: self.model,
                choices: vec![ChatChoice {
                    index: 0,
                    message: Message { role: "assistant".into(), content: text },
                    finish_reason,
                }],
                usage: usage.into(),
                conversation_id: conversation,
            })
            .into_response(),
            Kind::Completion => Json(CompletionResponse {
                id: self.id,
                object: "text_completion".into(),
                created: self.created,
                model: self.model,
                choices: vec![CompletionChoice { index: 0, text, finish_reason, logprobs: None }],
                usage: usage.into(),
            })
            .into_response(),
        }
    }
}
