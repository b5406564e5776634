//! The `train:` section: batch shape, optimiser, schedule, evaluation, checkpoints, and what a
//! fine-tune starts from.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Learning-rate shape after the linear warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Cosine decay from `lr` to `min_lr` over the remaining steps.
    Cosine,
    /// Linear decay from `lr` to `min_lr`.
    Linear,
    /// `lr` after warmup, unchanged.
    Constant,
}

/// What the linear layers' products round their operands to; weights, gradients, optimizer
/// state and every sum stay f32.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    /// Mixed precision: bf16 operands with f32 sums, on CPUs that multiply bf16 (Intel AMX,
    /// AVX512_BF16); f32 products on the others.
    Bf16,
}

/// The `train:` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub batch_size: usize,
    pub seq_len: usize,
    /// Total optimiser steps; the schedule decays over them.
    pub steps: usize,
    pub lr: f32,
    pub min_lr: f32,
    pub schedule: Schedule,
    pub warmup_steps: usize,
    /// Decoupled (AdamW) weight decay, applied to matrices only, not to norms, biases or 1-D tables.
    pub weight_decay: f32,
    pub betas: [f32; 2],
    pub eps: f32,
    /// Clip the global gradient norm to this value; 0 turns clipping off.
    pub grad_clip: f32,
    /// Micro-batches whose gradients are averaged into each optimiser step.
    pub grad_accum: usize,
    /// Recompute each block's activations in backward instead of keeping them.
    pub gradient_checkpointing: bool,
    /// `f32`, or `bf16` for mixed precision.
    pub precision: Precision,
    /// Seeds initialisation, the validation split, batch order and dropout.
    pub seed: u64,
    /// Measure validation loss every this many steps (and at the end); 0 only at the end.
    pub eval_every: usize,
    /// Batches of `batch_size` windows in each validation measurement.
    pub eval_batches: usize,
    /// Write a checkpoint every this many steps (and at the end); 0 only at the end.
    pub checkpoint_every: usize,
    /// Checkpoints kept in a run directory; older ones are deleted.
    pub keep_checkpoints: usize,
    /// Fine-tune this model instead of initialising one: a model or run directory, a Hugging Face
    /// directory or a GGUF file. Its architecture replaces the `model:` section and its tokenizer
    /// is the run's.
    pub base: Option<PathBuf>,
    /// Train low-rank adapters over the frozen `base` instead of every weight.
    pub lora: Option<LoraConfig>,
    /// Learn from a teacher model's softened logits as well as from the data.
    pub distill: Option<DistillConfig>,
}

/// Knowledge distillation (Hinton et al. 2015): each step minimises
/// `alpha * temperature^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE`.
/// The teacher runs forwards only (it may be a quantized GGUF file) and must share the
/// student's vocabulary; a run from scratch takes the teacher's tokenizer and vocabulary size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DistillConfig {
    /// A model, run or Hugging Face directory, or a GGUF file.
    pub teacher: PathBuf,
    pub temperature: f32,
    /// Weight of the teacher's term, in [0, 1]; 0 is plain training.
    pub alpha: f32,
}

impl Default for DistillConfig {
    fn default() -> Self {
        DistillConfig { teacher: PathBuf::new(), temperature: 2.0, alpha: 0.5 }
    }
}

/// LoRA adapters (Hu et al. 2021): each targeted projection `W` becomes `W + scale * B A`, with
/// `A` (rank, in) and `B` (out, rank) the only trained tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraConfig {
    pub rank: usize,
    /// `scale = alpha / rank` (`alpha / sqrt(rank)` with `rslora`).
    pub alpha: f32,
    /// The projections to adapt, by PEFT's rule: a module whose name is a target or ends with
    /// `.` and one (`q_proj`, `mlp.down_proj`), under the base's Hugging Face names where it has
    /// them, and under ours (`qkv`, `proj`, `fc1`, `fc2`, `router`, `head`) always.
    pub targets: Vec<String>,
    pub rslora: bool,
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig { rank: 8, alpha: 16.0, targets: vec!["q_proj".into(), "v_proj".into()], rslora: false }
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            batch_size: 8,
            seq_len: 64,
            steps: 1000,
            lr: 3e-4,
            min_lr: 3e-5,
            schedule: Schedule::Cosine,
            warmup_steps: 100,
            weight_decay: 0.1,
            betas: [0.9, 0.95],
            eps: 1e-8,
            grad_clip: 1.0,
            grad_accum: 1,
            gradient_checkpointing: false,
            precision: Precision::F32,
            seed: 1337,
            eval_every: 100,
            eval_batches: 20,
            checkpoint_every: 500,
            keep_checkpoints: 3,
            base: None,
            lora: None,
            distill: None,
        }
    }
}

impl TrainConfig {
    /// The learning rate at optimiser step `step` (0-based).
    pub fn lr_at(&self, step: usize) -> f32 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f32 / self.warmup_steps as f32;
        }
        let decay_steps = self.steps.saturating_sub(self.warmup_steps).max(1);
        let progress = ((step - self.warmup_steps) as f32 / decay_steps as f32).min(1.0);
        let span = self.lr - self.min_lr;
        match self.schedule {
            Schedule::Constant => self.lr,
            Schedule::Linear => self.lr - span * progress,
            Schedule::Cosine => self.min_lr + 0.5 * span * (1.0 + (std::f32::consts::PI * progress).cos()),
        }
    }
}
