//! What the handlers share: the model being served (swapped whole on reload), the credentials,
//! limits, response cache, sessions and per-tenant usage.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use sha2::{Digest, Sha256};
use truthgpt_data::Tokenizer;
use truthgpt_model::Model;
use truthgpt_train::checkpoint;
use utoipa::ToSchema;

use crate::auth::Authenticator;
use crate::limits::RateLimits;
use crate::prompt::{PromptBounds, Prompts};
use crate::scheduler::{Scheduler, SchedulerConfig};
use crate::store::Store;
use crate::template::ChatFormat;

/// One loaded model and the scheduler running it.
#[derive(Debug)]
pub struct Served {
    pub scheduler: Scheduler,
    pub tokenizer: Arc<Tokenizer>,
    /// The same without its word cache, for large prompts ([`Tokenizer::without_cache`]).
    pub uncached: Arc<Tokenizer>,
    pub chat: ChatFormat,
    /// The id `/v1/models` lists and responses carry: the directory's name.
    pub model_id: String,
    pub created: u64,
    /// Identifies the weights: cached answers of another model are never served.
    pub fingerprint: String,
    pub dir: PathBuf,
}

impl Served {
    /// Starts a scheduler for `model`; fails if the machine cannot back its key/value pool.
    pub fn start(
        model: Model,
        tokenizer: Tokenizer,
        chat: ChatFormat,
        dir: PathBuf,
        fingerprint: String,
        config: SchedulerConfig,
    ) -> Result<Self, String> {
        let uncached = Arc::new(tokenizer.without_cache());
        let tokenizer = Arc::new(tokenizer);
        let (scheduler, _thread) = Scheduler::start(model, tokenizer.clone(), config)?;
        let model_id =
            dir.file_name().map_or_else(|| "model".to_string(), |n| n.to_string_lossy().into_owned());
        let created = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Ok(Served { scheduler, tokenizer, uncached, chat, model_id, created, fingerprint, dir })
    }

    /// Loads the model, run or Hugging Face directory `dir` (blocking: call it off the runtime).
    pub fn load(dir: &Path, config: SchedulerConfig) -> Result<Self, String> {
        let saved = checkpoint::load_model(dir).map_err(|e| e.to_string())?;
        let tokenizer = saved.tokenizer().map_err(|e| e.to_string())?.clone();
        let chat = ChatFormat::for_model(&saved.dir)?;
        let fingerprint = fingerprint(&saved.dir);
        Served::start(saved.model, tokenizer, chat, dir.to_path_buf(), fingerprint, config)
    }
}

/// The SHA-256 of the directory's manifest (which holds every file's checksum), or else (a
/// Hugging Face directory) of each file's name, size and modification time: new weights of the
/// same size still change it, and replicas with the same files (copied with their times) agree.
fn fingerprint(dir: &Path) -> String {
    let mut hasher = Sha256::new();
    match std::fs::read(dir.join(checkpoint::MANIFEST)) {
        Ok(manifest) => hasher.update(&manifest),
        Err(_) => {
            let mut files: Vec<(String, u64, u128)> = std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| {
                    let meta = e.metadata().ok()?;
                    let modified = meta.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?;
                    Some((e.file_name().to_string_lossy().into_owned(), meta.len(), modified.as_nanos()))
                })
                .collect();
            files.sort();
            for (name, len, modified) in files {
                hasher.update(name.as_bytes());
                hasher.update(len.to_le_bytes());
                hasher.update(modified.to_le_bytes());
            }
        }
    }
    hasher.finalize()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Requests and tokens of one tenant since the server started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct TenantUsage {
    pub requests: u64,
    pub cached_requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

#[derive(Debug, Default)]
pub struct UsageBook {
    tenants: Mutex<BTreeMap<Arc<str>, TenantUsage>>,
}

impl UsageBook {
    pub fn add(&self, tenant: &Arc<str>, prompt_tokens: usize, completion_tokens: usize, cached: bool) {
        let mut tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        let usage = tenants.entry(tenant.clone()).or_default();
        usage.requests += 1;
        usage.cached_requests += u64::from(cached);
        usage.prompt_tokens += prompt_tokens as u64;
        usage.completion_tokens += completion_tokens as u64;
    }

    pub fn of(&self, tenant: &str) -> TenantUsage {
        self.tenants.lock().unwrap_or_else(|e| e.into_inner()).get(tenant).copied().unwrap_or_default()
    }

    pub fn all(&self) -> BTreeMap<String, TenantUsage> {
        let tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        tenants.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }
}

/// The server's parts besides the model; [`Options::default`] is an open API without limits,
/// with in-memory cache and sessions.
pub struct Options {
    pub auth: Authenticator,
    pub limits: Option<RateLimits>,
    /// `None` turns the response cache off.
    pub cache: Option<Store>,
    pub sessions: Store,
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    pub prompt_bounds: PromptBounds,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            auth: Authenticator::from_keys::<&str>(&[]),
            limits: None,
            cache: Some(Store::memory(4096, Duration::from_secs(600))),
            sessions: Store::memory(10_000, Duration::from_secs(3600)),
            max_body_bytes: 1 << 20,
            prompt_bounds: PromptBounds::default(),
        }
    }
}

pub struct Shared {
    served: RwLock<Arc<Served>>,
    scheduler_config: SchedulerConfig,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
    pub auth: Arc<Authenticator>,
    pub limits: Option<Arc<RateLimits>>,
    pub cache: Option<Store>,
    pub sessions: Store,
    pub usage: UsageBook,
    pub max_body_bytes: usize,
    pub prompts: Prompts,
    /// WebSockets outlive axum's graceful shutdown (it tracks HTTP connections only): each open
    /// socket holds a receiver of this flag, which turns true when the server stops.
    stopping: tokio::sync::watch::Sender<bool>,
}

/// Cheap to clone: every handler gets one.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    pub fn new(served: Served, scheduler_config: SchedulerConfig, options: Options) -> Self {
        AppState(Arc::new(Shared {
            served: RwLock::new(Arc::new(served)),
            scheduler_config,
            reloading: tokio::sync::Mutex::new(()),
            auth: Arc::new(options.auth),
            limits: options.limits.map(Arc::new),
            cache: options.cache,
            sessions: options.sessions,
            usage: UsageBook::default(),
            max_body_bytes: options.max_body_bytes,
            prompts: Prompts::new(options.prompt_bounds),
            stopping: tokio::sync::watch::Sender::new(false),
        }))
    }

    /// A WebSocket's view of shutdown; held for as long as the socket is open.
    pub fn socket_guard(&self) -> tokio::sync::watch::Receiver<bool> {
        self.stopping.subscribe()
    }

    /// Asks open WebSockets to finish their current answer and close.
    pub fn stop_sockets(&self) {
        self.stopping.send_replace(true);
    }

    /// Resolves once no WebSocket is open.
    pub async fn sockets_closed(&self) {
        self.stopping.closed().await;
    }

    /// The model now served. Requests keep the one they started with across a reload.
    pub fn served(&self) -> Arc<Served> {
        self.served.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Loads `dir` (default: the directory served now) and swaps it in. In-flight requests finish
    /// on the old model, whose scheduler then stops; the cache starts empty.
    pub async fn reload(&self, dir: Option<PathBuf>) -> Result<Arc<Served>, String> {
        let _one_at_a_time = self.reloading.lock().await;
        let dir = dir.unwrap_or_else(|| self.served().dir.clone());
        let config = self.scheduler_config;
        let served = tokio::task::spawn_blocking(move || Served::load(&dir, config))
            .await
            .map_err(|e| format!("loading failed: {e}"))??;
        let served = Arc::new(served);
        *self.served.write().unwrap_or_else(|e| e.into_inner()) = served.clone();
        if let Some(cache) = &self.cache {
            cache.invalidate_all();
        }
        tracing::info!(model = %served.model_id, fingerprint = %served.fingerprint, "model reloaded");
        Ok(served)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    /// Without a manifest (a Hugging Face directory), weights rewritten at the same size are
    /// another model to the cache.
    #[test]
    fn rewritten_weights_change_the_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let weights = dir.path().join("model.safetensors");
        let write = |bytes: &[u8], at: SystemTime| {
            std::fs::write(&weights, bytes).unwrap();
            std::fs::File::options().write(true).open(&weights).unwrap().set_modified(at).unwrap();
        };
        let then = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        write(b"old weights", then);
        let before = super::fingerprint(dir.path());
        assert_eq!(super::fingerprint(dir.path()), before, "the same files, the same fingerprint");
        write(b"new weights", then + Duration::from_secs(60));
        assert_ne!(super::fingerprint(dir.path()), before);
    }
}
