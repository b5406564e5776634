//! Causal multi-head attention, FlashAttention-style (Dao et al. 2022, 2023): scores are made one
//! key block at a time with an online softmax, so memory is O(T) per head and the (T, T) matrix
//! never exists. Backward recomputes scores from the saved log-sum-exp. Grouped-query attention
//! (GQA/MQA) lets `NH / KVH` query heads share each key/value head. A sliding window (Mistral)
//! limits each query to its last `window` keys; tiles wholly outside it are skipped.
//!
//! Layout: `qkv (N, (NH + 2 KVH) * HS)` holds, per row, all query heads, then key heads, then value
//! heads, exactly as one fused projection produces them; `out (N, NH * HS)`; `lse (B, NH, T)`.

use crate::fastmath::{self, dot, exp};
use crate::lanes::F8;
// Tile products run on the calling thread (`parallel: false`): attention parallelises over heads.
use crate::matmul::{gemm_strided, Strided as Tile};
use crate::par::DisjointPtr;
use rayon::prelude::*;

/// Largest head size the kernels keep on the stack.
pub const MAX_HEAD_SIZE: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionShape {
    pub b: usize,
    pub t: usize,
    pub nh: usize,
    pub kvh: usize,
    pub hs: usize,
    /// Query `i` sees keys `j` with `i - window < j <= i`; `None` is plain causal attention.
    pub window: Option<usize>,
}

impl AttentionShape {
    /// The distance from which keys are masked.
    fn horizon(&self) -> usize {
        self.window.unwrap_or(usize::MAX)
    }

    /// The first key that any of the queries `i0..` sees, rounded down to a key tile.
    fn first_key_tile(&self, i0: usize) -> usize {
        (i0 + 1).saturating_sub(self.horizon()) / K_BLOCK * K_BLOCK
    }

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

    /// The kernels' preconditions: whole GQA groups, a head on the stack, biases that cover T.
    fn check(&self, bias: &ScoreBias) {
        assert!(
            self.kvh > 0 && self.nh.is_multiple_of(self.kvh),
            "{} query heads do not group over {} kv heads",
            self.nh,
            self.kvh
        );
        assert!(self.hs <= MAX_HEAD_SIZE, "head size {} exceeds {MAX_HEAD_SIZE}", self.hs);
        assert!(self.window != Some(0), "a sliding window holds at least the query itself");
        match bias {
            ScoreBias::None => {}
            ScoreBias::Alibi { slopes } => assert!(slopes.len() >= self.nh, "one ALiBi slope per head"),
            ScoreBias::Relative { bucket_of_distance, .. } => {
                let buckets = bias.buckets(self.nh);
                assert!(
                    bucket_of_distance.len() >= self.t,
                    "relative buckets cover {} distances, T is {}",
                    bucket_of_distance.len(),
                    self.t
                );
                assert!(
                    bucket_of_distance[..self.t].iter().all(|&b| (b as usize) < buckets),
                    "relative bucket out of range"
                );
            }
        }
    }
}

/// An additive bias on the scores of query `i` and key `j <= i`, by head.
#[derive(Debug, Clone, Copy)]
pub enum ScoreBias<'a> {
    None,
    /// ALiBi: `-slopes[h] * (i - j)`.
    Alibi {
        slopes: &'a [f32],
    },
    /// T5 relative bias: `table[bucket_of_distance[i - j] * NH + h]`, table (buckets, NH).
    Relative {
        table: &'a [f32],
        bucket_of_distance: &'a [u32],
    },
}

impl ScoreBias<'_> {
    /// Rows of the relative table (0 for other biases).
    fn buckets(&self, nh: usize) -> usize {
        match self {
            ScoreBias::Relative { table, .. } => table.len() / nh,
            ScoreBias::None | ScoreBias::Alibi { .. } => 0,
        }
    }

    #[inline(always)]
    fn at(&self, h: usize, nh: usize, distance: usize) -> f32 {
        match self {
            ScoreBias::None => 0.0,
            ScoreBias::Alibi { slopes } => -slopes[h] * distance as f32,
            ScoreBias::Relative { table, bucket_of_distance } => {
                table[bucket_of_distance[distance] as usize * nh + h]
            }
        }
    }
}

/// Queries and keys per tile: a (32, 256) score tile per thread (32 KiB). Key tiles are a multiple
/// of query tiles and both are aligned, so without a sliding window every query row sees at least
/// key `j0` of each key tile it visits; with one, a row may see none of a tile, and the online
/// softmax skips it. Wide key tiles mean few, larger tile products.
const Q_BLOCK: usize = 32;
const K_BLOCK: usize = 256;
const _: () = assert!(K_BLOCK.is_multiple_of(Q_BLOCK));

impl ScoreBias<'_> {
    /// Adds the bias to one (queries `i0..`, keys `j0..`) score tile and masks keys after the
    /// query or `horizon` or more before it.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn apply(
        &self,
        scores: &mut [f32],
        rows: usize,
        cols: usize,
        h: usize,
        nh: usize,
        i0: usize,
        j0: usize,
        horizon: usize,
    ) {
        for r in 0..rows {
            let i = i0 + r;
            let row = &mut scores[r * K_BLOCK..r * K_BLOCK + cols];
            for (c, s) in row.iter_mut().enumerate() {
                let j = j0 + c;
                *s = if j > i || i - j >= horizon { f32::NEG_INFINITY } else { *s + self.at(h, nh, i - j) };
            }
        }
    }
}

/// Forward. `out` and `lse` are written. Scores live in one (Q_BLOCK, K_BLOCK) tile per thread,
/// beside a (Q_BLOCK, HS) accumulator; nothing (T, T)-sized is allocated.
pub fn attention_forward(out: &mut [f32], lse: &mut [f32], qkv: &[f32], s: AttentionShape, bias: ScoreBias) {
    s.check(&bias);
    let AttentionShape { b, t, nh, kvh, hs, .. } = s;
    assert!(qkv.len() >= b * t * s.qkv_width() && out.len() >= b * t * nh * hs && lse.len() >= b * nh * t);
    let (width, group, scale) = (s.qkv_width() as isize, nh / kvh, 1.0 / (hs as f32).sqrt());
    let (out_ptr, lse_ptr) = (DisjointPtr::new(out), DisjointPtr::new(lse));
    (0..b * nh).into_par_iter().for_each(|task| {
        let (bi, h) = (task / nh, task % nh);
        let kh = h / group;
        let at = |i: usize, offset: usize| qkv[(bi * t + i) * width as usize + offset..].as_ptr();
        let mut scores = [0.0f32; Q_BLOCK * K_BLOCK];
        let mut acc = [0.0f32; Q_BLOCK * MAX_HEAD_SIZE];
        let (mut max, mut sum) = ([0.0f32; Q_BLOCK], [0.0f32; Q_BLOCK]);
        for i0 in (0..t).step_by(Q_BLOCK) {
            let rows = Q_BLOCK.min(t - i0);
            max[..rows].fill(f32::NEG_INFINITY);
            sum[..rows].fill(0.0);
            acc[..rows * hs].fill(0.0);
            let q = Tile { ptr: at(i0, s.q_offset(h)), rs: width, cs: 1 };
            for j0 in (s.first_key_tile(i0)..i0 + rows).step_by(K_BLOCK) {
                let cols = K_BLOCK.min(i0 + rows - j0);
                // K^T: element (d, j) of the tile is K[j0 + j][d].
                let kt = Tile { ptr: at(j0, s.k_offset(kh)), rs: 1, cs: width };
                let v = Tile { ptr: at(j0, s.v_offset(kh)), rs: width, cs: 1 };
                // SAFETY: q, kt, v stay inside qkv (asserted above); scores is this task's own.
                unsafe {
                    gemm_strided(rows, cols, hs, scores.as_mut_ptr(), K_BLOCK, false, q, kt, scale, false)
                };
                bias.apply(&mut scores, rows, cols, h, nh, i0, j0, s.horizon());
                // Online softmax: rescale what was accumulated under each row's old maximum.
                for r in 0..rows {
                    let row = &mut scores[r * K_BLOCK..r * K_BLOCK + cols];
                    let new_max = max[r].max(fastmath::max(row));
                    if new_max == f32::NEG_INFINITY {
                        // The whole tile is older than this row's window: nothing to add.
                        row.fill(0.0);
                        continue;
                    }
                    let correction = exp(max[r] - new_max);
                    row.iter_mut().for_each(|x| *x = exp(*x - new_max));
                    sum[r] = sum[r] * correction + fastmath::sum(row);
                    acc[r * hs..(r + 1) * hs].iter_mut().for_each(|a| *a *= correction);
                    max[r] = new_max;
                }
                let p = Tile { ptr: scores.as_ptr(), rs: K_BLOCK as isize, cs: 1 };
                // SAFETY: as above; acc is this task's own.
                unsafe { gemm_strided(rows, hs, cols, acc.as_mut_ptr(), hs, true, p, v, 1.0, false) };
            }
            for r in 0..rows {
                let i = i0 + r;
                // SAFETY: task (bi, h) alone writes head h of batch bi's rows and its lse entries.
                let (o, l) = unsafe {
                    (
                        out_ptr.slice((bi * t + i) * nh * hs + h * hs, hs),
                        lse_ptr.slice((bi * nh + h) * t + i, 1),
                    )
                };
                let inv = 1.0 / sum[r];
                for (o, a) in o.iter_mut().zip(&acc[r * hs..(r + 1) * hs]) {
                    *o = a * inv;
                }
                l[0] = max[r] + sum[r].ln();
            }
        }
    });
}

/// Backward (FlashAttention-2): scores are recomputed tile by tile from the saved log-sum-exp.
/// `dqkv` is written (every element). With a relative bias, `dbias_scratch (B, buckets, NH)` is
/// written and the caller sums it over B into the table's gradient.
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
    s.check(&bias);
    let AttentionShape { b, t, nh, kvh, hs, .. } = s;
    let (width, group, scale) = (s.qkv_width(), nh / kvh, 1.0 / (hs as f32).sqrt());
    assert!(qkv.len() >= b * t * width && dqkv.len() >= b * t * width && dout.len() >= b * t * nh * hs);
    dqkv[..b * t * width].fill(0.0);
    let buckets = bias.buckets(nh);
    if let Some(scratch) = dbias_scratch.as_deref() {
        assert!(scratch.len() >= b * buckets * nh, "relative-bias scratch needs (B, buckets, NH)");
    }
    if let Some(scratch) = dbias_scratch.as_deref_mut() {
        scratch.fill(0.0);
    }
    let dqkv_ptr = DisjointPtr::new(dqkv);
    let dbias_ptr = dbias_scratch.map(DisjointPtr::new);
    let (w, out_w) = (width as isize, (nh * hs) as isize);
    // One task per (batch, kv head): it owns dK and dV of that head and dQ of its query group.
    (0..b * kvh).into_par_iter().for_each(|task| {
        let (bi, kh) = (task / kvh, task % kvh);
        let at = |i: usize, offset: usize| qkv[(bi * t + i) * width + offset..].as_ptr();
        // SAFETY (for every `grad_at` write below): rows of batch bi, heads of group kh, are this task's.
        let grad_at = |i: usize, offset: usize| unsafe { dqkv_ptr.ptr((bi * t + i) * width + offset) };
        let mut p = [0.0f32; Q_BLOCK * K_BLOCK];
        let mut dscore = [0.0f32; Q_BLOCK * K_BLOCK];
        let mut delta = [0.0f32; Q_BLOCK];
        for h in kh * group..(kh + 1) * group {
            let head_out = |i: usize| (bi * t + i) * nh * hs + h * hs;
            for i0 in (0..t).step_by(Q_BLOCK) {
                let rows = Q_BLOCK.min(t - i0);
                for r in 0..rows {
                    delta[r] = dot(&dout[head_out(i0 + r)..][..hs], &out[head_out(i0 + r)..][..hs]);
                }
                let q = Tile { ptr: at(i0, s.q_offset(h)), rs: w, cs: 1 };
                let d_o = Tile { ptr: dout[head_out(i0)..].as_ptr(), rs: out_w, cs: 1 };
                for j0 in (s.first_key_tile(i0)..i0 + rows).step_by(K_BLOCK) {
                    let cols = K_BLOCK.min(i0 + rows - j0);
                    let k = Tile { ptr: at(j0, s.k_offset(kh)), rs: w, cs: 1 };
                    let kt = Tile { ptr: at(j0, s.k_offset(kh)), rs: 1, cs: w };
                    let vt = Tile { ptr: at(j0, s.v_offset(kh)), rs: 1, cs: w };
                    // SAFETY: operands stay inside qkv/dout (asserted above); p, dscore are ours.
                    unsafe {
                        gemm_strided(rows, cols, hs, p.as_mut_ptr(), K_BLOCK, false, q, kt, scale, false);
                        gemm_strided(
                            rows,
                            cols,
                            hs,
                            dscore.as_mut_ptr(),
                            K_BLOCK,
                            false,
                            d_o,
                            vt,
                            1.0,
                            false,
                        );
                    }
                    bias.apply(&mut p, rows, cols, h, nh, i0, j0, s.horizon());
                    // P = exp(S - lse); dS = P * (dP - rowsum(dO * O)).
                    for r in 0..rows {
                        let lse_i = lse[(bi * nh + h) * t + i0 + r];
                        let (p, ds) = (
                            &mut p[r * K_BLOCK..r * K_BLOCK + cols],
                            &mut dscore[r * K_BLOCK..r * K_BLOCK + cols],
                        );
                        for (p, ds) in p.iter_mut().zip(ds.iter_mut()) {
                            *p = exp(*p - lse_i);
                            *ds = *p * (*ds - delta[r]);
                        }
                    }
                    if let (Some(ptr), ScoreBias::Relative { bucket_of_distance, .. }) = (&dbias_ptr, &bias) {
                        for r in 0..rows {
                            for c in 0..cols.min(i0 + r + 1 - j0) {
                                let bucket = bucket_of_distance[i0 + r - (j0 + c)] as usize;
                                // SAFETY: scratch row bi, head h belongs to this task alone.
                                unsafe {
                                    ptr.slice((bi * buckets + bucket) * nh + h, 1)[0] +=
                                        dscore[r * K_BLOCK + c]
                                };
                            }
                        }
                    }
                    let ds = Tile { ptr: dscore.as_ptr(), rs: K_BLOCK as isize, cs: 1 };
                    let ds_t = Tile { ptr: dscore.as_ptr(), rs: 1, cs: K_BLOCK as isize };
                    let p_t = Tile { ptr: p.as_ptr(), rs: 1, cs: K_BLOCK as isize };
                    // SAFETY: dQ rows of head h, dK/dV rows of head kh, batch bi: this task's alone,
                    // in dqkv, which no operand aliases.
                    unsafe {
                        gemm_strided(
                            rows,
                            hs,
                            cols,
                            grad_at(i0, s.q_offset(h)),
                            width,
                            true,
                            ds,
                            k,
                            scale,
                            false,
                        );
                        gemm_strided(
                            cols,
                            hs,
                            rows,
                            grad_at(j0, s.k_offset(kh)),
                            width,
                            true,
                            ds_t,
                            q,
                            scale,
                            false,
                        );
                        gemm_strided(
                            cols,
                            hs,
                            rows,
                            grad_at(j0, s.v_offset(kh)),
                            width,
                            true,
                            p_t,
                            d_o,
                            1.0,
                            false,
                        );
                    }
                }
            }
        }
    });
}

/// Keys and values of one layer in a paged pool, rows `KVH * HS` wide. A sequence's position `j`
/// is row `blocks[j / block_size] * block_size + j % block_size` of `k` and `v`, where `blocks`
/// are its [`Segment::blocks`]. Sequences that share a prompt prefix share its blocks (vLLM's
/// PagedAttention).
#[derive(Debug, Clone, Copy)]
pub struct KvView<'a> {
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub block_size: usize,
}

/// New rows of one sequence in a batched decoding step: rows `row..row + n` of the queries and
/// outputs are positions `start..start + n` of a sequence whose keys and values live in `blocks`.
#[derive(Debug, Clone, Copy)]
pub struct Segment<'a> {
    pub blocks: &'a [u32],
    pub start: usize,
    pub n: usize,
    pub row: usize,
}

/// Positions whose scores [`attention_cached`] holds at once, and query heads whose running
/// softmax it keeps at once (on the stack: 8 KiB of accumulators).
const CACHED_RUN: usize = 64;
const CACHED_HEADS: usize = 8;

/// Attention of the new rows of several sequences against their cached keys and values
/// (incremental decoding, one continuous-batching step). Row `r` of a segment is at position
/// `start + r` and sees its sequence's positions `0..=start + r`, so the new rows' keys and values
/// must already be in `kv`. Query row `i` is `q[i * q_stride..]` (the fused qkv layout); the
/// segments' rows of `out (rows, NH * HS)` are written, others untouched. Of `s`, only the heads,
/// head size and window are used.
///
/// One task per segment (and per `CACHED_HEADS` query heads) for the whole batch, split over
/// threads when the batch is large enough. Keys and values are read a run of consecutive pool
/// rows at a time (within a block, at most `CACHED_RUN`: whole rows, one contiguous span that the
/// hardware prefetcher follows), and every query head consumes the run while it is in L1, each
/// with its own online softmax; no scratch depends on the length.
/// Work is O(start + n) per row and head, against O(T^2) for recomputing the sequence.
#[allow(clippy::too_many_arguments)]
pub fn attention_cached(
    out: &mut [f32],
    q: &[f32],
    q_stride: usize,
    kv: KvView,
    segments: &[Segment],
    s: AttentionShape,
    bias: ScoreBias,
) {
    let AttentionShape { nh, kvh, hs, .. } = s;
    let horizon = s.horizon();
    // Lengths are the segments' own (checked below): B and T of `s` are not used.
    AttentionShape { b: 1, t: 1, ..s }.check(&bias);
    let (kv_width, block_size, out_width) = (kvh * hs, kv.block_size, nh * hs);
    let pool_rows = kv.k.len().min(kv.v.len()) / kv_width;
    assert!(block_size > 0, "blocks hold at least one position");
    for seg in segments {
        let len = seg.start + seg.n;
        assert!(seg.blocks.len() * block_size >= len, "the blocks hold {len} positions");
        assert!(
            seg.blocks.iter().all(|&b| (b as usize + 1) * block_size <= pool_rows),
            "a block lies outside the pool"
        );
        assert!(seg.n == 0 || q.len() >= (seg.row + seg.n - 1) * q_stride + out_width, "queries too short");
        assert!(out.len() >= (seg.row + seg.n) * out_width, "out too short");
        if let ScoreBias::Relative { bucket_of_distance, .. } = bias {
            assert!(bucket_of_distance.len() >= len, "relative buckets cover {len} distances");
        }
    }
    assert!(
        segments.windows(2).all(|w| w[0].row + w[0].n <= w[1].row),
        "segments' rows overlap or are unsorted"
    );
    let (group, scale) = (nh / kvh, 1.0 / (hs as f32).sqrt());
    let out_ptr = DisjointPtr::new(out);
    let passes = nh.div_ceil(CACHED_HEADS);
    let task = |task: usize| {
        let (seg, h0) = (&segments[task / passes], task % passes * CACHED_HEADS);
        let heads = h0..nh.min(h0 + CACHED_HEADS);
        let mut scores = [0.0f32; CACHED_RUN];
        let mut acc = [0.0f32; CACHED_HEADS * MAX_HEAD_SIZE];
        let (mut max, mut sum) = ([0.0f32; CACHED_HEADS], [0.0f32; CACHED_HEADS]);
        for r in 0..seg.n {
            let i = seg.start + r;
            let query_row = &q[(seg.row + r) * q_stride..];
            max.fill(f32::NEG_INFINITY);
            sum.fill(0.0);
            acc[..heads.len() * hs].fill(0.0);
            // Consecutive pool rows from position j0 on: within its block, up to i, at most a run.
            let run_at = |j0: usize| {
                let offset = j0 % block_size;
                let run = (block_size - offset).min(i + 1 - j0).min(CACHED_RUN);
                let first_row = seg.blocks[j0 / block_size] as usize * block_size + offset;
                (run, first_row * kv_width..(first_row + run) * kv_width)
            };
            let mut j0 = (i + 1).saturating_sub(horizon);
            while j0 <= i {
                let (run, rows) = run_at(j0);
                let (keys, values) = (&kv.k[rows.clone()], &kv.v[rows]);
                if j0 + run <= i {
                    // The next run streams in (from L3 or memory) while this one is used.
                    let (_, next) = run_at(j0 + run);
                    F8::prefetch(&kv.k[next.clone()]);
                    F8::prefetch(&kv.v[next]);
                }
                let scores = &mut scores[..run];
                for (g, h) in heads.clone().enumerate() {
                    let head = (h / group) * hs..;
                    dot_rows(scores, &query_row[h * hs..][..hs], &keys[head.clone()], kv_width);
                    for (c, score) in scores.iter_mut().enumerate() {
                        *score = *score * scale + bias.at(h, nh, i - j0 - c);
                    }
                    // Online softmax: rescale what was accumulated under the old maximum.
                    let new_max = max[g].max(fastmath::max(scores));
                    let correction = exp(max[g] - new_max);
                    scores.iter_mut().for_each(|x| *x = exp(*x - new_max));
                    sum[g] = sum[g] * correction + fastmath::sum(scores);
                    let acc = &mut acc[g * hs..(g + 1) * hs];
                    acc.iter_mut().for_each(|a| *a *= correction);
                    add_weighted_rows(acc, scores, &values[head], kv_width);
                    max[g] = new_max;
                }
                j0 += run;
            }
            for (g, h) in heads.clone().enumerate() {
                // SAFETY: segments' rows are disjoint (asserted) and head h belongs to this task.
                let o = unsafe { out_ptr.slice((seg.row + r) * out_width + h * hs, hs) };
                let inv = 1.0 / sum[g];
                o.iter_mut().zip(&acc[g * hs..(g + 1) * hs]).for_each(|(o, a)| *o = a * inv);
            }
        }
    };
    // One decode step of a small model is microseconds of work: threads would cost more.
    const PARALLEL_WORK: usize = 1 << 16;
    let work: usize = segments.iter().map(|seg| seg.n * (seg.start + seg.n) * nh * hs).sum();
    let tasks = segments.len() * passes;
    if work >= PARALLEL_WORK {
        (0..tasks).into_par_iter().for_each(task);
    } else {
        (0..tasks).for_each(task);
    }
}

/// `scores[c] = query . rows[c * stride..][..HS]` for a run of key rows: eight keys at a time,
/// eight lanes of the head at a time, the eight dot products summed together.
#[inline(always)]
fn dot_rows(scores: &mut [f32], query: &[f32], rows: &[f32], stride: usize) {
    let hs = query.len();
    assert!(scores.is_empty() || rows.len() >= (scores.len() - 1) * stride + hs);
    let hs8 = hs / 8 * 8;
    let tail = |c: usize| (hs8..hs).map(|d| query[d] * rows[c * stride + d]).sum::<f32>();
    let mut c0 = 0;
    while c0 + 8 <= scores.len() {
        let mut acc = [F8::zero(); 8];
        for d in (0..hs8).step_by(8) {
            // SAFETY: d + 8 <= hs, and row c0 + 7 ends within `rows` (asserted).
            unsafe {
                let q = F8::load(query.as_ptr().add(d));
                for (c, acc) in acc.iter_mut().enumerate() {
                    *acc = acc.mul_add(q, F8::load(rows.as_ptr().add((c0 + c) * stride + d)));
                }
            }
        }
        // SAFETY: c0 + 8 <= scores.len().
        unsafe { F8::sums(acc).store(scores.as_mut_ptr().add(c0)) };
        if hs8 < hs {
            for (c, score) in scores[c0..c0 + 8].iter_mut().enumerate() {
                *score += tail(c0 + c);
            }
        }
        c0 += 8;
    }
    for (c, score) in scores.iter_mut().enumerate().skip(c0) {
        let mut acc = F8::zero();
        for d in (0..hs8).step_by(8) {
            // SAFETY: as above, for row c.
            unsafe {
                acc =
                    acc.mul_add(F8::load(query.as_ptr().add(d)), F8::load(rows.as_ptr().add(c * stride + d)))
            };
        }
        *score = acc.sum() + tail(c);
    }
}

/// `acc += sum_c p[c] * rows[c * stride..][..HS]` for a run of value rows: eight columns at a
/// time stay in a register across the run.
#[inline(always)]
fn add_weighted_rows(acc: &mut [f32], p: &[f32], rows: &[f32], stride: usize) {
    let hs = acc.len();
    assert!(p.is_empty() || rows.len() >= (p.len() - 1) * stride + hs);
    let hs8 = hs / 8 * 8;
    for d in (0..hs8).step_by(8) {
        // SAFETY: d + 8 <= hs, and row c ends within `rows` (asserted).
        unsafe {
            let mut a = F8::load(acc[d..].as_ptr());
            for (c, &p) in p.iter().enumerate() {
                a = a.mul_add(F8::splat(p), F8::load(rows.as_ptr().add(c * stride + d)));
            }
            a.store(acc[d..].as_mut_ptr());
        }
    }
    for (c, &p) in p.iter().enumerate() {
        for d in hs8..hs {
            acc[d] += p * rows[c * stride + d];
        }
    }
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
                let log_ratio =
                    (d as f32 / max_exact as f32).ln() / (max_distance as f32 / max_exact as f32).ln();
                let large = max_exact + (log_ratio * (buckets - max_exact) as f32) as usize;
                large.min(buckets - 1) as u32
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::close::{max_abs_diff, nan_max};
    use crate::rng::Rng;

    /// ALiBi slopes and a T5 table (8 buckets) for 4 heads, over up to 600 positions.
    struct BiasTables {
        slopes: Vec<f32>,
        table: Vec<f32>,
        buckets: Vec<u32>,
    }

    impl BiasTables {
        fn new() -> Self {
            BiasTables {
                slopes: alibi_slopes(4),
                table: (0..8 * 4).map(|i| (i as f32 * 0.37).sin()).collect(),
                buckets: relative_buckets(600, 8, 40),
            }
        }

        /// None, ALiBi and relative, in that order.
        fn biases(&self) -> [ScoreBias<'_>; 3] {
            [
                ScoreBias::None,
                ScoreBias::Alibi { slopes: &self.slopes },
                ScoreBias::Relative { table: &self.table, bucket_of_distance: &self.buckets },
            ]
        }
    }

    /// Plain (T, T) attention in f64, forward and backward, for comparison.
    /// Returns out, dqkv and the relative table's gradient (buckets, NH).
    fn reference(
        qkv: &[f32],
        dout: &[f32],
        s: AttentionShape,
        bias: &ScoreBias,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let AttentionShape { b, t, nh, kvh, hs, .. } = s;
        let (width, group, scale) = (s.qkv_width(), nh / kvh, 1.0 / (hs as f64).sqrt());
        let masked = |i: usize, j: usize| i - j >= s.horizon();
        let mut out = vec![0.0; b * t * nh * hs];
        let mut dqkv = vec![0.0; b * t * width];
        let mut dtable = vec![0.0; bias.buckets(nh) * nh];
        let x = |bi: usize, i: usize, off: usize, d: usize| qkv[(bi * t + i) * width + off + d] as f64;
        for bi in 0..b {
            for h in 0..nh {
                let kh = h / group;
                for i in 0..t {
                    let scores: Vec<f64> = (0..=i)
                        .map(|j| {
                            if masked(i, j) {
                                return f64::NEG_INFINITY;
                            }
                            let dot: f64 = (0..hs)
                                .map(|d| x(bi, i, s.q_offset(h), d) * x(bi, j, s.k_offset(kh), d))
                                .sum();
                            dot * scale + bias.at(h, nh, i - j) as f64
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, nan_max);
                    let total: f64 = scores.iter().map(|s| (s - max).exp()).sum();
                    let p: Vec<f64> = scores.iter().map(|s| (s - max).exp() / total).collect();
                    let o = (bi * t + i) * nh * hs + h * hs;
                    for d in 0..hs {
                        out[o + d] = (0..=i).map(|j| p[j] * x(bi, j, s.v_offset(kh), d)).sum();
                    }
                    let dp: Vec<f64> = (0..=i)
                        .map(|j| (0..hs).map(|d| dout[o + d] as f64 * x(bi, j, s.v_offset(kh), d)).sum())
                        .collect();
                    let delta: f64 = (0..=i).map(|j| p[j] * dp[j]).sum();
                    for j in 0..=i {
                        if let ScoreBias::Relative { bucket_of_distance, .. } = bias {
                            dtable[bucket_of_distance[i - j] as usize * nh + h] += p[j] * (dp[j] - delta);
                        }
                        let ds = p[j] * (dp[j] - delta) * scale;
                        for d in 0..hs {
                            dqkv[(bi * t + i) * width + s.q_offset(h) + d] +=
                                ds * x(bi, j, s.k_offset(kh), d);
                            dqkv[(bi * t + j) * width + s.k_offset(kh) + d] +=
                                ds * x(bi, i, s.q_offset(h), d);
                            dqkv[(bi * t + j) * width + s.v_offset(kh) + d] += p[j] * dout[o + d] as f64;
                        }
                    }
                }
            }
        }
        (out, dqkv, dtable)
    }

    /// Several query and key tiles (K_BLOCK = 256, so T = 600 crosses two key-tile boundaries and
    /// rescales the online softmax), ragged last tiles, GQA/MQA, each bias and sliding windows,
    /// against the (T, T) reference, including the relative table's gradient.
    #[test]
    fn tiled_attention_matches_the_quadratic_reference() {
        let tables = BiasTables::new();
        let biases = tables.biases();
        for (s, bias) in [
            (AttentionShape { b: 2, t: 150, nh: 4, kvh: 2, hs: 16, window: None }, &biases[0]),
            (AttentionShape { b: 1, t: 600, nh: 4, kvh: 2, hs: 8, window: None }, &biases[0]),
            (AttentionShape { b: 1, t: 555, nh: 4, kvh: 1, hs: 8, window: None }, &biases[1]),
            (AttentionShape { b: 2, t: 600, nh: 4, kvh: 4, hs: 8, window: None }, &biases[2]),
            (AttentionShape { b: 1, t: 70, nh: 4, kvh: 4, hs: 8, window: None }, &biases[2]),
            // Windows: tiles skipped, rows with no key in a visited tile, a query seeing only itself.
            (AttentionShape { b: 1, t: 600, nh: 4, kvh: 2, hs: 8, window: Some(300) }, &biases[0]),
            (AttentionShape { b: 2, t: 333, nh: 4, kvh: 1, hs: 8, window: Some(40) }, &biases[1]),
            (AttentionShape { b: 1, t: 70, nh: 4, kvh: 4, hs: 8, window: Some(1) }, &biases[2]),
        ] {
            let mut rng = Rng::new(5);
            let qkv: Vec<f32> = (0..s.b * s.t * s.qkv_width()).map(|_| rng.normal()).collect();
            let dout: Vec<f32> = (0..s.b * s.t * s.nh * s.hs).map(|_| rng.normal()).collect();
            let (mut out, mut lse, mut dqkv) =
                (vec![0.0; dout.len()], vec![0.0; s.b * s.nh * s.t], vec![0.0; qkv.len()]);
            attention_forward(&mut out, &mut lse, &qkv, s, *bias);
            let mut dbias = vec![0.0; s.b * bias.buckets(s.nh) * s.nh];
            let dbias_arg = matches!(bias, ScoreBias::Relative { .. }).then_some(&mut dbias[..]);
            attention_backward(&mut dqkv, dbias_arg, &dout, &qkv, &out, &lse, s, *bias);
            let mut dtable = vec![0.0f32; bias.buckets(s.nh) * s.nh];
            for partial in dbias.chunks_exact(dtable.len().max(1)) {
                dtable.iter_mut().zip(partial).for_each(|(d, p)| *d += p);
            }
            let (want_out, want_dqkv, want_dtable) = reference(&qkv, &dout, s, bias);
            for (name, got, want) in
                [("out", &out, &want_out), ("dqkv", &dqkv, &want_dqkv), ("dtable", &dtable, &want_dtable)]
            {
                let max_diff = max_abs_diff(got, want);
                assert!(max_diff <= 2e-4, "{s:?} {name}: max diff {max_diff:e}");
            }
        }
    }

    /// Decoding from a paged cache gives the rows the full causal kernel gives: every bias, GQA, a
    /// sliding window, a first chunk, later chunks and single tokens, one segment per call and all
    /// in one call; blocks shorter and longer than the kernel's run of scores; head sizes that are
    /// and are not multiples of the lane count. Unused pool rows are NaN, so reading a wrong row
    /// shows.
    #[test]
    fn cached_attention_matches_the_full_kernel() {
        let tables = BiasTables::new();
        let biases = tables.biases();
        for (kvh, bias, window, block_size, hs) in [
            (2, &biases[0], None, 16, 16),
            (1, &biases[1], None, 16, 12),
            (4, &biases[2], None, 100, 16),
            (2, &biases[0], Some(50), 16, 5),
            (2, &biases[1], Some(90), 100, 40),
            (2, &biases[2], Some(70), 3, 16),
        ] {
            let s = AttentionShape { b: 1, t: 300, nh: 4, kvh, hs, window };
            let width = s.qkv_width();
            let mut rng = Rng::new(11);
            let qkv: Vec<f32> = (0..s.t * width).map(|_| rng.normal()).collect();
            let (mut want, mut lse) = (vec![0.0; s.t * s.nh * s.hs], vec![0.0; s.nh * s.t]);
            attention_forward(&mut want, &mut lse, &qkv, s, *bias);
            // The sequence's blocks, in the pool in reverse order after two spare blocks.
            let kv_width = kvh * s.hs;
            let n_blocks = s.t.div_ceil(block_size);
            let blocks: Vec<u32> = (0..n_blocks as u32).rev().map(|b| b + 2).collect();
            let pool_rows = (n_blocks + 2) * block_size;
            let (mut k, mut v) = (vec![f32::NAN; pool_rows * kv_width], vec![f32::NAN; pool_rows * kv_width]);
            for i in 0..s.t {
                let row = blocks[i / block_size] as usize * block_size + i % block_size;
                k[row * kv_width..][..kv_width]
                    .copy_from_slice(&qkv[i * width + s.k_offset(0)..][..kv_width]);
                v[row * kv_width..][..kv_width]
                    .copy_from_slice(&qkv[i * width + s.v_offset(0)..][..kv_width]);
            }
            let kv = KvView { k: &k, v: &v, block_size };
            let row = s.nh * s.hs;
            let chunks = [(0, 7), (7, 1), (8, 120), (128, 1), (299, 1)];
            let check = |got: &[f32], start: usize, n: usize| {
                let max_diff = max_abs_diff(got, &want[start * row..(start + n) * row]);
                assert!(
                    max_diff <= 1e-5,
                    "kvh {kvh} {window:?} blocks of {block_size}, start {start} n {n}: max diff {max_diff:e}"
                );
            };
            for (start, n) in chunks {
                let mut got = vec![0.0; n * row];
                let segment = Segment { blocks: &blocks, start, n, row: 0 };
                attention_cached(&mut got, &qkv[start * width..], width, kv, &[segment], s, *bias);
                check(&got, start, n);
            }
            // Every chunk as a segment of one batch, its queries gathered in batch order.
            let mut q = Vec::new();
            let mut segments = Vec::new();
            for (start, n) in chunks {
                segments.push(Segment { blocks: &blocks, start, n, row: q.len() / width });
                q.extend_from_slice(&qkv[start * width..(start + n) * width]);
            }
            let mut got = vec![0.0; q.len() / width * row];
            attention_cached(&mut got, &q, width, kv, &segments, s, *bias);
            for (seg, (start, n)) in segments.iter().zip(chunks) {
                check(&got[seg.row * row..(seg.row + n) * row], start, n);
            }
        }
    }
}
