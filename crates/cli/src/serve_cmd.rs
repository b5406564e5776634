//! `serve`: load a model, start the scheduler, and answer HTTP until SIGTERM or Ctrl-C.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{ensure, Context};
use truthgpt_serve::{router, ApiKeys, AppState, RateLimits, Scheduler, SchedulerConfig};
use truthgpt_train::checkpoint;

use crate::args::ServeArgs;

const BLOCK_SIZE: usize = 16;

pub fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    ensure!(args.max_batch > 0 && args.queue > 0, "--max-batch and --queue must be at least 1");
    let saved = checkpoint::load_model(&args.model)?;
    let tokenizer = Arc::new(saved.tokenizer()?.clone());
    let max_seq_len = saved.model.config.max_seq_len;
    let kv_blocks = args.kv_blocks.unwrap_or(args.max_batch * max_seq_len.div_ceil(BLOCK_SIZE));
    ensure!(kv_blocks > 0, "--kv-blocks must be at least 1");
    let config =
        SchedulerConfig { max_batch: args.max_batch, queue: args.queue, block_size: BLOCK_SIZE, kv_blocks };
    let model_id =
        args.model.file_name().map_or_else(|| "model".to_string(), |n| n.to_string_lossy().into_owned());
    let (scheduler, _thread) = Scheduler::start(saved.model, tokenizer.clone(), config);
    let created = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let keys = ApiKeys::new(&args.api_key);
    if keys.is_open() {
        eprintln!("warning: no --api-key given; the API is open to anyone who can reach it");
    }
    let limits = std::num::NonZeroU32::new(args.requests_per_minute).map(RateLimits::per_minute);
    let app = router(AppState { scheduler, tokenizer, model_id: model_id.clone(), created }, keys, limits);

    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")?;
    runtime.block_on(async {
        let address = format!("{}:{}", args.host, args.port);
        let listener = tokio::net::TcpListener::bind(&address)
            .await
            .with_context(|| format!("listening on {address}"))?;
        eprintln!(
            "serving {model_id} on http://{} (batch {}, queue {}, {kv_blocks} KV blocks of {BLOCK_SIZE})",
            listener.local_addr()?,
            args.max_batch,
            args.queue
        );
        let (stopping, stopped) = tokio::sync::watch::channel(false);
        let drain_secs = args.drain_secs;
        let server = axum::serve(listener, app).with_graceful_shutdown(async move {
            shutdown_signal().await;
            eprintln!("shutting down: no new connections; in-flight requests get {drain_secs}s");
            let _ = stopping.send(true);
        });
        let deadline = async move {
            let mut stopped = stopped;
            let _ = stopped.wait_for(|&s| s).await;
            tokio::time::sleep(Duration::from_secs(drain_secs)).await;
        };
        tokio::select! {
            result = server => result.context("serving"),
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
