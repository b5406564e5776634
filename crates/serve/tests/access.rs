//! Who may call what: every route in the OpenAPI document refuses anonymous callers except the
//! open three; roles guard their groups; JWTs are checked for signature, exp, nbf and aud, and a
//! WebSocket ends with its token; usage, sessions and cached answers stay within their tenant;
//! reloads empty the cache.

mod common;

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::model_and_tokenizer;
use http_body_util::BodyExt;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tower::ServiceExt;
use truthgpt_serve::config::{JwtConfig, KeyConfig};
use truthgpt_serve::template::ChatFormat;
use truthgpt_serve::{router, AppState, Authenticator, Options, Role, SchedulerConfig, Served};

const SECRET: &str = "an HS256 secret of at least 32 bytes";
const AUDIENCE: &str = "truthgpt";
const OPEN: [&str; 3] = ["/health", "/ready", "/openapi.json"];

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

const SCHEDULER: SchedulerConfig =
    SchedulerConfig { max_batch: 4, queue: 16, block_size: 8, kv_blocks: Some(64) };

fn key(name: &str, tenant: &str, role: Role) -> KeyConfig {
    KeyConfig {
        name: name.into(),
        key: Some(format!("{name}-key")),
        sha256: None,
        tenant: tenant.into(),
        role,
    }
}

fn options() -> Options {
    options_with_issuer(None)
}

fn options_with_issuer(issuer: Option<&str>) -> Options {
    let keys = [
        key("admin", "ops", Role::Admin),
        key("alice", "acme", Role::User),
        key("bob", "globex", Role::User),
        key("carol", "acme:eu", Role::User),
        key("viewer", "acme", Role::Readonly),
    ];
    let jwt = JwtConfig {
        audience: AUDIENCE.into(),
        issuer: issuer.map(Into::into),
        hs256_secret: Some(SECRET.into()),
        rs256_public_key: Some(fixture("jwt_rs256_public.pem")),
        leeway_secs: 0,
    };
    Options { auth: Authenticator::new(&keys, Some(&jwt)).unwrap(), ..Options::default() }
}

fn app() -> axum::Router {
    app_with(options())
}

fn app_with(options: Options) -> axum::Router {
    let (_, model, tokenizer) = model_and_tokenizer(3);
    let served =
        Served::start(model, tokenizer, ChatFormat::Default, "tiny".into(), "fp".into(), SCHEDULER).unwrap();
    router(AppState::new(served, SCHEDULER, options))
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

fn hs256(claims: Value, secret: &str) -> String {
    encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
}

fn rs256(claims: Value) -> String {
    let pem = std::fs::read(fixture("jwt_rs256_private.pem")).unwrap();
    encode(&Header::new(Algorithm::RS256), &claims, &EncodingKey::from_rsa_pem(&pem).unwrap()).unwrap()
}

/// (status, JSON body or Null) of one request.
async fn call(
    app: &axum::Router,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let body = match body {
        Some(body) => {
            request = request.header("content-type", "application/json");
            Body::from(body.to_string())
        }
        None => Body::empty(),
    };
    let response = app.clone().oneshot(request.body(body).unwrap()).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// Every (method, path) the OpenAPI document lists.
async fn documented_routes(app: &axum::Router) -> Vec<(String, String)> {
    let (status, doc) = call(app, "GET", "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let mut routes = vec![];
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            routes.push((method.to_uppercase(), path.clone()));
        }
    }
    routes
}

#[tokio::test]
async fn every_route_but_the_open_three_refuses_anonymous_callers() {
    let app = app();
    let routes = documented_routes(&app).await;
    assert!(routes.len() >= 12, "the document lists every route: {routes:?}");
    for (method, path) in &routes {
        let (status, _) = call(&app, method, path, None, Some(json!({}))).await;
        if OPEN.contains(&path.as_str()) {
            assert_eq!(status, StatusCode::OK, "{method} {path} is open");
        } else {
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path} without credentials");
            let (status, _) = call(&app, method, path, Some("wrong-key"), Some(json!({}))).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path} with a wrong key");
        }
    }
}

#[tokio::test]
async fn roles_guard_their_route_groups() {
    let app = app();
    let generate =
        json!({"prompt": "To be", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
    for (method, path) in documented_routes(&app).await {
        if OPEN.contains(&path.as_str()) || path == "/v1/stream" {
            continue;
        }
        let body = (method == "POST").then(|| generate.clone());
        let admin_only = path.starts_with("/admin/");
        let generation = method == "POST" && !admin_only;
        for (token, role) in
            [("viewer-key", Role::Readonly), ("alice-key", Role::User), ("admin-key", Role::Admin)]
        {
            let (status, body) = call(&app, &method, &path, Some(token), body.clone()).await;
            let allowed = match role {
                Role::Readonly => !admin_only && !generation,
                Role::User => !admin_only,
                Role::Admin => true,
            };
            if allowed {
                // A reload of this in-memory model has no directory to read: 400, not 403.
                let ok =
                    status.is_success() || (path == "/admin/reload" && status == StatusCode::BAD_REQUEST);
                assert!(ok, "{role:?} may {method} {path}: {status} {body}");
            } else {
                assert_eq!(status, StatusCode::FORBIDDEN, "{role:?} may not {method} {path}");
                assert_eq!(body["error"]["code"], "insufficient_role");
            }
        }
    }
}

#[tokio::test]
async fn jwts_are_checked_for_signature_expiry_not_before_and_audience() {
    let app = app();
    let claims = |extra: Value| {
        let mut claims =
            json!({"sub": "carol", "aud": AUDIENCE, "exp": now() + 600, "role": "user", "tenant": "acme"});
        claims.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        claims
    };
    let valid = [hs256(claims(json!({})), SECRET), rs256(claims(json!({})))];
    for token in &valid {
        let (status, body) = call(&app, "GET", "/v1/models", Some(token), None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let forged_payload = {
        // A valid token whose payload was swapped for an admin one: the signature no longer fits.
        let parts: Vec<&str> = valid[0].split('.').collect();
        let admin = hs256(claims(json!({"role": "admin"})), SECRET);
        format!("{}.{}.{}", parts[0], admin.split('.').nth(1).unwrap(), parts[2])
    };
    let unsigned = {
        let header = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0"; // {"alg":"none","typ":"JWT"}
        let payload = valid[0].split('.').nth(1).unwrap();
        format!("{header}.{payload}.")
    };
    for (token, why) in [
        (hs256(claims(json!({"exp": now() - 3600})), SECRET), "expired"),
        (hs256(claims(json!({"nbf": now() + 3600})), SECRET), "not valid yet"),
        (hs256(claims(json!({"aud": "someone-else"})), SECRET), "another audience"),
        (hs256(claims(json!({})), "a different secret that is 32+ bytes"), "signature"),
        (forged_payload, "signature"),
        (unsigned, "not a valid JWT"),
        (hs256(json!({"sub": "carol", "aud": AUDIENCE, "role": "user"}), SECRET), "not valid"),
    ] {
        let (status, body) = call(&app, "GET", "/v1/models", Some(&token), None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{why}: {body}");
        assert!(body["error"]["message"].as_str().unwrap().contains(why), "{why}: {body}");
    }
    // The role claim is honoured: a user token cannot reach /admin, an admin token can.
    let user = hs256(claims(json!({})), SECRET);
    assert_eq!(call(&app, "GET", "/admin/keys", Some(&user), None).await.0, StatusCode::FORBIDDEN);
    let admin = rs256(claims(json!({"role": "admin"})));
    let (status, keys) = call(&app, "GET", "/admin/keys", Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(keys.as_array().unwrap().len(), 5);
    assert!(!keys.to_string().contains("-key"), "keys are never shown: {keys}");
}

/// Hardening finding 1: with an issuer configured, a token without `iss` (or with `"iss": null`)
/// was accepted on every route, `/admin` included, for HS256 and RS256 alike, so a token from
/// another issuer sharing the key got in by leaving the claim out.
#[tokio::test]
async fn jwt_issuer_check_cannot_be_skipped_by_leaving_iss_out() {
    let app = app_with(options_with_issuer(Some("https://issuer.example")));
    let admin = |iss: Option<Value>| {
        let mut claims = json!({"sub": "x", "aud": AUDIENCE, "exp": now() + 600, "role": "admin"});
        if let Some(iss) = iss {
            claims["iss"] = iss;
        }
        claims
    };
    for sign in [|c: Value| hs256(c, SECRET), rs256] {
        let good = sign(admin(Some(json!("https://issuer.example"))));
        assert_eq!(call(&app, "GET", "/admin/keys", Some(&good), None).await.0, StatusCode::OK);
        for (iss, why) in
            [(None, "no issuer"), (Some(Value::Null), "no issuer"), (Some(json!("evil")), "another issuer")]
        {
            let token = sign(admin(iss.clone()));
            for path in ["/admin/keys", "/v1/models"] {
                let (status, body) = call(&app, "GET", path, Some(&token), None).await;
                assert_eq!(status, StatusCode::UNAUTHORIZED, "iss {iss:?} on {path}: {body}");
                assert!(body["error"]["message"].as_str().unwrap().contains(why), "iss {iss:?}: {body}");
            }
        }
    }
}

/// A WebSocket outlives the JWT it was opened with: once the authenticator's clock passes the
/// token's `exp`, the next message gets a 401-style error and the socket closes, and plain
/// requests with the token get 401. The clock is the test's, so nothing waits for time to pass.
#[tokio::test]
async fn a_websocket_ends_when_its_token_expires() {
    use futures_util::{SinkExt, StreamExt};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};

    let start = now() as u64;
    let clock = Arc::new(AtomicU64::new(start));
    let options = options();
    let reading = clock.clone();
    let auth = options.auth.with_clock(Arc::new(move || reading.load(Ordering::Relaxed)));
    let (_, model, tokenizer) = model_and_tokenizer(3);
    let served =
        Served::start(model, tokenizer, ChatFormat::Default, "tiny".into(), "fp".into(), SCHEDULER).unwrap();
    let app = router(AppState::new(served, SCHEDULER, Options { auth, ..options }));
    let listener = truthgpt_serve::listen("127.0.0.1:0").await.unwrap();
    let address = axum::serve::Listener::local_addr(&listener).unwrap();
    let serving = app.clone();
    tokio::spawn(async move { axum::serve(listener, serving).await });

    let token = hs256(json!({"sub": "dave", "aud": AUDIENCE, "exp": start + 60, "role": "user"}), SECRET);
    let mut request = format!("ws://{address}/v1/stream").into_client_request().unwrap();
    request.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    // The messages of one answer, and whether `[DONE]` ended it (else the socket closed).
    let mut ask = async || {
        let ask = json!({"prompt": "To be", "max_tokens": 2});
        socket.send(Message::text(ask.to_string())).await.unwrap();
        let mut answer = vec![];
        while let Some(Ok(Message::Text(text))) = socket.next().await {
            if text == "[DONE]" {
                return (answer, true);
            }
            answer.push(serde_json::from_str::<Value>(&text).unwrap());
        }
        (answer, false)
    };
    let (answer, done) = ask().await;
    assert!(done && answer[0]["object"] == "text_completion", "{answer:?}");
    assert_eq!(call(&app, "GET", "/v1/models", Some(&token), None).await.0, StatusCode::OK);

    clock.store(start + 61, Ordering::Relaxed);
    let (answer, done) = ask().await;
    assert!(!done && answer.len() == 1, "one error, then the socket closes: {answer:?}");
    assert!(answer[0]["error"]["message"].as_str().unwrap().contains("expired"), "{answer:?}");
    let (status, body) = call(&app, "GET", "/v1/models", Some(&token), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body["error"]["message"].as_str().unwrap().contains("expired"), "{body}");
}

#[tokio::test]
async fn usage_sessions_and_cache_stay_within_their_tenant() {
    let app = app();
    let greedy = json!({"prompt": "whether 'tis", "max_tokens": 6, "temperature": 0});
    let (status, first) =
        call(&app, "POST", "/v1/completions", Some("alice-key"), Some(greedy.clone())).await;
    assert_eq!(status, StatusCode::OK);
    let (_, again) = call(&app, "POST", "/v1/completions", Some("alice-key"), Some(greedy.clone())).await;
    assert_eq!(again["choices"], first["choices"], "a cached answer is the same answer");
    let (_, other) = call(&app, "POST", "/v1/completions", Some("bob-key"), Some(greedy)).await;
    assert_eq!(other["choices"], first["choices"]);

    let (_, acme) = call(&app, "GET", "/v1/usage", Some("viewer-key"), None).await;
    assert_eq!(acme["requests"], 2, "alice's two requests, seen by acme's viewer: {acme}");
    assert_eq!(acme["cached_requests"], 1, "the second came from the cache");
    let (_, globex) = call(&app, "GET", "/v1/usage", Some("bob-key"), None).await;
    assert_eq!(
        (globex["requests"].as_u64(), globex["cached_requests"].as_u64()),
        (Some(1), Some(0)),
        "tenants never share cache entries"
    );
    let (_, all) = call(&app, "GET", "/admin/usage", Some("admin-key"), None).await;
    assert_eq!(all["acme"]["completion_tokens"], 12);
    assert_eq!(all["globex"]["requests"], 1);

    // A conversation: the second turn sees the first (its prompt holds the first reply), and
    // the same id under another tenant is a different, empty conversation.
    let turn = |content: &str| json!({"messages": [{"role": "user", "content": content}], "conversation_id": "chat-1", "max_tokens": 4, "temperature": 0});
    let (_, one) = call(&app, "POST", "/v1/chat/completions", Some("alice-key"), Some(turn("To be"))).await;
    let (_, two) = call(&app, "POST", "/v1/chat/completions", Some("alice-key"), Some(turn("or not"))).await;
    let (_, bobs) = call(&app, "POST", "/v1/chat/completions", Some("bob-key"), Some(turn("or not"))).await;
    let prompt_tokens = |v: &Value| v["usage"]["prompt_tokens"].as_u64().unwrap();
    let completion_tokens = one["usage"]["completion_tokens"].as_u64().unwrap();
    assert_eq!(one["conversation_id"], "chat-1");
    assert!(prompt_tokens(&two) >= prompt_tokens(&one) + completion_tokens, "{one} then {two}");
    assert!(prompt_tokens(&bobs) < prompt_tokens(&two), "bob does not see alice's conversation");
    // Tenant `acme`'s conversation `eu:chat-1` is not tenant `acme:eu`'s `chat-1`.
    let mut alices = turn("To be");
    alices["conversation_id"] = json!("eu:chat-1");
    call(&app, "POST", "/v1/chat/completions", Some("alice-key"), Some(alices)).await;
    let (_, carols) =
        call(&app, "POST", "/v1/chat/completions", Some("carol-key"), Some(turn("or not"))).await;
    assert_eq!(prompt_tokens(&carols), prompt_tokens(&bobs), "carol's chat-1 starts empty: {carols}");
    let (status, _) = call(
        &app,
        "POST",
        "/v1/chat/completions",
        Some("alice-key"),
        Some(json!({"messages": [{"role": "user", "content": "x"}], "conversation_id": "../etc"})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn reload_swaps_the_model_and_empties_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    let (config, model, tokenizer) = model_and_tokenizer(3);
    truthgpt_train::checkpoint::save_model(&dir, &config, &model, Some(&tokenizer)).unwrap();
    let other = tmp.path().join("other");
    let (_, model2, _) = model_and_tokenizer(11);
    truthgpt_train::checkpoint::save_model(&other, &config, &model2, Some(&tokenizer)).unwrap();

    let served = Served::load(&dir, SCHEDULER).unwrap();
    let app = router(AppState::new(served, SCHEDULER, options()));
    let greedy = json!({"prompt": "whether 'tis", "max_tokens": 8, "temperature": 0});
    let (_, before) = call(&app, "POST", "/v1/completions", Some("alice-key"), Some(greedy.clone())).await;
    let (status, reloaded) = call(
        &app,
        "POST",
        "/admin/reload",
        Some("admin-key"),
        Some(json!({"model": other.to_str().unwrap()})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{reloaded}");
    assert_eq!(reloaded["model"], "other");
    let (_, after) = call(&app, "POST", "/v1/completions", Some("alice-key"), Some(greedy.clone())).await;
    assert_ne!(
        after["choices"][0]["text"], before["choices"][0]["text"],
        "the new weights answer, not the cache"
    );
    let (_, usage) = call(&app, "GET", "/v1/usage", Some("alice-key"), None).await;
    assert_eq!(usage["cached_requests"], 0);
    // Reloading the same files keeps the fingerprint, so only the emptied cache makes this a miss.
    call(&app, "POST", "/v1/completions", Some("alice-key"), Some(greedy.clone())).await;
    let (_, usage) = call(&app, "GET", "/v1/usage", Some("alice-key"), None).await;
    assert_eq!(usage["cached_requests"], 1, "answered from the cache before the reload");
    let (status, _) = call(&app, "POST", "/admin/reload", Some("admin-key"), Some(json!({}))).await;
    assert_eq!(status, StatusCode::OK);
    call(&app, "POST", "/v1/completions", Some("alice-key"), Some(greedy)).await;
    let (_, usage) = call(&app, "GET", "/v1/usage", Some("alice-key"), None).await;
    assert_eq!(usage["cached_requests"], 1, "generated again after the reload");
    let (status, body) =
        call(&app, "POST", "/admin/reload", Some("admin-key"), Some(json!({"model": "/no/such/dir"}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (_, models) = call(&app, "GET", "/v1/models", Some("alice-key"), None).await;
    assert_eq!(models["data"][0]["id"], "other", "a failed reload keeps the model");
}

#[tokio::test]
async fn oversize_bodies_get_413() {
    let (_, model, tokenizer) = model_and_tokenizer(3);
    let served =
        Served::start(model, tokenizer, ChatFormat::Default, "tiny".into(), "fp".into(), SCHEDULER).unwrap();
    let app =
        router(AppState::new(served, SCHEDULER, Options { max_body_bytes: 1024, ..Options::default() }));
    let (status, body) =
        call(&app, "POST", "/v1/completions", None, Some(json!({"prompt": "x".repeat(2000)}))).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("limit"), "{body}");
}

/// Hardening finding 5: `/admin/reload` answered `[]` with 200 (serde reads a struct from an
/// array). Every JSON body must be an object; an array, string, number or null is a 400 that
/// says so. (Objects are the other tests' requests.)
#[tokio::test]
async fn non_object_json_bodies_are_refused_everywhere() {
    let app = app();
    for (path, key) in [
        ("/admin/reload", "admin-key"),
        ("/v1/completions", "alice-key"),
        ("/v1/chat/completions", "alice-key"),
    ] {
        for (body, kind) in [
            (json!([]), "an array"),
            (json!(["hi", 4]), "an array"),
            (json!("hi"), "a string"),
            (json!(3), "a number"),
            (Value::Null, "null"),
        ] {
            let (status, answer) = call(&app, "POST", path, Some(key), Some(body.clone())).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {body}: {answer}");
            let message = answer["error"]["message"].as_str().unwrap();
            assert!(
                message.contains(&format!("must be a JSON object, not {kind}")),
                "{path} {body}: {message}"
            );
        }
    }
}

/// Hardening finding 3: `temperature` 2.5, 5, 100, 3.4e38 and -5e-324 answered 200 while the
/// OpenAPI document said the maximum is 2. Every bound the document states for the sampling
/// fields is enforced: a value just past it is a 400 naming the field, the bound itself passes.
#[tokio::test]
async fn out_of_range_sampling_settings_are_refused() {
    let app = app();
    let (_, doc) = call(&app, "GET", "/openapi.json", None, None).await;
    let fields = doc["components"]["schemas"]["Params"]["properties"].as_object().unwrap().clone();
    assert_eq!(fields["temperature"]["maximum"].as_f64(), Some(2.0), "the document's bound");
    let mut checked = 0;
    for (name, schema) in &fields {
        for (key, past) in
            [("maximum", 0.5), ("minimum", -0.5), ("exclusiveMinimum", 0.0), ("exclusiveMaximum", 0.0)]
        {
            let Some(bound) = schema[key].as_f64() else { continue };
            for value in [bound + past, bound + 2.0 * past] {
                let body = json!({"prompt": "hi", "max_tokens": 1, name.as_str(): value});
                let (status, answer) =
                    call(&app, "POST", "/v1/completions", Some("alice-key"), Some(body)).await;
                assert_eq!(status, StatusCode::BAD_REQUEST, "{name} = {value}: {answer}");
                assert!(
                    answer["error"]["message"].as_str().unwrap().starts_with(&format!("{name}: ")),
                    "{answer}"
                );
            }
            if !key.starts_with("exclusive") {
                // As the document writes it: an integer field's bound is an integer.
                let body = json!({"prompt": "hi", "max_tokens": 1, name.as_str(): schema[key]});
                let (status, answer) =
                    call(&app, "POST", "/v1/completions", Some("alice-key"), Some(body)).await;
                assert_eq!(status, StatusCode::OK, "{name} = {bound}: {answer}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 5, "temperature, top_p, max_tokens and n carry bounds: {checked}");
    for value in [json!(2.5), json!(5), json!(100), json!(3.4e38), json!(-5e-324)] {
        let body = json!({"messages": [{"role": "user", "content": "hi"}], "temperature": value});
        let (status, answer) =
            call(&app, "POST", "/v1/chat/completions", Some("alice-key"), Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "temperature {value}: {answer}");
    }
}

/// Hardening finding 9 (WebSocket): a message over the size limit, whole or as a 4 MB run of
/// fragments, was answered with a bare Close, or dropped with none. Both now get Close 1009
/// ("message too big") naming the limit.
#[tokio::test]
async fn websocket_messages_over_the_limit_get_close_1009_not_a_bare_close() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};

    let (_, model, tokenizer) = model_and_tokenizer(3);
    let served =
        Served::start(model, tokenizer, ChatFormat::Default, "tiny".into(), "fp".into(), SCHEDULER).unwrap();
    let app = router(AppState::new(served, SCHEDULER, Options { max_body_bytes: 4096, ..options() }));
    let listener = truthgpt_serve::listen("127.0.0.1:0").await.unwrap();
    let address = axum::serve::Listener::local_addr(&listener).unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let connect = async || {
        let mut request = format!("ws://{address}/v1/stream").into_client_request().unwrap();
        request.headers_mut().insert("authorization", "Bearer alice-key".parse().unwrap());
        tokio_tungstenite::connect_async(request).await.unwrap().0
    };
    let whole = Message::text("x".repeat(5000));
    let fragmented = {
        // 4 MB as 64 continuation frames of 64 KiB after a first text fragment.
        let mut frames =
            vec![Message::Frame(Frame::message("x".repeat(1 << 16), OpCode::Data(Data::Text), false))];
        frames.extend((0..64).map(|i| {
            Message::Frame(Frame::message("x".repeat(1 << 16), OpCode::Data(Data::Continue), i == 63))
        }));
        frames
    };
    for (case, messages) in [("whole", vec![whole]), ("fragmented", fragmented)] {
        let mut socket = connect().await;
        for message in messages {
            if socket.send(message).await.is_err() {
                break; // the server may close while the rest is still being sent
            }
        }
        let close = loop {
            match socket.next().await {
                Some(Ok(Message::Close(frame))) => break frame,
                Some(Ok(_)) => continue,
                other => panic!("{case}: the socket ended without a close frame: {other:?}"),
            }
        };
        let frame = close.unwrap_or_else(|| panic!("{case}: a bare Close"));
        assert_eq!(frame.code, CloseCode::Size, "{case}: {frame:?}");
        assert_eq!(frame.reason.as_str(), "message too big: the limit is 4096 bytes", "{case}");
    }
}
