//! `serve`: settle the settings, load the model, start the scheduler, and answer HTTP until
//! SIGTERM or Ctrl-C.

use std::time::Duration;

use anyhow::{ensure, Context};
use axum::serve::Listener;
use figment::providers::{Format, Serialized, Yaml};
use figment::Figment;
use serde_json::json;
use truthgpt_serve::config::KeyConfig;
use truthgpt_serve::{
    router, AppState, Authenticator, Options, PromptBounds, RateLimits, Redis, Role, SchedulerConfig,
    ServeConfig, Served, Store,
};

use crate::args::ServeArgs;

const BLOCK_SIZE: usize = 16;

/// Defaults, then the YAML file, then the flags that were given.
fn settings(args: &ServeArgs) -> anyhow::Result<ServeConfig> {
    let mut figment = Figment::from(Serialized::defaults(ServeConfig::default()));
    if let Some(path) = &args.config {
        ensure!(path.is_file(), "--config {}: no such file", path.display());
        figment = figment.merge(Yaml::file(path));
    }
    let mut flags = json!({});
    let mut set = |key: &str, value: serde_json::Value| {
        if !value.is_null() {
            flags[key] = value;
        }
    };
    set("model", json!(args.model));
    set("host", json!(args.host));
    set("port", json!(args.port));
    set("max_batch", json!(args.max_batch));
    set("queue", json!(args.queue));
    set("kv_blocks", json!(args.kv_blocks));
    set("drain_secs", json!(args.drain_secs));
    set("redis", json!(args.redis));
    let mut config: ServeConfig =
        figment.merge(Serialized::defaults(flags)).extract().context("reading the settings")?;
    if let Some(n) = args.requests_per_minute {
        config.limits.requests_per_minute = n;
    }
    if let Some(n) = args.tokens_per_minute {
        config.limits.tokens_per_minute = n;
    }
    for (i, key) in args.api_key.iter().enumerate() {
        let name = format!("cli{i}");
        config.keys.push(KeyConfig {
            name: name.clone(),
            key: Some(key.clone()),
            sha256: None,
            tenant: name,
            role: Role::User,
        });
    }
    ensure!(!config.model.as_os_str().is_empty(), "no model: give --model DIR or `model:` in --config");
    config.model = crate::registry_cmd::resolve_model(&config.model)?;
    ensure!(
        (1..=MAX_BATCH).contains(&config.max_batch),
        "max_batch is {}; it must be 1 to {MAX_BATCH}",
        config.max_batch
    );
    ensure!(
        (1..=MAX_QUEUE).contains(&config.queue),
        "queue is {}; it must be 1 to {MAX_QUEUE}",
        config.queue
    );
    ensure!(config.kv_blocks != Some(0), "kv_blocks must be at least 1");
    ensure!(config.header_read_timeout_ms > 0, "header_read_timeout_ms must be at least 1");
    let circuit = config.redis_circuit;
    ensure!(
        circuit.timeout_ms > 0 && circuit.probe_ms > 0 && circuit.open_after > 0,
        "redis_circuit: timeout_ms, probe_ms and open_after must each be at least 1 ({circuit:?})"
    );
    Ok(config)
}

/// Bounds far above any real deployment's, so that a typo is an error rather than a panic in the
/// queue's allocation or an overflow in the default pool size.
const MAX_BATCH: usize = 4096;
const MAX_QUEUE: usize = 1 << 20;

pub fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    let config = settings(args)?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    // A second subscriber (tests run several servers in one process) is not an error.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    let auth =
        Authenticator::new(&config.keys, config.jwt.as_ref()).context("reading the keys and JWT settings")?;
    if auth.is_open() {
        eprintln!("warning: no keys or JWT settings; the API is open to anyone who can reach it");
    }

    truthgpt_serve::prompt::return_large_allocations();
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")?;
    runtime.block_on(async {
        let redis = match &config.redis {
            Some(url) => Some(
                Redis::connect(url, config.redis_circuit)
                    .await
                    .with_context(|| format!("connecting to Redis at {url}"))?,
            ),
            None => None,
        };
        let store = |prefix: &'static str, capacity: u64, ttl: u64| match &redis {
            Some(redis) => Store::redis(redis.clone(), prefix, capacity, Duration::from_secs(ttl)),
            None => Store::memory(capacity, Duration::from_secs(ttl)),
        };
        let options = Options {
            auth,
            limits: RateLimits::new(config.limits.requests_per_minute, config.limits.tokens_per_minute).map(
                |limits| match &redis {
                    Some(redis) => limits.shared(redis.clone()),
                    None => limits,
                },
            ),
            cache: (config.cache.capacity > 0)
                .then(|| store("truthgpt:cache:", config.cache.capacity, config.cache.ttl_secs)),
            sessions: store("truthgpt:session:", config.sessions.capacity, config.sessions.ttl_secs),
            max_body_bytes: config.max_body_bytes,
            prompt_bounds: PromptBounds {
                max_bytes: config.max_prompt_bytes,
                max_tokens: config.max_prompt_tokens,
            },
        };

        let model_dir = config.model.clone();
        let scheduler = SchedulerConfig {
            max_batch: config.max_batch,
            queue: config.queue,
            block_size: BLOCK_SIZE,
            kv_blocks: config.kv_blocks,
        };
        let served = tokio::task::spawn_blocking(move || Served::load(&model_dir, scheduler))
            .await?
            .map_err(anyhow::Error::msg)?;
        let (model_id, kv_blocks) = (served.model_id.clone(), served.scheduler.kv_blocks);
        let state = AppState::new(served, scheduler, options);
        let app = router(state.clone());

        let address = format!("{}:{}", config.host, config.port);
        let listener =
            truthgpt_serve::listen(&address).await.with_context(|| format!("listening on {address}"))?;
        eprintln!(
            "serving {model_id} on http://{} (batch {}, queue {}, {kv_blocks} KV blocks of {BLOCK_SIZE})",
            listener.local_addr()?,
            config.max_batch,
            config.queue
        );
        let (stopping, stopped) = tokio::sync::watch::channel(false);
        let drain_secs = config.drain_secs;
        let signalled = state.clone();
        let header_read_timeout = Duration::from_millis(config.header_read_timeout_ms);
        let server = truthgpt_serve::http::serve(listener, app, header_read_timeout, async move {
            shutdown_signal().await;
            eprintln!("shutting down: no new connections; in-flight requests get {drain_secs}s");
            signalled.stop_sockets();
            let _ = stopping.send(true);
        });
        // HTTP connections drain inside `server`; WebSockets, which it does not track, after it.
        let drained = async move {
            server.await;
            state.sockets_closed().await;
            anyhow::Ok(())
        };
        let deadline = async move {
            let mut stopped = stopped;
            let _ = stopped.wait_for(|&s| s).await;
            tokio::time::sleep(Duration::from_secs(drain_secs)).await;
        };
        tokio::select! {
            result = drained => result,
            () = deadline => {
                eprintln!("drain deadline reached; closing the remaining connections");
                Ok(())
            }
        }
    })
}
/// SIGTERM (how orchestrators stop a process) or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
