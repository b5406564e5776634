//! The command line, as clap derive types. Parsing only; the modules named after each command run it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// TruthGPT: a CPU transformer training engine.
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
    /// Measure training throughput.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Train a tiny byte-level MoE model on an embedded text, in seconds.
    Quickstart(QuickstartArgs),
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
    /// Start from a named preset (tiny, gpt2-small, llama-like, mixtral-like, torch-tiny-reference).
    #[arg(long, value_name = "NAME")]
    pub preset: Option<String>,
    /// Override one field, e.g. `--set model.n_layers=4`; repeatable, applied last.
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub set: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Time full training steps (forward, backward, AdamW) on random tokens; prints one JSON line.
    Train(BenchTrainArgs),
    /// Time forward+backward of one MoE layer against a dense FFN of the same active width.
    Moe(BenchMoeArgs),
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
    /// Optimiser steps.
    #[arg(long, default_value_t = 200)]
    pub steps: usize,
}
