//! `truthgpt bench`'s arguments: each benchmark's knobs, apart from the commands that do work.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::layers::Layers;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Start `truthgpt serve` on a model and measure it over loopback: one streaming client
    /// against --clients at once (aggregate tokens/s, every text checked against the single
    /// client's), a --load-secs load test (statuses, server RSS), and a burst over capacity
    /// against a rate-limited server (429/503, never another 5xx); or, with --scenario, a Redis
    /// outage or a burst of large prompts.
    Serve(BenchServeArgs),
    /// Time full training steps (forward, backward, AdamW) on random tokens; prints one JSON line.
    Train(BenchTrainArgs),
    /// Time forward+backward of one MoE layer against a dense FFN of the same active width.
    Moe(BenchMoeArgs),
    /// Time loading a Hugging Face directory (memory-mapped safetensors) against loading our own
    /// checksummed model directory of the same model (random weights).
    Load(BenchLoadArgs),
    /// Time greedy decoding with the key/value cache against recomputing the whole sequence per
    /// token (random weights), and with --batch N, N sequences batched against one; checks all
    /// give the same tokens.
    Generate(BenchGenerateArgs),
    /// Time the few-row product of the decode step's linear layers with each register tile
    /// this CPU has (AVX-512 where present, against the portable 8-lane tile); one JSON line per
    /// shape.
    Skinny(BenchSkinnyArgs),
    /// Time each GEMM kernel this CPU runs (our packed AVX-512 kernel where present, against the
    /// `gemm` crate) on the twelve products of a `torch-tiny-reference` training step,
    /// alternated round by round; one JSON line per product and their geometric means.
    Gemm(BenchGemmArgs),
    /// Time the quantized product of each ggml type with each kernel this CPU runs (AVX-512
    /// VNNI where present, against the portable one) and against the f32 product of the same
    /// weights, alternated; one JSON line per type and row count, with weight GB/s.
    Qmatmul(BenchQmatmulArgs),
    /// Time a saved model's (any --model, GGUF included) prompt and decoding speed as
    /// llama.cpp's llama-bench does (-p, -n), and with --batch S, S sequences decoded together;
    /// one JSON line of tokens/s.
    Decode(BenchDecodeArgs),
    /// Time each CUDA kernel against its CPU twin at GPT-2 small's sizes (outputs compared
    /// first); one JSON line per kernel with both times, the speed-up and the GPU's TFLOP/s.
    Kernels(BenchKernelsArgs),
    /// Encrypt and decrypt a large file with ours (ChaCha20-Poly1305 and AES-256-GCM, STREAM)
    /// against `age` and `openssl enc` (-chacha20, -aes-256-ctr: unauthenticated, as `enc` has no
    /// AEAD modes) where installed, alternated round by round; medians and ratios as JSON lines.
    Crypt(BenchCryptArgs),
}

#[derive(Debug, Args)]
pub struct BenchKernelsArgs {
    /// The GPU: `cuda` or `cuda:N`.
    #[arg(long, default_value = "cuda")]
    pub device: truthgpt_engine::device::Device,
    /// Size of the CPU side's rayon pool; default: one per logical CPU.
    #[arg(long)]
    pub threads: Option<usize>,
}

#[derive(Debug, Args)]
pub struct BenchGemmArgs {
    /// Rounds; each times every kernel once, and the medians are reported.
    #[arg(long, default_value_t = 7)]
    pub rounds: usize,
    /// Size of the rayon pool; default: one per logical CPU.
    #[arg(long)]
    pub threads: Option<usize>,
}

#[derive(Debug, Args)]
pub struct BenchDecodeArgs {
    /// A model or run directory, a Hugging Face directory or a GGUF file.
    #[arg(long)]
    pub model: PathBuf,
    /// Prompt length of the prefill test (llama-bench's -p).
    #[arg(long, default_value_t = 128)]
    pub prompt_tokens: usize,
    /// Tokens generated one at a time from an empty context (llama-bench's -n).
    #[arg(long, default_value_t = 64)]
    pub tokens: usize,
    /// Also decode this many sequences together through the paged pool.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Rounds after an untimed one; medians are reported.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Size of the rayon pool; default: one per logical CPU.
    #[arg(long)]
    pub threads: Option<usize>,
}

#[derive(Debug, Args)]
pub struct BenchQmatmulArgs {
    /// The weight's shape `IN,OUT`; default TinyLlama's feed-forward up projection.
    #[arg(long, value_name = "IN,OUT", default_value = "2048,5632", value_parser = parse_pair)]
    pub shape: [usize; 2],
    /// Activation rows: 1 is a decoding step, more a batch or a prompt.
    #[arg(long, value_delimiter = ',', default_value = "1,16,128")]
    pub rows: Vec<usize>,
    /// ggml types, by name.
    #[arg(long, value_delimiter = ',', default_value = "F16,Q8_0,Q4_0,Q4_K,Q5_K,Q6_K", value_parser = parse_ggml_type)]
    pub types: Vec<truthgpt_quant::GgmlType>,
    /// Rounds; each times every kernel once, and the medians are reported.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Size of the rayon pool; default: one per logical CPU.
    #[arg(long)]
    pub threads: Option<usize>,
}

fn parse_pair(s: &str) -> Result<[usize; 2], String> {
    let dims: Option<Vec<usize>> = s.split(',').map(|d| d.trim().parse().ok()).collect();
    match dims.as_deref() {
        Some(&[a, b]) => Ok([a, b]),
        _ => Err(format!("`{s}` is not two integers `IN,OUT`")),
    }
}

fn parse_ggml_type(s: &str) -> Result<truthgpt_quant::GgmlType, String> {
    truthgpt_quant::GgmlType::ALL.iter().copied().find(|t| t.name().eq_ignore_ascii_case(s)).ok_or_else(
        || {
            let names: Vec<_> = truthgpt_quant::GgmlType::ALL.iter().map(|t| t.name()).collect();
            format!("`{s}` is not a ggml type; types are {}", names.join(", "))
        },
    )
}

#[derive(Debug, Args)]
pub struct BenchSkinnyArgs {
    /// Product shapes `M,K,N` (`out (M, N) = a (M, K) @ w (N, K)^T`); default: those of a
    /// 16-sequence quickstart step (attention, experts of ~8 rows, the head).
    #[arg(long = "shape", value_name = "M,K,N", value_parser = parse_shape)]
    pub shapes: Vec<[usize; 3]>,
    /// Size of the rayon pool; default: one per logical CPU.
    #[arg(long)]
    pub threads: Option<usize>,
}

fn parse_shape(s: &str) -> Result<[usize; 3], String> {
    let dims: Option<Vec<usize>> = s.split(',').map(|d| d.trim().parse().ok()).collect();
    match dims.as_deref() {
        Some(&[m, k, n]) if m > 0 && k > 0 && n > 0 => Ok([m, k, n]),
        _ => Err(format!("{s:?} is not M,K,N: three positive sizes")),
    }
}

#[derive(Debug, Args)]
pub struct BenchServeArgs {
    /// A model, run or Hugging Face directory, or a GGUF file, with a tokenizer (e.g. the
    /// quickstart's run).
    #[arg(long, value_name = "PATH", default_value = "runs/quickstart")]
    pub model: PathBuf,
    /// Concurrent streaming clients (and the server's --max-batch).
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Tokens per request.
    #[arg(long, default_value_t = 64)]
    pub max_tokens: usize,
    /// Requests each client makes in the concurrency phase (the lone client makes --clients x --rounds, one at a time).
    #[arg(long, default_value_t = 4)]
    pub rounds: usize,
    /// Seconds of the load test (2x --clients clients, at the server's capacity); 0 skips it.
    #[arg(long, default_value_t = 60)]
    pub load_secs: u64,
    /// What to measure: the phases above, a Redis outage, or large prompts (docs/serving.md).
    #[arg(long, value_enum, default_value_t = Scenario::Standard)]
    pub scenario: Scenario,
    /// Seconds of each measured phase of `--scenario redis-outage` (the outage's among them).
    #[arg(long, default_value_t = 20)]
    pub outage_secs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// One client, --clients at once, the load test and the overload burst.
    Standard,
    /// The request mix without Redis, then with its Redis killed (needs redis-server), then
    /// the time until the circuit closes once Redis is back.
    RedisOutage,
    /// RSS and `/health` latency around 16 concurrent 1 MiB prompts.
    LargePrompts,
}

#[derive(Debug, Args)]
pub struct BenchLoadArgs {
    /// The model to write and load (default gpt2-small); `--set` layers over it.
    #[command(flatten)]
    pub layers: Layers,
    /// Keep the Hugging Face directory here (e.g. to time `transformers` on the same files);
    /// default: a temporary directory.
    #[arg(long, value_name = "DIR")]
    pub keep: Option<PathBuf>,
    /// Timed loads of each kind; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Size of the rayon pool; default: one per logical CPU.
    #[arg(long)]
    pub threads: Option<usize>,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("source").required(true).multiple(true).args(["preset", "config"])))]
pub struct BenchGenerateArgs {
    #[command(flatten)]
    pub layers: Layers,
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[arg(long, default_value_t = 16)]
    pub prompt_tokens: usize,
    /// Tokens generated, each way.
    #[arg(long, default_value_t = 64)]
    pub tokens: usize,
    /// Also decode this many sequences together (continuous batching over the paged KV pool) and
    /// report their aggregate tokens/s against one sequence's.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Size of the rayon pool; default: one per logical CPU.
    #[arg(long)]
    pub threads: Option<usize>,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("source").required(true).multiple(true).args(["preset", "config"])))]
pub struct BenchTrainArgs {
    #[command(flatten)]
    pub layers: Layers,
    /// A config file, instead of (or layered over) a preset.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Timed optimiser steps.
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Untimed steps first (allocation, page faults, caches).
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Size of the rayon pool (GEMMs and kernels); default: one per logical CPU.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Recompute block activations in backward (sets train.gradient_checkpointing).
    #[arg(long)]
    pub gradient_checkpointing: bool,
}

#[derive(Debug, Args)]
pub struct BenchMoeArgs {
    /// Tokens per batch (B * T).
    #[arg(long, default_value_t = 1024)]
    pub tokens: usize,
    #[arg(long, default_value_t = 256)]
    pub d_model: usize,
    /// Width of each expert; the dense baseline is `d_ff * top_k` wide.
    #[arg(long, default_value_t = 512)]
    pub d_ff: usize,
    #[arg(long, default_value_t = 8)]
    pub experts: usize,
    #[arg(long, default_value_t = 2)]
    pub top_k: usize,
    /// Timed iterations of each layer (after one untimed).
    #[arg(long, default_value_t = 20)]
    pub iters: usize,
    /// Size of the rayon pool; default: one per logical CPU.
    #[arg(long)]
    pub threads: Option<usize>,
}

#[derive(Debug, Args)]
pub struct BenchCryptArgs {
    /// Size of the file, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 1024)]
    pub size_mib: u64,
    /// Rounds; each runs every tool once each way, and the medians are reported.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Where to put the files [default: a temporary directory].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}
