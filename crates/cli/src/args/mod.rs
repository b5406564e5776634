//! The command line, as clap derive types. Parsing only; the modules named after each command run it.

use std::path::PathBuf;

use clap::builder::TypedValueParser as _;
use clap::{Args, Parser, Subcommand};

mod bench;
mod compress;
mod layers;

pub use bench::*;
pub use compress::*;
pub use layers::Layers;

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
    /// Fine-tune a model with LoRA adapters (or every weight with --full): `train` with
    /// train.base and train.lora set from these flags. Checkpoints hold only the adapters.
    Finetune(FinetuneArgs),
    /// Generate text from a saved model, streaming it to stdout.
    Generate(GenerateArgs),
    /// Validation loss and perplexity of a saved model on a corpus.
    Eval(EvalArgs),
    /// Draw runs' loss and learning-rate curves to a PNG (several runs overlaid).
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
    /// Distil a teacher into a student: `train` with train.distill set from these flags. The
    /// student's architecture comes from --config (alias --student-config), --preset and --set,
    /// or from train.base; its vocabulary and tokenizer from the teacher.
    Distill(DistillArgs),
    /// Prune a model one-shot: unstructured or N:M (2:4) sparsity in every block's linear
    /// layers by magnitude, Wanda or SparseGPT, calibrated block by block on a little text; or
    /// remove whole feed-forward channels (--structured channels) so the model shrinks.
    Prune(PruneArgs),
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
    /// A LoRA run's adapters in Hugging Face PEFT's format (adapter_config.json and
    /// adapter_model.safetensors), for `PeftModel.from_pretrained` over the base's `export hf`.
    Peft {
        /// A LoRA run (`finetune` or `train` with train.lora), or one of its checkpoints.
        #[arg(value_name = "RUN")]
        model: PathBuf,
        /// The directory to write; it must not exist.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Recorded as base_model_name_or_path: where PEFT finds the base's HF export
        /// [default: the run's train.base].
        #[arg(long, value_name = "PATH_OR_NAME")]
        base: Option<String>,
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
    #[arg(long, value_name = "FILE", conflicts_with = "resume", alias = "student-config")]
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
    /// Run directories (with metrics.jsonl); several are overlaid, a colour each.
    #[arg(required = true, value_name = "RUN")]
    pub runs: Vec<PathBuf>,
    /// Where to write the PNG (default: the first RUN's curves.png).
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
