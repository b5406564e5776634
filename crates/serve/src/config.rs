//! What `truthgpt serve` runs with: defaults here, then `--config serve.yaml`, then flags (the
//! CLI merges them with figment). Unknown keys are errors, so a typo never silently turns a
//! limit off.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::prompt::PromptBounds;
use crate::types::Role;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServeConfig {
    /// A model, run or Hugging Face directory; it needs a tokenizer.
    pub model: PathBuf,
    pub host: String,
    pub port: u16,
    /// Most sequences decoded together.
    pub max_batch: usize,
    /// Most requests waiting for the batch; beyond it requests get 503 with `Retry-After`.
    pub queue: usize,
    /// Key/value pool size in blocks of 16 positions (default: `max_batch` whole contexts).
    pub kv_blocks: Option<usize>,
    /// Seconds in-flight requests get to finish after SIGTERM or Ctrl-C.
    pub drain_secs: u64,
    /// Milliseconds a connection may take to send a request's head (line and headers), counted
    /// from when the server waits for it; slower ones (slowloris) are closed.
    pub header_read_timeout_ms: u64,
    /// Largest request body; larger ones get 413.
    pub max_body_bytes: usize,
    /// Largest prompt in bytes, after the chat template and a conversation's history; larger
    /// ones get 413 before they are tokenized.
    pub max_prompt_bytes: usize,
    /// Most prompt tokens; more get 400 (the model's context bounds them too).
    pub max_prompt_tokens: usize,
    pub keys: Vec<KeyConfig>,
    pub jwt: Option<JwtConfig>,
    pub limits: LimitsConfig,
    pub cache: CacheConfig,
    pub sessions: SessionsConfig,
    /// `redis://host:port/db`: rate limits, the response cache and sessions are then shared by
    /// every replica pointing at it.
    pub redis: Option<String>,
    /// How long Redis may take, and when the server stops asking it.
    pub redis_circuit: RedisCircuit,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            model: PathBuf::new(),
            host: "127.0.0.1".into(),
            port: 8000,
            max_batch: 16,
            queue: 64,
            kv_blocks: None,
            drain_secs: 30,
            header_read_timeout_ms: 10_000,
            max_body_bytes: 1 << 20,
            max_prompt_bytes: PromptBounds::default().max_bytes,
            max_prompt_tokens: PromptBounds::default().max_tokens,
            keys: vec![],
            jwt: None,
            limits: LimitsConfig::default(),
            cache: CacheConfig::default(),
            sessions: SessionsConfig::default(),
            redis: None,
            redis_circuit: RedisCircuit::default(),
        }
    }
}

/// One API key. Give the key itself or only its SHA-256 (hex), so the file need not hold it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// Shown in `/admin/keys` and used as its rate-limit bucket; never the key itself.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Whose usage and sessions the key's requests count under.
    pub tenant: String,
    pub role: Role,
}

impl KeyConfig {
    /// Keys as `--api-key` gives them: role `user`, each its own tenant, named `cli0`, `cli1`...
    pub fn plain<S: AsRef<str>>(keys: &[S]) -> Vec<KeyConfig> {
        keys.iter()
            .enumerate()
            .map(|(i, key)| KeyConfig {
                name: format!("cli{i}"),
                key: Some(key.as_ref().to_string()),
                sha256: None,
                tenant: format!("cli{i}"),
                role: Role::User,
            })
            .collect()
    }
}

/// Bearer JWTs: HS256 with a shared secret and/or RS256 with a public key. `exp` and `aud` are
/// required, `nbf` is checked when present; the tenant is the `tenant` claim or else `sub`, and
/// the role is the `role` claim.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    pub audience: String,
    #[serde(default)]
    pub issuer: Option<String>,
    #[serde(default)]
    pub hs256_secret: Option<String>,
    /// A PEM file with the RSA public key.
    #[serde(default)]
    pub rs256_public_key: Option<PathBuf>,
    /// Seconds of clock skew allowed on `exp` and `nbf`.
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
}

fn default_leeway() -> u64 {
    30
}

/// Token buckets per caller; 0 turns a limit off.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    pub requests_per_minute: u32,
    /// Prompt tokens plus `max_tokens`, charged when a request is admitted.
    pub tokens_per_minute: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig { requests_per_minute: 600, tokens_per_minute: 200_000 }
    }
}

/// Answers to deterministic requests (temperature 0, or a seed).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Most answers kept in memory; 0 turns the cache off.
    pub capacity: u64,
    pub ttl_secs: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig { capacity: 4096, ttl_secs: 600 }
    }
}

/// Conversations kept server-side for chat requests that carry a `conversation_id`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SessionsConfig {
    /// Most conversations kept in memory.
    pub capacity: u64,
    /// Seconds a conversation lives after its last message.
    pub ttl_secs: u64,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        SessionsConfig { capacity: 10_000, ttl_secs: 3600 }
    }
}

/// Redis's deadlines and circuit breaker ([`crate::backend`]): a Redis that is down or slow costs
/// a request at most `timeout_ms`, and only until `open_after` such failures in a row open the
/// circuit; then every request uses this process's limits, cache and sessions at once.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RedisCircuit {
    /// Most milliseconds one command (or a probe's connect) may take.
    pub timeout_ms: u64,
    /// Failures in a row (timeouts, refused or dropped connections) that open the circuit.
    pub open_after: u32,
    /// Milliseconds between probes while open: the longest a recovered Redis waits to be used.
    pub probe_ms: u64,
}

impl Default for RedisCircuit {
    fn default() -> Self {
        RedisCircuit { timeout_ms: 50, open_after: 3, probe_ms: 250 }
    }
}
