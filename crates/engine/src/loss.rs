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
