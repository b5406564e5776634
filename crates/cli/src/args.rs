//! The command line, as clap derive types. Parsing only; the modules named after each command run it.

use std::path::PathBuf;

use clap::builder::TypedValueParser as _;
use clap::{Args, Parser, Subcommand};

/// TruthGPT: train, evaluate and generate with transformer language models (dense and MoE).
///
/// Configs are layered, lowest first: schema defaults, `--preset`, the file, environment
/// variables `TRUTHGPT_<SECTION>__<KEY>` (e.g. `TRUTHGPT_MODEL__N_LAYERS=4`), then
/// `--set section.key=value`.
#[derive(Debug, Parser)]
#[command(name = "truthgpt", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check or print configurations.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Measure training, MoE-layer and decoding speed.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Train a small MoE model on the embedded Shakespeare corpus (~90 s), then sample from it.
    Quickstart(QuickstartArgs),
    /// Fit a byte-level BPE tokenizer on a corpus.
    #[command(subcommand)]
    Tokenizer(TokenizerCommand),
    /// Tokenize a corpus into memory-mapped shards for training.
    #[command(subcommand)]
    Data(DataCommand),
    /// Train a model; Ctrl-C saves a checkpoint and exits.
    Train(TrainArgs),
    /// Generate text from a saved model, streaming it to stdout.
    Generate(GenerateArgs),
    /// Validation loss and perplexity of a saved model on a corpus.
    Eval(EvalArgs),
    /// Draw a run's loss and learning-rate curves to a PNG.
    Plot(PlotArgs),
    /// Convert another tool's model into a model directory of ours.
    #[command(subcommand)]
    Import(ImportCommand),
    /// Write a model in another tool's format.
    #[command(subcommand)]
    Export(ExportCommand),
    /// Quantize a model to a GGUF file for llama.cpp (and us), by round-to-nearest or calibrated
    /// with AWQ; tensor types as llama-quantize picks them (docs/quantize.md).
    Quantize(QuantizeArgs),
    /// Print a model's logits for token ids as JSON, {"logits": [[...], ...]}: one row per
    /// position, the whole vocabulary, f32 precision. For parity checks against other tools.
    Logits(LogitsArgs),
    /// Serve a model with an OpenAI-compatible API (completions, chat completions, models, SSE and
    /// WebSocket streaming), continuously batching requests, with keys/JWT and roles, rate
    /// limits, a response cache, sessions and Prometheus metrics (docs/serving.md); SIGTERM or
    /// Ctrl-C drains in-flight requests, then exits.
    Serve(ServeArgs),
    /// List the compute devices: the CPU and, where an NVIDIA driver and the CUDA 13 runtime
    /// libraries load, each CUDA device; `--check` runs every CUDA kernel against its CPU twin.
    Device(DeviceArgs),
    /// The keyring of key-encryption keys (a file sealed under a passphrase through Argon2id):
    /// init, rotate (re-wrapping files' data keys), retire, list. The passphrase comes from
    /// TRUTHGPT_KEYRING_PASSPHRASE or --passphrase-file, never a flag. Key changes are appended
    /// to the audit log. See docs/security.md.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Encrypt a file at rest: a fresh data key wrapped under the keyring's active key, the data
    /// in authenticated chunks (STREAM), written atomically.
    Encrypt(EncryptArgs),
    /// Decrypt a file written by `encrypt`; the output appears only if every chunk authenticated.
    Decrypt(DecryptArgs),
    /// The tamper-evident audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Versions of model directories: content-addressed (CIDv1) blobs, Ed25519-signed manifests,
    /// aliases, tags and lineage in SQLite (docs/registry.md). `--model registry:NAME@ALIAS` or
    /// `registry:NAME/VERSION` elsewhere pulls from the registry in $TRUTHGPT_REGISTRY.
    Registry(RegistryArgs),
}

#[derive(Debug, Args)]
pub struct RegistryArgs {
    /// The registry directory (created on first use).
    #[arg(long, value_name = "DIR", env = "TRUTHGPT_REGISTRY", global = true)]
    pub registry: Option<PathBuf>,
    /// Where the blobs live: `local` (DIR/blobs) or `s3://BUCKET/PREFIX` (credentials and
    /// endpoint from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT; needs a
    /// build with `--features s3`). Fixed when the registry is created.
    #[arg(long, value_name = "URL", env = "TRUTHGPT_REGISTRY_STORE", global = true)]
    pub store: Option<String>,
    #[command(subcommand)]
    pub command: RegistryCommand,
}

#[derive(Debug, Subcommand)]
pub enum RegistryCommand {
    /// Push a directory as the model's next version, signed with --key.
    Push(RegistryPushArgs),
    /// Write a version's files into a new directory, each checked against its digest.
    Pull {
        /// NAME/VERSION, NAME@ALIAS or NAME (the latest version).
        #[arg(value_name = "REF")]
        reference: String,
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// The models, or one model's versions.
    List {
        #[arg(value_name = "MODEL")]
        model: Option<String>,
    },
    /// A version's manifest (verified), aliases and tags, as JSON.
    Show {
        #[arg(value_name = "REF")]
        reference: String,
    },
    /// Point ALIAS at VERSION (moving it if it exists), or remove it with --delete.
    Alias {
        #[arg(value_name = "MODEL")]
        model: String,
        #[arg(value_name = "ALIAS")]
        alias: String,
        #[arg(value_name = "VERSION", required_unless_present = "delete", conflicts_with = "delete")]
        version: Option<u64>,
        #[arg(long)]
        delete: bool,
    },
    /// Set KEY=VALUE tags on a version, or remove keys with --delete.
    Tag {
        #[arg(value_name = "REF")]
        reference: String,
        #[arg(value_name = "KEY=VALUE", required_unless_present = "delete")]
        tags: Vec<String>,
        #[arg(long, value_name = "KEY")]
        delete: Vec<String>,
    },
    /// Files added, removed and changed, and metadata changed, from A to B.
    Diff {
        #[arg(value_name = "A")]
        a: String,
        #[arg(value_name = "B")]
        b: String,
    },
    /// Re-hash every blob and manifest and check every signature; exits non-zero on a problem.
    Verify,
    /// Remove blobs no version references (and older than --grace-secs).
    Gc {
        /// Leave unreferenced blobs younger than this alone: a push in flight writes its blobs
        /// before its row.
        #[arg(long, value_name = "SECS", default_value_t = 3600)]
        grace_secs: u64,
        #[arg(long)]
        dry_run: bool,
    },
    /// Make a signing key: a new file of mode 0600; prints the public key.
    Keygen {
        #[arg(value_name = "SIGNER")]
        signer: String,
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Also add the public key to the registry's trusted keys.
        #[arg(long)]
        trust: bool,
    },
    /// Trust a signer's public key (64 hex digits): versions it signs can be loaded.
    Trust {
        #[arg(value_name = "SIGNER")]
        signer: String,
        #[arg(value_name = "PUBLIC_KEY")]
        public_key: String,
    },
}

#[derive(Debug, Args)]
pub struct RegistryPushArgs {
    #[arg(value_name = "MODEL")]
    pub model: String,
    /// The directory to push (e.g. a model directory written by `train`).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// The signer's secret key file (from `registry keygen`).
    #[arg(long, value_name = "FILE", env = "TRUTHGPT_SIGNING_KEY")]
    pub key: PathBuf,
    /// Point this alias at the new version, in the same transaction; repeatable.
    #[arg(long, value_name = "ALIAS")]
    pub alias: Vec<String>,
    /// Metadata KEY=VALUE, signed with the manifest; repeatable.
    #[arg(long, value_name = "KEY=VALUE")]
    pub meta: Vec<String>,
    /// Lineage: the training run that made it.
    #[arg(long, value_name = "ID")]
    pub run_id: Option<String>,
    /// Lineage: the training data's hash.
    #[arg(long, value_name = "HASH")]
    pub data_hash: Option<String>,
    /// Lineage: the config's hash.
    #[arg(long, value_name = "HASH")]
    pub config_hash: Option<String>,
    /// Lineage: the version it derives from (NAME/VERSION), e.g. a fine-tune's base.
    #[arg(long, value_name = "NAME/VERSION")]
    pub parent: Option<String>,
}

#[derive(Debug, Args)]
pub struct DeviceArgs {
    /// Run every CUDA kernel (forward and backward) against its CPU twin on `--device` and print
    /// each comparison; exits non-zero if one is out of bounds.
    #[arg(long)]
    pub check: bool,
    /// The device `--check` runs on: `cuda` or `cuda:N`.
    #[arg(long, default_value = "cuda")]
    pub device: truthgpt_engine::device::Device,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A model, run or Hugging Face directory, or a GGUF file; it needs a tokenizer. Required here
    /// or in --config.
    #[arg(long, value_name = "PATH")]
    pub model: Option<PathBuf>,
    /// A YAML file of settings (keys with roles and tenants, JWT, limits, cache, sessions, Redis);
    /// flags given here override it. See docs/serving.md.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// [default: 127.0.0.1]
    #[arg(long)]
    pub host: Option<String>,
    /// [default: 8000]
    #[arg(long)]
    pub port: Option<u16>,
    /// Most sequences decoded together [default: 16].
    #[arg(long)]
    pub max_batch: Option<usize>,
    /// Most requests waiting for the batch; beyond it requests get 503 with Retry-After
    /// [default: 64].
    #[arg(long)]
    pub queue: Option<usize>,
    /// Key/value pool size in blocks of 16 positions [default: enough for --max-batch sequences
    /// of the model's whole context]. The pool can grow to this size and keeps freed blocks as a
    /// prefix cache; a size larger than the machine's memory is refused at start.
    #[arg(long)]
    pub kv_blocks: Option<usize>,
    /// Seconds in-flight requests get to finish after SIGTERM or Ctrl-C [default: 30].
    #[arg(long)]
    pub drain_secs: Option<u64>,
    /// A key clients must send (`Authorization: Bearer KEY`), with role `user`; repeatable.
    /// Without keys or JWT settings the API is open. Keys are held only as SHA-256 digests.
    #[arg(long, value_name = "KEY", env = "TRUTHGPT_API_KEY", hide_env_values = true)]
    pub api_key: Vec<String>,
    /// Requests per minute each caller may make (a token bucket); 0 for no limit [default: 600].
    #[arg(long, value_name = "N")]
    pub requests_per_minute: Option<u32>,
    /// Prompt plus max_tokens per minute each caller may use; 0 for no limit [default: 200000].
    #[arg(long, value_name = "N")]
    pub tokens_per_minute: Option<u32>,
    /// Keep rate limits, cached answers and sessions in this Redis (redis://host:port/db), shared
    /// by every replica pointing at it.
    #[arg(long, value_name = "URL")]
    pub redis: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum ImportCommand {
    /// A Hugging Face directory (config.json, model.safetensors or shards, tokenizer.json) of a
    /// Llama, Mistral, Qwen2, Mixtral or GPT-2 model. Every command that takes --model also
    /// reads such a directory directly.
    Hf {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
        /// The model directory to write; it must not exist.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum ExportCommand {
    /// A Hugging Face directory that `transformers` loads (as Llama, Mistral, Qwen2, Mixtral or
    /// GPT-2, whichever matches the model exactly).
    Hf {
        /// A model, run or Hugging Face directory, or a GGUF file.
        #[arg(value_name = "MODEL")]
        model: PathBuf,
        /// The directory to write; it must not exist.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// A GGUF file for llama.cpp (Llama-family models: Llama, Mistral, Mixtral, Qwen2).
    Gguf {
        /// A model, run or Hugging Face directory, or a GGUF file; it needs a tokenizer.
        #[arg(value_name = "MODEL")]
        model: PathBuf,
        /// The file to write; it must not exist.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        #[arg(long, value_enum, default_value = "f16")]
        dtype: GgufDtypeArg,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum GgufDtypeArg {
    F32,
    F16,
    #[value(name = "q8_0")]
    Q8_0,
}

#[derive(Debug, Args)]
pub struct QuantizeArgs {
    /// A model, run or Hugging Face directory, or a GGUF file (dequantized first).
    #[arg(long, value_name = "PATH")]
    pub model: PathBuf,
    /// The file's type, as llama-quantize names it.
    #[arg(long, value_name = "TYPE", value_parser = clap::builder::PossibleValuesParser::new(
        truthgpt_interop::gguf::GgufDtype::ALL.map(|d| d.name())
    ).map(|s| s.parse::<truthgpt_interop::gguf::GgufDtype>().expect("a listed name")))]
    pub to: truthgpt_interop::gguf::GgufDtype,
    /// `rtn`: round-to-nearest, as llama-quantize without an importance matrix; `awq`:
    /// activation-aware scales calibrated on --calib first.
    #[arg(long, value_enum, default_value = "rtn")]
    pub method: QuantMethod,
    /// Calibration text (text, JSONL or a directory of them) for --method awq.
    #[arg(long, value_name = "PATH", required_if_eq("method", "awq"))]
    pub calib: Option<PathBuf>,
    /// Most calibration tokens read from --calib, in windows of 512 (or the model's context).
    #[arg(long, value_name = "N", default_value_t = 8192)]
    pub calib_tokens: usize,
    /// The GGUF file to write; it must not exist.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum QuantMethod {
    Rtn,
    Awq,
}

#[derive(Debug, Args)]
pub struct LogitsArgs {
    /// A model, run or Hugging Face directory, or a GGUF file.
    #[arg(long, value_name = "PATH")]
    pub model: PathBuf,
    /// Comma-separated token ids, e.g. 1,5,9.
    #[arg(long, value_name = "IDS", value_delimiter = ',', required = true, num_args = 1..)]
    pub ids: Vec<u32>,
    /// A GGUF file's weights dequantized to f32 and multiplied in f32 (the reference path),
    /// instead of the integer kernels on its blocks: splits a difference from another tool into
    /// the kernels' rounding and the rest.
    #[arg(long)]
    pub f32: bool,
}

#[derive(Debug, Subcommand)]
pub enum TokenizerCommand {
    /// Fit a byte-level BPE (GPT-2 style, with <|endoftext|>) and write tokenizer.json.
    Train {
        /// A text file, a JSONL file, or a directory of them.
        #[arg(long, value_name = "PATH")]
        data: PathBuf,
        /// Tokens in the vocabulary, <|endoftext|> included (at least 257).
        #[arg(long, value_name = "N")]
        vocab_size: usize,
        #[arg(long, value_name = "FILE", default_value = "tokenizer.json")]
        out: PathBuf,
        /// The JSONL field holding each document's text.
        #[arg(long, value_name = "NAME", default_value = "text")]
        jsonl_field: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Tokenize PATH into u16/u32 shards with a checksummed manifest (data.json), split into train
    /// and validation; `train --data DIR` then memory-maps them.
    Prepare(PrepareArgs),
}

#[derive(Debug, Args)]
pub struct PrepareArgs {
    /// A text file, a JSONL file, or a directory of them.
    #[arg(long, value_name = "PATH")]
    pub data: PathBuf,
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// A tokenizer.json; without one a BPE of --vocab-size is fitted on the data.
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,
    #[arg(long, value_name = "N", default_value_t = 4096)]
    pub vocab_size: usize,
    #[arg(long, value_name = "NAME", default_value = "text")]
    pub jsonl_field: String,
    /// Share of tokens held out for validation.
    #[arg(long, default_value_t = 0.05)]
    pub val_fraction: f64,
    /// Chooses which blocks go to validation.
    #[arg(long, default_value_t = 1337)]
    pub seed: u64,
    /// Tokens per shard file.
    #[arg(long, default_value_t = 64 << 20)]
    pub shard_tokens: usize,
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// A .yaml, .yml, .json or .toml config (not with --resume: the checkpoint has its config).
    #[arg(long, value_name = "FILE", conflicts_with = "resume")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub layers: Layers,
    /// Training data: text, JSONL, a directory of them, or a `data prepare` directory
    /// (default: data.path from the config).
    #[arg(long, value_name = "PATH")]
    pub data: Option<PathBuf>,
    /// The run directory: checkpoints, `latest`, metrics.jsonl.
    #[arg(long, value_name = "DIR", default_value = "runs/train")]
    pub out: PathBuf,
    /// Total optimiser steps (sets train.steps; the schedule spans them).
    #[arg(long, value_name = "N")]
    pub steps: Option<usize>,
    /// Continue the run in --out from its latest checkpoint, exactly where it stopped.
    #[arg(long)]
    pub resume: bool,
    /// Stop with a checkpoint after this many steps, leaving the schedule as it is (resume later).
    #[arg(long, value_name = "STEP")]
    pub stop_at: Option<u64>,
    /// Size of the rayon pool; default: one per logical CPU.
    #[arg(long)]
    pub threads: Option<usize>,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// A model directory, a run directory (its latest checkpoint), a Hugging Face directory or a
    /// GGUF file.
    #[arg(long, value_name = "PATH")]
    pub model: PathBuf,
    #[arg(long)]
    pub prompt: String,
    #[arg(long, value_name = "N", default_value_t = 200)]
    pub max_tokens: usize,
    /// 0 is greedy decoding.
    #[arg(long, value_name = "T", default_value_t = 0.8)]
    pub temperature: f32,
    /// Sample from the K most likely tokens only; 0 keeps all.
    #[arg(long, value_name = "K", default_value_t = 0)]
    pub top_k: usize,
    /// Sample from the smallest set of tokens whose probability reaches P.
    #[arg(long, value_name = "P", default_value_t = 1.0)]
    pub top_p: f32,
    /// Above 1 discourages tokens already in the prompt or output.
    #[arg(long, value_name = "R", default_value_t = 1.0)]
    pub repetition_penalty: f32,
    #[arg(long, value_name = "S", default_value_t = 0)]
    pub seed: u64,
    /// End generation before this text; repeatable.
    #[arg(long, value_name = "STR")]
    pub stop: Vec<String>,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// A model directory, or a run directory (its latest checkpoint).
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// Text, JSONL or a directory of them (all of it is evaluated), or a `data prepare` directory
    /// (its validation split).
    #[arg(long, value_name = "PATH")]
    pub data: PathBuf,
    /// Most windows of train.seq_len tokens to evaluate, spread over the data.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub max_windows: usize,
}

#[derive(Debug, Args)]
pub struct PlotArgs {
    /// A run directory (with metrics.jsonl).
    pub run: PathBuf,
    /// Where to write the PNG (default: RUN/curves.png).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Load and validate FILE (with environment overrides); prints `ok: FILE`.
    Validate {
        /// A .yaml, .yml, .json or .toml file.
        file: PathBuf,
    },
    /// Print the effective configuration as JSON.
    Show {
        /// A .yaml, .yml, .json or .toml file, layered over the preset.
        file: Option<PathBuf>,
        #[command(flatten)]
        layers: Layers,
    },
}

/// The preset and `--set` layers shared by every command that loads a config.
#[derive(Debug, Args)]
pub struct Layers {
    /// Start from a named preset (tiny, gpt2-small, llama-like, mixtral-like, torch-tiny-reference,
    /// quickstart).
    #[arg(long, value_name = "NAME")]
    pub preset: Option<String>,
    /// Override one field, e.g. `--set model.n_layers=4`; repeatable, applied last.
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub set: Vec<String>,
}

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
pub struct QuickstartArgs {
    /// Optimiser steps (default: the quickstart preset's 600).
    #[arg(long)]
    pub steps: Option<usize>,
    /// The run directory; a previous quickstart run there is replaced.
    #[arg(long, value_name = "DIR", default_value = "runs/quickstart")]
    pub out: PathBuf,
}

/// Where the keyring is and how to unlock it.
#[derive(Debug, Args)]
pub struct KeyringArgs {
    /// The keyring file.
    #[arg(long, value_name = "FILE", env = "TRUTHGPT_KEYRING", default_value = "truthgpt-keyring.json")]
    pub keyring: PathBuf,
    /// A file whose first line is the passphrase (instead of TRUTHGPT_KEYRING_PASSPHRASE).
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
    /// The audit log key changes, encryptions and decryptions are appended to
    /// [default: KEYRING.audit.jsonl].
    #[arg(long, value_name = "FILE")]
    pub audit_log: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Make a new keyring with one active key and the audit signing key; prints the audit
    /// public key (keep a copy away from the log) and writes it to KEYRING.audit.pub.
    Init {
        #[command(flatten)]
        keyring: KeyringArgs,
        /// Argon2id memory cost in MiB (with 3 passes, 1 lane).
        #[arg(long, value_name = "MIB", default_value_t = 64)]
        kdf_memory_mib: u32,
    },
    /// Make a new active key (the old one becomes decrypt-only), then re-wrap the data key of
    /// every encrypted file among PATHS (directories are walked) under it. Only headers are
    /// rewritten; the data is not decrypted.
    Rotate {
        #[command(flatten)]
        keyring: KeyringArgs,
        /// Encrypted files or directories holding them.
        #[arg(value_name = "PATH")]
        paths: Vec<PathBuf>,
    },
    /// Re-wrap files under the active key without making a new one (e.g. to finish a rotation
    /// that was interrupted).
    Rewrap {
        #[command(flatten)]
        keyring: KeyringArgs,
        #[arg(value_name = "PATH", required = true)]
        paths: Vec<PathBuf>,
    },
    /// Retire a decrypt-only key: its material is erased, and nothing still wrapped under it can
    /// be decrypted. With PATHS, refuses if any file there still names the key.
    Retire {
        #[command(flatten)]
        keyring: KeyringArgs,
        /// The key id (see `keys list`).
        id: String,
        /// Encrypted files or directories to check first.
        #[arg(value_name = "PATH")]
        paths: Vec<PathBuf>,
    },
    /// Print each key's id, state and creation time, and the audit public key.
    List {
        #[command(flatten)]
        keyring: KeyringArgs,
    },
}

#[derive(Debug, Args)]
pub struct EncryptArgs {
    #[command(flatten)]
    pub keyring: KeyringArgs,
    /// The file to encrypt.
    pub input: PathBuf,
    /// The encrypted file [default: INPUT.enc]; replaced atomically.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    #[arg(long, default_value = "chacha20-poly1305")]
    pub cipher: truthgpt_security::Cipher,
    /// Plaintext KiB per authenticated chunk.
    #[arg(long, value_name = "KIB", default_value_t = 64)]
    pub chunk_kib: u32,
}

#[derive(Debug, Args)]
pub struct DecryptArgs {
    #[command(flatten)]
    pub keyring: KeyringArgs,
    /// The encrypted file.
    pub input: PathBuf,
    /// Where to write the plaintext; replaced atomically, and only if all of INPUT authenticated.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain, every checkpoint's signature and the head file; name every edited,
    /// removed, inserted or reordered line. Exits 1 if the log was changed (or, with --strict,
    /// if entries follow the newest checkpoint).
    Verify {
        /// The log [default: the keyring's, KEYRING.audit.jsonl].
        #[arg(value_name = "LOG")]
        log: Option<PathBuf>,
        /// The trusted Ed25519 public key: 64 hex digits, or a file holding them. Without it, the
        /// keyring's (which needs the passphrase).
        #[arg(long, value_name = "HEX|FILE")]
        public_key: Option<String>,
        #[command(flatten)]
        keyring: KeyringArgs,
        /// Also fail if entries after the newest checkpoint are not yet signed.
        #[arg(long)]
        strict: bool,
    },
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
