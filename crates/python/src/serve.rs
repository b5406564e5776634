//! `Server`: the OpenAI-compatible server of `truthgpt serve` on a background thread, with a
//! handle to stop it. The same router, scheduler and accept loop; the settings are the server's
//! defaults plus the few that `deploy` takes.

use std::path::PathBuf;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use tokio::sync::oneshot;
use truthgpt_serve::config::KeyConfig;
use truthgpt_serve::{
    router, AppState, Authenticator, Options, PromptBounds, RateLimits, Role, SchedulerConfig, ServeConfig,
    Served, Store,
};

use crate::TruthGPTError;

/// Positions per key/value block, as `truthgpt serve` uses.
const BLOCK_SIZE: usize = 16;
/// How long `stop` lets in-flight requests finish before closing their connections.
const DRAIN: Duration = Duration::from_secs(5);

/// A running server. `stop()` (or dropping it) shuts it down and waits for its thread.
#[pyclass(module = "optimization_core._native")]
pub struct Server {
    /// `http://host:port` it listens on.
    #[pyo3(get)]
    address: String,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

#[pymethods]
impl Server {
    /// Loads the model directory `model_dir` and serves it on `host:port` (port 0: a free one).
    /// With `api_keys`, requests need `Authorization: Bearer <key>`; without, the API is open.
    #[staticmethod]
    #[pyo3(signature = (model_dir, host="127.0.0.1".to_string(), port=0, api_keys=Vec::new(), max_batch=16))]
    fn start(
        py: Python<'_>,
        model_dir: PathBuf,
        host: String,
        port: u16,
        api_keys: Vec<String>,
        max_batch: usize,
    ) -> PyResult<Self> {
        if !(1..=4096).contains(&max_batch) {
            return Err(PyValueError::new_err(format!("max_batch is {max_batch}; it must be 1 to 4096")));
        }
        let keys: Vec<KeyConfig> = api_keys
            .into_iter()
            .enumerate()
            .map(|(i, key)| KeyConfig {
                name: format!("python{i}"),
                key: Some(key),
                sha256: None,
                tenant: format!("python{i}"),
                role: Role::User,
            })
            .collect();
        let auth = Authenticator::new(&keys, None).map_err(|e| PyValueError::new_err(e.to_string()))?;
        let (ready_tx, ready_rx) = mpsc::channel::<Result<String, String>>();
        let (shutdown, shutdown_rx) = oneshot::channel();
        let address = format!("{host}:{port}");
        let thread = std::thread::Builder::new()
            .name("truthgpt-serve".into())
            .spawn(move || run(model_dir, address, auth, max_batch, ready_tx, shutdown_rx))
            .map_err(|e| TruthGPTError::new_err(format!("starting the server thread: {e}")))?;
        match py.allow_threads(move || ready_rx.recv()) {
            Ok(Ok(address)) => Ok(Server { address, shutdown: Some(shutdown), thread: Some(thread) }),
            Ok(Err(message)) => {
                let _ = thread.join();
                Err(TruthGPTError::new_err(message))
            }
            Err(_) => Err(TruthGPTError::new_err("the server thread ended before it was ready")),
        }
    }

    /// Stops accepting connections, lets in-flight requests finish (up to 5 s), and returns once
    /// the server's thread has ended. Stopping twice does nothing.
    fn stop(&mut self, py: Python<'_>) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = py.allow_threads(|| thread.join());
        }
    }

    /// Whether the server is still running.
    #[getter]
    fn running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The server thread: reports its address (or why it could not start) on `ready`, then serves
/// until `shutdown`.
fn run(
    model_dir: PathBuf,
    address: String,
    auth: Authenticator,
    max_batch: usize,
    ready: mpsc::Sender<Result<String, String>>,
    shutdown: oneshot::Receiver<()>,
) {
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = ready.send(Err(format!("starting tokio: {e}")));
            return;
        }
    };
    runtime.block_on(async move {
        let defaults = ServeConfig::default();
        let scheduler =
            SchedulerConfig { max_batch, queue: defaults.queue, block_size: BLOCK_SIZE, kv_blocks: None };
        let dir = model_dir.clone();
        let served = match tokio::task::spawn_blocking(move || Served::load(&dir, scheduler)).await {
            Ok(Ok(served)) => served,
            Ok(Err(message)) => return report(&ready, format!("loading {}: {message}", model_dir.display())),
            Err(e) => return report(&ready, format!("loading {}: {e}", model_dir.display())),
        };
        let memory = |capacity: u64, ttl: u64| Store::memory(capacity, Duration::from_secs(ttl));
        let options = Options {
            auth,
            limits: RateLimits::new(defaults.limits.requests_per_minute, defaults.limits.tokens_per_minute),
            cache: (defaults.cache.capacity > 0)
                .then(|| memory(defaults.cache.capacity, defaults.cache.ttl_secs)),
            sessions: memory(defaults.sessions.capacity, defaults.sessions.ttl_secs),
            max_body_bytes: defaults.max_body_bytes,
            prompt_bounds: PromptBounds {
                max_bytes: defaults.max_prompt_bytes,
                max_tokens: defaults.max_prompt_tokens,
            },
        };
        let state = AppState::new(served, scheduler, options);
        let app = router(state.clone());
        let listener = match truthgpt_serve::listen(&address).await {
            Ok(listener) => listener,
            Err(e) => return report(&ready, format!("listening on {address}: {e}")),
        };
        let bound = match axum::serve::Listener::local_addr(&listener) {
            Ok(bound) => bound,
            Err(e) => return report(&ready, format!("listening on {address}: {e}")),
        };
        let _ = ready.send(Ok(format!("http://{bound}")));
        let (stopping_tx, mut stopping) = tokio::sync::watch::channel(false);
        let signalled = state.clone();
        let timeout = Duration::from_millis(defaults.header_read_timeout_ms);
        let server = truthgpt_serve::http::serve(listener, app, timeout, async move {
            let _ = shutdown.await;
            signalled.stop_sockets();
            let _ = stopping_tx.send(true);
        });
        let deadline = async move {
            let _ = stopping.wait_for(|&s| s).await;
            tokio::time::sleep(DRAIN).await;
        };
        tokio::select! {
            () = server => {}
            () = deadline => {}
        }
    });
}

fn report(ready: &mpsc::Sender<Result<String, String>>, message: String) {
    let _ = ready.send(Err(message));
}
