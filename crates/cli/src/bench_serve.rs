//! `bench serve`: the server as clients see it, over loopback, against a `truthgpt serve` child
//! process. Four phases, each printing one JSON line:
//!
//! 1. `single`: one streaming client runs every prompt in turn (the baseline);
//! 2. `concurrent`: `--clients` stream at once; every text must equal the single client's for
//!    the same prompt (greedy), and aggregate tokens/s is compared with phase 1's;
//! 3. `load`: twice as many clients, streaming and not, for `--load-secs`, counting statuses and
//!    sampling the server's RSS;
//! 4. `overload`: a burst far over capacity against a rate-limited server with a short queue,
//!    which must answer 429 or 503 (with `Retry-After`) and never another 5xx.
//!
//! `--scenario redis-outage` and `--scenario large-prompts` run [`crate::bench_resilience`]
//! instead.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::args::BenchServeArgs;

/// Prompts from the plays the quickstart learns, so the texts are realistic.
pub(crate) const PROMPTS: &[&str] = &[
    "ROMEO:\nBut soft, what light",
    "JULIET:\nO Romeo, Romeo",
    "HAMLET:\nTo be, or not to be",
    "MACBETH:\nIs this a dagger",
    "KING LEAR:\nBlow, winds",
    "OTHELLO:\nIt is the cause",
    "PORTIA:\nThe quality of mercy",
    "PROSPERO:\nOur revels now",
    "BEATRICE:\nI wonder that you",
    "BENEDICK:\nWhat, my dear Lady",
    "HORATIO:\nGood night, sweet prince",
    "LADY MACBETH:\nOut, damned spot",
    "PUCK:\nIf we shadows have offended",
    "VIOLA:\nIf music be the food",
    "CASSIUS:\nThe fault, dear Brutus",
    "MARK ANTONY:\nFriends, Romans, countrymen",
];

/// A child process (the server, or a Redis), killed when dropped.
pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    pub(crate) fn start(model: &Path, config: &Path) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("locating this executable")?;
        let mut child = Command::new(exe)
            .args(["serve", "--model"])
            .arg(model)
            .arg("--config")
            .arg(config)
            .args(["--port", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env("RUST_LOG", "warn")
            .spawn()
            .context("starting truthgpt serve")?;
        let mut stderr = BufReader::new(child.stderr.take().expect("piped"));
        let mut line = String::new();
        while !line.contains("http://") {
            line.clear();
            if stderr.read_line(&mut line)? == 0 {
                bail!("the server exited before listening");
            }
        }
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        let address =
            line.split("http://").nth(1).and_then(|s| s.split_whitespace().next()).context("no address")?;
        Ok(Server { child, url: format!("http://{address}") })
    }

    /// Resident set size of the server process, in MiB.
    pub(crate) fn rss_mib(&self) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let kb: f64 =
            status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb / 1024.0)
    }
}

/// The fields of a streamed completion chunk that the bench reads. Typed, so a chunk costs the
/// client one pass and no map allocations: the client shares the CPUs it measures.
#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(default, borrow)]
    choices: Vec<ChunkChoice<'a>>,
    usage: Option<ChunkUsage>,
    error: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct ChunkChoice<'a> {
    /// Borrowed unless the text has escapes.
    #[serde(borrow)]
    text: std::borrow::Cow<'a, str>,
}

#[derive(Deserialize)]
struct ChunkUsage {
    completion_tokens: u64,
}

/// One streamed completion: its text and completion tokens, or the HTTP status it got.
async fn stream_completion(
    client: &reqwest::Client,
    url: &str,
    prompt: &str,
    max_tokens: usize,
) -> anyhow::Result<Result<(String, u64), u16>> {
    let body = json!({
        "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": true,
        "stream_options": {"include_usage": true},
    });
    let response = client.post(format!("{url}/v1/completions")).json(&body).send().await?;
    let status = response.status().as_u16();
    if status != 200 {
        return Ok(Err(status));
    }
    let (mut text, mut tokens, mut done, mut buffer) = (String::new(), 0, false, String::new());
    let mut body = response.bytes_stream();
    while let Some(bytes) = body.next().await {
        buffer.push_str(std::str::from_utf8(&bytes?)?);
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            let Some(data) = event.trim().strip_prefix("data: ") else { continue };
            if data == "[DONE]" {
                done = true;
                continue;
            }
            let chunk: Chunk =
                serde_json::from_str(data).with_context(|| format!("a stream chunk: {data}"))?;
            ensure!(chunk.error.is_none(), "the stream failed: {data}");
            if let Some(choice) = chunk.choices.first() {
                text.push_str(&choice.text);
            }
            if let Some(usage) = chunk.usage {
                tokens = usage.completion_tokens;
            }
        }
    }
    ensure!(done, "the stream ended without [DONE]");
    Ok(Ok((text, tokens)))
}

fn print(line: Value) {
    println!("{line}");
}

pub fn run(args: &BenchServeArgs) -> anyhow::Result<()> {
    if args.scenario != crate::args::Scenario::Standard {
        return crate::bench_resilience::run(args, args.scenario);
    }
    ensure!(
        args.clients > 0 && args.rounds > 0 && args.max_tokens > 0,
        "--clients, --rounds, --max-tokens must be positive"
    );
    ensure!(
        args.model.is_dir(),
        "{}: no such model directory (run `truthgpt quickstart` first)",
        args.model.display()
    );
    let scratch = tempfile::tempdir()?;
    // No cache (every request must be generated) and no limits for the measured phases.
    let open = scratch.path().join("open.yaml");
    let queue = 4 * args.clients;
    std::fs::write(
        &open,
        format!(
            "max_batch: {}\nqueue: {queue}\ncache: {{capacity: 0}}\nlimits: {{requests_per_minute: 0, tokens_per_minute: 0}}\n",
            args.clients
        ),
    )?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let server = Server::start(&args.model, &open)?;
        let client = reqwest::Client::builder().pool_max_idle_per_host(4 * args.clients).build()?;
        let prompts: Vec<&str> = (0..args.clients).map(|i| PROMPTS[i % PROMPTS.len()]).collect();
        // Warm-up: page faults, the pool's first blocks, the client's connections.
        stream_completion(&client, &server.url, prompts[0], 4)
            .await?
            .map_err(|s| anyhow::anyhow!("warm-up got {s}"))?;

        // The baseline makes as many requests as the concurrent phase, one at a time.
        let start = Instant::now();
        let mut reference = BTreeMap::new();
        let mut single_tokens = 0;
        for _ in 0..args.rounds {
            for &prompt in &prompts {
                let (text, tokens) = stream_completion(&client, &server.url, prompt, args.max_tokens)
                    .await?
                    .map_err(|s| anyhow::anyhow!("single client got {s}"))?;
                single_tokens += tokens;
                let first = reference.entry(prompt).or_insert_with(|| text.clone());
                ensure!(*first == text, "{prompt:?} gave two different greedy texts");
            }
        }
        let single = single_tokens as f64 / start.elapsed().as_secs_f64();
        print(json!({
            "phase": "single", "requests": prompts.len() * args.rounds, "tokens": single_tokens,
            "tokens_per_sec": single,
        }));

        let reference = Arc::new(reference);
        let start = Instant::now();
        let tasks: Vec<_> = (0..args.clients)
            .map(|c| {
                let (client, url, prompts, reference) =
                    (client.clone(), server.url.clone(), prompts.clone(), reference.clone());
                let (rounds, max_tokens) = (args.rounds, args.max_tokens);
                tokio::spawn(async move {
                    let mut tokens = 0;
                    for r in 0..rounds {
                        let prompt = prompts[(c + r) % prompts.len()];
                        let (text, n) = stream_completion(&client, &url, prompt, max_tokens)
                            .await?
                            .map_err(|s| anyhow::anyhow!("client {c} got {s}"))?;
                        ensure!(
                            text == reference[prompt],
                            "client {c}: {prompt:?} gave another text than alone"
                        );
                        tokens += n;
                    }
                    anyhow::Ok(tokens)
                })
            })
            .collect();
        let mut concurrent_tokens = 0;
        for task in tasks {
            concurrent_tokens += task.await??;
        }
        let aggregate = concurrent_tokens as f64 / start.elapsed().as_secs_f64();
        print(json!({
            "phase": "concurrent", "clients": args.clients, "requests": args.clients * args.rounds,
            "all_texts_match_single": true, "tokens": concurrent_tokens, "tokens_per_sec": aggregate,
            "ratio_vs_single": aggregate / single,
        }));

        if args.load_secs > 0 {
            load(&server, &client, &prompts, args).await?;
        }
        drop(server);
        overload(&args.model, scratch.path(), &client).await
    })
}

/// Phase 3: 2 x --clients clients, half streaming, for --load-secs; statuses and RSS.
async fn load(
    server: &Server,
    client: &reqwest::Client,
    prompts: &[&str],
    args: &BenchServeArgs,
) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let statuses = Arc::new(Mutex::new(BTreeMap::<u16, u64>::new()));
    let tokens = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let tasks: Vec<_> = (0..2 * args.clients)
        .map(|c| {
            let (client, url, stop, statuses, tokens) =
                (client.clone(), server.url.clone(), stop.clone(), statuses.clone(), tokens.clone());
            let prompt = prompts[c % prompts.len()].to_string();
            let max_tokens = args.max_tokens;
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let status = if c % 2 == 0 {
                        match stream_completion(&client, &url, &prompt, max_tokens).await? {
                            Ok((_, n)) => {
                                tokens.fetch_add(n, Ordering::Relaxed);
                                200
                            }
                            Err(status) => status,
                        }
                    } else {
                        let body = json!({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0.8});
                        let response =
                            client.post(format!("{url}/v1/completions")).json(&body).send().await?;
                        let status = response.status().as_u16();
                        let body: Value = response.json().await?;
                        tokens.fetch_add(
                            body["usage"]["completion_tokens"].as_u64().unwrap_or(0),
                            Ordering::Relaxed,
                        );
                        status
                    };
                    *statuses.lock().expect("not poisoned").entry(status).or_default() += 1;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    let start = Instant::now();
    let mut rss = vec![];
    while start.elapsed() < Duration::from_secs(args.load_secs) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        rss.extend(server.rss_mib());
    }
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await??;
    }
    let secs = start.elapsed().as_secs_f64();
    let statuses = statuses.lock().expect("not poisoned").clone();
    let server_errors: u64 = statuses.iter().filter(|(s, _)| **s >= 500).map(|(_, n)| n).sum();
    // RSS after the first tenth (allocations settle) against the end: growth would be a leak.
    let settled = rss.get(rss.len() / 10).copied().unwrap_or(0.0);
    let last = rss.last().copied().unwrap_or(0.0);
    let peak = rss.iter().copied().fold(0.0, f64::max);
    print(json!({
        "phase": "load", "clients": 2 * args.clients, "secs": secs, "statuses": statuses,
        "server_errors": server_errors, "tokens_per_sec": tokens.load(Ordering::Relaxed) as f64 / secs,
        "rss_mib_settled": settled, "rss_mib_end": last, "rss_mib_peak": peak,
    }));
    ensure!(server_errors == 0, "the load test got {server_errors} 5xx answers");
    Ok(())
}

/// Phase 4: 300 requests at once against 60 requests/min and a queue of 8.
async fn overload(model: &Path, scratch: &Path, client: &reqwest::Client) -> anyhow::Result<()> {
    let limited = scratch.join("limited.yaml");
    std::fs::write(
        &limited,
        "max_batch: 4\nqueue: 8\ncache: {capacity: 0}\nlimits: {requests_per_minute: 60}\n",
    )?;
    let server = Server::start(model, &limited)?;
    let tasks: Vec<_> = (0..300)
        .map(|i| {
            let (client, url) = (client.clone(), server.url.clone());
            tokio::spawn(async move {
                let body = json!({"prompt": PROMPTS[i % PROMPTS.len()], "max_tokens": 32});
                let response = client.post(format!("{url}/v1/completions")).json(&body).send().await?;
                let retry_after = response.headers().contains_key("retry-after");
                anyhow::Ok((response.status().as_u16(), retry_after))
            })
        })
        .collect();
    let mut statuses = BTreeMap::<u16, u64>::new();
    let mut refusals_without_retry_after = 0;
    for task in tasks {
        let (status, retry_after) = task.await??;
        *statuses.entry(status).or_default() += 1;
        if (status == 429 || status == 503) && !retry_after {
            refusals_without_retry_after += 1;
        }
    }
    let other_errors: u64 = statuses.iter().filter(|(s, _)| **s >= 500 && **s != 503).map(|(_, n)| n).sum();
    print(json!({
        "phase": "overload", "requests": 300, "statuses": statuses,
        "refusals_without_retry_after": refusals_without_retry_after, "other_server_errors": other_errors,
    }));
    ensure!(other_errors == 0 && refusals_without_retry_after == 0, "overload answered badly: {statuses:?}");
    ensure!(statuses.keys().any(|s| *s == 429 || *s == 503), "300 requests at once were never refused");
    Ok(())
}
