//! GGUF files for llama.cpp: Llama, Mistral and Mixtral models as llama.cpp's `llama`
//! architecture, Qwen2 models as `qwen2`, with the tokenizer, in f32, f16 or one of
//! llama-quantize's types ([`GgufDtype`]).
//! (Reading any GGUF file: [`read`]; this module writes them.)
//!
//! The layout follows llama.cpp's `convert_hf_to_gguf.py`, so that a file written here is the file
//! that converter would write from our Hugging Face export ([`crate::hf::export`]):
//!
//! - tensors are those of [`crate::hf::tensor_map`], renamed to GGUF names (`token_embd.weight`,
//!   `blk.N.attn_q.weight`, ...); Mixtral's experts are stacked into 3-D `ffn_*_exps` tensors;
//!   a tied head is left out (llama.cpp then uses `token_embd.weight`);
//! - for `llama`, query and key rows (weights and biases) are permuted from Hugging Face's
//!   rotate-half RoPE layout to the interleaved pairs llama.cpp rotates (`LlamaModel.permute`);
//!   `qwen2` uses NeoX RoPE, the rotate-half layout, and is written as is;
//! - dtypes: 1-D tensors (norms, biases, RoPE factors) and the MoE router stay f32; other
//!   matrices are f16 or quantized as asked, each tensor's type by llama-quantize's rule, with
//!   its fallbacks for rows that are not whole blocks ([`types`]);
//! - Llama 3 RoPE scaling becomes the `rope_freqs.weight` tensor of per-frequency divisors, as the
//!   converter computes it; linear scaling becomes `rope.scaling.type`/`rope.scaling.factor`.
//!
//! Refused, with [`InteropError::NoTarget`] naming the reason: GPT-2 (out of scope here), any
//! model [`crate::hf::config::family_of`] refuses (MoE capacity limits and aux-free routing biases
//! included), dynamic-NTK RoPE (llama.cpp has no equivalent), Llama 3 scaling on Qwen2 (llama.cpp's
//! `qwen2` graph has no frequency factors), a Mistral/Mixtral sliding window shorter than
//! `max_seq_len` (llama.cpp's `llama` architecture attends to the whole context, so logits past the
//! window would differ), non-finite weights, and tokenizers that are not byte-level BPE with GPT-2's
//! pre-tokenizer (the only kind written as `tokenizer.ggml.model = gpt2`, `pre = gpt-2`).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde_json::Value;
use truthgpt_config::{ModelConfig, RopeScaling, RopeScalingKind};
use truthgpt_data::Tokenizer;
use truthgpt_engine::rope;
use truthgpt_model::Model;
use truthgpt_quant::GgmlType;

use crate::error::{InteropError, Result};
use crate::hf::{self, Family};
use value::{Array, Value as Meta};

pub mod import;
pub mod read;
pub mod types;
pub mod value;
pub mod vocab;
mod write;

pub use read::{Gguf, TensorInfo};
pub use types::{GgufDtype, TypeChoice};

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufExported {
    pub tensors: usize,
    /// Each tensor's GGUF name and type, in file order ([`TypeChoice::wanted`]: a fallback).
    pub types: Vec<(String, TypeChoice)>,
    /// Size of the file.
    pub bytes: u64,
    /// `general.architecture`: `llama` or `qwen2`.
    pub architecture: &'static str,
}

/// The GGUF version written.
pub const VERSION: u32 = 3;
/// `general.alignment`: tensor data offsets are multiples of it (GGUF's default).
pub const ALIGNMENT: usize = 32;
/// Token types of `tokenizer.ggml.token_type` (llama.cpp's `llama_token_type`).
const TOKEN_NORMAL: i32 = 1;
const TOKEN_CONTROL: i32 = 3;
const TOKEN_USER_DEFINED: i32 = 4;
const TOKEN_UNUSED: i32 = 5;

/// Where an exported file's tokenizer comes from.
#[derive(Clone, Copy)]
pub enum Vocabulary<'a> {
    /// Ours: a byte-level BPE with GPT-2's pre-tokenizer, written as llama.cpp's `gpt2` model.
    Tokenizer(&'a Tokenizer),
    /// Every `tokenizer.*` key of a GGUF file, copied as it is: requantizing a GGUF file keeps
    /// its tokenizer and chat template, as llama-quantize does.
    Gguf(&'a Gguf),
}

/// Writes `model` and its tokenizer as a GGUF v3 file at `out`, which must not exist. The file is
/// written beside `out`, fsynced and renamed into place, so it appears whole or not at all.
pub fn export(model: &Model, tokenizer: &Tokenizer, out: &Path, dtype: GgufDtype) -> Result<GgufExported> {
    export_with(model, Vocabulary::Tokenizer(tokenizer), out, dtype)
}

/// [`export`] with the tokenizer from `vocabulary`.
pub fn export_with(
    model: &Model,
    vocabulary: Vocabulary,
    out: &Path,
    dtype: GgufDtype,
) -> Result<GgufExported> {
    if model.is_quantized() {
        let problem =
            "the model's weights are quantized; export needs them in f32 (load it dequantized)".into();
        return Err(InteropError::Unsupported { path: out.into(), problem });
    }
    if out.exists() {
        return Err(InteropError::Exists { path: out.into() });
    }
    let m = &model.config;
    let family = hf::config::family_of(model)?;
    let arch = match family {
        Family::Llama | Family::Mistral | Family::Mixtral => "llama",
        Family::Qwen2 => "qwen2",
        Family::Gpt2 => {
            return Err(InteropError::NoTarget(
                "GPT-2 models (learned positions, LayerNorm, GELU MLP) are not exported to GGUF here; \
                 GGUF export covers the Llama family (rope, rmsnorm, swiglu or moe)"
                    .into(),
            ))
        }
    };
    check_expressible(model, family)?;
    let tokenizer_keys = match vocabulary {
        Vocabulary::Tokenizer(tokenizer) => tokenizer_metadata(&self::vocabulary(tokenizer, m.vocab_size)?),
        Vocabulary::Gguf(g) => {
            g.metadata().iter().filter(|(key, _)| key.starts_with("tokenizer.")).cloned().collect()
        }
    };
    let (plans, types) = plan_tensors(model, family, dtype)?;
    let mut metadata = metadata(model, family, arch, dtype, out);
    metadata.extend(tokenizer_keys);
    let bytes = write::write_file(out, &metadata, &plans, model)?;
    Ok(GgufExported { tensors: plans.len(), types, bytes, architecture: arch })
}

/// What llama.cpp cannot run the same way, beyond what [`hf::config::family_of`] refuses.
fn check_expressible(model: &Model, family: Family) -> Result<()> {
    let m = &model.config;
    let no = |why: String| Err(InteropError::NoTarget(why));
    match m.rope_scaling {
        Some(RopeScaling { kind: RopeScalingKind::Dynamic, .. }) => {
            return no("dynamic NTK RoPE scaling has no llama.cpp equivalent (linear and llama3 do)".into())
        }
        Some(RopeScaling { kind: RopeScalingKind::Ntk, .. }) => {
            return no("static NTK RoPE scaling has no llama.cpp equivalent (linear and llama3 do)".into())
        }
        Some(RopeScaling { kind: RopeScalingKind::Llama3, .. }) if family == Family::Qwen2 => {
            return no("llama3 RoPE scaling on a Qwen2 model: llama.cpp's qwen2 architecture applies no \
                       RoPE frequency factors"
                .into())
        }
        _ => {}
    }
    if let Some(window) = m.sliding_window {
        if window < m.max_seq_len {
            return no(format!(
                "sliding_window {window} is shorter than max_seq_len {}: llama.cpp's llama architecture \
                 attends to the whole context, so logits past {window} tokens would differ; set \
                 sliding_window to null (or at least max_seq_len) if that is acceptable",
                m.max_seq_len
            ));
        }
    }
    if let Some(spec) = model.specs.iter().find(|s| s.handle.of(&model.params).iter().any(|x| !x.is_finite()))
    {
        return no(format!("tensor `{}` has non-finite values", spec.name));
    }
    for (what, n) in [
        ("vocab_size", m.vocab_size),
        ("d_model", m.d_model),
        ("n_layers", m.n_layers),
        ("d_ff", m.d_ff),
        ("max_seq_len", m.max_seq_len),
        ("n_heads", m.n_heads),
    ] {
        if u32::try_from(n).is_err() {
            return no(format!("{what} {n} does not fit GGUF's u32 metadata"));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Tokenizer

/// The vocabulary as GGUF stores it: one token per id up to the model's vocabulary size.
struct Vocab {
    tokens: Vec<String>,
    types: Vec<i32>,
    merges: Vec<String>,
    eos: Option<u32>,
}

fn bad_tokenizer(problem: impl std::fmt::Display) -> InteropError {
    InteropError::NoTarget(format!(
        "the tokenizer {problem}; GGUF export writes byte-level BPE tokenizers with GPT-2's \
         pre-tokenizer (as `truthgpt tokenizer train` makes)"
    ))
}

/// Checks `tokenizer` is a byte-level BPE with GPT-2's pre-tokenizer and reads its tokens, their
/// types and its merges, padded to `vocab_size` ids.
fn vocabulary(tokenizer: &Tokenizer, vocab_size: usize) -> Result<Vocab> {
    tokenizer.check_fits(vocab_size)?;
    let json: Value = serde_json::from_str(&tokenizer.to_json())
        .map_err(|e| bad_tokenizer(format!("does not serialise to JSON ({e})")))?;
    let model = json.get("model").ok_or_else(|| bad_tokenizer("has no `model`"))?;
    let kind = model.get("type").and_then(Value::as_str).unwrap_or("?");
    if kind != "BPE" {
        return Err(bad_tokenizer(format!("is a {kind} model, not BPE")));
    }
    for (key, ok) in [
        ("byte_fallback", model.get("byte_fallback").is_none_or(|v| v == &Value::Bool(false))),
        ("continuing_subword_prefix", model.get("continuing_subword_prefix").is_none_or(Value::is_null)),
        ("end_of_word_suffix", model.get("end_of_word_suffix").is_none_or(Value::is_null)),
        ("ignore_merges", model.get("ignore_merges").is_none_or(|v| v == &Value::Bool(false))),
        ("dropout", model.get("dropout").is_none_or(Value::is_null)),
    ] {
        if !ok {
            return Err(bad_tokenizer(format!(
                "sets BPE `{key}`, which llama.cpp's GPT-2 BPE does not have"
            )));
        }
    }
    if !json.get("normalizer").is_none_or(Value::is_null) {
        return Err(bad_tokenizer("has a normalizer, which llama.cpp's GPT-2 BPE does not apply"));
    }
    check_pre_tokenizer(json.get("pre_tokenizer"))?;

    let mut tokens: Vec<Option<String>> = vec![None; vocab_size];
    let mut types = vec![TOKEN_UNUSED; vocab_size];
    let mut place = |id: u64, token: &str, ty: i32| -> Result<()> {
        let slot = usize::try_from(id).ok().filter(|&i| i < vocab_size).ok_or_else(|| {
            bad_tokenizer(format!("has id {id} for `{token}`, past the model's vocab_size {vocab_size}"))
        })?;
        match &tokens[slot] {
            Some(other) if other != token => {
                return Err(bad_tokenizer(format!("gives id {id} to both `{other}` and `{token}`")))
            }
            _ => {}
        }
        tokens[slot] = Some(token.to_string());
        types[slot] = ty;
        Ok(())
    };
    let vocab =
        model.get("vocab").and_then(Value::as_object).ok_or_else(|| bad_tokenizer("has no BPE vocab"))?;
    for (token, id) in vocab {
        let id = id.as_u64().ok_or_else(|| bad_tokenizer(format!("has a non-integer id for `{token}`")))?;
        place(id, token, TOKEN_NORMAL)?;
    }
    for added in json.get("added_tokens").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default() {
        let (Some(id), Some(token)) =
            (added.get("id").and_then(Value::as_u64), added.get("content").and_then(Value::as_str))
        else {
            return Err(bad_tokenizer("has an added token without an id or content"));
        };
        let special = added.get("special").and_then(Value::as_bool).unwrap_or(false);
        place(id, token, if special { TOKEN_CONTROL } else { TOKEN_USER_DEFINED })?;
    }
    let tokens: Vec<String> =
        tokens.into_iter().enumerate().map(|(id, t)| t.unwrap_or_else(|| format!("[PAD{id}]"))).collect();
    // llama.cpp maps text to ids through a hash map: every token must be distinct.
    let mut seen = HashMap::with_capacity(tokens.len());
    for (id, token) in tokens.iter().enumerate() {
        if let Some(first) = seen.insert(token.as_str(), id) {
            return Err(bad_tokenizer(format!("has `{token}` at both id {first} and id {id}")));
        }
    }

    let merges =
        model.get("merges").and_then(Value::as_array).ok_or_else(|| bad_tokenizer("has no BPE merges"))?;
    let merges = merges
        .iter()
        .map(|merge| {
            let (a, b) = match merge {
                Value::String(s) => {
                    s.split_once(' ').ok_or_else(|| bad_tokenizer(format!("has merge `{s}`")))?
                }
                Value::Array(pair) => match pair.as_slice() {
                    [Value::String(a), Value::String(b)] => (a.as_str(), b.as_str()),
                    _ => return Err(bad_tokenizer(format!("has merge {merge}"))),
                },
                _ => return Err(bad_tokenizer(format!("has merge {merge}"))),
            };
            // GGUF stores merges as "a b": a part holding a space could not be split back.
            if a.contains(' ') || b.contains(' ') || a.is_empty() || b.is_empty() {
                return Err(bad_tokenizer(format!(
                    "has merge ({a:?}, {b:?}), which GGUF cannot write as `a b`"
                )));
            }
            Ok(format!("{a} {b}"))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Vocab { tokens, types, merges, eos: tokenizer.eos_id() })
}

/// GPT-2's pre-tokenizer: `ByteLevel` with its regex and no prefix space (alone, or the one step of
/// a `Sequence`), which is what llama.cpp's `gpt-2` pre-tokenizer type does.
fn check_pre_tokenizer(pre: Option<&Value>) -> Result<()> {
    let mut pre = pre.filter(|p| !p.is_null()).ok_or_else(|| bad_tokenizer("has no pre-tokenizer"))?;
    if pre.get("type").and_then(Value::as_str) == Some("Sequence") {
        match pre.get("pretokenizers").and_then(Value::as_array).map(Vec::as_slice) {
            Some([one]) => pre = one,
            _ => return Err(bad_tokenizer("has a sequence of pre-tokenizers")),
        }
    }
    let kind = pre.get("type").and_then(Value::as_str).unwrap_or("?");
    if kind != "ByteLevel" {
        return Err(bad_tokenizer(format!("has a {kind} pre-tokenizer, not ByteLevel")));
    }
    if pre.get("use_regex").and_then(Value::as_bool) == Some(false) {
        return Err(bad_tokenizer("splits without GPT-2's regex (ByteLevel use_regex: false)"));
    }
    if pre.get("add_prefix_space").and_then(Value::as_bool) == Some(true) {
        return Err(bad_tokenizer(
            "adds a prefix space (ByteLevel add_prefix_space: true), which llama.cpp does not",
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Tensors

/// A run of our parameters: `len` values of spec `spec` from `start`, optionally with the
/// llama.cpp RoPE permutation of `heads` heads of rows `cols` long.
#[derive(Debug, Clone)]
struct Part {
    spec: usize,
    start: usize,
    len: usize,
    permute: Option<(usize, usize)>,
}

#[derive(Debug, Clone)]
enum Source {
    /// The parts, concatenated.
    Params(Vec<Part>),
    Owned(Vec<f32>),
}

/// One GGUF tensor: its name, row-major shape (GGUF dims are this reversed), type and data.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    name: String,
    shape: Vec<usize>,
    ty: GgmlType,
    source: Source,
}

impl Plan {
    pub(crate) fn elements(&self) -> usize {
        self.shape.iter().product()
    }

    pub(crate) fn bytes(&self) -> usize {
        // Whole blocks by construction (`tensor_type` picks q8_0 only for rows of whole blocks).
        self.elements() / self.ty.block_elements() * self.ty.block_bytes()
    }

    pub(crate) fn values(&self, model: &Model) -> Vec<f32> {
        match &self.source {
            Source::Owned(v) => v.clone(),
            Source::Params(parts) => {
                let mut out = Vec::with_capacity(self.elements());
                for part in parts {
                    let all = model.specs[part.spec].handle.of(&model.params);
                    let src = &all[part.start..part.start + part.len];
                    match part.permute {
                        None => out.extend_from_slice(src),
                        Some((heads, cols)) => {
                            let start = out.len();
                            out.resize(start + src.len(), 0.0);
                            permute_rope(src, &mut out[start..], heads, cols, RopeOrder::ToGguf);
                        }
                    }
                }
                out
            }
        }
    }
}

/// Which way [`permute_rope`] moves rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RopeOrder {
    /// Hugging Face's rotate-half rows to llama.cpp's interleaved pairs (export).
    ToGguf,
    /// Back (import).
    FromGguf,
}

/// convert_hf_to_gguf's `LlamaModel.permute` (or its inverse): rows `(head, half, i)` of
/// Hugging Face's rotate-half order are rows `(head, i, half)` of llama.cpp's interleaved pairs,
/// each row `cols` long. The row count is `heads * head_size`.
fn permute_rope(src: &[f32], dst: &mut [f32], heads: usize, cols: usize, order: RopeOrder) {
    let rows = src.len() / cols;
    let half = rows / heads / 2;
    for h in 0..heads {
        for j in 0..2 {
            for i in 0..half {
                let hf = (h * 2 * half + j * half + i) * cols;
                let gguf = (h * 2 * half + 2 * i + j) * cols;
                let (from, to) = if order == RopeOrder::ToGguf { (hf, gguf) } else { (gguf, hf) };
                dst[to..to + cols].copy_from_slice(&src[from..from + cols]);
            }
        }
    }
}

/// Where a Hugging Face tensor goes: its GGUF name, and for experts, which expert of a stack.
enum Target {
    Plain(String),
    Expert { name: String, expert: usize },
}

/// The GGUF name of the HF tensor `hf_name`, as llama.cpp's tensor_mapping.py maps it.
fn gguf_name(hf_name: &str) -> Option<Target> {
    let plain = |s: &str| Some(Target::Plain(s.to_string()));
    match hf_name {
        "model.embed_tokens.weight" | "transformer.wte.weight" => return plain("token_embd.weight"),
        "transformer.wpe.weight" => return plain("position_embd.weight"),
        "model.norm.weight" => return plain("output_norm.weight"),
        "transformer.ln_f.weight" | "transformer.ln_f.bias" => {
            return plain(&hf_name.replace("transformer.ln_f", "output_norm"))
        }
        "lm_head.weight" => return plain("output.weight"),
        _ => {}
    }
    let rest = hf_name.strip_prefix("model.layers.").or_else(|| hf_name.strip_prefix("transformer.h."))?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let blk = |s: &str| Some(Target::Plain(format!("blk.{layer}.{s}")));
    if let Some(expert) = rest.strip_prefix("block_sparse_moe.experts.") {
        let (e, tail) = expert.split_once('.')?;
        let expert: usize = e.parse().ok()?;
        let which = match tail {
            "w1.weight" => "ffn_gate_exps",
            "w3.weight" => "ffn_up_exps",
            "w2.weight" => "ffn_down_exps",
            _ => return None,
        };
        return Some(Target::Expert { name: format!("blk.{layer}.{which}.weight"), expert });
    }
    let (module, param) = rest.rsplit_once('.')?;
    let name = match module {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        "block_sparse_moe.gate" => "ffn_gate_inp",
        // GPT-2 (import only)
        "ln_1" => "attn_norm",
        "ln_2" => "ffn_norm",
        "attn.c_attn" => "attn_qkv",
        "attn.c_proj" => "attn_output",
        "mlp.c_fc" => "ffn_up",
        "mlp.c_proj" => "ffn_down",
        _ => return None,
    };
    blk(&format!("{name}.{param}"))
}

/// Every GGUF tensor of `model`, in order: embeddings, RoPE factors, blocks, final norm, head.
/// With each tensor's name and type choice (the writer needs only the type).
fn plan_tensors(model: &Model, family: Family, dtype: GgufDtype) -> Result<(Vec<Plan>, Vec<Named>)> {
    let m = &model.config;
    let internal = |what: String| InteropError::NoTarget(format!("internal: {what}"));
    let spec_index: HashMap<&str, usize> =
        model.specs.iter().enumerate().map(|(i, s)| (s.name.as_str(), i)).collect();
    // Tensors by GGUF name, in first-seen order, each with its parts and per-part (rows.., cols).
    let mut order: Vec<String> = Vec::new();
    let mut built: BTreeMap<String, (Vec<usize>, Vec<Part>)> = BTreeMap::new();
    let hs = m.head_dim();
    for map in hf::tensor_map(family, m) {
        let &spec =
            spec_index.get(map.ours.as_str()).ok_or_else(|| internal(format!("no tensor {}", map.ours)))?;
        if map.transposed {
            return Err(internal(format!("{} is transposed (GPT-2 only)", map.ours)));
        }
        let mut start = 0;
        for (hf_name, shape) in &map.parts {
            let len: usize = shape.iter().product();
            let target = gguf_name(hf_name).ok_or_else(|| internal(format!("no GGUF name for {hf_name}")))?;
            // llama: q and k rows from rotate-half to interleaved pairs; biases are rows of width 1.
            let heads = if family == Family::Qwen2 {
                None
            } else if hf_name.contains("self_attn.q_proj.") {
                Some(m.n_heads)
            } else if hf_name.contains("self_attn.k_proj.") {
                Some(m.n_kv_heads)
            } else {
                None
            };
            let cols = if shape.len() == 2 { shape[1] } else { 1 };
            let permute = heads.map(|h| (h, cols));
            if let Some((h, _)) = permute {
                if shape[0] != h * hs {
                    return Err(internal(format!("{hf_name} has {} rows, not {h} heads of {hs}", shape[0])));
                }
            }
            let part = Part { spec, start, len, permute };
            start += len;
            match target {
                Target::Plain(name) => {
                    if built.insert(name.clone(), (shape.clone(), vec![part])).is_some() {
                        return Err(internal(format!("{name} written twice")));
                    }
                    order.push(name);
                }
                Target::Expert { name, expert } => {
                    let entry = built.entry(name.clone()).or_insert_with(|| {
                        order.push(name.clone());
                        ([&[0], shape.as_slice()].concat(), Vec::new())
                    });
                    if entry.0[0] != expert || entry.0[1..] != shape[..] {
                        return Err(internal(format!("{hf_name} out of order or of another shape")));
                    }
                    entry.0[0] += 1;
                    entry.1.push(part);
                }
            }
        }
        let total = model.specs[spec].handle.len;
        if start != total {
            return Err(internal(format!("{} has {total} values, its HF parts {start}", map.ours)));
        }
    }
    let shape = types::ModelShape { layers: m.n_layers, has_output: built.contains_key("output.weight") };
    let mut plans = Vec::with_capacity(order.len() + 1);
    let mut types = Vec::with_capacity(order.len() + 1);
    for name in order {
        let (dims, parts) = built.remove(&name).expect("every ordered name was built");
        let choice = types::tensor_type(&name, &dims, dtype, shape);
        types.push((name.clone(), choice));
        plans.push(Plan { ty: choice.ty, name, shape: dims, source: Source::Params(parts) });
    }
    if let Some(s @ RopeScaling { kind: RopeScalingKind::Llama3, .. }) = m.rope_scaling {
        let factors = llama3_rope_factors(hs, m.rope_theta, &s, m.max_seq_len);
        let at = 1.min(plans.len());
        types.insert(at, ("rope_freqs.weight".into(), TypeChoice { ty: GgmlType::F32, wanted: None }));
        plans.insert(
            at,
            Plan {
                name: "rope_freqs.weight".into(),
                shape: vec![factors.len()],
                ty: GgmlType::F32,
                source: Source::Owned(factors),
            },
        );
    }
    Ok((plans, types))
}

/// A tensor's GGUF name and type choice.
type Named = (String, TypeChoice);

/// By spec index, `(start, len, type)` ranges of its values.
pub(crate) type RowTypes = HashMap<usize, Vec<(usize, usize, GgmlType)>>;

/// The type each stretch of our parameters is written as in a GGUF file of type `dtype`: by spec
/// index, `(start, len, type)` ranges of its values. Calibrated quantizers ([`crate::awq`]) search
/// against the types the file will hold.
pub(crate) fn weight_types(model: &Model, dtype: GgufDtype) -> Result<RowTypes> {
    let (plans, _) = plan_tensors(model, hf::config::family_of(model)?, dtype)?;
    let mut types = RowTypes::new();
    for plan in &plans {
        if let Source::Params(parts) = &plan.source {
            for part in parts {
                types.entry(part.spec).or_default().push((part.start, part.len, plan.ty));
            }
        }
    }
    Ok(types)
}

/// llama.cpp divides each RoPE frequency by these: 1 for short wavelengths, `factor` for long
/// ones, and the smooth Llama 3 interpolation between (what convert_hf_to_gguf computes).
fn llama3_rope_factors(head_size: usize, theta: f32, s: &RopeScaling, max_seq_len: usize) -> Vec<f32> {
    let original = s.original_max_seq_len.unwrap_or(max_seq_len);
    let base = rope::inv_freq(head_size, theta);
    let mut scaled = base.clone();
    rope::llama3_frequencies(&mut scaled, s.factor, original, s.low_freq_factor, s.high_freq_factor);
    base.iter().zip(&scaled).map(|(b, s)| b / s).collect()
}

// ---------------------------------------------------------------------------------------------
// Metadata

/// The `general.*` and architecture keys.
fn metadata(
    model: &Model,
    family: Family,
    arch: &'static str,
    dtype: GgufDtype,
    out: &Path,
) -> Vec<(String, Meta)> {
    let m: &ModelConfig = &model.config;
    let u = |n: usize| Meta::U32(n as u32);
    let name = out.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "truthgpt".into());
    let mut kv: Vec<(String, Meta)> = vec![
        ("general.architecture".into(), Meta::String(arch.into())),
        ("general.name".into(), Meta::String(name)),
        ("general.file_type".into(), Meta::U32(dtype.file_type())),
        ("general.quantization_version".into(), Meta::U32(2)),
        ("general.alignment".into(), u(ALIGNMENT)),
    ];
    let mut a = |key: &str, value: Meta| kv.push((format!("{arch}.{key}"), value));
    a("vocab_size", u(m.vocab_size));
    a("context_length", u(m.max_seq_len));
    a("embedding_length", u(m.d_model));
    a("block_count", u(m.n_layers));
    a("feed_forward_length", u(m.d_ff));
    a("attention.head_count", u(m.n_heads));
    a("attention.head_count_kv", u(m.n_kv_heads));
    a("attention.layer_norm_rms_epsilon", Meta::F32(m.norm_eps));
    a("rope.freq_base", Meta::F32(m.rope_theta));
    a("rope.dimension_count", u(m.head_dim()));
    if let Some(RopeScaling { kind: RopeScalingKind::Linear, factor, .. }) = m.rope_scaling {
        a("rope.scaling.type", Meta::String("linear".into()));
        a("rope.scaling.factor", Meta::F32(factor));
    }
    if family == Family::Mixtral {
        a("expert_count", u(m.moe.n_experts));
        a("expert_used_count", u(m.moe.top_k));
    }
    kv
}

/// The `tokenizer.*` keys of our tokenizer.
fn tokenizer_metadata(vocab: &Vocab) -> Vec<(String, Meta)> {
    let mut kv: Vec<(String, Meta)> = vec![
        ("tokenizer.ggml.model".into(), Meta::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Meta::String("gpt-2".into())),
        ("tokenizer.ggml.tokens".into(), Meta::Array(Array::String(vocab.tokens.clone()))),
        ("tokenizer.ggml.token_type".into(), Meta::Array(Array::I32(vocab.types.clone()))),
        ("tokenizer.ggml.merges".into(), Meta::Array(Array::String(vocab.merges.clone()))),
    ];
    if let Some(eos) = vocab.eos {
        kv.push(("tokenizer.ggml.eos_token_id".into(), Meta::U32(eos)));
        kv.push(("tokenizer.ggml.bos_token_id".into(), Meta::U32(eos)));
    }
    kv.push(("tokenizer.ggml.add_bos_token".into(), Meta::Bool(false)));
    kv
}
