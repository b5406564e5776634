//! Arguments of the commands that make a model from another: `finetune` (and, with it, the
//! adapters' export), `prune` and `distill`.

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
