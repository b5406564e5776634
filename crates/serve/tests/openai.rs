//! The OpenAI endpoints on a small random model, through the router as a client would call it.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;
use truthgpt_config::{ModelConfig, Positional};
use truthgpt_data::Tokenizer;
use truthgpt_model::{Model, Sampling};
use truthgpt_serve::{router, ApiKeys, AppState, RateLimits, Scheduler, SchedulerConfig};
use truthgpt_train::{Request as TextRequest, TextStream};

const TEXT: &str = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer \
                    the slings and arrows of outrageous fortune, or to take arms against a sea of troubles.";

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
        init_std: 0.3,
        ..ModelConfig::default()
    };
    (Model::new(&config, 7), tokenizer)
}

fn app(max_batch: usize) -> axum::Router {
    app_with(max_batch, ApiKeys::default(), None)
}

fn app_with(max_batch: usize, keys: ApiKeys, limits: Option<RateLimits>) -> axum::Router {
    let (model, tokenizer) = model_and_tokenizer();
    let tokenizer = Arc::new(tokenizer);
    let config = SchedulerConfig { max_batch, queue: 64, block_size: 8, kv_blocks: 256 };
    let (scheduler, _thread) = Scheduler::start(model, tokenizer.clone(), config);
    router(AppState { scheduler, tokenizer, model_id: "tiny".into(), created: 0 }, keys, limits)
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
    let prompt = truthgpt_serve::openai::chat_prompt(&[truthgpt_serve::openai::Message {
        role: "user".into(),
        content: "whether 'tis nobler".into(),
    }]);
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
        (r#"{"prompt": 5}"#, StatusCode::UNPROCESSABLE_ENTITY, "prompt"),
        (r#"{"prompt": "hi", "n": 2}"#, StatusCode::BAD_REQUEST, "n"),
        (r#"{"prompt": "hi", "top_p": 0}"#, StatusCode::BAD_REQUEST, "top_p"),
        (r#"{"prompt": ""}"#, StatusCode::BAD_REQUEST, "empty"),
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
    let long = "to be ".repeat(200);
    let (status, body) = post(&app, "/v1/completions", json!({"prompt": long})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("context"), "{body}");
}

/// With keys configured, every `/v1` route refuses requests without one (or with a wrong one);
/// `/health` and `/ready` stay open.
#[tokio::test]
async fn api_routes_need_a_key_and_health_does_not() {
    let app = app_with(2, ApiKeys::new(&["secret-key"]), None);
    let body = json!({"prompt": "To be", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]})
        .to_string();
    for (method, path) in
        [("GET", "/v1/models"), ("POST", "/v1/completions"), ("POST", "/v1/chat/completions")]
    {
        for auth in [None, Some("Bearer wrong"), Some("Bearer secret-key")] {
            let mut request =
                Request::builder().method(method).uri(path).header("content-type", "application/json");
            if let Some(auth) = auth {
                request = request.header("authorization", auth);
            }
            let response =
                app.clone().oneshot(request.body(Body::from(body.clone())).unwrap()).await.unwrap();
            let want =
                if auth == Some("Bearer secret-key") { StatusCode::OK } else { StatusCode::UNAUTHORIZED };
            assert_eq!(response.status(), want, "{method} {path} with {auth:?}");
            if want == StatusCode::UNAUTHORIZED {
                let json: Value =
                    serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes())
                        .unwrap();
                assert_eq!(json["error"]["code"], "invalid_api_key");
            }
        }
    }
    for path in ["/health", "/ready"] {
        let response = app.clone().oneshot(Request::get(path).body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
}

/// Two requests a minute per key: the third gets 429 with Retry-After; another key has its own
/// bucket; answers carry the RateLimit headers.
#[tokio::test]
async fn rate_limits_are_per_key() {
    let limits = RateLimits::per_minute(std::num::NonZeroU32::new(2).unwrap());
    let app = app_with(2, ApiKeys::new(&["a", "b"]), Some(limits));
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
    ] {
        assert!(text.contains(name), "/metrics lacks {name}:\n{text}");
    }
}
