//! Activation-aware weight quantization (AWQ: Lin et al. 2024, "AWQ: Activation-aware Weight
//! Quantization for LLM Compression and Acceleration"; reference code github.com/mit-han-lab/llm-awq,
//! `auto_scale.py`), for the GGUF types a file will hold.
//!
//! Channels of a linear layer's input that carry large activations matter most. AWQ multiplies
//! those columns of the weight by `s > 1` before quantizing (so they are rounded relatively
//! finer) and divides the input by `s`, folding `1 / s` into whatever produced the input, so the
//! f32 model computes the same function. Per group of linear layers sharing an input:
//!
//! - `s = mean|x|^α`, normalised by `sqrt(max(s) * min(s))`, with `α` searched over a grid of
//!   `grid` points in `[0, 1)` (α = 0 is plain round-to-nearest, so the search never does worse
//!   on the calibration set);
//! - the objective is the layer output error `Σ_tokens ‖x Ŵᵀ - x Wᵀ‖²`, computed from the Gram
//!   matrix `H = Σ xᵀx` of the calibration inputs as `Σ_rows δᵀ H δ`, `δ = ŵ - w`, where `Ŵ` is
//!   the dequantized `Q(W diag(s)) diag(s)⁻¹` in each row's GGUF type;
//! - where `1 / s` goes, exactly as AWQ folds it in a Llama block: `qkv`'s into `norm1`'s weight
//!   (and bias); `fc1`'s (gate and up) into `norm2`'s; `fc2`'s (down) into the rows of `up`
//!   (exact for gated feed-forwards, `act(gate) * up / s`); `proj`'s (o) into the rows of `v`,
//!   with one scale per key/value head channel shared by the query heads that read it
//!   (llm-awq skips `o` under grouped-query attention; sharing the scale keeps the fold exact).
//!
//! The scales change the f32 weights of the model in place; the GGUF writer then quantizes them by
//! round-to-nearest as usual. Not done: AWQ's weight clipping search (`auto_clip`).

use rayon::prelude::*;
use truthgpt_config::{FfnKind, NormPosition};
use truthgpt_engine::matmul::{matmul, Op};
use truthgpt_model::{LinearInputs, Mode, Model};
use truthgpt_quant::GgmlType;

use crate::error::{InteropError, Result};
use crate::gguf::{self, GgufDtype};

/// The α grid's size (llm-awq's `n_grid`).
pub const GRID: usize = 20;
/// Smallest scale, so a channel that never fires keeps a usable weight (llm-awq's clamp).
const MIN_SCALE: f32 = 1e-4;

/// One group's outcome: the chosen α and the output error before and after.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupReport {
    /// `blocks.{l}.attn.qkv` and so on: the group's first weight, by our names.
    pub name: String,
    pub alpha: f32,
    /// Mean squared output error per token of round-to-nearest (α = 0) and of the chosen α.
    pub rtn_error: f64,
    pub awq_error: f64,
}

/// What calibration measured, group by group.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AwqReport {
    pub tokens: usize,
    pub groups: Vec<GroupReport>,
}

impl AwqReport {
    /// Total output error over every group: (round-to-nearest, AWQ).
    pub fn totals(&self) -> (f64, f64) {
        self.groups.iter().fold((0.0, 0.0), |(r, a), g| (r + g.rtn_error, a + g.awq_error))
    }
}

/// Per-channel statistics of one linear layer input over the calibration set.
struct InputStats {
    width: usize,
    /// (width, width): `Σ xᵀx`.
    gram: Vec<f32>,
    /// (width): `Σ |x|`.
    abs_sum: Vec<f64>,
}

impl InputStats {
    fn new(width: usize) -> Self {
        InputStats { width, gram: vec![0.0; width * width], abs_sum: vec![0.0; width] }
    }

    /// Adds `x (rows, width)`.
    fn add(&mut self, x: &[f32], rows: usize) {
        let w = self.width;
        matmul(&mut self.gram, Op::T(x), Op::N(x), w, rows, w, true);
        for row in x.chunks_exact(w) {
            for (s, v) in self.abs_sum.iter_mut().zip(row) {
                *s += v.abs() as f64;
            }
        }
    }
}

/// The four groups of one block, in the order AWQ scales them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Group {
    Qkv,
    Proj,
    Fc1,
    Fc2,
}

const GROUPS: [Group; 4] = [Group::Qkv, Group::Proj, Group::Fc1, Group::Fc2];

impl Group {
    fn input<'a>(self, x: &LinearInputs<'a>) -> &'a [f32] {
        match self {
            Group::Qkv => x.qkv,
            Group::Proj => x.proj,
            Group::Fc1 => x.fc1,
            Group::Fc2 => x.fc2,
        }
    }

    /// The linear layer's weight, by spec name.
    fn weight(self, layer: usize) -> String {
        let module = match self {
            Group::Qkv => "attn.qkv",
            Group::Proj => "attn.proj",
            Group::Fc1 => "ffn.fc1",
            Group::Fc2 => "ffn.fc2",
        };
        format!("blocks.{layer}.{module}.weight")
    }
}

/// Scales `model`'s weights for quantization to `dtype`, calibrated on `windows` (each a sequence
/// of token ids at most `max_seq_len` long), and reports the output errors.
pub fn calibrate(model: &mut Model, windows: &[Vec<u32>], dtype: GgufDtype) -> Result<AwqReport> {
    check_supported(model)?;
    let types = gguf::weight_types(model, dtype)?;
    let stats = collect(model, windows)?;
    let tokens = windows.iter().map(Vec::len).sum();
    let mut report = AwqReport { tokens, groups: Vec::new() };
    for (layer, stats) in stats.iter().enumerate() {
        for (group, stats) in GROUPS.into_iter().zip(stats) {
            report.groups.push(scale_group(model, &types, layer, group, stats, tokens)?);
        }
    }
    Ok(report)
}

fn refuse(problem: &str) -> InteropError {
    InteropError::Calibration(problem.into())
}

fn check_supported(model: &Model) -> Result<()> {
    let m = &model.config;
    if model.is_quantized() {
        return Err(refuse("the model's weights are quantized; load it dequantized"));
    }
    if m.norm_position != NormPosition::Pre || m.share_layers || m.expert_groups().is_some() {
        return Err(refuse("only pre-norm dense models with their own weights per layer are calibrated"));
    }
    if !matches!(m.ffn, FfnKind::Swiglu | FfnKind::Geglu) {
        return Err(refuse("only gated feed-forwards (swiglu, geglu) are calibrated"));
    }
    Ok(())
}

/// Runs the f32 forward over every window and accumulates each block's four input statistics.
fn collect(model: &mut Model, windows: &[Vec<u32>]) -> Result<Vec<[InputStats; 4]>> {
    let m = model.config.clone();
    let widths = [m.d_model, m.n_heads * m.head_dim(), m.d_model, m.d_ff];
    let mut stats: Vec<[InputStats; 4]> = (0..m.n_layers).map(|_| widths.map(InputStats::new)).collect();
    if windows.iter().all(Vec::is_empty) {
        return Err(refuse("the calibration text has no tokens"));
    }
    for window in windows.iter().filter(|w| !w.is_empty()) {
        model.forward(window, 1, window.len(), Mode::Eval)?;
        for (layer, stats) in stats.iter_mut().enumerate() {
            let inputs =
                model.linear_inputs(layer).ok_or_else(|| refuse("the forward kept no activations"))?;
            for (group, s) in GROUPS.into_iter().zip(stats.iter_mut()) {
                s.add(group.input(&inputs), inputs.rows);
            }
        }
    }
    Ok(stats)
}

/// The rows of one weight, with the GGUF type of each row range.
struct Rows<'a> {
    weight: &'a [f32],
    cols: usize,
    /// (first row, rows, type)
    types: Vec<(usize, usize, GgmlType)>,
}

/// Searches α for one group, folds the chosen scales into the model and reports the errors.
fn scale_group(
    model: &mut Model,
    types: &gguf::RowTypes,
    layer: usize,
    group: Group,
    stats: &InputStats,
    tokens: usize,
) -> Result<GroupReport> {
    let name = group.weight(layer);
    let spec = spec_index(model, &name)?;
    let cols = stats.width;
    let handle = model.specs[spec].handle;
    let row_types = types.get(&spec).ok_or_else(|| refuse(&format!("{name} is not written to the file")))?;
    let rows = Rows {
        weight: handle.of(&model.params),
        cols,
        types: row_types.iter().map(|&(start, len, ty)| (start / cols, len / cols, ty)).collect(),
    };
    let mean: Vec<f32> = channel_means(model, group, stats, tokens);
    let mut best = (0.0f32, f64::INFINITY);
    let mut rtn_error = f64::NAN;
    for step in 0..GRID {
        let alpha = step as f32 / GRID as f32;
        let error = output_error(&rows, &scales(&mean, alpha), &stats.gram) / tokens as f64;
        if step == 0 {
            rtn_error = error;
        }
        // NaN never wins, so a NaN error leaves α = 0 (and shows in the report).
        if error < best.1 {
            best = (alpha, error);
        }
    }
    let (alpha, awq_error) = if best.1.is_finite() { best } else { (0.0, rtn_error) };
    if alpha > 0.0 {
        fold(model, layer, group, &scales(&mean, alpha))?;
    }
    Ok(GroupReport { name, alpha, rtn_error, awq_error })
}

/// `mean|x|` per input channel; for `proj`, shared by the query heads of each key/value head
/// (their mean), since `1 / s` is folded into that head's rows of `v`.
fn channel_means(model: &Model, group: Group, stats: &InputStats, tokens: usize) -> Vec<f32> {
    let mean: Vec<f64> = stats.abs_sum.iter().map(|s| s / tokens as f64).collect();
    if group != Group::Proj {
        return mean.iter().map(|&m| m as f32).collect();
    }
    let (nh, kvh, hs) = (model.config.n_heads, model.config.n_kv_heads, model.config.head_dim());
    let per = nh / kvh;
    let mut shared = vec![0.0f32; nh * hs];
    for h in 0..nh {
        let g = h / per;
        for d in 0..hs {
            let sum: f64 = (g * per..(g + 1) * per).map(|q| mean[q * hs + d]).sum();
            shared[h * hs + d] = (sum / per as f64) as f32;
        }
    }
    shared
}

/// llm-awq's `x_max.pow(ratio).clamp(min=1e-4)`, divided by `sqrt(max * min)`.
fn scales(mean: &[f32], alpha: f32) -> Vec<f32> {
    let s: Vec<f32> = mean.iter().map(|&m| m.powf(alpha).max(MIN_SCALE)).collect();
    let (lo, hi) = s.iter().fold((f32::INFINITY, 0.0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let norm = (hi * lo).sqrt();
    s.iter().map(|v| v / norm).collect()
}

/// `Σ_rows δᵀ H δ` with `δ = Q(w ⊙ s) ⊘ s - w`, each row quantized in its type.
fn output_error(rows: &Rows, s: &[f32], gram: &[f32]) -> f64 {
    let cols = rows.cols;
    let total_rows: usize = rows.types.iter().map(|t| t.1).sum();
    let mut delta = vec![0.0f32; total_rows * cols];
    let mut at = 0;
    for &(first, n, ty) in &rows.types {
        let src = &rows.weight[first * cols..(first + n) * cols];
        delta[at * cols..(at + n) * cols].par_chunks_mut(cols).zip(src.par_chunks(cols)).for_each(
            |(d, w)| {
                let scaled: Vec<f32> = w.iter().zip(s).map(|(w, s)| w * s).collect();
                roundtrip(ty, &scaled, d);
                for ((d, w), s) in d.iter_mut().zip(w).zip(s) {
                    *d = *d / s - w;
                }
            },
        );
        at += n;
    }
    let mut dh = vec![0.0f32; delta.len()];
    matmul(&mut dh, Op::N(&delta), Op::N(gram), total_rows, cols, cols, false);
    delta.iter().zip(&dh).map(|(&d, &e)| d as f64 * e as f64).sum()
}

/// `x` quantized to `ty` and back, into `out`. Values reach here finite (the export checks the
/// weights first) and rows are whole blocks of their type (the type rule falls back otherwise).
fn roundtrip(ty: GgmlType, x: &[f32], out: &mut [f32]) {
    match ty {
        GgmlType::F32 => out.copy_from_slice(x),
        GgmlType::F16 | GgmlType::BF16 => {
            for (o, v) in out.iter_mut().zip(x) {
                *o = half::f16::from_f32(*v).to_f32();
            }
        }
        ty => {
            let mut bytes = Vec::new();
            let done = truthgpt_quant::quantize_row(ty, x, &mut bytes)
                .and_then(|()| truthgpt_quant::dequantize_row(ty, &bytes, out));
            if done.is_err() {
                // Non-finite after scaling: an infinite error, so this α is never chosen.
                out.fill(f32::INFINITY);
            }
        }
    }
}

fn spec_index(model: &Model, name: &str) -> Result<usize> {
    model.specs.iter().position(|s| s.name == name).ok_or_else(|| refuse(&format!("the model has no {name}")))
}

/// Multiplies the group's weight columns by `s` and divides what produced its input by `s`.
fn fold(model: &mut Model, layer: usize, group: Group, s: &[f32]) -> Result<()> {
    let m = model.config.clone();
    let weight = model.specs[spec_index(model, &group.weight(layer))?].handle;
    for row in weight.of_mut(&mut model.params).chunks_exact_mut(s.len()) {
        row.iter_mut().zip(s).for_each(|(w, s)| *w *= s);
    }
    let b = |name: &str| format!("blocks.{layer}.{name}");
    // (spec, first row, rows, row length): rows divided by `s[row - first]`, or elements when
    // the row length is 1 (norm gains, biases).
    let divide: Vec<(String, usize, usize)> = match group {
        Group::Qkv => vec![(b("norm1.weight"), 0, 1), (b("norm1.bias"), 0, 1)],
        Group::Fc1 => vec![(b("norm2.weight"), 0, 1), (b("norm2.bias"), 0, 1)],
        Group::Fc2 => {
            vec![(b("ffn.fc1.weight"), m.d_ff, m.d_model), (b("ffn.fc1.bias"), m.d_ff, 1)]
        }
        Group::Proj => {
            let v = (m.n_heads + m.n_kv_heads) * m.head_dim();
            vec![(b("attn.qkv.weight"), v, m.d_model), (b("attn.qkv.bias"), v, 1)]
        }
    };
    // For proj, `s` has one entry per query-head channel; `v` rows are per key/value head.
    let per_row: Vec<f32> = match group {
        Group::Proj => {
            let (hs, per) = (m.head_dim(), m.n_heads / m.n_kv_heads);
            (0..m.n_kv_heads * hs).map(|i| s[(i / hs) * per * hs + i % hs]).collect()
        }
        _ => s.to_vec(),
    };
    for (name, first, width) in divide {
        let Some(spec) = model.specs.iter().find(|spec| spec.name == name) else { continue };
        let values = spec.handle.of_mut(&mut model.params);
        let rows = &mut values[first * width..(first + per_row.len()) * width];
        for (row, s) in rows.chunks_exact_mut(width).zip(&per_row) {
            row.iter_mut().for_each(|v| *v /= s);
        }
    }
    Ok(())
}
