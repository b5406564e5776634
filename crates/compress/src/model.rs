//! One-shot pruning of a whole model: every block's linear layers (the attention's `qkv` and
//! `proj`, the feed-forward's `fc1` and `fc2`, each expert's), never the embedding, the head or
//! a router, which are small next to the blocks and which the papers leave dense too.
//!
//! Wanda and SparseGPT calibrate block by block, as their reference implementations do: one
//! forward over the calibration windows keeps every block's activations; block `l` is pruned on
//! the inputs it saw, then run again ([`Model::rerun_block`]) so that block `l + 1` is calibrated
//! on what the pruned blocks before it produce. Within a block the four linears are calibrated on
//! the same pass (the reference's default, not its "true sequential" option).

use truthgpt_model::{Mode, Model};

use crate::{magnitude, sparsegpt, wanda, CompressError, Method, Pattern, Result, SparseGptOptions};

/// What pruning did to one linear layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinearReport {
    /// Its tensors' prefix: `blocks.3.attn.qkv`.
    pub name: String,
    pub zeros: usize,
    pub weights: usize,
}

/// What pruning did to the model.
#[derive(Debug, Clone, Default)]
pub struct ModelReport {
    pub linears: Vec<LinearReport>,
    /// Calibration tokens (0 for magnitude, which needs none).
    pub tokens: usize,
}

impl ModelReport {
    /// Zeros among the pruned layers' weights.
    pub fn zeros(&self) -> usize {
        self.linears.iter().map(|l| l.zeros).sum()
    }

    /// The pruned layers' weights, zero or not.
    pub fn weights(&self) -> usize {
        self.linears.iter().map(|l| l.weights).sum()
    }
}

/// Calibration text for Wanda and SparseGPT: `windows` rows of `seq_len` token ids, row-major.
#[derive(Debug, Clone, Copy)]
pub struct Calibration<'a> {
    pub tokens: &'a [u32],
    pub windows: usize,
    pub seq_len: usize,
}

/// Prunes `model`'s blocks in place with `method` under `pattern`. Magnitude needs no
/// calibration; Wanda and SparseGPT refuse to run without it.
pub fn prune_model(
    model: &mut Model,
    method: Method,
    pattern: Pattern,
    calibration: Option<Calibration<'_>>,
) -> Result<ModelReport> {
    check_prunable(model, method)?;
    if method == Method::Magnitude {
        return Ok(ModelReport { linears: prune_by_magnitude(model, pattern)?, tokens: 0 });
    }
    let calibration = calibration.ok_or_else(|| {
        CompressError::Unsupported(format!("{method:?} needs calibration text (magnitude does not)"))
    })?;
    let Calibration { tokens, windows, seq_len } = calibration;
    if tokens.is_empty() || windows == 0 || seq_len == 0 {
        return Err(CompressError::Unsupported("the calibration text has no tokens".into()));
    }
    model.forward(tokens, windows, seq_len, Mode::Eval)?;
    let mut report = ModelReport { linears: Vec::new(), tokens: windows * seq_len };
    for layer in 0..model.config.n_layers {
        report.linears.extend(prune_block(model, layer, method, pattern)?);
        model.rerun_block(layer)?;
    }
    Ok(report)
}

/// Refuses models whose blocks cannot be pruned as they are, with the reason.
fn check_prunable(model: &Model, method: Method) -> Result<()> {
    let unsupported = |why: &str| Err(CompressError::Unsupported(why.into()));
    if model.is_quantized() {
        return unsupported("the model's weights are quantized; load it in f32 (a GGUF file is dequantized)");
    }
    if model.has_lora() {
        return unsupported("the model has LoRA adapters; merge them first");
    }
    if model.config.share_layers {
        return unsupported("the layers share weights (model.share_layers)");
    }
    if method != Method::Magnitude && model.config.expert_groups().is_some() {
        return unsupported(
            "Wanda and SparseGPT calibrate dense blocks only; prune MoE experts by magnitude",
        );
    }
    Ok(())
}

fn prune_by_magnitude(model: &mut Model, pattern: Pattern) -> Result<Vec<LinearReport>> {
    let targets: Vec<(String, truthgpt_model::params::P, usize, usize)> = model
        .linears()
        .into_iter()
        .filter(|(name, _)| name.starts_with("blocks.") && !name.ends_with(".router"))
        .map(|(name, l)| (name, l.weight, l.out, l.inp))
        .collect();
    let mut reports = Vec::with_capacity(targets.len());
    for (name, weight, out, inp) in targets {
        let zeros =
            magnitude(weight.of_mut(&mut model.params), out, inp, pattern).map_err(|e| e.at(&name))?;
        reports.push(LinearReport { name, zeros, weights: out * inp });
    }
    Ok(reports)
}

/// Prunes block `layer`'s four linears on the inputs they saw in the last forward.
fn prune_block(
    model: &mut Model,
    layer: usize,
    method: Method,
    pattern: Pattern,
) -> Result<Vec<LinearReport>> {
    let inputs = model.linear_inputs(layer).ok_or_else(|| {
        CompressError::Unsupported("Wanda and SparseGPT calibrate pre-norm dense blocks only".into())
    })?;
    // Owned copies: the weights are changed while they are read.
    let seen: [Vec<f32>; 4] = [inputs.qkv, inputs.proj, inputs.fc1, inputs.fc2].map(<[f32]>::to_vec);
    let linears: Vec<_> = model
        .linears()
        .into_iter()
        .filter(|(name, _)| name.starts_with(&format!("blocks.{layer}.")))
        .map(|(name, l)| (name, l.weight, l.out, l.inp))
        .collect();
    let mut reports = Vec::with_capacity(4);
    for ((name, weight, out, inp), x) in linears.into_iter().zip(&seen) {
        let w = weight.of_mut(&mut model.params);
        let zeros = match method {
            Method::Magnitude => magnitude(w, out, inp, pattern),
            Method::Wanda => wanda(w, out, inp, &crate::input_norms(x, inp), pattern),
            Method::SparseGpt => sparsegpt(w, out, inp, x, pattern, &SparseGptOptions::default()),
        }
        .map_err(|e| e.at(&name))?;
        reports.push(LinearReport { name, zeros, weights: out * inp });
    }
    Ok(reports)
}
