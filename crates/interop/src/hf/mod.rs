//! Hugging Face model directories: `config.json`, `model.safetensors` (or shards and their
//! index), and `tokenizer.json` / `tokenizer_config.json` when present.
//!
//! One table ([`tensor_map`]) says where each of our tensors lives in an HF checkpoint; import
//! reads through it and export writes through it, so the two cannot disagree.

pub mod config;

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use rayon::prelude::*;
use serde_json::{json, Value};
use truthgpt_config::ModelConfig;
use truthgpt_data::{fsio, Tokenizer};
use truthgpt_model::Model;

pub use config::Family;

use crate::error::{InteropError, Result};
use crate::tensors::{TensorFiles, SINGLE};

pub const CONFIG: &str = "config.json";
pub const TOKENIZER: &str = "tokenizer.json";
pub const TOKENIZER_CONFIG: &str = "tokenizer_config.json";
/// Where transformers 4.43 and later (5.x by default) saves a chat template, instead of in
/// `tokenizer_config.json`.
pub const CHAT_TEMPLATE: &str = "chat_template.jinja";

/// A model read from a Hugging Face directory.
#[derive(Debug)]
pub struct HfModel {
    pub family: Family,
    pub model: Model,
    pub tokenizer: Option<Tokenizer>,
}

/// Whether `dir` should be read as a Hugging Face model directory: it has a `config.json` that is
/// not ours (ours has a `model:` section). A damaged one counts, so that loading it reports what
/// is wrong with it.
pub fn is_model_dir(dir: &Path) -> bool {
    match fs::read_to_string(dir.join(CONFIG)) {
        Ok(text) => serde_json::from_str::<Value>(&text).map_or(true, |json| json.get("model").is_none()),
        Err(e) => e.kind() != std::io::ErrorKind::NotFound,
    }
}

/// Loads the model in `dir`: weights memory-mapped and converted to f32, every tensor checked
/// against the shape `config.json` implies, and no tensor left unused.
pub fn load(dir: &Path) -> Result<HfModel> {
    let config_path = dir.join(CONFIG);
    let text = fs::read_to_string(&config_path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => {
            InteropError::Missing { path: config_path.clone(), what: "the model's config".into() }
        }
        _ => InteropError::Io { path: config_path.clone(), source },
    })?;
    let json: Value = serde_json::from_str(&text).map_err(|e| InteropError::Invalid {
        path: config_path.clone(),
        problem: format!("not JSON: {e}"),
    })?;
    let (family, config) = config::import(&json, &config_path)?;
    let files = TensorFiles::open(dir)?;
    let model = load_weights(family, &config, &files)?;
    let tokenizer = load_tokenizer(dir, config.vocab_size)?;
    Ok(HfModel { family, model, tokenizer })
}

/// Where one of our tensors lives in an HF checkpoint: the HF tensors whose rows, stacked in
/// order, make it, each with the shape it must have.
#[derive(Debug, Clone)]
pub struct Mapping {
    pub ours: String,
    pub parts: Vec<(String, Vec<usize>)>,
    /// GPT-2's `Conv1D` stores weights as (in, out): the single part is our tensor transposed.
    pub transposed: bool,
}

impl Mapping {
    /// Our tensor is the rows of `parts`, stacked.
    fn rows(ours: String, parts: Vec<(String, Vec<usize>)>) -> Self {
        Mapping { ours, parts, transposed: false }
    }

    /// One HF tensor holds ours, as (rows, cols) or, `transposed`, as (cols, rows).
    fn one(ours: String, hf: String, shape: Vec<usize>, transposed: bool) -> Self {
        Mapping { ours, parts: vec![(hf, shape)], transposed }
    }
}

/// Every tensor of a `family` model with config `m`, in our naming, with its HF source.
pub fn tensor_map(family: Family, m: &ModelConfig) -> Vec<Mapping> {
    let one = |ours: String, hf: String, shape: Vec<usize>| Mapping::one(ours, hf, shape, false);
    let (c, v) = (m.d_model, m.vocab_size);
    let mut maps = Vec::new();
    if family == Family::Gpt2 {
        maps.push(one("embed.tokens".into(), "transformer.wte.weight".into(), vec![v, c]));
        maps.push(one("embed.positions".into(), "transformer.wpe.weight".into(), vec![m.max_seq_len, c]));
        for l in 0..m.n_layers {
            let (ours, hf) = (format!("blocks.{l}"), format!("transformer.h.{l}"));
            for (norm, ln) in [("norm1", "ln_1"), ("norm2", "ln_2")] {
                for p in ["weight", "bias"] {
                    maps.push(one(format!("{ours}.{norm}.{p}"), format!("{hf}.{ln}.{p}"), vec![c]));
                }
            }
            for (linear, conv1d, inp, out) in [
                ("attn.qkv", "attn.c_attn", c, 3 * c),
                ("attn.proj", "attn.c_proj", c, c),
                ("ffn.fc1", "mlp.c_fc", c, m.d_ff),
                ("ffn.fc2", "mlp.c_proj", m.d_ff, c),
            ] {
                let (ours, hf) = (format!("{ours}.{linear}"), format!("{hf}.{conv1d}"));
                maps.push(Mapping::one(
                    format!("{ours}.weight"),
                    format!("{hf}.weight"),
                    vec![inp, out],
                    true,
                ));
                maps.push(one(format!("{ours}.bias"), format!("{hf}.bias"), vec![out]));
            }
        }
        for p in ["weight", "bias"] {
            maps.push(one(format!("norm_f.{p}"), format!("transformer.ln_f.{p}"), vec![c]));
        }
    } else {
        let (q, kv) = (m.n_heads * m.head_dim(), m.n_kv_heads * m.head_dim());
        maps.push(one("embed.tokens".into(), "model.embed_tokens.weight".into(), vec![v, c]));
        for l in 0..m.n_layers {
            let (ours, hf) = (format!("blocks.{l}"), format!("model.layers.{l}"));
            maps.push(one(format!("{ours}.norm1.weight"), format!("{hf}.input_layernorm.weight"), vec![c]));
            maps.push(one(
                format!("{ours}.norm2.weight"),
                format!("{hf}.post_attention_layernorm.weight"),
                vec![c],
            ));
            let attn = format!("{hf}.self_attn");
            // Weights are (rows, C), biases (rows).
            let qkv = |p: &str, cols: &[usize]| {
                let part = |proj: &str, rows: usize| (format!("{attn}.{proj}.{p}"), [&[rows], cols].concat());
                Mapping::rows(
                    format!("{ours}.attn.qkv.{p}"),
                    vec![part("q_proj", q), part("k_proj", kv), part("v_proj", kv)],
                )
            };
            maps.push(qkv("weight", &[c]));
            if m.bias || m.qkv_bias {
                maps.push(qkv("bias", &[]));
            }
            maps.push(one(format!("{ours}.attn.proj.weight"), format!("{attn}.o_proj.weight"), vec![c, q]));
            if m.bias {
                maps.push(one(format!("{ours}.attn.proj.bias"), format!("{attn}.o_proj.bias"), vec![c]));
            }
            if family == Family::Mixtral {
                let moe = format!("{hf}.block_sparse_moe");
                for e in 0..m.moe.n_experts {
                    let expert = format!("{moe}.experts.{e}");
                    let (gate, up, down) =
                        (format!("{expert}.w1"), format!("{expert}.w3"), format!("{expert}.w2"));
                    maps.extend(swiglu(m, &format!("{ours}.ffn.experts.{e}"), &gate, &up, &down));
                }
                maps.push(one(
                    format!("{ours}.ffn.router.weight"),
                    format!("{moe}.gate.weight"),
                    vec![m.moe.n_experts, c],
                ));
            } else {
                let mlp = format!("{hf}.mlp");
                let (gate, up, down) =
                    (format!("{mlp}.gate_proj"), format!("{mlp}.up_proj"), format!("{mlp}.down_proj"));
                maps.extend(swiglu(m, &format!("{ours}.ffn"), &gate, &up, &down));
            }
        }
        maps.push(one("norm_f.weight".into(), "model.norm.weight".into(), vec![c]));
    }
    if !m.tie_embeddings {
        maps.push(one("head.weight".into(), "lm_head.weight".into(), vec![v, c]));
    }
    maps
}

/// A SwiGLU FFN: our fc1 is `[gate | up]` (Llama's gate_proj and up_proj, Mixtral's w1 and w3).
fn swiglu(m: &ModelConfig, ours: &str, gate: &str, up: &str, down: &str) -> Vec<Mapping> {
    let (c, f) = (m.d_model, m.d_ff);
    let mut maps = vec![
        Mapping::rows(
            format!("{ours}.fc1.weight"),
            vec![(format!("{gate}.weight"), vec![f, c]), (format!("{up}.weight"), vec![f, c])],
        ),
        Mapping::one(format!("{ours}.fc2.weight"), format!("{down}.weight"), vec![c, f], false),
    ];
    if m.bias {
        maps.push(Mapping::rows(
            format!("{ours}.fc1.bias"),
            vec![(format!("{gate}.bias"), vec![f]), (format!("{up}.bias"), vec![f])],
        ));
        maps.push(Mapping::one(format!("{ours}.fc2.bias"), format!("{down}.bias"), vec![c], false));
    }
    maps
}

/// Buffers some checkpoints carry that are not weights (GPT-2's causal masks, cached RoPE
/// frequencies).
fn is_buffer(name: &str) -> bool {
    name.ends_with(".attn.bias")
        || name.ends_with(".attn.masked_bias")
        || name.ends_with("rotary_emb.inv_freq")
}

/// The name `name` has in `files`: as written, or without the `model.` / `transformer.` prefix
/// that checkpoints of the bare base model lack.
fn locate<'a>(files: &TensorFiles, name: &'a str) -> Option<&'a str> {
    if files.contains(name) {
        return Some(name);
    }
    let bare = name.strip_prefix("model.").or_else(|| name.strip_prefix("transformer."))?;
    files.contains(bare).then_some(bare)
}

/// Reads the weights of a `family` model with `config`. Every tensor's presence, shape and dtype
/// is checked before the model is allocated, so a config that claims a model far larger than its
/// files fails on a shape, not on an allocation.
fn load_weights(family: Family, config: &ModelConfig, files: &TensorFiles) -> Result<Model> {
    let maps = tensor_map(family, config);
    let mut used = BTreeSet::new();
    for map in &maps {
        for (name, shape) in &map.parts {
            let found = locate(files, name).ok_or_else(|| InteropError::Tensor {
                path: files.source().into(),
                name: name.clone(),
                problem: format!("missing, but a {family:?} model with this config.json has it"),
            })?;
            files.check(found, shape)?;
            used.insert(found);
        }
    }
    let unused: Vec<&str> = files
        .names()
        .filter(|n| !used.contains(n) && !is_buffer(n))
        // Some tied checkpoints store the head anyway, equal to the embeddings.
        .filter(|n| !(config.tie_embeddings && *n == "lm_head.weight"))
        .collect();
    if !unused.is_empty() {
        return Err(InteropError::Unsupported {
            path: files.source().into(),
            problem: format!(
                "{} tensor(s) that a {family:?} model with this config.json does not have, e.g. {}",
                unused.len(),
                unused.iter().take(4).copied().collect::<Vec<_>>().join(", ")
            ),
        });
    }

    let mut model = Model::zeroed(config);
    let mut scratch = Vec::new();
    for map in &maps {
        let spec =
            model.specs.iter().find(|s| s.name == map.ours).ok_or_else(|| InteropError::Unsupported {
                path: files.source().into(),
                problem: format!("our {family:?} model has no tensor `{}` (a bug in tensor_map)", map.ours),
            })?;
        let out = spec.handle.of_mut(&mut model.params);
        let mut row = 0;
        for (name, shape) in &map.parts {
            let name = locate(files, name).expect("every part was located above");
            let len: usize = shape.iter().product();
            if map.transposed {
                scratch.resize(len, 0.0);
                files.read_into(name, shape, &mut scratch)?;
                transpose(&scratch, out, shape[0], shape[1]);
            } else {
                files.read_into(name, shape, &mut out[row..row + len])?;
            }
            row += len;
        }
    }
    if maps.len() != model.specs.len() {
        return Err(InteropError::Unsupported {
            path: files.source().into(),
            problem: format!("tensor_map misses tensors of our {family:?} model (a bug)"),
        });
    }
    Ok(model)
}

/// `out (cols, rows) = inp (rows, cols)^T`. Threads own bands of 32 output rows; each 32x32 tile
/// goes through a buffer on the stack so that writes are 128-byte runs. Writing single elements at
/// a stride of `rows` floats instead puts all 32 streams in one cache set when the stride is a
/// multiple of 4 KiB (GPT-2's 768 x 4 x 4), which made this 10x slower.
fn transpose(inp: &[f32], out: &mut [f32], rows: usize, cols: usize) {
    const TILE: usize = 32;
    out.par_chunks_mut(TILE * rows).enumerate().for_each(|(band, out)| {
        let (c0, width) = (band * TILE, out.len() / rows);
        let mut tile = [0.0f32; TILE * TILE];
        for r0 in (0..rows).step_by(TILE) {
            let height = TILE.min(rows - r0);
            for r in 0..height {
                let src = &inp[(r0 + r) * cols + c0..][..width];
                for (c, &x) in src.iter().enumerate() {
                    tile[c * TILE + r] = x;
                }
            }
            for c in 0..width {
                out[c * rows + r0..][..height].copy_from_slice(&tile[c * TILE..c * TILE + height]);
            }
        }
    });
}

/// The chat template of the model in `dir`, as transformers reads it: `chat_template.jinja` when
/// present, else `tokenizer_config.json`'s `chat_template` (a string, or a list of named
/// templates), else none.
pub fn chat_template(dir: &Path) -> Result<Option<Value>> {
    let jinja = dir.join(CHAT_TEMPLATE);
    if jinja.is_file() {
        let text = fs::read_to_string(&jinja).map_err(|source| InteropError::Io { path: jinja, source })?;
        return Ok(Some(Value::String(text)));
    }
    let path = dir.join(TOKENIZER_CONFIG);
    if !path.is_file() {
        return Ok(None);
    }
    let text = fs::read_to_string(&path).map_err(|source| InteropError::Io { path: path.clone(), source })?;
    let config: Value = serde_json::from_str(&text)
        .map_err(|e| InteropError::Invalid { path: path.clone(), problem: format!("not JSON: {e}") })?;
    Ok(config.get("chat_template").cloned())
}

/// The tokenizer of an HF directory, if it has one, with the end-of-sequence token that
/// `tokenizer_config.json` names.
fn load_tokenizer(dir: &Path, vocab_size: usize) -> Result<Option<Tokenizer>> {
    let path = dir.join(TOKENIZER);
    if !path.is_file() {
        return Ok(None);
    }
    let mut tokenizer = Tokenizer::from_file(&path)?;
    let config_path = dir.join(TOKENIZER_CONFIG);
    if config_path.is_file() {
        let invalid = |problem: String| InteropError::Invalid { path: config_path.clone(), problem };
        let text = fs::read_to_string(&config_path)
            .map_err(|source| InteropError::Io { path: config_path.clone(), source })?;
        let json: Value = serde_json::from_str(&text).map_err(|e| invalid(format!("not JSON: {e}")))?;
        // `eos_token` is a string, or an AddedToken object with `content`.
        let eos = json.get("eos_token").and_then(|t| t.as_str().or_else(|| t.get("content")?.as_str()));
        if let Some(eos) = eos {
            tokenizer.set_eos_token(eos).map_err(|e| invalid(e.to_string()))?;
        }
    }
    tokenizer.check_fits(vocab_size)?;
    Ok(Some(tokenizer))
}

/// What an export wrote.
#[derive(Debug)]
pub struct Exported {
    pub family: Family,
    pub tensors: usize,
}

/// Writes `model` (and its tokenizer, with `chat_template` in its `tokenizer_config.json`: a
/// string or transformers' list of named templates; a string also as `chat_template.jinja`, where
/// transformers 5 looks first) as a Hugging Face directory at `out`, which must not exist; the
/// directory appears whole or not at all.
pub fn export(
    model: &Model,
    tokenizer: Option<&Tokenizer>,
    chat_template: Option<&Value>,
    out: &Path,
) -> Result<Exported> {
    if model.is_quantized() {
        let problem =
            "the model's weights are quantized; export needs them in f32 (load it dequantized)".into();
        return Err(InteropError::Unsupported { path: out.into(), problem });
    }
    if out.exists() {
        return Err(InteropError::Exists { path: out.into() });
    }
    let m = &model.config;
    let family = config::family_of(model)?;
    let weights = export_weights(model, family)?;
    let eos = tokenizer.and_then(Tokenizer::eos_id);
    let config = config::export(family, m, eos);
    let mut files: Vec<(&str, Vec<u8>)> =
        vec![(CONFIG, serde_json::to_vec_pretty(&config).expect("JSON serialises")), (SINGLE, weights.bytes)];
    if let Some(tokenizer) = tokenizer {
        let eos_token = tokenizer.eos_token();
        let mut tokenizer_config = json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": m.max_seq_len,
            "eos_token": eos_token,
            "bos_token": eos_token,
        });
        if let Some(template) = chat_template {
            tokenizer_config["chat_template"] = template.clone();
            if let Value::String(text) = template {
                files.push((CHAT_TEMPLATE, text.clone().into_bytes()));
            }
        }
        files.push((TOKENIZER, tokenizer.to_json().into_bytes()));
        files
            .push((TOKENIZER_CONFIG, serde_json::to_vec_pretty(&tokenizer_config).expect("JSON serialises")));
    }
    fsio::write_dir_atomic(out, &files, fsio::Existing::Refuse)?;
    Ok(Exported { family, tensors: weights.count })
}

struct Weights {
    bytes: Vec<u8>,
    count: usize,
}

fn export_weights(model: &Model, family: Family) -> Result<Weights> {
    let maps = tensor_map(family, &model.config);
    let mut tensors: Vec<(String, Cow<[f32]>, Vec<usize>)> = Vec::new();
    for map in &maps {
        let spec = model.specs.iter().find(|s| s.name == map.ours).ok_or_else(|| {
            InteropError::NoTarget(format!(
                "our {family:?} model has no tensor `{}` (a bug in tensor_map)",
                map.ours
            ))
        })?;
        let ours = spec.handle.of(&model.params);
        let mut row = 0;
        for (name, shape) in &map.parts {
            let len: usize = shape.iter().product();
            let values = if map.transposed {
                let mut t = vec![0.0; len];
                transpose(ours, &mut t, shape[1], shape[0]);
                Cow::Owned(t)
            } else {
                Cow::Borrowed(&ours[row..row + len])
            };
            row += len;
            tensors.push((name.clone(), values, shape.clone()));
        }
    }
    let views = tensors.iter().map(|(name, values, shape)| (name.as_str(), &shape[..], &values[..]));
    let bytes = crate::tensors::serialize_f32(views, &[])?;
    Ok(Weights { bytes, count: tensors.len() })
}
