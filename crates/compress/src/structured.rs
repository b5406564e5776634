//! Structured pruning: whole feed-forward channels removed, so the model itself shrinks
//! (`model.d_ff` in its config) and runs faster on the same dense kernels.
//!
//! Channel `j` of a block is row `j` of `fc1` (rows `j` and `F + j`, gate and up, when gated),
//! its bias, and column `j` of `fc2`. Each block keeps the same number of channels (the config
//! has one `d_ff`), its highest-scoring ones, in their order:
//! - magnitude: `||fc2[:, j]|| * ||fc1[j, :]||` (the product of the channel's in and out norms);
//! - Wanda: `||fc2[:, j]|| * ||a_j||`, with `a_j` the channel's activations on the calibration
//!   text (the structured form of `|w| * ||x||`, as in Wanda's structured N:M ablation and
//!   LLM-Pruner's channel importance).

use truthgpt_model::{Mode, Model};

use crate::{lowest_k, Calibration, CompressError, Method, Result};

/// What [`prune_channels`] removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelReport {
    pub d_ff_before: usize,
    pub d_ff_after: usize,
    pub params_before: usize,
    pub params_after: usize,
}

/// A copy of `model` without the `fraction` of each block's feed-forward channels that score
/// lowest under `method` (magnitude, or Wanda with `calibration`).
pub fn prune_channels(
    model: &mut Model,
    fraction: f32,
    method: Method,
    calibration: Option<Calibration<'_>>,
) -> Result<(Model, ChannelReport)> {
    let unsupported = |why: &str| Err(CompressError::Unsupported(why.into()));
    if !(0.0..1.0).contains(&fraction) {
        return Err(CompressError::Sparsity(fraction));
    }
    if model.is_quantized() || model.has_lora() || model.config.share_layers {
        return unsupported("structured pruning needs f32 weights of its own per layer, without adapters");
    }
    if model.config.expert_groups().is_some() {
        return unsupported("channels are removed from dense feed-forwards only");
    }
    let d_ff = model.config.d_ff;
    let keep = d_ff - (fraction as f64 * d_ff as f64).floor() as usize;
    let activation_norms = match (method, calibration) {
        (Method::Magnitude, _) => None,
        (Method::Wanda, Some(c)) => Some(fc2_input_norms(model, c)?),
        (Method::Wanda, None) => return unsupported("Wanda needs calibration text"),
        (Method::SparseGpt, _) => return unsupported("channels are scored by magnitude or Wanda"),
    };
    let kept: Vec<Vec<usize>> = (0..model.config.n_layers)
        .map(|layer| {
            let scores = channel_scores(model, layer, activation_norms.as_ref().map(|n| &n[layer][..]));
            let mut removed = vec![false; d_ff];
            lowest_k(&scores, d_ff - keep, &mut removed);
            (0..d_ff).filter(|&j| !removed[j]).collect()
        })
        .collect();
    let mut config = model.config.clone();
    config.d_ff = keep;
    let mut pruned = Model::zeroed(&config);
    for spec in pruned.specs.clone() {
        let source = model.specs.iter().find(|s| s.name == spec.name).expect("same architecture but d_ff");
        let from = source.handle.of(&model.params);
        let to = spec.handle.of_mut(&mut pruned.params);
        match channel_tensor(&spec.name) {
            Some((layer, Tensor::Fc1Rows)) => {
                let (rows, cols) = (source.shape[0], source.shape.get(1).copied().unwrap_or(1));
                let halves = rows / d_ff;
                let picked = (0..halves).flat_map(|h| kept[layer].iter().map(move |&j| h * d_ff + j));
                for (dst, src) in to.chunks_exact_mut(cols).zip(picked) {
                    dst.copy_from_slice(&from[src * cols..(src + 1) * cols]);
                }
            }
            Some((layer, Tensor::Fc2Columns)) => {
                for (dst, src) in to.chunks_exact_mut(keep).zip(from.chunks_exact(d_ff)) {
                    for (d, &j) in dst.iter_mut().zip(&kept[layer]) {
                        *d = src[j];
                    }
                }
            }
            None => to.copy_from_slice(from),
        }
    }
    let report = ChannelReport {
        d_ff_before: d_ff,
        d_ff_after: keep,
        params_before: model.num_params(),
        params_after: pruned.num_params(),
    };
    Ok((pruned, report))
}

enum Tensor {
    /// `fc1.weight` or `fc1.bias`: one row (value) per channel, or two when gated.
    Fc1Rows,
    /// `fc2.weight`: one column per channel.
    Fc2Columns,
}

/// Which channel-indexed tensor of which block `name` is.
fn channel_tensor(name: &str) -> Option<(usize, Tensor)> {
    let (layer, rest) = name.strip_prefix("blocks.")?.split_once('.')?;
    let tensor = match rest {
        "ffn.fc1.weight" | "ffn.fc1.bias" => Tensor::Fc1Rows,
        "ffn.fc2.weight" => Tensor::Fc2Columns,
        _ => return None,
    };
    Some((layer.parse().ok()?, tensor))
}

/// Each channel's score in block `layer`: `||fc2[:, j]||` times `activation_norms[j]`, or times
/// the norm of the channel's `fc1` rows without calibration.
fn channel_scores(model: &Model, layer: usize, activation_norms: Option<&[f32]>) -> Vec<f32> {
    let d_ff = model.config.d_ff;
    // Borrowed, not copied: the weights are only read here.
    let linear = |suffix: &str| {
        let name = format!("blocks.{layer}.ffn.{suffix}");
        let (_, l) =
            model.linears().into_iter().find(|(n, _)| *n == name).expect("a dense block has fc1 and fc2");
        (l.weight.of(&model.params), l.inp)
    };
    let ((fc1, inp), (fc2, _)) = (linear("fc1"), linear("fc2"));
    let mut out_norm = vec![0f64; d_ff];
    for row in fc2.chunks_exact(d_ff) {
        for (n, &w) in out_norm.iter_mut().zip(row) {
            *n += f64::from(w) * f64::from(w);
        }
    }
    (0..d_ff)
        .map(|j| {
            let other = match activation_norms {
                Some(norms) => f64::from(norms[j]),
                None => fc1
                    .chunks_exact(inp)
                    .skip(j)
                    .step_by(d_ff)
                    .flatten()
                    .map(|&w| f64::from(w).powi(2))
                    .sum::<f64>()
                    .sqrt(),
            };
            (out_norm[j].sqrt() * other) as f32
        })
        .collect()
}

/// `||a_j||` of every block's `fc2` input channels over the calibration windows (the dense
/// model's activations, one forward).
fn fc2_input_norms(model: &mut Model, c: Calibration<'_>) -> Result<Vec<Vec<f32>>> {
    if c.tokens.is_empty() || c.windows == 0 || c.seq_len == 0 {
        return Err(CompressError::Unsupported("the calibration text has no tokens".into()));
    }
    model.forward(c.tokens, c.windows, c.seq_len, Mode::Eval)?;
    (0..model.config.n_layers)
        .map(|layer| {
            let inputs = model.linear_inputs(layer).ok_or_else(|| {
                CompressError::Unsupported("Wanda calibrates pre-norm dense blocks only".into())
            })?;
            Ok(crate::input_norms(inputs.fc2, model.config.d_ff))
        })
        .collect()
}
