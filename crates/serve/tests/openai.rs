//! The OpenAI endpoints on a small random model, through the router as a client would call it.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use futures_util::StreamExt;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;
use truthgpt_config::{FfnKind, ModelConfig, MoeConfig, Positional};
use truthgpt_data::Tokenizer;
use truthgpt_model::{Model, Sampling};
use truthgpt_serve::template::ChatFormat;
use truthgpt_serve::{router, AppState, Authenticator, Options, RateLimits, SchedulerConfig, Served};
use truthgpt_train::{Request as TextRequest, TextStream};

const TEXT: &str = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer \
                    the slings and arrows of outrageous fortune, or to take arms against a sea of troubles.";

/// A small random MoE model (so expert load is exported) and its tokenizer.
fn model_and_tokenizer() -> (Model, Tokenizer) {
    let tokenizer = Tokenizer::train_bpe_from_texts(&[TEXT; 4], 300).unwrap();
    let config = ModelConfig {
        vocab_size: 300,
        d_model: 32,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: 2,
        d_ff: 64,
        max_seq_len: 128,
        positional: Positional::Rope,
        ffn: FfnKind::Moe,
        moe: MoeConfig { n_experts: 4, top_k: 2, ..MoeConfig::default() },
        init_std: 0.3,
        ..ModelConfig::default()
    };
    (Model::new(&config, 7), tokenizer)
}

fn scheduler_config(max_batch: usize) -> SchedulerConfig {
    SchedulerConfig { max_batch, queue: 64, block_size: 8, kv_blocks: Some(256) }
}

fn served(max_batch: usize) -> Served {
    let (model, tokenizer) = model_and_tokenizer();
    Served::start(
        model,
        tokenizer,
        ChatFormat::Default,
        "tiny".into(),
        "fp".into(),
        scheduler_config(max_batch),
    )
    .unwrap()
}

fn app(max_batch: usize) -> axum::Router {
    app_with(max_batch, Options::default())
}

fn app_with(max_batch: usize, options: Options) -> axum::Router {
    router(AppState::new(served(max_batch), scheduler_config(max_batch), options))
}

/// One key, `k`, with 40 tokens a minute and no request limit.
fn key_k_with_40_tokens_a_minute() -> Options {
    Options { auth: Authenticator::from_keys(&["k"]), limits: RateLimits::new(0, 40), ..Options::default() }
}

/// A completion request as key `k`; the whole response (status and headers).
async fn complete_as_k(app: &axum::Router, body: Value) -> axum::response::Response {
    let request = Request::post("/v1/completions")
        .header("authorization", "Bearer k")
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    app.clone().oneshot(request).await.unwrap()
}

/// What greedy generation gives for `prompt` without the server.
fn expected(prompt: &str, max_tokens: usize) -> String {
    let (mut model, tokenizer) = model_and_tokenizer();
    let request =
        TextRequest { prompt: prompt.into(), max_tokens, sampling: Sampling::greedy(), stop: vec![] };
    TextStream::new(&mut model, &tokenizer, &request).unwrap().map(Result::unwrap).collect()
}

async fn post(app: &axum::Router, path: &str, body: Value) -> (StatusCode, String) {
    let request = Request::post(path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(bytes.to_vec()).unwrap())
}

/// The JSON of every `data:` event of an SSE body, and whether it ended with `[DONE]`.
fn sse_events(body: &str) -> (Vec<Value>, bool) {
    let data: Vec<&str> = body.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    let done = data.last() == Some(&"[DONE]");
    (data.iter().filter(|d| **d != "[DONE]").map(|d| serde_json::from_str(d).unwrap()).collect(), done)
}

#[tokio::test]
async fn models_lists_the_model() {
    let app = app(4);
    let response =
        app.clone().oneshot(Request::get("/v1/models").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value =
        serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["data"][0]["id"], "tiny");
}

#[tokio::test]
async fn completions_whole_and_streamed_give_the_text_of_generation() {
    let app = app(4);
    let want = expected("To be, or", 20);
    let request = json!({"model": "tiny", "prompt": "To be, or", "max_tokens": 20, "temperature": 0});
    let (status, body) = post(&app, "/v1/completions", request.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["choices"][0]["text"], want.as_str());
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["usage"]["completion_tokens"], 20);
    assert_eq!(body["object"], "text_completion");

    let mut streamed = request;
    streamed["stream"] = true.into();
    streamed["stream_options"] = json!({"include_usage": true});
    let (status, body) = post(&app, "/v1/completions", streamed).await;
    assert_eq!(status, StatusCode::OK);
    let (events, done) = sse_events(&body);
    assert!(done, "the stream ends with [DONE]");
    let text: String = events.iter().filter_map(|e| e["choices"][0]["text"].as_str()).collect();
    assert_eq!(text, want);
    let finish: Vec<&Value> = events.iter().filter(|e| !e["choices"][0]["finish_reason"].is_null()).collect();
    assert_eq!(finish.len(), 1);
    let usage = events.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["total_tokens"], usage["usage"]["prompt_tokens"].as_u64().unwrap() + 20);
}

#[tokio::test]
async fn chat_completions_whole_and_streamed() {
    let app = app(4);
    let messages = json!([{"role": "user", "content": "whether 'tis nobler"}]);
    let prompt = ChatFormat::Default
        .render(&[truthgpt_serve::Message { role: "user".into(), content: "whether 'tis nobler".into() }])
        .unwrap();
    let want = expected(&prompt, 12);
    let request = json!({"messages": messages, "max_tokens": 12, "temperature": 0});
    let (status, body) = post(&app, "/v1/chat/completions", request.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], want.as_str());
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");

    let mut streamed = request;
    streamed["stream"] = true.into();
    let (_, body) = post(&app, "/v1/chat/completions", streamed).await;
    let (events, done) = sse_events(&body);
    assert!(done);
    assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = events.iter().filter_map(|e| e["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(text, want);
    assert!(events.iter().all(|e| e["object"] == "chat.completion.chunk"));
}

/// Eight requests at once share the batch; each gets exactly its own greedy text.
#[tokio::test]
async fn concurrent_requests_each_get_their_own_text() {
    let app = app(8);
    let prompts: Vec<String> = TEXT.split(' ').take(8).map(str::to_string).collect();
    let requests = prompts.iter().map(|p| {
        let app = app.clone();
        let body = json!({"prompt": p, "max_tokens": 15, "temperature": 0});
        async move { post(&app, "/v1/completions", body).await }
    });
    let answers = futures_util::future::join_all(requests).await;
    for (prompt, (status, body)) in prompts.iter().zip(answers) {
        assert_eq!(status, StatusCode::OK, "{body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["choices"][0]["text"], expected(prompt, 15).as_str(), "prompt {prompt:?}");
    }
}

#[tokio::test]
async fn stop_strings_end_the_text_before_them() {
    let app = app(4);
    let full = expected("To be", 30);
    let stop: String = full.chars().skip(5).take(3).collect();
    let (_, body) = post(
        &app,
        "/v1/completions",
        json!({"prompt": "To be", "max_tokens": 30, "temperature": 0, "stop": stop}),
    )
    .await;
    let body: Value = serde_json::from_str(&body).unwrap();
    let text = body["choices"][0]["text"].as_str().unwrap();
    assert_eq!(text, &full[..full.find(&stop).unwrap()]);
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn bad_requests_get_openai_errors() {
    let app = app(4);
    for (body, status, needle) in [
        ("{not json", StatusCode::BAD_REQUEST, ""),
        (r#"{"prompt": 5}"#, StatusCode::BAD_REQUEST, "prompt"),
        (r#"{"messages": []}"#, StatusCode::BAD_REQUEST, "prompt"),
        (r#"{"prompt": "hi", "temperature": -1}"#, StatusCode::BAD_REQUEST, "temperature"),
        (r#"{"prompt": "hi", "max_tokens": -3}"#, StatusCode::BAD_REQUEST, "-3"),
        (r#"{"prompt": "hi", "n": 2}"#, StatusCode::BAD_REQUEST, "n"),
        (r#"{"prompt": "hi", "top_p": 0}"#, StatusCode::BAD_REQUEST, "top_p"),
        (r#"{"prompt": ""}"#, StatusCode::BAD_REQUEST, "empty"),
        (r#"{"prompt": "hi", "stream_options": []}"#, StatusCode::BAD_REQUEST, "map"),
        (r#"{"prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}"#, StatusCode::BAD_REQUEST, "at most 4"),
        (
            r#"{"prompt": "hi", "stream_options": {"include_usage": "yes"}}"#,
            StatusCode::BAD_REQUEST,
            "stream_options: invalid type",
        ),
    ] {
        let request = Request::post("/v1/completions")
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), status, "{body}");
        let json: Value =
            serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert!(json["error"]["message"].as_str().unwrap().contains(needle), "{body}: {json}");
        assert!(json["error"]["type"].is_string());
    }
    let (status, body) =
        post(&app, "/v1/completions", json!({"prompt": "hi", "stop": "x".repeat(129)})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("129 characters; the limit is 128"), "{body}");
    // Characters, as the document's maxLength counts them: 128 two-byte ones pass.
    let (status, body) =
        post(&app, "/v1/completions", json!({"prompt": "hi", "max_tokens": 1, "stop": "é".repeat(128)}))
            .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for (method, path, status, needle) in [
        ("GET", "/v1/completions", StatusCode::METHOD_NOT_ALLOWED, "/v1/completions does not take GET"),
        ("POST", "/v1/nowhere", StatusCode::NOT_FOUND, "POST /v1/nowhere: no such route"),
    ] {
        let request = Request::builder().method(method).uri(path).body(Body::empty()).unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), status, "{method} {path}");
        let json: Value =
            serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(json["error"]["message"], needle, "{json}");
    }
    let long = "to be ".repeat(200);
    let (status, body) = post(&app, "/v1/completions", json!({"prompt": long})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("context"), "{body}");
}

/// Two requests a minute per key: the third gets 429 with Retry-After; another key has its own
/// bucket; answers carry the RateLimit headers.
#[tokio::test]
async fn rate_limits_are_per_key() {
    let options = Options {
        auth: Authenticator::from_keys(&["a", "b"]),
        limits: RateLimits::new(2, 0),
        ..Options::default()
    };
    let app = app_with(2, options);
    let get = |key: &'static str| {
        let app = app.clone();
        async move {
            let request = Request::get("/v1/models").header("authorization", format!("Bearer {key}"));
            app.oneshot(request.body(Body::empty()).unwrap()).await.unwrap()
        }
    };
    for remaining in [1, 0] {
        let response = get("a").await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["ratelimit"], format!("\"requests\";r={remaining};t=60").as_str());
        assert_eq!(response.headers()["ratelimit-policy"], "\"requests\";q=2;w=60");
    }
    let response = get("a").await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=31).contains(&wait), "retry after {wait}s");
    let json: Value =
        serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(json["error"]["code"], "rate_limit_exceeded");
    assert_eq!(get("b").await.status(), StatusCode::OK, "key b has its own bucket");
}

/// Tokens per minute: prompt plus max_tokens is charged on admission; the request that would
/// overdraw gets 429, one larger than the whole budget gets 400.
#[tokio::test]
async fn token_limits_charge_prompt_and_max_tokens() {
    let options = key_k_with_40_tokens_a_minute();
    let app = app_with(2, options);
    let call = |max_tokens: usize| complete_as_k(&app, json!({"prompt": "To be", "max_tokens": max_tokens}));
    let first = call(20).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(first.headers()["ratelimit-policy"], "\"tokens\";q=40;w=60");
    let second = call(20).await;
    assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS, "20 + prompt tokens twice exceed 40");
    let retry = second.headers()["retry-after"].to_str().unwrap();
    assert_eq!(second.headers()["ratelimit"], format!("\"tokens\";r=0;t={retry}").as_str());
    let huge = call(100).await;
    assert_eq!(huge.status(), StatusCode::BAD_REQUEST);
}

/// Tokens/min pay for generation: an answer from the cache is not charged (a miss is).
#[tokio::test]
async fn cached_answers_are_not_charged_tokens() {
    let options = key_k_with_40_tokens_a_minute();
    let app = app_with(2, options);
    let call = |prompt: &'static str| {
        let body = json!({"prompt": prompt, "max_tokens": 20, "temperature": 0});
        async { complete_as_k(&app, body).await.status() }
    };
    assert_eq!(call("To be").await, StatusCode::OK, "a miss, charged 20 + the prompt");
    for _ in 0..3 {
        assert_eq!(call("To be").await, StatusCode::OK, "hits are free");
    }
    assert_eq!(call("or not").await, StatusCode::TOO_MANY_REQUESTS, "another miss overdraws");
}

/// A request the pool can never hold is the client's error (400, in OpenAI's shape), whole or
/// streamed.
#[tokio::test]
async fn a_request_larger_than_the_pool_is_a_400() {
    let (model, tokenizer) = model_and_tokenizer();
    let config = SchedulerConfig { max_batch: 1, queue: 4, block_size: 8, kv_blocks: Some(1) };
    let served =
        Served::start(model, tokenizer, ChatFormat::Default, "tiny".into(), "fp".into(), config).unwrap();
    let app = router(AppState::new(served, config, Options::default()));
    let ask = json!({"prompt": "To be", "max_tokens": 20});
    let (status, body) = post(&app, "/v1/completions", ask.clone()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let error: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["error"]["type"], "invalid_request_error");
    assert!(error["error"]["message"].as_str().unwrap().contains("key/value blocks"), "{body}");
    let mut streamed = ask;
    streamed["stream"] = json!(true);
    let (_, body) = post(&app, "/v1/completions", streamed).await;
    let (events, done) = sse_events(&body);
    assert!(done, "{body}");
    assert_eq!(events.last().unwrap()["error"]["type"], "invalid_request_error", "{body}");
}

/// A request refused for capacity (503) spends none of the caller's tokens/min.
#[tokio::test]
async fn a_request_refused_for_capacity_is_not_charged_tokens() {
    let options = key_k_with_40_tokens_a_minute();
    let served = served(1);
    let scheduler = served.scheduler.clone();
    let app = router(AppState::new(served, scheduler_config(1), options));
    let call = || complete_as_k(&app, json!({"prompt": "To be", "max_tokens": 20}));
    // Every place in the queue taken, as by requests waiting for the batch.
    let held: Vec<_> = (0..scheduler_config(1).queue).map(|_| scheduler.reserve().unwrap()).collect();
    let refused = call().await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(refused.headers().contains_key("retry-after"));
    drop(held);
    assert_eq!(call().await.status(), StatusCode::OK, "the 503 spent nothing: 20 + the prompt fit in 40");
    assert_eq!(call().await.status(), StatusCode::TOO_MANY_REQUESTS, "the answered one did spend");
}

#[tokio::test]
async fn metrics_count_requests_and_tokens() {
    let app = app(2);
    post(&app, "/v1/completions", json!({"prompt": "To be", "max_tokens": 3, "temperature": 0})).await;
    let response = app.clone().oneshot(Request::get("/metrics").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let text = String::from_utf8(response.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    for name in [
        "http_requests_total{route=\"/v1/completions\",method=\"POST\",status=\"200\"}",
        "http_request_duration_seconds_bucket",
        "time_to_first_token_seconds_bucket",
        "generated_tokens_total",
        "kv_blocks_total",
        "kv_bytes_allocated",
        "kv_block_bytes",
        "generated_tokens_per_second",
        "moe_expert_tokens_total{layer=\"1\",expert=\"3\"}",
        "cache_requests_total{result=\"miss\"}",
        "queue_depth",
        "batch_size",
    ] {
        assert!(text.contains(name), "/metrics lacks {name}:\n{text}");
    }
}

/// A Hugging Face directory with a chat template in `tokenizer_config.json`: chat requests are
/// rendered with it, not with the default format.
#[tokio::test]
async fn chat_uses_the_models_own_template() {
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../interop/tests/fixtures/hf/gpt2");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("gpt2-chat");
    std::fs::create_dir(&dir).unwrap();
    for entry in std::fs::read_dir(&fixture).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    let template = "{% for m in messages %}### {{ m['role'] | upper }}: {{ m['content'].strip() }}\n{% endfor %}{% if add_generation_prompt %}### ASSISTANT, ANSWERING:{% endif %}";
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer_config.json")).unwrap()).unwrap();
    config["chat_template"] = json!(template);
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();

    let served = Served::load(&dir, scheduler_config(2)).unwrap();
    let tokenizer = served.tokenizer.clone();
    let app = router(AppState::new(served, scheduler_config(2), Options::default()));
    let messages = [truthgpt_serve::Message { role: "user".into(), content: "  To be  ".into() }];
    let rendered = "### USER: To be\n### ASSISTANT, ANSWERING:";
    let default = ChatFormat::Default.render(&messages).unwrap();
    let want = tokenizer.encode(rendered).unwrap().len();
    assert_ne!(want, tokenizer.encode(&default).unwrap().len(), "the two formats must be told apart");
    let request = json!({"messages": messages, "max_tokens": 2, "temperature": 0});
    let (status, body) = post(&app, "/v1/chat/completions", request).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["usage"]["prompt_tokens"], want, "{body}");
}

/// A client that leaves mid-stream is still billed: its request, its prompt, and the tokens
/// generated before it left (before, a dropped stream recorded nothing).
#[tokio::test]
async fn a_client_that_leaves_mid_stream_is_billed_for_what_was_generated() {
    let app = app(4);
    let body = json!({"prompt": "To be, or", "max_tokens": 40, "temperature": 0, "stream": true});
    let request = Request::post("/v1/completions")
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut stream = response.into_body().into_data_stream();
    let mut text_chunks = 0;
    while text_chunks < 3 {
        let bytes = stream.next().await.expect("the stream ended early").unwrap();
        text_chunks += String::from_utf8_lossy(&bytes).matches("\"text\"").count();
    }
    drop(stream);

    let request = Request::get("/v1/usage").body(Body::empty()).unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let usage: Value =
        serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(usage["requests"], 1, "{usage}");
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 0, "{usage}");
    let completion = usage["completion_tokens"].as_u64().unwrap();
    assert!((text_chunks as u64..=40).contains(&completion), "{usage} after {text_chunks} text chunks");
}

/// The pool's capacity is the memory it can come to hold: one no machine can back is refused
/// with the sizes, not found later as an aborting allocation; the default is `max_batch` whole
/// contexts.
#[test]
fn a_pool_larger_than_memory_is_refused_at_start() {
    let (model, _) = model_and_tokenizer();
    // 2 layers x 2 heads x 8 dims x 8 positions x (key, value) x 4 bytes.
    assert_eq!(model.new_pool(8, 1).block_bytes(), 2 * 2 * 8 * 8 * 2 * 4);
    assert_eq!(scheduler_config(2).check_pool(&model), Ok(256));
    let default = SchedulerConfig { kv_blocks: None, ..scheduler_config(3) };
    assert_eq!(default.check_pool(&model), Ok(3 * 128 / 8));
    let blocks = |n: usize| SchedulerConfig { kv_blocks: Some(n), ..scheduler_config(2) }.check_pool(&model);
    let err = blocks(u32::MAX as usize + 1).unwrap_err();
    assert!(err.contains("kv_blocks") && err.contains("at most 4294967295 blocks"), "{err}");
    let huge_default = SchedulerConfig { kv_blocks: None, max_batch: usize::MAX, ..scheduler_config(2) };
    assert!(huge_default.check_pool(&model).unwrap_err().contains("at most"));
    // 8 TiB of blocks, against the memory Linux reports.
    if cfg!(target_os = "linux") {
        let err = blocks(u32::MAX as usize).unwrap_err();
        assert!(
            err.contains("8192.0 GiB, more than this machine's") && err.contains("lower kv_blocks"),
            "{err}"
        );
    }
    // Starting a scheduler checks it too, not only loading a directory.
    let (model, tokenizer) = model_and_tokenizer();
    let config = SchedulerConfig { kv_blocks: Some(u32::MAX as usize + 1), ..scheduler_config(2) };
    let refused = Served::start(model, tokenizer, ChatFormat::Default, "tiny".into(), "fp".into(), config);
    assert!(refused.is_err_and(|e| e.contains("kv_blocks")));
}

/// A client that leaves stops its generation: the scheduler drops the job at its next step. The
/// same greedy job run to the end first shows it would not have stopped early on its own.
#[test]
fn a_client_that_leaves_stops_its_generation() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use truthgpt_serve::scheduler::{Event, Job};

    let (_, tokenizer) = model_and_tokenizer();
    let config = ModelConfig {
        vocab_size: 300,
        d_model: 16,
        n_layers: 1,
        n_heads: 2,
        n_kv_heads: 1,
        d_ff: 32,
        max_seq_len: 4096,
        positional: Positional::Rope,
        init_std: 0.3,
        ..ModelConfig::default()
    };
    let (scheduler, _thread) = truthgpt_serve::Scheduler::start(
        Model::new(&config, 7),
        Arc::new(tokenizer),
        SchedulerConfig { max_batch: 1, queue: 1, block_size: 16, kv_blocks: None },
    )
    .unwrap();
    // Long enough (tens of milliseconds at least) that the test thread, even descheduled,
    // drops the stream while the job still has most of its tokens to go.
    let max_tokens = 4000;
    let submit = || {
        let (events, receiver) = tokio::sync::mpsc::unbounded_channel();
        let progress = Arc::new(AtomicUsize::new(0));
        let job = Job {
            prompt: vec![5, 6, 7],
            max_tokens,
            sampling: Sampling::greedy(),
            stop: vec![],
            events,
            received: std::time::Instant::now(),
            progress: progress.clone(),
        };
        (scheduler.reserve().unwrap().submit(job), receiver, progress)
    };

    let (_waiting, mut receiver, _) = submit();
    let usage = loop {
        match receiver.blocking_recv().expect("the job ends with Finished") {
            Event::Finished(usage) => break usage,
            Event::Failed(e) => panic!("{e:?}"),
            Event::Text(_) => {}
        }
    };
    assert_eq!(usage.completion_tokens, max_tokens, "the job must run to max_tokens, not stop at EOS");

    let (waiting, mut receiver, progress) = submit();
    assert!(matches!(receiver.blocking_recv(), Some(Event::Text(_))), "a first piece of text");
    drop((waiting, receiver));
    // The scheduler holds the job's clone of `progress` until it drops the job.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while Arc::strong_count(&progress) > 1 {
        assert!(std::time::Instant::now() < deadline, "the job was never dropped");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let generated = progress.load(Ordering::Relaxed);
    assert!(generated < max_tokens / 2, "{generated} of {max_tokens} tokens generated after the client left");
}
