//! `bench serve --scenario redis-outage | large-prompts`: the hardening issue's two measured
//! cases, each against `truthgpt serve` child processes, one JSON line per phase.
//!
//! - `redis-outage`: the same request mix (models, cached greedy completions, sampled ones) from
//!   `--clients` clients for `--outage-secs`, first against a server without Redis (the
//!   baseline), then against one whose Redis (a redis-server of our own) is killed just before;
//!   then Redis restarts on its port and recovery is the time until `/metrics` shows the circuit
//!   closed.
//! - `large-prompts`: the server's RSS idle, at its peak and after 16 concurrent 1 MiB prompts
//!   (bounds raised so they are tokenized whole), and `/health` latency during them; then the
//!   same burst against the default bounds, which refuse them unread.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use serde_json::{json, Value};

use crate::args::BenchServeArgs;
use crate::bench_serve::{Server, PROMPTS};

/// Latencies and statuses of one timed phase.
#[derive(Default)]
struct Tally {
    millis: Vec<f64>,
    statuses: std::collections::BTreeMap<u16, u64>,
}

impl Tally {
    fn add(&mut self, started: Instant, status: u16) {
        self.millis.push(started.elapsed().as_secs_f64() * 1e3);
        *self.statuses.entry(status).or_default() += 1;
    }

    /// The `q` quantile (nearest rank) of the latencies in ms; NaN when there are none.
    fn quantile(&self, q: f64) -> f64 {
        let mut sorted = self.millis.clone();
        sorted.sort_by(f64::total_cmp);
        match sorted.len() {
            0 => f64::NAN,
            n => sorted[((q * n as f64).ceil() as usize).clamp(1, n) - 1],
        }
    }

    fn summary(&self, phase: &str, secs: f64) -> Value {
        json!({
            "phase": phase, "requests": self.millis.len(), "secs": secs,
            "requests_per_sec": self.millis.len() as f64 / secs, "statuses": self.statuses,
            "p50_ms": self.quantile(0.5), "p99_ms": self.quantile(0.99), "max_ms": self.quantile(1.0),
        })
    }

    fn server_errors(&self) -> u64 {
        self.statuses.iter().filter(|(s, _)| **s >= 500).map(|(_, n)| n).sum()
    }
}

pub fn run(args: &BenchServeArgs, scenario: crate::args::Scenario) -> anyhow::Result<()> {
    ensure!(args.clients > 0, "--clients must be positive");
    ensure!(
        args.model.is_dir(),
        "{}: no such model directory (run `truthgpt quickstart` first)",
        args.model.display()
    );
    let scratch = tempfile::tempdir()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        match scenario {
            crate::args::Scenario::RedisOutage => redis_outage(args, scratch.path()).await,
            crate::args::Scenario::LargePrompts => large_prompts(args, scratch.path()).await,
            crate::args::Scenario::Standard => unreachable!("bench_serve runs the standard phases"),
        }
    })
}

/// A redis-server of our own on `port`, killed when dropped.
fn redis_server(dir: &Path, port: u16) -> anyhow::Result<Server> {
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .spawn()
        .context("starting redis-server (is it installed?)")?;
    let server = Server { child, url: format!("redis://127.0.0.1:{port}/") };
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(server);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    anyhow::bail!("redis-server did not listen on {port}")
}

/// `--clients` clients looping over the mix for `secs`.
async fn mix(url: &str, clients: usize, secs: f64) -> anyhow::Result<Tally> {
    let client = reqwest::Client::builder().pool_max_idle_per_host(clients).build()?;
    let tally = Arc::new(Mutex::new(Tally::default()));
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (client, url, tally) = (client.clone(), url.to_string(), tally.clone());
            tokio::spawn(async move {
                let mut i = c;
                while Instant::now() < deadline {
                    let started = Instant::now();
                    let prompt = PROMPTS[c % PROMPTS.len()];
                    let request = match i % 3 {
                        0 => client.get(format!("{url}/v1/models")),
                        1 => client
                            .post(format!("{url}/v1/completions"))
                            .json(&json!({"prompt": prompt, "max_tokens": 8, "temperature": 0})),
                        _ => client
                            .post(format!("{url}/v1/completions"))
                            .json(&json!({"prompt": prompt, "max_tokens": 8, "temperature": 0.8})),
                    };
                    let response = request.send().await?;
                    let status = response.status().as_u16();
                    response.bytes().await?;
                    tally.lock().expect("not poisoned").add(started, status);
                    i += 1;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    let tally = std::mem::take(&mut *tally.lock().expect("not poisoned"));
    Ok(tally)
}

async fn redis_outage(args: &BenchServeArgs, scratch: &Path) -> anyhow::Result<()> {
    let secs = args.outage_secs as f64;
    let base = format!(
        "max_batch: {}\nqueue: {}\nlimits: {{requests_per_minute: 1000000000, tokens_per_minute: 1000000000}}\n",
        args.clients,
        4 * args.clients
    );
    let local = scratch.join("local.yaml");
    std::fs::write(&local, &base)?;
    let server = Server::start(&args.model, &local)?;
    mix(&server.url, args.clients, 1.0).await?; // warm-up
    let baseline = mix(&server.url, args.clients, secs).await?;
    let baseline_rps = baseline.millis.len() as f64 / secs;
    println!("{}", baseline.summary("no_redis", secs));
    drop(server);

    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let redis = redis_server(scratch, port)?;
    let shared = scratch.join("redis.yaml");
    std::fs::write(&shared, format!("{base}redis: {}\n", redis.url))?;
    let server = Server::start(&args.model, &shared)?;
    mix(&server.url, args.clients, 1.0).await?;
    let up = mix(&server.url, args.clients, secs.min(5.0)).await?;
    println!("{}", up.summary("redis_up", secs.min(5.0)));
    drop(redis); // SIGKILL, mid-load for the server
    let outage = mix(&server.url, args.clients, secs).await?;
    let mut line = outage.summary("redis_outage", secs);
    line["ratio_vs_no_redis"] = json!(outage.millis.len() as f64 / secs / baseline_rps);
    println!("{line}");

    let _redis = redis_server(scratch, port)?;
    let back = Instant::now();
    let client = reqwest::Client::new();
    let recovered = loop {
        let metrics = client.get(format!("{}/metrics", server.url)).send().await?.text().await?;
        if metrics.contains("redis_circuit_open 0") {
            break Some(back.elapsed());
        }
        if back.elapsed() > Duration::from_secs(30) {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let recovery_ms = recovered.map(|d| d.as_secs_f64() * 1e3);
    println!("{}", json!({"phase": "recovery", "circuit_closed_after_ms": recovery_ms}));
    ensure!(outage.server_errors() == 0, "the outage got 5xx answers: {:?}", outage.statuses);
    ensure!(recovery_ms.is_some(), "the circuit did not close within 30 s of Redis returning");
    Ok(())
}

/// `n` bytes of distinct pseudo-random words (a word cache cannot shortcut them).
fn words(n: usize, seed: u64) -> String {
    let mut state = seed | 1;
    let mut text = String::with_capacity(n + 16);
    while text.len() < n {
        for _ in 0..1 + (state >> 60) % 7 {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            text.push(char::from(b'a' + (state >> 59) as u8 % 26));
        }
        text.push(' ');
    }
    text
}

async fn large_prompts(args: &BenchServeArgs, scratch: &Path) -> anyhow::Result<()> {
    let raised = scratch.join("raised.yaml");
    std::fs::write(
        &raised,
        "max_body_bytes: 2097152\nmax_prompt_bytes: 2097152\nmax_prompt_tokens: 16777216\n",
    )?;
    let defaults = scratch.join("defaults.yaml");
    std::fs::write(&defaults, "max_body_bytes: 2097152\n")?;
    for (phase, config) in
        [("large_prompts_raised_bounds", &raised), ("large_prompts_default_bounds", &defaults)]
    {
        let server = Server::start(&args.model, config)?;
        let line = burst(&server, phase).await?;
        println!("{line}");
    }
    Ok(())
}

/// 16 concurrent 1 MiB prompts, with `/health` asked every 10 ms and RSS sampled during them.
async fn burst(server: &Server, phase: &str) -> anyhow::Result<Value> {
    let client = reqwest::Client::new();
    let small = json!({"prompt": PROMPTS[0], "max_tokens": 4});
    client.post(format!("{}/v1/completions", server.url)).json(&small).send().await?.bytes().await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = server.rss_mib().context("reading the server's RSS")?;
    let bodies: Vec<String> =
        (0..16).map(|i| json!({"prompt": words(1 << 20, i + 1), "max_tokens": 4}).to_string()).collect();
    let done = Arc::new(AtomicBool::new(false));
    let health = tokio::spawn(health_poller(server.url.clone(), done.clone()));
    let started = Instant::now();
    let tasks: Vec<_> = bodies
        .into_iter()
        .map(|body| {
            let (client, url) = (client.clone(), server.url.clone());
            tokio::spawn(async move {
                let request =
                    client.post(format!("{url}/v1/completions")).header("content-type", "application/json");
                let response = request.body(body).send().await?;
                let status = response.status().as_u16();
                response.bytes().await?;
                anyhow::Ok(status)
            })
        })
        .collect();
    let mut peak = idle;
    while !tasks.iter().all(|t| t.is_finished()) {
        if let Some(rss) = server.rss_mib() {
            peak = peak.max(rss);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut statuses = std::collections::BTreeMap::<u16, u64>::new();
    for task in tasks {
        *statuses.entry(task.await??).or_default() += 1;
    }
    let burst_secs = started.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    let health = health.await??;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = server.rss_mib().context("reading the server's RSS")?;
    Ok(json!({
        "phase": phase, "prompts": 16, "prompt_bytes": 1 << 20, "statuses": statuses, "burst_secs": burst_secs,
        "rss_mib_idle": idle, "rss_mib_peak": peak, "rss_mib_after": after, "after_over_idle": after / idle,
        "health_requests": health.millis.len(), "health_p50_ms": health.quantile(0.5),
        "health_p99_ms": health.quantile(0.99), "health_max_ms": health.quantile(1.0),
    }))
}

async fn health_poller(url: String, done: Arc<AtomicBool>) -> anyhow::Result<Tally> {
    let client = reqwest::Client::new();
    let mut tally = Tally::default();
    while !done.load(Ordering::Relaxed) {
        let started = Instant::now();
        let status = client.get(format!("{url}/health")).send().await?.status().as_u16();
        tally.add(started, status);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(tally)
}
