//! AdamW (Loshchilov & Hutter 2019) with decoupled weight decay, and global-norm clipping.

use rayon::prelude::*;

/// Hyper-parameters of one AdamW update.
#[derive(Debug, Clone, Copy)]
pub struct AdamW {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

const CHUNK: usize = 16 * 1024;

impl AdamW {
    /// One step over a parameter region; `step` is 1-based (bias correction). `grad_scale`
    /// multiplies every gradient first (clipping, accumulation averaging). With `decay` false the
    /// region is not decayed (norm gains, biases).
    #[allow(clippy::too_many_arguments)]
    pub fn update(
        &self,
        params: &mut [f32],
        m: &mut [f32],
        v: &mut [f32],
        grads: &[f32],
        step: u64,
        grad_scale: f32,
        decay: bool,
    ) {
        let bias1 = 1.0 - self.beta1.powi(step as i32);
        let bias2 = 1.0 - self.beta2.powi(step as i32);
        let decay_factor = if decay { 1.0 - self.lr * self.weight_decay } else { 1.0 };
        let AdamW { lr, beta1, beta2, eps, .. } = *self;
        params
            .par_chunks_mut(CHUNK)
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .zip(grads.par_chunks(CHUNK))
            .for_each(|(((p, m), v), g)| {
                for i in 0..p.len() {
                    let g = g[i] * grad_scale;
                    m[i] = beta1 * m[i] + (1.0 - beta1) * g;
                    v[i] = beta2 * v[i] + (1.0 - beta2) * g * g;
                    let update = (m[i] / bias1) / ((v[i] / bias2).sqrt() + eps);
                    p[i] = p[i] * decay_factor - lr * update;
                }
            });
    }
}

/// Sum of squares of `grads`, accumulated in f64 so that millions of small terms do not round away.
pub fn sum_of_squares(grads: &[f32]) -> f64 {
    grads.par_chunks(CHUNK).map(|c| c.iter().map(|&g| (g as f64) * (g as f64)).sum::<f64>()).sum()
}

/// The factor that brings a gradient of norm `norm` down to `max_norm` (1 when already below, or
/// when clipping is off with `max_norm == 0`).
pub fn clip_factor(norm: f32, max_norm: f32) -> f32 {
    if max_norm > 0.0 && norm > max_norm {
        max_norm / (norm + 1e-6)
    } else {
        1.0
    }
}
