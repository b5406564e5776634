//! Softmax cross-entropy, fused with its backward so the (N, V) probabilities never exist
//! separately from the logits.

use crate::fastmath::{self, exp};
use crate::par::for_each_row;

/// Mean cross-entropy of `logits (N, V)` against `targets (N)`, and in the same pass
/// `dlogits = (softmax(logits) - onehot(target)) * grad_scale`, written over the logits.
/// `losses (N)` receives each row's loss. Targets must be `< V` (checked by the caller).
pub fn cross_entropy_fused(
    logits_dlogits: &mut [f32],
    losses: &mut [f32],
    targets: &[u32],
    v: usize,
    grad_scale: f32,
) -> f32 {
    let n = targets.len();
    let losses_ptr = crate::par::DisjointPtr::new(losses);
    for_each_row(&mut logits_dlogits[..n * v], v, |row, logits| {
        let target = targets[row] as usize;
        let (max, target_logit) = (fastmath::max(logits), logits[target]);
        // One exp pass: the row becomes exp(x - max), then is scaled to probabilities.
        for l in logits.iter_mut() {
            *l = exp(*l - max);
        }
        let sum = fastmath::sum(logits);
        // SAFETY: each row index is visited by exactly one task.
        unsafe { losses_ptr.slice(row, 1)[0] = max + sum.ln() - target_logit };
        let scale = grad_scale / sum;
        for l in logits.iter_mut() {
            *l *= scale;
        }
        logits[target] -= grad_scale;
    });
    fastmath::sum(&losses[..n]) / n as f32
}

/// `losses[n] = -log softmax(logits[n])[targets[n]]`, forward only; returns the mean.
pub fn cross_entropy(losses: &mut [f32], logits: &[f32], targets: &[u32], v: usize) -> f32 {
    for ((loss, row), &target) in losses.iter_mut().zip(logits.chunks_exact(v)).zip(targets) {
        *loss = log_sum_exp(row) - row[target as usize];
    }
    losses.iter().sum::<f32>() / targets.len() as f32
}

/// Row maximum and `sum(exp(x - max))`, the two halves of a stable log-sum-exp.
#[inline]
pub fn max_and_sum_exp(row: &[f32]) -> (f32, f32) {
    let max = fastmath::max(row);
    let mut acc = [0.0f32; 8];
    let (x8, tail) = row.split_at(row.len() / 8 * 8);
    for chunk in x8.chunks_exact(8) {
        for l in 0..8 {
            acc[l] += exp(chunk[l] - max);
        }
    }
    (max, fastmath::sum(&acc) + tail.iter().map(|&x| exp(x - max)).sum::<f32>())
}

/// `log(sum(exp(row)))`, stably.
#[inline]
pub fn log_sum_exp(row: &[f32]) -> f32 {
    let (max, sum) = max_and_sum_exp(row);
    max + sum.ln()
}

/// Per-row parts of a distillation loss, as [`distillation_fused`] returns them (means).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DistillationLoss {
    /// `alpha * tau^2 * kl + (1 - alpha) * cross_entropy`: what the gradient is of.
    pub total: f32,
    /// `KL(softmax(teacher / tau) || softmax(logits / tau))`.
    pub kl: f32,
    /// The student's cross-entropy against the targets.
    pub cross_entropy: f32,
}

/// Knowledge distillation (Hinton et al. 2015, "Distilling the Knowledge in a Neural Network"):
/// per row, `alpha * tau^2 * KL(p_t || p_s) + (1 - alpha) * CE(logits, target)` with
/// `p_t = softmax(teacher / tau)` and `p_s = softmax(logits / tau)`; the `tau^2` keeps the soft
/// term's gradient on the scale of the hard one's. In the same pass the gradient is written over
/// the logits, times `grad_scale`:
/// `d/dz = alpha * tau * (p_s - p_t) + (1 - alpha) * (softmax(z) - onehot(target))`.
/// `cross_entropy` and `kl` (N) receive each row's two terms. Targets must be `< V` and `tau > 0`
/// (checked by the caller).
#[allow(clippy::too_many_arguments)]
pub fn distillation_fused(
    logits_dlogits: &mut [f32],
    teacher: &[f32],
    cross_entropy: &mut [f32],
    kl: &mut [f32],
    targets: &[u32],
    v: usize,
    (tau, alpha): (f32, f32),
    grad_scale: f32,
) -> DistillationLoss {
    let n = targets.len();
    let (ce_ptr, kl_ptr) = (crate::par::DisjointPtr::new(cross_entropy), crate::par::DisjointPtr::new(kl));
    for_each_row(&mut logits_dlogits[..n * v], v, |row, z| {
        let zt = &teacher[row * v..(row + 1) * v];
        let target = targets[row] as usize;
        let (max, max_t) = (fastmath::max(z), fastmath::max(zt));
        let lse = max + z.iter().map(|&x| exp(x - max)).sum::<f32>().ln();
        let lse_s = max / tau + z.iter().map(|&x| exp((x - max) / tau)).sum::<f32>().ln();
        let lse_t = max_t / tau + zt.iter().map(|&x| exp((x - max_t) / tau)).sum::<f32>().ln();
        let (hard, soft) = ((1.0 - alpha) * grad_scale, alpha * tau * grad_scale);
        let mut divergence = 0.0f32;
        let ce = lse - z[target];
        for (x, &t) in z.iter_mut().zip(zt) {
            let (log_ps, log_pt) = (*x / tau - lse_s, t / tau - lse_t);
            let pt = exp(log_pt);
            divergence += pt * (log_pt - log_ps);
            *x = hard * exp(*x - lse) + soft * (exp(log_ps) - pt);
        }
        z[target] -= hard;
        // SAFETY: each row index is visited by exactly one task.
        unsafe {
            ce_ptr.slice(row, 1)[0] = ce;
            kl_ptr.slice(row, 1)[0] = divergence;
        }
    });
    let (ce, divergence) =
        (fastmath::sum(&cross_entropy[..n]) / n as f32, fastmath::sum(&kl[..n]) / n as f32);
    DistillationLoss {
        total: alpha * tau * tau * divergence + (1.0 - alpha) * ce,
        kl: divergence,
        cross_entropy: ce,
    }
}
