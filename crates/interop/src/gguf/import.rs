//! GGUF models as our [`Model`]. By default ([`Weights::Quantized`]) the embedding and every
//! linear layer's weight stay in the file's blocks, memory-mapped, and run through the engine's
//! quantized products ([`truthgpt_engine::qmatmul`]); only norms and biases become f32. The
//! reference path ([`Weights::Dequantized`]) dequantizes every tensor ([`truthgpt_quant`]) into
//! f32 parameters, which is what the parity tests against transformers use and what training
//! needs.
//!
//! Architectures (`general.architecture`): `llama` (Llama, Mistral, TinyLlama, SmolLM; with
//! `llama.expert_count`, Mixtral), `qwen2` and `gpt2`. Any other is refused by name.
//!
//! The tokenizer comes from the metadata where we can read it ([`super::vocab`]).
//!
//! Tensor names go through the same tables as export: [`crate::hf::tensor_map`] (our tensor to
//! Hugging Face parts) and `gguf::gguf_name` (Hugging Face name to GGUF name), so import and
//! export cannot disagree; `llama` q/k rows are permuted back from llama.cpp's interleaved RoPE
//! pairs (`gguf::permute_rope`). Every tensor's dims are checked against the metadata, and a
//! tensor the model does not use is an error, as in the Hugging Face import.
//!
//! Refused: RoPE frequency factors (`rope_freqs.weight`, Llama 3 scaling) and RoPE scaling other
//! than linear, partial rotary dims, and head sizes other than `embedding_length / head_count`.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use truthgpt_config::{
    ExpertKind, FfnKind, GeluApproximate, ModelConfig, NormKind, NormPosition, Positional, RopeScaling,
    RopeScalingKind,
};
use truthgpt_data::Tokenizer;
use truthgpt_engine::qmatmul::QMatrix;
use truthgpt_model::Model;
use truthgpt_quant::GgmlType;

use super::read::Gguf;
use super::value::Value;
use super::vocab;
use super::{gguf_name, permute_rope, RopeOrder, Target};
use crate::error::{InteropError, Result};
use crate::hf::{self, Family};

/// A model read from a GGUF file.
#[derive(Debug)]
pub struct GgufModel {
    /// `general.architecture`.
    pub architecture: String,
    pub family: Family,
    pub model: Model,
    /// From the metadata ([`super::vocab`]); an error says why there is none we can use, which
    /// matters only to commands that take or give text.
    pub tokenizer: Result<Tokenizer>,
}

/// The architectures we import.
pub const ARCHITECTURES: [&str; 3] = ["llama", "qwen2", "gpt2"];

/// How a GGUF model's matrices are held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Weights {
    /// In the file's blocks (F32 matrices become f32 parameters): inference.
    Quantized,
    /// Every tensor dequantized to f32: the reference path, and trainable.
    Dequantized,
}

/// Loads the GGUF model at `path` with its matrices in their blocks ([`Weights::Quantized`]).
pub fn load(path: &Path) -> Result<GgufModel> {
    load_with(path, Weights::Quantized)
}

/// Loads the GGUF model at `path`, its matrices held as `weights` says.
pub fn load_with(path: &Path, weights: Weights) -> Result<GgufModel> {
    let g = Gguf::open(path)?;
    let meta = Meta { g: &g, arch: architecture(&g)? };
    let (family, config) = config(&meta)?;
    let model = load_weights(&g, family, &config, weights)?;
    let tokenizer = vocab::tokenizer(&g).and_then(|t| {
        t.check_fits(config.vocab_size)?;
        Ok(t)
    });
    Ok(GgufModel { architecture: meta.arch.to_string(), family, model, tokenizer })
}

fn architecture(g: &Gguf) -> Result<&str> {
    let arch = match g.get("general.architecture") {
        Some(Value::String(a)) => a.as_str(),
        Some(other) => {
            return Err(invalid(g, format!("general.architecture is {}, not a string", other.type_name())))
        }
        None => return Err(missing(g, "metadata `general.architecture`".into())),
    };
    if !ARCHITECTURES.contains(&arch) {
        return Err(InteropError::Unsupported {
            path: g.path().into(),
            problem: format!(
                "architecture `{arch}` is not supported; supported are {}",
                ARCHITECTURES.join(", ")
            ),
        });
    }
    Ok(arch)
}

fn invalid(g: &Gguf, problem: String) -> InteropError {
    InteropError::Invalid { path: g.path().into(), problem }
}

fn missing(g: &Gguf, what: String) -> InteropError {
    InteropError::Missing { path: g.path().into(), what }
}

fn unsupported(g: &Gguf, problem: String) -> InteropError {
    InteropError::Unsupported { path: g.path().into(), problem }
}

/// Typed reads of `{arch}.*` metadata, with errors naming the key.
struct Meta<'a> {
    g: &'a Gguf,
    arch: &'a str,
}

impl Meta<'_> {
    fn get(&self, key: &str) -> (String, Option<&Value>) {
        let key = format!("{}.{key}", self.arch);
        let value = self.g.get(&key);
        (key, value)
    }

    fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            (_, None) => Ok(None),
            (key, Some(v)) => match v.as_u64().and_then(|n| usize::try_from(n).ok()) {
                Some(n) => Ok(Some(n)),
                None => Err(invalid(self.g, format!("`{key}` is {v:?}, expected a non-negative integer"))),
            },
        }
    }

    fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?.ok_or_else(|| missing(self.g, format!("metadata `{}.{key}`", self.arch)))
    }

    fn f32_or(&self, key: &str, default: f32) -> Result<f32> {
        match self.get(key) {
            (_, None) => Ok(default),
            (key, Some(v)) => {
                v.as_f32().ok_or_else(|| invalid(self.g, format!("`{key}` is {v:?}, expected a number")))
            }
        }
    }

    fn str(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            (_, None) => Ok(None),
            (key, Some(v)) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| invalid(self.g, format!("`{key}` is {v:?}, expected a string"))),
        }
    }
}

/// Our model config from the file's metadata (and, for the vocabulary and the head, its tensors).
fn config(meta: &Meta) -> Result<(Family, ModelConfig)> {
    let g = meta.g;
    let embed =
        g.tensor("token_embd.weight").ok_or_else(|| missing(g, "tensor `token_embd.weight`".into()))?;
    let vocab_size = match embed.dims[..] {
        [_, v] => v as usize,
        ref dims => return Err(invalid(g, format!("token_embd.weight has dims {dims:?}, expected 2"))),
    };
    let d_model = meta.usize("embedding_length")?;
    let n_heads = meta.usize("attention.head_count")?;
    let mut m = ModelConfig {
        vocab_size,
        d_model,
        n_layers: meta.usize("block_count")?,
        n_heads,
        n_kv_heads: meta.opt_usize("attention.head_count_kv")?.unwrap_or(n_heads),
        d_ff: meta.usize("feed_forward_length")?,
        max_seq_len: meta.usize("context_length")?,
        norm_position: NormPosition::Pre,
        tie_embeddings: g.tensor("output.weight").is_none(),
        dropout: 0.0,
        ..ModelConfig::default()
    };
    if n_heads == 0 || meta.opt_usize("attention.key_length")?.is_some_and(|k| k * n_heads != d_model) {
        return Err(unsupported(g, "head sizes other than embedding_length / head_count".into()));
    }
    // Each block has several tensors; bounding the count first keeps the tensor list we build
    // from it small whatever the metadata says.
    if m.n_layers > g.tensors().len() {
        return Err(invalid(
            g,
            format!("block_count {} but the file has {} tensors", m.n_layers, g.tensors().len()),
        ));
    }
    let family = if meta.arch == "gpt2" { gpt2(meta, &mut m)? } else { llama_like(meta, &mut m)? };
    hf::config::settings_for(&m)
        .validate()
        .map_err(|e| unsupported(g, format!("the model it describes is not one we can build: {e}")))?;
    Ok((family, m))
}

fn gpt2(meta: &Meta, m: &mut ModelConfig) -> Result<Family> {
    m.bias = true;
    m.norm = NormKind::LayerNorm;
    m.norm_eps = meta.f32_or("attention.layer_norm_epsilon", 1e-5)?;
    m.positional = Positional::Learned;
    m.ffn = FfnKind::Mlp;
    // ggml_gelu, which llama.cpp's gpt2 graph uses, is the tanh approximation.
    m.gelu_approximate = GeluApproximate::Tanh;
    Ok(Family::Gpt2)
}

fn llama_like(meta: &Meta, m: &mut ModelConfig) -> Result<Family> {
    let g = meta.g;
    if g.tensor("rope_freqs.weight").is_some() {
        return Err(unsupported(g, "RoPE frequency factors (rope_freqs.weight, Llama 3 scaling)".into()));
    }
    if meta.opt_usize("rope.dimension_count")?.is_some_and(|d| d != m.head_dim()) {
        return Err(unsupported(g, "partial rotary embeddings (rope.dimension_count < head size)".into()));
    }
    m.norm = NormKind::RmsNorm;
    m.norm_eps = meta.f32_or("attention.layer_norm_rms_epsilon", 1e-5)?;
    m.positional = Positional::Rope;
    m.rope_theta = meta.f32_or("rope.freq_base", 10_000.0)?;
    m.rope_scaling = match meta.str("rope.scaling.type")? {
        None | Some("none") => None,
        Some("linear") => {
            Some(RopeScaling::new(RopeScalingKind::Linear, meta.f32_or("rope.scaling.factor", 1.0)?))
        }
        Some(other) => {
            return Err(unsupported(g, format!("RoPE scaling `{other}`; only linear is supported")))
        }
    };
    m.ffn = FfnKind::Swiglu;
    m.qkv_bias = meta.arch == "qwen2";
    // Llama with biases has them everywhere; llama.cpp names them like the weights.
    m.bias = meta.arch == "llama" && g.tensor("blk.0.attn_output.bias").is_some();
    let experts = meta.opt_usize("expert_count")?.unwrap_or(0);
    if experts == 0 {
        return Ok(if meta.arch == "qwen2" { Family::Qwen2 } else { Family::Llama });
    }
    m.ffn = FfnKind::Moe;
    m.moe.n_experts = experts;
    m.moe.top_k = meta.usize("expert_used_count")?;
    m.moe.expert = ExpertKind::Swiglu;
    m.moe.dropless = true;
    if m.moe.top_k < 2 {
        return Err(unsupported(g, "expert_used_count = 1 (Mixtral's top-1 gate is always 1)".into()));
    }
    Ok(Family::Mixtral)
}

/// The last stacked expert tensor dequantized, so that a stack of E experts is decoded once, not
/// E times.
struct Stack {
    name: String,
    values: Vec<f32>,
}

/// Where a Hugging Face part of one of our tensors is in the file: the GGUF target, and the
/// part's row-major shape as stored (GPT-2's Conv1D weights are (in, out) in HF; llama.cpp's
/// converter stores them (out, in), as we do).
fn locate(g: &Gguf, map: &hf::Mapping, hf_name: &str, hf_shape: &[usize]) -> Result<(Target, Vec<usize>)> {
    let target = gguf_name(hf_name)
        .ok_or_else(|| unsupported(g, format!("no GGUF name for `{hf_name}` (a bug in gguf_name)")))?;
    let shape = if map.transposed { hf_shape.iter().rev().copied().collect() } else { hf_shape.to_vec() };
    Ok((target, shape))
}

/// Fills a model from the file's tensors. Every tensor's presence and dims are checked before the
/// model is allocated, so metadata claiming a model far larger than the file fails on a tensor,
/// not on an allocation.
fn load_weights(g: &Gguf, family: Family, config: &ModelConfig, weights: Weights) -> Result<Model> {
    let maps = hf::tensor_map(family, config);
    let mut used = BTreeSet::new();
    for map in &maps {
        for (hf_name, hf_shape) in &map.parts {
            let (name, dims) = match locate(g, map, hf_name, hf_shape)? {
                (Target::Plain(name), shape) => (name, shape),
                (Target::Expert { name, .. }, shape) => {
                    (name, [&[config.moe.n_experts], &shape[..]].concat())
                }
            };
            check_dims(g, &name, &dims, family)?;
            used.insert(name);
        }
    }
    check_all_used(g, &used, family)?;

    let quantized = match weights {
        Weights::Quantized => matrices(g, &maps, family, config)?,
        Weights::Dequantized => HashMap::new(),
    };
    let mut model = Model::zeroed_quantized(config, quantized);
    let mut stack: Option<Stack> = None;
    for map in &maps {
        let spec = model.specs.iter().find(|s| s.name == map.ours).ok_or_else(|| {
            unsupported(g, format!("our {family:?} model has no tensor `{}` (a bug in tensor_map)", map.ours))
        })?;
        if spec.quantized {
            continue;
        }
        let out = spec.handle.of_mut(&mut model.params);
        let mut row = 0;
        for (hf_name, hf_shape) in &map.parts {
            let (target, shape) = locate(g, map, hf_name, hf_shape)?;
            let len: usize = shape.iter().product();
            let dst = &mut out[row..row + len];
            match target {
                Target::Plain(name) => copy_part(&g.dequantize(&name)?, dst, hf_name, family, config),
                Target::Expert { name, expert } => {
                    if stack.as_ref().is_none_or(|s| s.name != name) {
                        stack = Some(Stack { values: g.dequantize(&name)?, name });
                    }
                    let values = &stack.as_ref().expect("just filled").values;
                    dst.copy_from_slice(&values[expert * len..(expert + 1) * len]);
                }
            }
            row += len;
        }
    }
    Ok(model)
}

/// The matrices that stay in their blocks: the token embedding and every linear layer's weight
/// (our 2-D tensors but the learned position table), unless all their parts are F32. Each part
/// views its tensor in the file; `llama` q and k rows are read in Hugging Face order. Parts the
/// vector kernel packs (`QWeight::pack`) are copied once, and their pages in the file dropped.
fn matrices(
    g: &Gguf,
    maps: &[hf::Mapping],
    family: Family,
    m: &ModelConfig,
) -> Result<HashMap<String, QMatrix>> {
    let mut out = HashMap::new();
    for map in maps.iter().filter(|map| map.ours != "embed.positions") {
        let mut parts = Vec::new();
        for (hf_name, hf_shape) in &map.parts {
            let (target, shape) = locate(g, map, hf_name, hf_shape)?;
            let &[rows, cols] = &shape[..] else { break };
            let (name, index) = match target {
                Target::Plain(name) => (name, 0),
                Target::Expert { name, expert } => (name, expert),
            };
            let t = g.tensor(&name).ok_or_else(|| missing(g, format!("tensor `{name}`")))?;
            let mut w = g.matrix(t, index, rows, cols)?;
            if let Some(heads) = rope_heads(hf_name, family, m) {
                let ids: Vec<f32> = (0..rows).map(|r| r as f32).collect();
                let mut order = vec![0.0; rows];
                permute_rope(&ids, &mut order, heads, 1, RopeOrder::FromGguf);
                w = w.with_row_order(order.iter().map(|&r| r as u32).collect()).map_err(|e| invalid(g, e))?;
            }
            // The token table is packed only where it is also the output projection: lookups
            // read rows as stored.
            if map.ours != "embed.tokens" || m.tie_embeddings {
                w = w.pack();
                if w.packed().is_some_and(|p| p.rows() == w.rows()) {
                    g.release(w.storage_range());
                }
            }
            parts.push(w);
        }
        if parts.len() == map.parts.len() && parts.iter().any(|p| p.ty() != GgmlType::F32) {
            out.insert(
                map.ours.clone(),
                QMatrix::new(parts).map_err(|e| invalid(g, format!("{}: {e}", map.ours)))?,
            );
        }
    }
    Ok(out)
}

/// The heads whose rows llama.cpp permuted for its RoPE pairing, if `hf_name` is a `llama` q or k.
fn rope_heads(hf_name: &str, family: Family, m: &ModelConfig) -> Option<usize> {
    match family {
        Family::Qwen2 | Family::Gpt2 => None,
        _ if hf_name.contains("self_attn.q_proj.") => Some(m.n_heads),
        _ if hf_name.contains("self_attn.k_proj.") => Some(m.n_kv_heads),
        _ => None,
    }
}

/// `values` into our rows, undoing llama.cpp's RoPE permutation of `llama` q and k.
fn copy_part(values: &[f32], dst: &mut [f32], hf_name: &str, family: Family, m: &ModelConfig) {
    match rope_heads(hf_name, family, m) {
        Some(heads) => {
            let cols = if hf_name.ends_with(".weight") { m.d_model } else { 1 };
            permute_rope(values, dst, heads, cols, RopeOrder::FromGguf);
        }
        None => dst.copy_from_slice(values),
    }
}

/// The tensor `name` exists with the ggml dims of row-major `shape`.
fn check_dims(g: &Gguf, name: &str, shape: &[usize], family: Family) -> Result<()> {
    let t = g.tensor(name).ok_or_else(|| InteropError::Tensor {
        path: g.path().into(),
        name: name.into(),
        problem: format!("missing, but a {family:?} model with this metadata has it"),
    })?;
    let want: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
    if t.dims != want {
        return Err(InteropError::Tensor {
            path: g.path().into(),
            name: name.into(),
            problem: format!("has dims {:?}, but the metadata implies {want:?}", t.dims),
        });
    }
    Ok(())
}

fn check_all_used(g: &Gguf, used: &BTreeSet<String>, family: Family) -> Result<()> {
    let unused: Vec<&str> =
        g.tensors().iter().map(|t| t.name.as_str()).filter(|n| !used.contains(*n)).collect();
    if unused.is_empty() {
        return Ok(());
    }
    Err(unsupported(
        g,
        format!(
            "{} tensor(s) that a {family:?} model with this metadata does not have, e.g. {}",
            unused.len(),
            unused.iter().take(4).copied().collect::<Vec<_>>().join(", ")
        ),
    ))
}
