//! Causal self-attention: fused QKV projection, positional treatment of scores (RoPE, ALiBi, T5
//! relative bias), tiled online-softmax attention with GQA/MQA, and the output projection.

use std::borrow::Cow;

use truthgpt_config::{ModelConfig, Positional, RopeScalingKind};
pub use truthgpt_engine::attention::Segment;
use truthgpt_engine::attention::{self as kernel, AttentionShape, KvView, ScoreBias};
use truthgpt_engine::rope::{self, RopeTable};

use crate::linear::Linear;
use crate::paged::LayerKv;
use crate::params::{Grads, Init, ParamBuilder, P};

// Config validation promises the kernels every head size it accepts.
const _: () = assert!(truthgpt_config::MAX_HEAD_SIZE == kernel::MAX_HEAD_SIZE);

/// How positions act inside attention (learned and sinusoidal act on the embeddings instead).
#[derive(Debug, Clone)]
enum ScorePositions {
    None,
    Rope(Rope),
    Alibi(Vec<f32>),
    /// Learned (buckets, NH) table, and the bucket of every distance.
    Relative {
        table: P,
        bucket_of_distance: Vec<u32>,
        buckets: usize,
    },
}

#[derive(Debug, Clone)]
pub struct Attention {
    pub qkv: Linear,
    pub proj: Linear,
    nh: usize,
    kvh: usize,
    hs: usize,
    window: Option<usize>,
    positions: ScorePositions,
}

/// Saved for backward: `qkv (N, (NH + 2 KVH) HS)` after RoPE, `out (N, NH HS)`, `lse (B, NH, T)`.
#[derive(Debug, Clone)]
pub struct AttentionActs {
    pub qkv: Vec<f32>,
    pub out: Vec<f32>,
    pub lse: Vec<f32>,
}

/// Incremental decoding: this layer's slice of the paged key/value pool and the segments the rows
/// belong to, one per sequence, in row order ([`Segment`]: each continues a sequence whose
/// earlier positions are already in the pool). `decoding` are those that continue a sequence or
/// add one row to it; the others are fresh prompts, which the tiled kernel runs.
#[derive(Debug)]
pub struct Cached<'a> {
    pub kv: &'a mut LayerKv,
    pub block_size: usize,
    pub segments: &'a [Segment<'a>],
    pub decoding: &'a [Segment<'a>],
}

/// Whether a segment is best run as a whole causal forward (a fresh prompt) rather than against
/// the cache.
pub fn is_fresh_prompt(segment: &Segment) -> bool {
    segment.start == 0 && segment.n > 1
}

/// Backward scratch shared by all layers.
#[derive(Debug, Clone)]
pub struct AttentionScratch {
    dqkv: Vec<f32>,
    dout: Vec<f32>,
    /// (B, buckets, NH) per-batch partial gradients of the relative bias table.
    dbias: Vec<f32>,
}

impl Attention {
    pub fn new(pb: &mut ParamBuilder, m: &ModelConfig, proj_std: f32) -> Self {
        let (nh, kvh, hs) = (m.n_heads, m.n_kv_heads, m.head_dim());
        pb.scope("attn", |pb| {
            let qkv_bias = m.bias || m.qkv_bias;
            let qkv = Linear::new(pb, "qkv", m.d_model, (nh + 2 * kvh) * hs, qkv_bias, m.init_std);
            let proj = Linear::new(pb, "proj", nh * hs, m.d_model, m.bias, proj_std);
            let positions = match m.positional {
                Positional::Learned | Positional::Sinusoidal => ScorePositions::None,
                Positional::Rope => ScorePositions::Rope(Rope::new(m)),
                Positional::Alibi => ScorePositions::Alibi(kernel::alibi_slopes(nh)),
                Positional::Relative => ScorePositions::Relative {
                    table: pb.add_undecayed(
                        "relative_bias",
                        &[m.relative_buckets, nh],
                        Init::Normal(m.init_std),
                    ),
                    bucket_of_distance: kernel::relative_buckets(
                        m.max_seq_len,
                        m.relative_buckets,
                        m.relative_max_distance,
                    ),
                    buckets: m.relative_buckets,
                },
            };
            Attention { qkv, proj, nh, kvh, hs, window: m.sliding_window, positions }
        })
    }

    fn shape(&self, b: usize, t: usize) -> AttentionShape {
        AttentionShape { b, t, nh: self.nh, kvh: self.kvh, hs: self.hs, window: self.window }
    }

    pub fn acts(&self, b: usize, t: usize) -> AttentionActs {
        let n = b * t;
        AttentionActs {
            qkv: vec![0.0; n * self.qkv.out],
            out: vec![0.0; n * self.nh * self.hs],
            lse: vec![0.0; b * self.nh * t],
        }
    }

    pub fn scratch(&self, b: usize, t: usize) -> AttentionScratch {
        let buckets = match &self.positions {
            ScorePositions::Relative { buckets, .. } => *buckets,
            _ => 0,
        };
        AttentionScratch {
            dqkv: vec![0.0; b * t * self.qkv.out],
            dout: vec![0.0; b * t * self.nh * self.hs],
            dbias: vec![0.0; b * buckets * self.nh],
        }
    }

    fn bias<'a>(&'a self, params: &'a [f32]) -> ScoreBias<'a> {
        match &self.positions {
            ScorePositions::None | ScorePositions::Rope(_) => ScoreBias::None,
            ScorePositions::Alibi(slopes) => ScoreBias::Alibi { slopes },
            ScorePositions::Relative { table, bucket_of_distance, .. } => {
                ScoreBias::Relative { table: table.of(params), bucket_of_distance }
            }
        }
    }

    /// `y (N, C) = proj(attention(qkv(x)))`; `x` is the normalised input. With `cached` the rows
    /// are segments of sequences being decoded (B = 1): their keys and values are written to the
    /// pool first, then each segment attends to its sequence so far.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        params: &[f32],
        acts: &mut AttentionActs,
        y: &mut [f32],
        x: &[f32],
        b: usize,
        t: usize,
        cached: Option<Cached>,
    ) {
        let (n, width) = (b * t, self.qkv.out);
        self.qkv.forward(params, &mut acts.qkv, x, n);
        let bias = self.bias(params);
        match cached {
            None => {
                if let ScorePositions::Rope(rope) = &self.positions {
                    let table = rope.table(0, t);
                    table.apply(&mut acts.qkv[..n * width], width, 0, self.nh + self.kvh, t, 0, false);
                }
                kernel::attention_forward(&mut acts.out, &mut acts.lse, &acts.qkv, self.shape(b, t), bias);
            }
            Some(Cached { kv, block_size, segments, decoding }) => {
                let out_width = self.nh * self.hs;
                for segment in segments {
                    let rows = &mut acts.qkv[segment.row * width..(segment.row + segment.n) * width];
                    if let ScorePositions::Rope(rope) = &self.positions {
                        let table = rope.table(segment.start, segment.n);
                        table.apply(rows, width, 0, self.nh + self.kvh, segment.n, segment.start, false);
                    }
                    self.append_kv(kv, block_size, segment, rows);
                }
                for segment in segments.iter().filter(|segment| is_fresh_prompt(segment)) {
                    let (qkv, out) =
                        (&acts.qkv[segment.row * width..], &mut acts.out[segment.row * out_width..]);
                    kernel::attention_forward(out, &mut acts.lse, qkv, self.shape(1, segment.n), bias);
                }
                let view = KvView { k: &kv.k, v: &kv.v, block_size };
                kernel::attention_cached(
                    &mut acts.out,
                    &acts.qkv,
                    width,
                    view,
                    decoding,
                    self.shape(1, 1),
                    bias,
                );
            }
        }
        self.proj.forward(params, y, &acts.out, n);
    }

    /// Copies the key and value heads of a segment's qkv rows into its blocks of the pool.
    fn append_kv(&self, kv: &mut LayerKv, block_size: usize, segment: &Segment, qkv: &[f32]) {
        let (kv_width, k_offset) = (self.kvh * self.hs, self.nh * self.hs);
        for (r, row) in qkv.chunks_exact(self.qkv.out).enumerate() {
            let position = segment.start + r;
            let at = (segment.blocks[position / block_size] as usize * block_size + position % block_size)
                * kv_width;
            kv.k[at..at + kv_width].copy_from_slice(&row[k_offset..k_offset + kv_width]);
            kv.v[at..at + kv_width].copy_from_slice(&row[k_offset + kv_width..k_offset + 2 * kv_width]);
        }
    }

    /// `dx` (gradient of the normalised input) is written; parameter gradients accumulate.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        params: &[f32],
        grads: &mut Grads,
        scratch: &mut AttentionScratch,
        acts: &AttentionActs,
        dx: &mut [f32],
        dy: &[f32],
        x: &[f32],
        b: usize,
        t: usize,
    ) {
        let (n, shape) = (b * t, self.shape(b, t));
        self.proj.backward(params, grads, Some(&mut scratch.dout), dy, &acts.out, n, false);
        let dbias = match &self.positions {
            ScorePositions::Relative { .. } => Some(&mut scratch.dbias[..]),
            _ => None,
        };
        kernel::attention_backward(
            &mut scratch.dqkv,
            dbias,
            &scratch.dout,
            &acts.qkv,
            &acts.out,
            &acts.lse,
            shape,
            self.bias(params),
        );
        match &self.positions {
            ScorePositions::Rope(rope) => rope.table(0, t).apply(
                &mut scratch.dqkv[..n * self.qkv.out],
                self.qkv.out,
                0,
                self.nh + self.kvh,
                t,
                0,
                true,
            ),
            ScorePositions::Relative { table, .. } => {
                if let Some(dtable) = grads.of_mut(*table) {
                    for partial in scratch.dbias.chunks_exact(dtable.len()) {
                        for (d, p) in dtable.iter_mut().zip(partial) {
                            *d += p;
                        }
                    }
                }
            }
            ScorePositions::None | ScorePositions::Alibi(_) => {}
        }
        // The RoPE'd qkv is what was saved, but the projection's input is x, so this is exact.
        self.qkv.backward(params, grads, Some(dx), &scratch.dqkv, x, n, false);
    }
}

/// RoPE with its context scaling: one table for every position up to `max_seq_len`, except that
/// dynamic NTK changes the frequencies with the length of the sequence once it passes the
/// original context.
#[derive(Debug, Clone)]
struct Rope {
    /// Positions `0..min(max_seq_len, PRECOMPUTED)`.
    table: RopeTable,
    inv_freq: Vec<f32>,
    dynamic: Option<DynamicNtk>,
}

/// Positions each layer keeps rotations for; longer sequences compute theirs per forward. A
/// table for all of Llama 3.1's 131,072 positions would take 67 MB per layer.
const PRECOMPUTED: usize = 4096;

/// HF's `dynamic` scaling: a sequence of length `L > original` uses base
/// `theta (factor L / original - (factor - 1))^(HS / (HS - 2))`.
#[derive(Debug, Clone)]
struct DynamicNtk {
    theta: f32,
    factor: f32,
    original: usize,
    head_size: usize,
}

impl Rope {
    fn new(m: &ModelConfig) -> Self {
        let hs = m.head_dim();
        let mut inv_freq = rope::inv_freq(hs, m.rope_theta);
        let mut dynamic = None;
        if let Some(scaling) = m.rope_scaling {
            let factor = scaling.factor;
            let original = scaling.original_max_seq_len.unwrap_or(m.max_seq_len);
            match scaling.kind {
                RopeScalingKind::Linear => inv_freq.iter_mut().for_each(|f| *f /= factor),
                RopeScalingKind::Ntk => {
                    inv_freq = rope::inv_freq(hs, m.rope_theta * factor.powf(hs as f32 / (hs as f32 - 2.0)))
                }
                RopeScalingKind::Dynamic => {
                    dynamic = Some(DynamicNtk { theta: m.rope_theta, factor, original, head_size: hs })
                }
                RopeScalingKind::Llama3 => rope::llama3_frequencies(
                    &mut inv_freq,
                    factor,
                    original,
                    scaling.low_freq_factor,
                    scaling.high_freq_factor,
                ),
            }
        }
        let table = RopeTable::new(0..m.max_seq_len.min(PRECOMPUTED), &inv_freq);
        Rope { table, inv_freq, dynamic }
    }

    /// The rotations of positions `start..start + t` of a sequence that is `start + t` long.
    fn table(&self, start: usize, t: usize) -> Cow<'_, RopeTable> {
        let len = start + t;
        match &self.dynamic {
            Some(DynamicNtk { theta, factor, original, head_size }) if len > *original => {
                let hs = *head_size as f32;
                let stretch = factor * len as f32 / *original as f32 - (factor - 1.0);
                let inv_freq = rope::inv_freq(*head_size, theta * stretch.powf(hs / (hs - 2.0)));
                Cow::Owned(RopeTable::new(start..len, &inv_freq))
            }
            _ if len > PRECOMPUTED => Cow::Owned(RopeTable::new(start..len, &self.inv_freq)),
            _ => Cow::Borrowed(&self.table),
        }
    }
}
