//! A small key-value store with a time to live, in memory (moka: TinyLFU admission, size-bound)
//! or in Redis (shared by replicas). The response cache and the conversation sessions sit on it.
//! A failing Redis degrades to a miss, logged and counted, never to an error for the client.

use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;
use redis::aio::ConnectionManager;
use redis::AsyncCommands;

#[derive(Clone)]
pub enum Store {
    Memory(Cache<String, Arc<str>>),
    Redis { connection: ConnectionManager, prefix: &'static str, ttl: Duration },
}

impl Store {
    /// At most `capacity` entries, each living `ttl` after it was last written.
    pub fn memory(capacity: u64, ttl: Duration) -> Self {
        Store::Memory(Cache::builder().max_capacity(capacity).time_to_live(ttl).build())
    }

    /// Entries under `prefix` in Redis, expiring `ttl` after they were last written.
    pub fn redis(connection: ConnectionManager, prefix: &'static str, ttl: Duration) -> Self {
        Store::Redis { connection, prefix, ttl }
    }

    pub async fn get(&self, key: &str) -> Option<Arc<str>> {
        match self {
            Store::Memory(cache) => cache.get(key).await,
            Store::Redis { connection, prefix, .. } => {
                let result: redis::RedisResult<Option<String>> =
                    connection.clone().get(format!("{prefix}{key}")).await;
                result.map_err(|e| redis_failed("get", &e)).ok().flatten().map(Arc::from)
            }
        }
    }

    pub async fn set(&self, key: String, value: Arc<str>) {
        match self {
            Store::Memory(cache) => cache.insert(key, value).await,
            Store::Redis { connection, prefix, ttl } => {
                let result: redis::RedisResult<()> = connection
                    .clone()
                    .set_ex(format!("{prefix}{key}"), value.as_ref(), ttl.as_secs().max(1))
                    .await;
                if let Err(e) = result {
                    redis_failed("set", &e);
                }
            }
        }
    }

    /// Empties the memory store. Redis keys carry the model's fingerprint instead, so a reload
    /// makes every replica miss the old entries, which then expire.
    pub fn invalidate_all(&self) {
        if let Store::Memory(cache) = self {
            cache.invalidate_all();
        }
    }
}

fn redis_failed(operation: &str, error: &redis::RedisError) {
    tracing::warn!(%error, operation, "store: Redis failed");
    metrics::counter!("store_backend_errors_total").increment(1);
}
