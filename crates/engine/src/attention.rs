//! Causal multi-head attention, FlashAttention-style (Dao et al. 2022, 2023): scores are made one
//! key block at a time with an online softmax, so memory is O(T) per head and the (T, T) matrix
//! never exists. Backward recomputes scores from the saved log-sum-exp. Grouped-query attention
//! (GQA/MQA) lets `NH / KVH` query heads share each key/value head.
//!
//! Layout: `qkv (N, (NH + 2 KVH) * HS)` holds, per row, all query heads, then key heads, then value
//! heads, exactly as one fused projection produces them; `out (N, NH * HS)`; `lse (B, NH, T)`.

use crate::fastmath::{axpy, dot, exp};
use crate::par::DisjointPtr;
use rayon::prelude::*;

/// Largest head size the kernels keep on the stack.
pub const MAX_HEAD_SIZE: usize = 256;
const KEY_BLOCK: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionShape {
    pub b: usize,
    pub t: usize,
    pub nh: usize,
    pub kvh: usize,
    pub hs: usize,
}

impl AttentionShape {
    pub fn qkv_width(&self) -> usize {
        (self.nh + 2 * self.kvh) * self.hs
    }

    fn q_offset(&self, h: usize) -> usize {
        h * self.hs
    }

    fn k_offset(&self, kh: usize) -> usize {
        (self.nh + kh) * self.hs
    }

    fn v_offset(&self, kh: usize) -> usize {
        (self.nh + self.kvh + kh) * self.hs
    }
}

/// An additive bias on the scores of query `i` and key `j <= i`, by head.
#[derive(Debug, Clone, Copy)]
pub enum ScoreBias<'a> {
    None,
    /// ALiBi: `-slopes[h] * (i - j)`.
    Alibi { slopes: &'a [f32] },
    /// T5 relative bias: `table[bucket_of_distance[i - j] * NH + h]`, table (buckets, NH).
    Relative { table: &'a [f32], bucket_of_distance: &'a [u32] },
}

impl ScoreBias<'_> {
    #[inline(always)]
    fn at(&self, h: usize, nh: usize, distance: usize) -> f32 {
        match self {
            ScoreBias::None => 0.0,
            ScoreBias::Alibi { slopes } => -slopes[h] * distance as f32,
            ScoreBias::Relative { table, bucket_of_distance } => table[bucket_of_distance[distance] as usize * nh + h],
        }
    }
}

/// Forward. `out` and `lse` are written; nothing (T, T)-sized is allocated.
pub fn attention_forward(out: &mut [f32], lse: &mut [f32], qkv: &[f32], s: AttentionShape, bias: ScoreBias) {
    let AttentionShape { b, t, nh, kvh, hs } = s;
    assert!(hs <= MAX_HEAD_SIZE, "head size {hs} exceeds {MAX_HEAD_SIZE}");
    let (width, group, scale) = (s.qkv_width(), nh / kvh, 1.0 / (hs as f32).sqrt());
    let (out_ptr, lse_ptr) = (DisjointPtr::new(out), DisjointPtr::new(lse));
    (0..b * nh).into_par_iter().for_each(|task| {
        let (bi, h) = (task / nh, task % nh);
        let kh = h / group;
        let row = |i: usize| (bi * t + i) * width;
        let mut acc = [0.0f32; MAX_HEAD_SIZE];
        let mut scores = [0.0f32; KEY_BLOCK];
        for i in 0..t {
            let q = &qkv[row(i) + s.q_offset(h)..][..hs];
            let acc = &mut acc[..hs];
            acc.fill(0.0);
            let (mut max, mut sum) = (f32::NEG_INFINITY, 0.0f32);
            for j0 in (0..=i).step_by(KEY_BLOCK) {
                let j1 = (j0 + KEY_BLOCK).min(i + 1);
                let mut block_max = f32::NEG_INFINITY;
                for j in j0..j1 {
                    let k = &qkv[row(j) + s.k_offset(kh)..][..hs];
                    let score = dot(q, k) * scale + bias.at(h, nh, i - j);
                    scores[j - j0] = score;
                    block_max = block_max.max(score);
                }
                // Online softmax: rescale what was accumulated under the old maximum.
                let new_max = max.max(block_max);
                let correction = exp(max - new_max);
                sum *= correction;
                acc.iter_mut().for_each(|a| *a *= correction);
                for j in j0..j1 {
                    let p = exp(scores[j - j0] - new_max);
                    sum += p;
                    axpy(acc, p, &qkv[row(j) + s.v_offset(kh)..][..hs]);
                }
                max = new_max;
            }
            // SAFETY: task (bi, h) alone writes head h of batch bi's rows and its lse entries.
            let (o, l) = unsafe {
                (out_ptr.slice((bi * t + i) * nh * hs + h * hs, hs), lse_ptr.slice((bi * nh + h) * t + i, 1))
            };
            let inv = 1.0 / sum;
            for (o, a) in o.iter_mut().zip(acc.iter()) {
                *o = a * inv;
            }
            l[0] = max + sum.ln();
        }
    });
}

/// Backward. `dqkv` is written (every element, including heads of other rows' layout).
/// With a relative bias, `dbias_scratch (B, buckets, NH)` is written and the caller sums it over B
/// into the table's gradient; tasks cannot share one accumulator.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    dqkv: &mut [f32],
    mut dbias_scratch: Option<&mut [f32]>,
    dout: &[f32],
    qkv: &[f32],
    out: &[f32],
    lse: &[f32],
    s: AttentionShape,
    bias: ScoreBias,
) {
    let AttentionShape { b, t, nh, kvh, hs } = s;
    let (width, group, scale) = (s.qkv_width(), nh / kvh, 1.0 / (hs as f32).sqrt());
    dqkv[..b * t * width].fill(0.0);
    let buckets = dbias_scratch.as_ref().map_or(0, |d| d.len() / (b * nh));
    if let Some(scratch) = dbias_scratch.as_deref_mut() {
        scratch.fill(0.0);
    }
    let dqkv_ptr = DisjointPtr::new(dqkv);
    let dbias_ptr = dbias_scratch.map(DisjointPtr::new);
    // One task per (batch, kv head): it owns dK and dV of that head and dQ of its query group.
    (0..b * kvh).into_par_iter().for_each(|task| {
        let (bi, kh) = (task / kvh, task % kvh);
        let row = |i: usize| (bi * t + i) * width;
        for h in kh * group..(kh + 1) * group {
            for i in 0..t {
                let q = &qkv[row(i) + s.q_offset(h)..][..hs];
                let o = &out[(bi * t + i) * nh * hs + h * hs..][..hs];
                let dout_i = &dout[(bi * t + i) * nh * hs + h * hs..][..hs];
                let lse_i = lse[(bi * nh + h) * t + i];
                let delta = dot(dout_i, o);
                // SAFETY: (bi, kh) tasks are disjoint in the rows of batch bi and heads of group kh.
                let dq = unsafe { dqkv_ptr.slice(row(i) + s.q_offset(h), hs) };
                for j in 0..=i {
                    let k = &qkv[row(j) + s.k_offset(kh)..][..hs];
                    let v = &qkv[row(j) + s.v_offset(kh)..][..hs];
                    let p = exp(dot(q, k) * scale + bias.at(h, nh, i - j) - lse_i);
                    let dscore = p * (dot(dout_i, v) - delta);
                    // SAFETY: as above; dk/dv of row j are distinct from dq of row i (different heads).
                    let (dk, dv) =
                        unsafe { (dqkv_ptr.slice(row(j) + s.k_offset(kh), hs), dqkv_ptr.slice(row(j) + s.v_offset(kh), hs)) };
                    axpy(dv, p, dout_i);
                    axpy(dq, dscore * scale, k);
                    axpy(dk, dscore * scale, q);
                    if let (Some(ptr), ScoreBias::Relative { bucket_of_distance, .. }) = (&dbias_ptr, &bias) {
                        let bucket = bucket_of_distance[i - j] as usize;
                        // SAFETY: scratch row bi, head h belongs to this task alone.
                        unsafe { ptr.slice((bi * buckets + bucket) * nh + h, 1)[0] += dscore };
                    }
                }
            }
        }
    });
}

/// ALiBi slopes for `nh` heads (Press et al. 2022, with their interpolation for non-powers of 2).
pub fn alibi_slopes(nh: usize) -> Vec<f32> {
    fn power_of_two_slopes(n: usize) -> Vec<f32> {
        let start = 2f64.powf(-8.0 / n as f64);
        (1..=n).map(|i| start.powi(i as i32) as f32).collect()
    }
    let closest = 1usize << (usize::BITS - 1 - nh.leading_zeros());
    let mut slopes = power_of_two_slopes(closest);
    if closest < nh {
        slopes.extend(power_of_two_slopes(2 * closest).into_iter().step_by(2).take(nh - closest));
    }
    slopes
}

/// T5's causal relative-position bucket of each distance `0..max_t` (HF `_relative_position_bucket`
/// with `bidirectional=False`): exact buckets for small distances, log-spaced up to `max_distance`.
pub fn relative_buckets(max_t: usize, buckets: usize, max_distance: usize) -> Vec<u32> {
    let max_exact = buckets / 2;
    (0..max_t)
        .map(|d| {
            if d < max_exact {
                d as u32
            } else {
                let log_ratio = (d as f32 / max_exact as f32).ln() / (max_distance as f32 / max_exact as f32).ln();
                let large = max_exact + (log_ratio * (buckets - max_exact) as f32) as usize;
                large.min(buckets - 1) as u32
            }
        })
        .collect()
}
