//! The training step: micro-batches with gradient accumulation, global-norm clipping, AdamW with
//! decoupled weight decay on matrices only, the learning-rate schedule, and MoE bias balancing.

use truthgpt_config::TrainConfig;
use truthgpt_engine::matmul::Precision;
use truthgpt_engine::optim::{self, AdamW};

use crate::error::{ModelError, Result};
use crate::model::{Mode, Model};

/// One micro-batch: `tokens` and next-token `targets`, both (B, T) row-major.
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    pub tokens: &'a [u32],
    pub targets: &'a [u32],
    pub b: usize,
    pub t: usize,
}

/// What one optimiser step saw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// Mean cross-entropy over the micro-batches (of the data, also when distilling).
    pub loss: f32,
    /// Mean MoE balancing and z losses (summed over layers).
    pub aux_loss: f32,
    pub z_loss: f32,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
    pub lr: f32,
}

/// A frozen model whose softened logits the trained one learns from (knowledge distillation).
#[derive(Debug, Clone)]
pub struct Teacher {
    /// Runs forwards only, so it may be quantized.
    pub model: Model,
    /// Softmax temperature `tau` of both distributions in the KL term.
    pub temperature: f32,
    /// Weight of the KL term; `1 - alpha` weighs the cross-entropy on the data.
    pub alpha: f32,
}

/// A model, its optimiser state and the step counter.
#[derive(Debug, Clone)]
pub struct Trainer {
    pub model: Model,
    /// With a teacher, each step minimises the distillation loss instead of the cross-entropy.
    pub teacher: Option<Teacher>,
    pub config: TrainConfig,
    /// AdamW first and second moments of the trainable parameters, in the layout of
    /// [`Model::grads`] (all parameters, or the adapters' over a frozen base).
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    /// Optimiser steps taken.
    pub step: u64,
    /// Spans of the trainable parameters that share a weight-decay setting, merged from the
    /// model's specs, in the flat parameter layout.
    spans: Vec<(std::ops::Range<usize>, bool)>,
}

impl Trainer {
    pub fn new(mut model: Model, config: TrainConfig) -> Self {
        model.set_gradient_checkpointing(config.gradient_checkpointing);
        model.set_precision(match config.precision {
            truthgpt_config::Precision::F32 => Precision::F32,
            truthgpt_config::Precision::Bf16 => Precision::Bf16,
        });
        let trainable = model.grads.trainable();
        let mut spans: Vec<(std::ops::Range<usize>, bool)> = Vec::new();
        for spec in model.specs.iter().filter(|s| s.handle.len > 0 && s.handle.offset >= trainable.start) {
            match spans.last_mut() {
                Some((range, decay)) if *decay == spec.decay && range.end == spec.handle.offset => {
                    range.end = spec.handle.range().end
                }
                _ => spans.push((spec.handle.range(), spec.decay)),
            }
        }
        let n = trainable.len();
        Trainer { model, teacher: None, config, m: vec![0.0; n], v: vec![0.0; n], step: 0, spans }
    }

    /// One optimiser step over `micro_batches` (their gradients are averaged). Every batch is
    /// checked before any work, so a bad one leaves the model and optimiser untouched.
    pub fn step(&mut self, micro_batches: &[Batch]) -> Result<StepStats> {
        // On a pool thread, so that each parallel kernel and product forks from a worker (its
        // halves pushed to the local deque) instead of being injected from outside, and the
        // pool stays awake between them.
        rayon::scope(|_| self.step_on_pool(micro_batches))
    }

    fn step_on_pool(&mut self, micro_batches: &[Batch]) -> Result<StepStats> {
        if micro_batches.is_empty() {
            return Err(ModelError::EmptyBatch { b: 0, t: 0 });
        }
        for batch in micro_batches {
            self.model.check_batch(batch.tokens, batch.b, batch.t)?;
            self.model.check_batch(batch.targets, batch.b, batch.t)?;
        }
        let scale = 1.0 / micro_batches.len() as f32;
        self.model.zero_grad();
        let (loss, aux, z) = self.accumulate(micro_batches, scale)?;
        let grad_norm = optim::sum_of_squares(self.model.grads.as_slice()).sqrt() as f32;
        let clip = optim::clip_factor(grad_norm, self.config.grad_clip);
        let lr = self.config.lr_at(self.step as usize);
        self.step += 1;
        let adamw = AdamW {
            lr,
            beta1: self.config.betas[0],
            beta2: self.config.betas[1],
            eps: self.config.eps,
            weight_decay: self.config.weight_decay,
        };
        let start = self.model.grads.start();
        for (range, decay) in &self.spans {
            let local = range.start - start..range.end - start;
            adamw.update(
                &mut self.model.params[range.clone()],
                &mut self.m[local.clone()],
                &mut self.v[local.clone()],
                &self.model.grads.as_slice()[local],
                self.step,
                clip,
                *decay,
            );
        }
        self.model.update_selection_bias();
        Ok(StepStats { loss, aux_loss: aux, z_loss: z, grad_norm, lr })
    }

    /// Forward and backward of every micro-batch; returns the mean (loss, aux loss, z loss).
    fn accumulate(&mut self, micro_batches: &[Batch], scale: f32) -> Result<(f32, f32, f32)> {
        let (mut loss, mut aux, mut z) = (0.0, 0.0, 0.0);
        for (micro, batch) in micro_batches.iter().enumerate() {
            let seed = self.config.seed ^ (self.step << 16) ^ micro as u64;
            let dropout_seed = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            self.model.forward(batch.tokens, batch.b, batch.t, Mode::Train { dropout_seed })?;
            // The reported loss is the cross-entropy either way, comparable across runs.
            let cross_entropy = match &mut self.teacher {
                Some(teacher) => {
                    let soft = teacher.model.forward(batch.tokens, batch.b, batch.t, Mode::Eval)?;
                    let weights = (teacher.temperature, teacher.alpha);
                    self.model.distillation_loss_and_grad(batch.targets, soft, weights, scale)?.cross_entropy
                }
                None => self.model.loss_and_grad(batch.targets, scale)?,
            };
            loss += cross_entropy * scale;
            let (a, zl) = self.model.router_losses();
            (aux, z) = (aux + a * scale, z + zl * scale);
            self.model.backward(scale)?;
        }
        Ok((loss, aux, z))
    }
}
