//! Regression tests for the hardening issue's serving findings, each named after its finding:
//! large prompts are bounded and tokenized off the runtime (4), chat prompts match transformers'
//! `apply_chat_template` token for token (8), and a connection that never finishes its request
//! head is closed (9, slowloris).

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::model_and_tokenizer;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;
use truthgpt_data::Tokenizer;
use truthgpt_serve::template::ChatFormat;
use truthgpt_serve::{router, AppState, Message, Options, PromptBounds, SchedulerConfig, Served};

const SCHEDULER: SchedulerConfig =
    SchedulerConfig { max_batch: 2, queue: 16, block_size: 8, kv_blocks: Some(32) };

fn app_with(options: Options) -> axum::Router {
    let (_, model, tokenizer) = model_and_tokenizer(3);
    let served =
        Served::start(model, tokenizer, ChatFormat::Default, "tiny".into(), "fp".into(), SCHEDULER).unwrap();
    router(AppState::new(served, SCHEDULER, options))
}

/// (status, JSON body or Null, or the text) of one request through the router.
async fn call(app: &axum::Router, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    let request = Request::builder().method(method).uri(path).header("content-type", "application/json");
    let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
    let response = app.clone().oneshot(request.body(body).unwrap()).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::String(text)))
}

fn message(body: &Value) -> &str {
    body["error"]["message"].as_str().unwrap_or_default()
}

/// `n` bytes of distinct pseudo-random words, so the tokenizer's word cache cannot shortcut them.
fn words(n: usize) -> String {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut text = String::with_capacity(n + 16);
    while text.len() < n {
        for _ in 0..1 + (state >> 60) % 7 {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            text.push(char::from(b'a' + (state >> 59) as u8 % 26));
        }
        text.push(' ');
    }
    text
}

/// Hardening finding 4: prompts are bounded by default, in bytes (413) before tokenizing and in
/// tokens (400) after, each error naming the setting that raises it; a conversation's history
/// counts towards the bytes.
#[tokio::test]
async fn finding_4_large_prompts_are_refused_naming_the_bound() {
    assert_eq!(Options::default().prompt_bounds, PromptBounds::default());
    let default_bytes = PromptBounds::default().max_bytes;
    let app = app_with(Options::default());
    let (status, body) =
        call(&app, "POST", "/v1/completions", Some(json!({"prompt": words(default_bytes + 1)}))).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(message(&body).contains(&format!("the limit is {default_bytes} (`max_prompt_bytes`")), "{body}");

    let bounds = PromptBounds { max_bytes: 400, max_tokens: 20 };
    let app = app_with(Options { prompt_bounds: bounds, ..Options::default() });
    let (status, body) = call(&app, "POST", "/v1/completions", Some(json!({"prompt": words(300)}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(message(&body).contains("the limit is 20 (`max_prompt_tokens`"), "{body}");
    let (status, body) =
        call(&app, "POST", "/v1/completions", Some(json!({"prompt": "To be", "max_tokens": 2}))).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Each turn adds its message and the reply to the history, until the prompt passes 80 bytes (the second turn).
    let bounds = PromptBounds { max_bytes: 80, max_tokens: 10_000 };
    let app = app_with(Options { prompt_bounds: bounds, ..Options::default() });
    let turn = json!({"messages": [{"role": "user", "content": "To be, or not to be,"}], "max_tokens": 1,
        "conversation_id": "long"});
    let mut statuses = vec![];
    while statuses.len() < 10 && statuses.last() != Some(&413) {
        let (status, body) = call(&app, "POST", "/v1/chat/completions", Some(turn.clone())).await;
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            assert!(message(&body).contains("the limit is 80 (`max_prompt_bytes`"), "{body}");
        }
        statuses.push(status.as_u16());
    }
    assert_eq!(statuses.first(), Some(&200), "{statuses:?}");
    assert_eq!(statuses.last(), Some(&413), "the history grew past the bound: {statuses:?}");
}

/// Hardening finding 4: a large prompt is tokenized off the async runtime. On a runtime of one
/// worker, `/metrics` reports the tokenization running, then `/health` answers, then `/metrics`
/// still reports it: the runtime served both while the tokenizer worked. (Tokenized on the
/// worker, the prompt blocked every other request until it was done.)
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn finding_4_health_answers_while_a_large_prompt_is_tokenized() {
    let bounds = PromptBounds { max_bytes: 8 << 20, max_tokens: 1 << 24 };
    let app = app_with(Options { max_body_bytes: 8 << 20, prompt_bounds: bounds, ..Options::default() });
    let big = tokio::spawn({
        let app = app.clone();
        async move { call(&app, "POST", "/v1/completions", Some(json!({"prompt": words(4 << 20)}))).await }
    });
    let running = |metrics: &Value| metrics.as_str().is_some_and(|m| m.contains("prompts_tokenizing 1"));
    let mut answered_during = false;
    while !big.is_finished() && !answered_during {
        let (_, before) = call(&app, "GET", "/metrics", None).await;
        if !running(&before) {
            tokio::task::yield_now().await;
            continue;
        }
        let (status, health) = call(&app, "GET", "/health", None).await;
        assert_eq!(status, StatusCode::OK, "{health}");
        let (_, after) = call(&app, "GET", "/metrics", None).await;
        answered_during = running(&after);
    }
    let (status, body) = big.await.unwrap();
    assert!(answered_during, "/health was never answered while the prompt was tokenized");
    // Tokenized whole, then refused for the model's context (96).
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(message(&body).contains("this model's context is 96"), "{body}");
}

/// Hardening finding 9 (slowloris): a connection that sends half a request line is closed once
/// the header-read timeout passes, while whole requests are still served; shutdown still drains.
#[tokio::test]
async fn finding_9_slowloris_connections_are_closed_after_the_header_read_timeout() {
    let listener = truthgpt_serve::listen("127.0.0.1:0").await.unwrap();
    let address = axum::serve::Listener::local_addr(&listener).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let timeout = Duration::from_millis(300);
    let server =
        tokio::spawn(truthgpt_serve::http::serve(listener, app_with(Options::default()), timeout, async {
            let _ = stopped.await;
        }));
    let slow = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        stream.write_all(b"GET /hea").unwrap();
        // A safety net far beyond the timeout: reaching it means the server kept the connection.
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut rest = vec![];
        match stream.read_to_end(&mut rest) {
            Ok(_) => Ok(String::from_utf8_lossy(&rest).into_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(String::new()),
            Err(e) => Err(e.kind()),
        }
    });
    let whole = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        stream.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    });
    assert!(whole.await.unwrap().starts_with("HTTP/1.1 200"), "a whole request is served");
    let closed = slow.await.unwrap();
    assert!(closed.is_ok(), "the half-sent request's connection was still open: {closed:?}");
    assert!(!closed.unwrap().contains("200 OK"), "half a request line is never answered as a request");
    stop.send(()).unwrap();
    server.await.unwrap();
}

/// Hardening finding 8: a model's own chat template gives the prompt transformers gives, text and
/// token ids, for `chat_template.jinja` (SmolLM2's ChatML) and for the list of named templates in
/// `tokenizer_config.json` (Zephyr's, whose block tags sit on their own lines). The fixtures are
/// `scripts/make_chat_fixtures.py`'s, with transformers' `apply_chat_template` output.
#[test]
fn finding_8_chat_prompts_match_transformers_apply_chat_template() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/chat");
    for name in ["chatml", "named"] {
        let dir = root.join(name);
        let format = ChatFormat::for_model(&dir).unwrap();
        assert!(matches!(format, ChatFormat::Jinja { .. }), "{name}: the model's template is used");
        let tokenizer = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
        let expected: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
        for case in expected["cases"].as_array().unwrap() {
            let messages: Vec<Message> = serde_json::from_value(case["messages"].clone()).unwrap();
            let text = format.render(&messages).unwrap();
            assert_eq!(text, case["text"].as_str().unwrap(), "{name}: the rendered prompt");
            let ids: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
            assert_eq!(tokenizer.encode(&text).unwrap(), ids, "{name}: the prompt's token ids");
        }
    }
}

/// Found by schemathesis's positive_data_acceptance: the document says `max_tokens`, `seed` and
/// `n` are integers, and to JSON Schema `2.0` is one; serde refused it with 400.
#[tokio::test]
async fn schemathesis_integral_numbers_are_integers() {
    let app = app_with(Options::default());
    let body = json!({"prompt": "To be", "max_tokens": 2.0, "seed": 7.0, "n": 1.0});
    let (status, answer) = call(&app, "POST", "/v1/completions", Some(body)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["usage"]["completion_tokens"], 2, "{answer}");
    for (field, value) in [("max_tokens", json!(2.5)), ("seed", json!(-1)), ("seed", json!(1e20))] {
        let mut body = json!({"prompt": "To be"});
        body[field] = value.clone();
        let (status, answer) = call(&app, "POST", "/v1/completions", Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{field}: {value}: {answer}");
        assert!(message(&answer).starts_with(field), "the error names the field: {answer}");
    }
}
