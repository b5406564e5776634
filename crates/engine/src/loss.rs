//! Softmax cross-entropy, fused with its backward so the (N, V) probabilities never exist
//! separately from the logits.

use crate::fastmath::exp;
use crate::par::for_each_row;

/// Mean cross-entropy of `logits (N, V)` against `targets (N)`, and in the same pass
/// `dlogits = (softmax(logits) - onehot(target)) * grad_scale`, written over the logits.
/// `losses (N)` receives each row's loss. Targets must be `< V` (checked by the caller).
pub fn cross_entropy_fused(logits_dlogits: &mut [f32], losses: &mut [f32], targets: &[u32], v: usize, grad_scale: f32) -> f32 {
    let n = targets.len();
    let losses_ptr = crate::par::DisjointPtr::new(losses);
    for_each_row(&mut logits_dlogits[..n * v], v, |row, logits| {
        let (max, sum) = max_and_sum_exp(logits);
        let target = targets[row] as usize;
        // SAFETY: each row index is visited by exactly one task.
        unsafe { losses_ptr.slice(row, 1)[0] = max + sum.ln() - logits[target] };
        let inv_sum = grad_scale / sum;
        for l in logits.iter_mut() {
            *l = exp(*l - max) * inv_sum;
        }
        logits[target] -= grad_scale;
    });
    losses[..n].iter().sum::<f32>() / n as f32
}

/// `losses[n] = -log softmax(logits[n])[targets[n]]`, forward only; returns the mean.
pub fn cross_entropy(losses: &mut [f32], logits: &[f32], targets: &[u32], v: usize) -> f32 {
    for ((loss, row), &target) in losses.iter_mut().zip(logits.chunks_exact(v)).zip(targets) {
        let (max, sum) = max_and_sum_exp(row);
        *loss = max + sum.ln() - row[target as usize];
    }
    losses.iter().sum::<f32>() / targets.len() as f32
}

/// Row maximum and `sum(exp(x - max))`, the two halves of a stable log-sum-exp.
#[inline]
pub fn max_and_sum_exp(row: &[f32]) -> (f32, f32) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    (max, row.iter().map(|&x| exp(x - max)).sum())
}

/// In-place softmax of one row.
pub fn softmax_inplace(row: &mut [f32]) {
    let (max, sum) = max_and_sum_exp(row);
    let inv = 1.0 / sum;
    for x in row.iter_mut() {
        *x = exp(*x - max) * inv;
    }
}
