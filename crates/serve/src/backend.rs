//! Redis behind a circuit breaker, for the rate limits, the response cache and the sessions.
//!
//! A dead Redis must cost a request nothing. Every command gets a short deadline
//! ([`RedisCircuit::timeout_ms`]); after [`RedisCircuit::open_after`] unavailability failures in a
//! row (a timeout, a refused or dropped connection) the circuit opens: commands are not sent at
//! all and the callers use their local fallback at once. A background probe then opens a fresh
//! connection every [`RedisCircuit::probe_ms`] and closes the circuit on the first `PING` that
//! answers, so recovery takes at most one probe interval. Each change of state is logged and
//! counted (`redis_circuit_transitions_total{state}`), and `redis_circuit_open` is 1 while open.
//!
//! One multiplexed connection serves every caller: redis-rs's `ConnectionManager` would retry a
//! dead server with backoff inside each command (9.4 s per request in the outage that found this).

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, RedisError, RedisResult};

use crate::config::RedisCircuit;

/// A shared handle on one Redis server; cheap to clone.
#[derive(Clone)]
pub struct Redis(Arc<Inner>);

struct Inner {
    client: Client,
    connection: RwLock<MultiplexedConnection>,
    open: AtomicBool,
    /// Unavailability failures in a row while closed.
    failures: AtomicU32,
    circuit: RedisCircuit,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis").field("open", &self.is_open()).finish_non_exhaustive()
    }
}

impl Redis {
    /// Connects to `url`, allowing the first connection a few seconds (the server refuses to
    /// start without it); commands from then on get the circuit's timeout.
    pub async fn connect(url: &str, circuit: RedisCircuit) -> RedisResult<Self> {
        let client = Client::open(url)?;
        let first = Duration::from_millis(circuit.timeout_ms).max(STARTUP_CONNECT);
        let connection = open_connection(&client, first, &circuit).await?;
        crate::telemetry::handle();
        metrics::gauge!("redis_circuit_open").set(0.0);
        Ok(Redis(Arc::new(Inner {
            client,
            connection: RwLock::new(connection),
            open: AtomicBool::new(false),
            failures: AtomicU32::new(0),
            circuit,
        })))
    }

    /// Whether commands are being skipped (Redis failed and has not answered a probe since).
    pub fn is_open(&self) -> bool {
        self.0.open.load(Ordering::Acquire)
    }

    /// Runs `command` on the connection within the deadline. `None` when the circuit is open or
    /// the command failed (logged and counted): the caller falls back to its local state.
    pub async fn call<T, F, Fut>(&self, operation: &'static str, command: F) -> Option<T>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        if self.is_open() {
            metrics::counter!("redis_skipped_total", "operation" => operation).increment(1);
            return None;
        }
        let connection = self.0.connection.read().unwrap_or_else(|e| e.into_inner()).clone();
        let deadline = Duration::from_millis(self.0.circuit.timeout_ms);
        let failure = match tokio::time::timeout(deadline, command(connection)).await {
            Ok(Ok(value)) => {
                self.0.failures.store(0, Ordering::Relaxed);
                return Some(value);
            }
            Ok(Err(e)) => {
                let unavailable = e.is_io_error() || e.is_connection_dropped() || e.is_timeout();
                (e.to_string(), unavailable)
            }
            Err(_) => (format!("no answer within {} ms", deadline.as_millis()), true),
        };
        let (error, unavailable) = failure;
        tracing::warn!(%error, operation, "Redis failed; using this process's fallback");
        metrics::counter!("redis_errors_total", "operation" => operation).increment(1);
        if unavailable && self.0.failures.fetch_add(1, Ordering::Relaxed) + 1 >= self.0.circuit.open_after {
            self.trip(&error);
        }
        None
    }

    /// Opens the circuit (once, however many callers fail together) and starts the probe.
    fn trip(&self, error: &str) {
        if self.0.open.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::warn!(
            %error,
            probe_ms = self.0.circuit.probe_ms,
            "Redis circuit open: Redis is not called until a probe answers; limits, cache and sessions are local"
        );
        transition("open");
        let redis = self.clone();
        tokio::spawn(async move { redis.probe().await });
    }

    /// Every probe interval, a fresh connection and a `PING`; the first answer closes the circuit.
    async fn probe(self) {
        let every = Duration::from_millis(self.0.circuit.probe_ms);
        loop {
            tokio::time::sleep(every).await;
            match self.ping().await {
                Ok(connection) => {
                    *self.0.connection.write().unwrap_or_else(|e| e.into_inner()) = connection;
                    self.0.failures.store(0, Ordering::Relaxed);
                    self.0.open.store(false, Ordering::Release);
                    tracing::info!("Redis circuit closed: Redis answers again and is used from now on");
                    transition("closed");
                    return;
                }
                Err(e) => tracing::debug!(error = %e, "Redis probe failed; the circuit stays open"),
            }
        }
    }

    async fn ping(&self) -> RedisResult<MultiplexedConnection> {
        let deadline = Duration::from_millis(self.0.circuit.timeout_ms);
        let mut connection = open_connection(&self.0.client, deadline, &self.0.circuit).await?;
        let ping = redis::cmd("PING");
        match tokio::time::timeout(deadline, ping.query_async::<String>(&mut connection)).await {
            Ok(result) => result.map(|_| connection),
            Err(_) => Err(RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut))),
        }
    }
}

fn transition(state: &'static str) {
    metrics::gauge!("redis_circuit_open").set(if state == "open" { 1.0 } else { 0.0 });
    metrics::counter!("redis_circuit_transitions_total", "state" => state).increment(1);
}

/// How long the server waits for Redis when it starts.
const STARTUP_CONNECT: Duration = Duration::from_secs(2);

/// A multiplexed connection made within `connect`, whose responses are bounded by the timeout.
async fn open_connection(
    client: &Client,
    connect: Duration,
    circuit: &RedisCircuit,
) -> RedisResult<MultiplexedConnection> {
    let response = Duration::from_millis(circuit.timeout_ms);
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(connect))
        .set_response_timeout(Some(response));
    client.get_multiplexed_async_connection_with_config(&config).await
}
