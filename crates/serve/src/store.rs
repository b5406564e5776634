//! A small key-value store with a time to live, in memory (moka: TinyLFU admission, size-bound)
//! or in Redis (shared by replicas). The response cache and the conversation sessions sit on it.
//! A failing Redis (or an open circuit, see [`crate::backend`]) never fails the client: what
//! Redis cannot take is kept in a local store of the same bounds, and what Redis lacks is looked
//! up there, so a conversation carries on through an outage on the replica that served it.

use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;
use redis::AsyncCommands;

use crate::backend::Redis;

#[derive(Clone)]
pub enum Store {
    Memory(Cache<String, Arc<str>>),
    Redis { redis: Redis, prefix: &'static str, ttl: Duration, local: Cache<String, Arc<str>> },
}

impl Store {
    /// At most `capacity` entries, each living `ttl` after it was last written.
    pub fn memory(capacity: u64, ttl: Duration) -> Self {
        Store::Memory(local(capacity, ttl))
    }

    /// Entries under `prefix` in Redis, expiring `ttl` after they were last written; while Redis
    /// is unavailable, in memory with at most `capacity` entries.
    pub fn redis(redis: Redis, prefix: &'static str, capacity: u64, ttl: Duration) -> Self {
        Store::Redis { redis, prefix, ttl, local: local(capacity, ttl) }
    }

    pub async fn get(&self, key: &str) -> Option<Arc<str>> {
        match self {
            Store::Memory(cache) => cache.get(key).await,
            Store::Redis { redis, prefix, local, .. } => {
                let key_in_redis = format!("{prefix}{key}");
                let found = redis
                    .call("get", |mut c| async move { c.get::<_, Option<String>>(key_in_redis).await })
                    .await
                    .flatten();
                match found {
                    Some(value) => Some(Arc::from(value)),
                    None => local.get(key).await,
                }
            }
        }
    }

    pub async fn set(&self, key: String, value: Arc<str>) {
        match self {
            Store::Memory(cache) => cache.insert(key, value).await,
            Store::Redis { redis, prefix, ttl, local } => {
                let (key_in_redis, secs, sent) =
                    (format!("{prefix}{key}"), ttl.as_secs().max(1), value.clone());
                let stored = redis
                    .call("set", |mut c| async move {
                        c.set_ex::<_, _, ()>(key_in_redis, sent.as_ref(), secs).await
                    })
                    .await;
                match stored {
                    // An older local copy must not outlive the newer one in Redis.
                    Some(()) => local.invalidate(&key).await,
                    None => local.insert(key, value).await,
                }
            }
        }
    }

    /// Empties the memory store. Redis keys carry the model's fingerprint instead, so a reload
    /// makes every replica miss the old entries, which then expire.
    pub fn invalidate_all(&self) {
        match self {
            Store::Memory(cache) | Store::Redis { local: cache, .. } => cache.invalidate_all(),
        }
    }
}

fn local(capacity: u64, ttl: Duration) -> Cache<String, Arc<str>> {
    Cache::builder().max_capacity(capacity).time_to_live(ttl).build()
}
