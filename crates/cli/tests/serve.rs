//! `truthgpt serve` as a process, over TCP: an HTTP client uses the OpenAI API as the official
//! client would; the WebSocket streams; keys never reach the log; two replicas share rate limits
//! and cached answers through one Redis; on SIGTERM an in-flight stream finishes, then exit 0.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};

use common::truthgpt;

/// The imported GPT-2 fixture: a tiny model with a tokenizer.
fn model_dir(tmp: &Path) -> std::path::PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../interop/tests/fixtures/hf/gpt2");
    let out = tmp.join("model");
    let status = truthgpt(&["import", "hf", source.to_str().unwrap(), "--out", out.to_str().unwrap()])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    out
}

/// The server process, killed if the test fails before it exits.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `truthgpt serve --model MODEL --port 0 ARGS...`; returns it, its address (read from
/// its log) and the log so far, which keeps growing.
fn start_with(model: &Path, args: &[&str], env: &[(&str, &str)]) -> (Server, String, Arc<Mutex<String>>) {
    let mut command =
        truthgpt(&["serve", "--model", model.to_str().unwrap(), "--port", "0", "--drain-secs", "20"]);
    command.args(args).envs(env.iter().copied()).stdin(Stdio::null()).stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let log = Arc::new(Mutex::new(String::new()));
    let mut line = String::new();
    while !line.contains("http://") {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "the server exited before listening: {}",
            log.lock().unwrap()
        );
        log.lock().unwrap().push_str(&line);
    }
    // Keep reading its log, so a full pipe can never block it.
    let sink = log.clone();
    std::thread::spawn(move || {
        let mut line = String::new();
        while stderr.read_line(&mut line).is_ok_and(|n| n > 0) {
            sink.lock().unwrap().push_str(&line);
            line.clear();
        }
    });
    let address =
        line.split("http://").nth(1).and_then(|s| s.split_whitespace().next()).expect(&line).to_string();
    (Server(child), address, log)
}

/// One HTTP/1.1 request on its own connection; returns (status, head and body).
fn call(address: &str, method: &str, path: &str, key: Option<&str>, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(address).unwrap();
    let auth = key.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    (response.split_whitespace().nth(1).unwrap().parse().unwrap(), response)
}

/// One HTTP/1.1 request on its own connection; returns (status, body).
fn request(address: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let (status, response) = call(address, method, path, None, body);
    (status, response.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string())
}

#[test]
fn serves_streams_and_drains_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_dir(tmp.path());
    // One stream generates at a time; the others wait in the queue.
    let (mut server, address, _log) = start_with(&model, &["--max-batch", "1"], &[]);

    let (status, body) = request(&address, "GET", "/v1/models", "");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"model\""), "{body}");
    let (status, body) = request(
        &address,
        "POST",
        "/v1/completions",
        r#"{"prompt": "To be", "max_tokens": 5, "temperature": 0}"#,
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"text_completion\"") && body.contains("\"completion_tokens\""), "{body}");

    // Eight streams are accepted (their response heads have arrived) before SIGTERM; the last
    // waits behind seven others' 60 tokens. Every one still ends with [DONE].
    let body = r#"{"prompt": "To be", "max_tokens": 60, "stream": true, "seed": 1}"#;
    let streams: Vec<_> = (0..8)
        .map(|_| {
            let mut stream = TcpStream::connect(&address).unwrap();
            write!(
                stream,
                "POST /v1/completions HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
            let mut reader = BufReader::new(stream);
            let mut head = String::new();
            while !head.ends_with("\r\n\r\n") {
                assert!(reader.read_line(&mut head).unwrap() > 0, "the connection closed: {head}");
            }
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            reader
        })
        .collect();
    // Eight requests on a WebSocket wait behind them too, and all are answered before it closes:
    // axum's graceful shutdown does not track upgraded connections, so the server waits for it.
    let request = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
        "ws://{address}/v1/stream"
    ))
    .unwrap();
    let (mut socket, _) = tokio_tungstenite::tungstenite::connect(request).unwrap();
    for _ in 0..8 {
        socket.send(tokio_tungstenite::tungstenite::Message::text(body)).unwrap();
    }
    let status =
        std::process::Command::new("kill").args(["-TERM", &server.0.id().to_string()]).status().unwrap();
    assert!(status.success());
    for mut stream in streams {
        let mut rest = String::new();
        stream.read_to_string(&mut rest).unwrap();
        assert!(rest.contains("data: [DONE]"), "an accepted stream finished: {rest}");
    }
    let mut messages = vec![];
    loop {
        match socket.read() {
            Ok(message) if message.is_text() => messages.push(message.into_text().unwrap().to_string()),
            Ok(message) => {
                assert!(message.is_close(), "{message:?}");
                break;
            }
            Err(e) => panic!("the socket broke after {} messages: {e}", messages.len()),
        }
    }
    assert_eq!(messages.iter().filter(|m| *m == "[DONE]").count(), 8, "every answer finished: {messages:?}");
    assert_eq!(messages.last().map(String::as_str), Some("[DONE]"));
    let exit = server.0.wait().unwrap();
    assert!(exit.success(), "exit status {exit:?}");
}

/// What `scripts/check_openai_client.py` does with the official Python client, with reqwest:
/// models, chat, chat streaming (with usage), completions.
#[tokio::test]
async fn an_http_client_uses_the_openai_api() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_dir(tmp.path());
    let (_server, address, _) = start_with(&model, &["--api-key", "sk-test"], &[]);
    let client = reqwest::Client::new();
    let url = format!("http://{address}/v1");
    let post = |path: &str, body: &Value| {
        let request = client.post(format!("{url}{path}")).bearer_auth("sk-test").json(body).send();
        async move { request.await.unwrap() }
    };
    let models: Value = client
        .get(format!("{url}/models"))
        .bearer_auth("sk-test")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"][0]["id"], "model");

    let chat = json!({"model": "model", "messages": [{"role": "user", "content": "To be"}], "max_tokens": 6, "temperature": 0});
    let whole: Value = post("/chat/completions", &chat).await.json().await.unwrap();
    let text = whole["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    assert_eq!(whole["object"], "chat.completion");

    let mut streamed = chat.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let response = post("/chat/completions", &streamed).await;
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let body = response.text().await.unwrap();
    let data: Vec<&str> = body.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    assert_eq!(data.last(), Some(&"[DONE]"));
    let chunks: Vec<Value> =
        data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    let joined: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(joined, text, "streamed and whole answers agree");
    assert_eq!(chunks.last().unwrap()["usage"]["total_tokens"], whole["usage"]["total_tokens"]);

    let completion = json!({"model": "model", "prompt": "To be", "max_tokens": 4});
    let response = post("/completions", &completion).await;
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("x-request-id"));
    let anonymous = client.post(format!("{url}/completions")).json(&completion).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);

    // The scheduler's own figures reach /metrics (its handles are made after the recorder).
    let metrics =
        client.get(format!("http://{address}/metrics")).bearer_auth("sk-test").send().await.unwrap();
    let metrics = metrics.text().await.unwrap();
    for name in ["generated_tokens_total", "decode_step_seconds_count", "batch_size", "kv_blocks_total"] {
        assert!(metrics.contains(name), "/metrics lacks {name}: {metrics}");
    }
}

#[tokio::test]
async fn the_websocket_streams_the_same_chunks() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_dir(tmp.path());
    let (_server, address, _) = start_with(&model, &["--api-key", "sk-ws"], &[]);
    let mut request = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws://{address}/v1/stream"),
    )
    .unwrap();
    request.headers_mut().insert("authorization", "Bearer sk-ws".parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let ask = |body: Value| tokio_tungstenite::tungstenite::Message::text(body.to_string());
    for body in [
        json!({"prompt": "To be", "max_tokens": 5, "temperature": 0, "stream_options": {"include_usage": true}}),
        json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "temperature": 0}),
        json!({"prompt": ""}),
    ] {
        socket.send(ask(body.clone())).await.unwrap();
        let mut chunks = vec![];
        loop {
            let message = socket.next().await.unwrap().unwrap().into_text().unwrap().to_string();
            if message == "[DONE]" {
                break;
            }
            chunks.push(serde_json::from_str::<Value>(&message).unwrap());
        }
        if body["prompt"] == "" {
            assert_eq!(chunks.len(), 1);
            assert!(chunks[0]["error"]["message"].as_str().unwrap().contains("empty"), "{chunks:?}");
        } else if body.get("messages").is_some() {
            assert_eq!(chunks[0]["object"], "chat.completion.chunk");
            assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        } else {
            assert_eq!(chunks[0]["object"], "text_completion");
            let tokens = chunks.last().unwrap()["usage"]["completion_tokens"].as_u64().unwrap();
            assert!((1..=5).contains(&tokens), "{chunks:?}");
            let reasons: Vec<&Value> = chunks.iter().map(|c| &c["choices"][0]["finish_reason"]).collect();
            assert!(reasons.iter().any(|r| *r == "length" || *r == "stop"), "{chunks:?}");
        }
    }
    // Without the key the upgrade itself is refused.
    let anonymous = tokio_tungstenite::connect_async(format!("ws://{address}/v1/stream")).await;
    assert!(anonymous.is_err());
}

/// Each generation on a WebSocket counts against requests/min (the upgrade pays for the
/// first). That a socket ends with its JWT is tested in-process, on a clock the test moves
/// (`crates/serve/tests/access.rs`).
#[tokio::test]
async fn the_websocket_spends_a_request_per_generation() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_dir(tmp.path());
    let config = tmp.path().join("serve.yaml");
    std::fs::write(
        &config,
        "jwt: {audience: truthgpt, hs256_secret: a-websocket-test-secret-of-32-bytes, leeway_secs: 0}\n",
    )
    .unwrap();
    let (_server, address, _) =
        start_with(&model, &["--config", config.to_str().unwrap(), "--requests-per-minute", "2"], &[]);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let connect = || {
        let claims = json!({"sub": "ws-rate", "aud": "truthgpt", "exp": now + 3600, "role": "user"});
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(b"a-websocket-test-secret-of-32-bytes"),
        )
        .unwrap();
        let mut request = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
            format!("ws://{address}/v1/stream"),
        )
        .unwrap();
        request.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        tokio_tungstenite::connect_async(request)
    };
    // The first message of an answer (a chunk, or an error), or None once the socket closed.
    async fn first_reply(
        socket: &mut tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
    ) -> Option<Value> {
        let ask = json!({"prompt": "To be", "max_tokens": 2});
        socket.send(tokio_tungstenite::tungstenite::Message::text(ask.to_string())).await.unwrap();
        let first = match socket.next().await? {
            Ok(message) if message.is_text() => serde_json::from_str(message.to_text().unwrap()).unwrap(),
            _ => return None,
        };
        while let Some(Ok(message)) = socket.next().await {
            if message.to_text().is_ok_and(|t| t == "[DONE]") {
                break;
            }
        }
        Some(first)
    }

    let (mut socket, _) = connect().await.unwrap();
    for turn in 0..2 {
        let reply = first_reply(&mut socket).await.unwrap();
        assert_eq!(reply["object"], "text_completion", "generation {turn}: {reply}");
    }
    let refused = first_reply(&mut socket).await.unwrap();
    assert_eq!(refused["error"]["code"], "rate_limit_exceeded", "{refused}");
}

#[tokio::test]
async fn keys_and_tokens_never_reach_the_log() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_dir(tmp.path());
    let key = "sk-very-secret-4f1d2c";
    let (server, address, log) = start_with(&model, &["--api-key", key], &[("RUST_LOG", "trace")]);
    let client = reqwest::Client::new();
    for credential in [key, "sk-wrong-guess-9a8b7c"] {
        let body = json!({"prompt": "To be", "max_tokens": 2});
        client
            .post(format!("http://{address}/v1/completions"))
            .bearer_auth(credential)
            .json(&body)
            .send()
            .await
            .unwrap();
        client
            .get(format!("http://{address}/v1/models"))
            .header("x-api-key", credential)
            .send()
            .await
            .unwrap();
    }
    drop(server);
    let log = log.lock().unwrap();
    assert!(log.contains("/v1/completions"), "requests are logged: {log}");
    for secret in [key, "sk-wrong-guess-9a8b7c", "Bearer"] {
        assert!(!log.contains(secret), "the log holds {secret:?}");
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A Redis of our own on a free port, or `None` (with a note) where redis-server is missing and
/// `TRUTHGPT_REQUIRE_REDIS` is unset. CI sets it, so there the test cannot be skipped.
fn redis_server(dir: &Path) -> Option<(Server, String)> {
    let port = free_port();
    redis_server_on(dir, port).map(|server| (server, format!("redis://127.0.0.1:{port}/")))
}

/// A Redis on `port` (a restart takes the port its predecessor had).
fn redis_server_on(dir: &Path, port: u16) -> Option<Server> {
    let spawned = std::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            dir.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .spawn();
    let child = match spawned {
        Ok(child) => child,
        Err(e) if std::env::var_os("TRUTHGPT_REQUIRE_REDIS").is_none() => {
            eprintln!("SKIPPED: redis-server is not installed ({e}); CI installs it");
            return None;
        }
        Err(e) => panic!("TRUTHGPT_REQUIRE_REDIS is set but redis-server does not start: {e}"),
    };
    let server = Server(child);
    for _ in 0..100 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(server);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("redis-server did not listen on {port}");
}

/// The keys matching `pattern` in the Redis on `port`, asked with an inline `KEYS` command.
fn redis_keys(port: u16, pattern: &str) -> Vec<String> {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(&stream, "KEYS {pattern}\r\n").unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let count: usize = line.trim().strip_prefix('*').and_then(|n| n.parse().ok()).expect(&line);
    (0..count)
        .map(|_| {
            let (mut length, mut key) = (String::new(), String::new());
            reader.read_line(&mut length).unwrap();
            reader.read_line(&mut key).unwrap();
            key.trim_end().to_string()
        })
        .collect()
}

/// Two replicas, one Redis: 5 requests per minute hold across both, and an answer cached by one
/// is served by the other.
#[test]
fn two_replicas_share_limits_and_cache_through_redis() {
    let tmp = tempfile::tempdir().unwrap();
    let Some((_redis, url)) = redis_server(tmp.path()) else { return };
    let model = model_dir(tmp.path());
    let args = [
        "--api-key",
        "sk-shared",
        "--api-key",
        "sk-cache",
        "--requests-per-minute",
        "5",
        "--redis",
        url.as_str(),
    ];
    let (_a, address_a, _) = start_with(&model, &args, &[]);
    let (_b, address_b, _) = start_with(&model, &args, &[]);
    let mut statuses = vec![];
    for i in 0..8 {
        let address = if i % 2 == 0 { &address_a } else { &address_b };
        let (status, response) = call(address, "GET", "/v1/models", Some("sk-shared"), "");
        if status == 429 {
            assert!(response.to_lowercase().contains("retry-after:"), "{response}");
        }
        statuses.push(status);
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429], "one budget across replicas");

    // Another key has its own budget; its greedy answer, cached by A, is a hit on B.
    let body = r#"{"prompt": "To be", "max_tokens": 6, "temperature": 0}"#;
    let (status, from_a) = call(&address_a, "POST", "/v1/completions", Some("sk-cache"), body);
    assert_eq!(status, 200, "{from_a}");
    let (_, from_b) = call(&address_b, "POST", "/v1/completions", Some("sk-cache"), body);
    let text = |r: &str| -> Value {
        let body: Value = serde_json::from_str(r.split_once("\r\n\r\n").unwrap().1).unwrap();
        body["choices"][0]["text"].clone()
    };
    assert_eq!(text(&from_a), text(&from_b));
    let (_, metrics) = call(&address_b, "GET", "/metrics", Some("sk-cache"), "");
    assert!(metrics.contains("cache_requests_total{result=\"hit\"} 1"), "{metrics}");
}

/// Hardening finding 2: Redis killed under a running server. Every request still answers (from
/// this process's limits, cache and sessions), the circuit opens and says so in the metrics and
/// the log; Redis restarted on its port is used again once a probe sees it, with no restart.
#[test]
fn finding_2_redis_outage_degrades_to_local_state_and_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let Some(redis) = redis_server_on(tmp.path(), port) else { return };
    let url = format!("redis://127.0.0.1:{port}/");
    let model = model_dir(tmp.path());
    let args = ["--api-key", "sk-a", "--requests-per-minute", "1000", "--redis", url.as_str()];
    let (_server, address, log) = start_with(&model, &args, &[]);
    let greedy = |prompt: &str| json!({"prompt": prompt, "max_tokens": 3, "temperature": 0}).to_string();
    let (status, response) = call(&address, "POST", "/v1/completions", Some("sk-a"), &greedy("To be"));
    assert_eq!(status, 200, "{response}");
    assert_eq!(redis_keys(port, "truthgpt:cache:*").len(), 1, "the answer is cached in Redis");

    drop(redis);
    let chat = |id: &str| {
        json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "temperature": 0,
            "conversation_id": id})
        .to_string()
    };
    for i in 0..6 {
        let (status, response) = call(&address, "GET", "/v1/models", Some("sk-a"), "");
        assert_eq!(status, 200, "{response}");
        let (status, response) =
            call(&address, "POST", "/v1/completions", Some("sk-a"), &greedy(&format!("Prompt {i}")));
        assert_eq!(status, 200, "{response}");
    }
    // The conversation goes on in this process's sessions: the second turn's prompt holds the first.
    let prompt_tokens: Vec<u64> = (0..2)
        .map(|_| {
            let (status, response) =
                call(&address, "POST", "/v1/chat/completions", Some("sk-a"), &chat("outage"));
            assert_eq!(status, 200, "{response}");
            let body: Value = serde_json::from_str(response.split_once("\r\n\r\n").unwrap().1).unwrap();
            body["usage"]["prompt_tokens"].as_u64().unwrap()
        })
        .collect();
    assert!(prompt_tokens[0] < prompt_tokens[1], "{prompt_tokens:?}");
    let (_, metrics) = call(&address, "GET", "/metrics", Some("sk-a"), "");
    assert!(metrics.contains("redis_circuit_open 1"), "{metrics}");
    assert!(metrics.contains("redis_circuit_transitions_total{state=\"open\"} 1"), "{metrics}");
    assert!(log.lock().unwrap().contains("Redis circuit open"), "{}", log.lock().unwrap());

    let _redis = redis_server_on(tmp.path(), port).unwrap();
    let closed = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        call(&address, "GET", "/metrics", Some("sk-a"), "").1.contains("redis_circuit_open 0")
    });
    assert!(closed, "the circuit closed after Redis came back: {}", log.lock().unwrap());
    assert!(log.lock().unwrap().contains("Redis circuit closed"));
    let (status, response) = call(&address, "POST", "/v1/completions", Some("sk-a"), &greedy("Back"));
    assert_eq!(status, 200, "{response}");
    assert_eq!(redis_keys(port, "truthgpt:cache:*").len(), 1, "the new Redis holds the new answer");
    let (status, response) = call(&address, "POST", "/v1/chat/completions", Some("sk-a"), &chat("after"));
    assert_eq!(status, 200, "{response}");
    assert_eq!(redis_keys(port, "truthgpt:session:*").len(), 1, "and the new conversation");
}
