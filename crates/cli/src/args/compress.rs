//! Arguments of the commands that make a model from another: `finetune`, `prune` and `distill`.

use std::path::PathBuf;

use clap::Args;

use super::TrainArgs;

#[derive(Debug, Args)]
pub struct FinetuneArgs {
    /// The base: a model, run or Hugging Face directory, or a GGUF file (kept quantized under
    /// LoRA: QLoRA). Sets train.base.
    #[arg(long, value_name = "PATH", required_unless_present = "resume")]
    pub model: Option<PathBuf>,
    /// Adapter rank [default: train.lora.rank from the config, else 8].
    #[arg(long, value_name = "R", conflicts_with_all = ["full", "resume"])]
    pub lora_rank: Option<usize>,
    /// Adapter scale numerator: scale = alpha / rank [default: train.lora.alpha, else 16].
    #[arg(long, value_name = "A", conflicts_with_all = ["full", "resume"])]
    pub lora_alpha: Option<f32>,
    /// The projections to adapt, by PEFT's names or ours (`q_proj,v_proj`, `c_attn`, `qkv,fc1`,
    /// `router`) [default: train.lora.targets, else q_proj,v_proj].
    #[arg(long, value_name = "NAMES", value_delimiter = ',', conflicts_with_all = ["full", "resume"])]
    pub lora_targets: Vec<String>,
    /// rsLoRA: scale = alpha / sqrt(rank).
    #[arg(long, conflicts_with_all = ["full", "resume"])]
    pub rslora: bool,
    /// Train every weight of the base instead of adapters.
    #[arg(long, conflicts_with = "resume")]
    pub full: bool,
    #[command(flatten)]
    pub train: TrainArgs,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("amount").required(true).args(["sparsity", "pattern"]))]
pub struct PruneArgs {
    /// A model, run or Hugging Face directory, or a GGUF file (dequantized first; a LoRA run's
    /// adapters are merged first).
    #[arg(long, value_name = "PATH")]
    pub model: PathBuf,
    /// `magnitude`: |w|; `wanda`: |w|·‖x‖ (Sun et al. 2023); `sparsegpt`: OBS-style
    /// reconstruction (Frantar & Alistarh 2023). Each compares weights within an output row.
    #[arg(long, value_enum, default_value = "wanda")]
    pub method: PruneMethod,
    /// Unstructured: this fraction of every output row's weights set to zero, in [0, 1); with
    /// --structured, the fraction of the units removed.
    #[arg(long, value_name = "S")]
    pub sparsity: Option<f32>,
    /// N:M semi-structured: N zeros in every M consecutive weights of a row (`2:4`).
    #[arg(long, value_name = "N:M", conflicts_with = "structured")]
    pub pattern: Option<String>,
    /// Remove whole units instead of zeroing weights: `channels` drops --sparsity of every
    /// block's feed-forward channels (model.d_ff shrinks), by magnitude or wanda.
    #[arg(long, value_enum)]
    pub structured: Option<Structure>,
    /// Calibration text (text, JSONL or a directory of them) for wanda and sparsegpt.
    #[arg(long, value_name = "PATH", required_if_eq_any([("method", "wanda"), ("method", "sparsegpt")]))]
    pub calib: Option<PathBuf>,
    /// Calibration windows, read from the start of --calib.
    #[arg(long, value_name = "N", default_value_t = 32)]
    pub calib_windows: usize,
    /// Tokens per calibration window (at most the model's context).
    #[arg(long, value_name = "T", default_value_t = 256)]
    pub calib_seq_len: usize,
    /// The model directory to write; it must not exist.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Size of the rayon pool; default: one per logical CPU.
    #[arg(long)]
    pub threads: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Structure {
    Channels,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PruneMethod {
    Magnitude,
    Wanda,
    Sparsegpt,
}

#[derive(Debug, Args)]
pub struct DistillArgs {
    /// The teacher: a model, run or Hugging Face directory, or a GGUF file (quantized teachers
    /// run quantized). Sets train.distill.teacher.
    #[arg(long, value_name = "PATH", required_unless_present = "resume")]
    pub teacher: Option<PathBuf>,
    /// Softmax temperature of both distributions [default: train.distill.temperature, else 2].
    #[arg(long, value_name = "TAU", conflicts_with = "resume")]
    pub temperature: Option<f32>,
    /// Weight of the teacher's KL term; 1 - alpha weighs the data's cross-entropy
    /// [default: train.distill.alpha, else 0.5].
    #[arg(long, value_name = "A", conflicts_with = "resume")]
    pub alpha: Option<f32>,
    #[command(flatten)]
    pub train: TrainArgs,
}
