//! LoRA adapters in Hugging Face PEFT's format: a directory of `adapter_config.json` and
//! `adapter_model.safetensors`, whose tensors are named after the base's HF modules
//! (`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`).
//!
//! The HF module names come from the same table that imports and exports the base
//! ([`crate::hf::tensor_map`]): an HF module that is a stack of rows in one of our fused layers
//! (`q_proj` in `attn.qkv`, `gate_proj` in `ffn.fc1`) is an adapter on those rows. So an adapter
//! trained by PEFT loads onto our import of its base, and ours loads into PEFT over our export.
//!
//! Our adapters record the SHA-256 of the base they were trained on in the safetensors header
//! (PEFT ignores it); loading one onto a different base is refused.

use std::collections::{BTreeSet, HashSet};
use std::path::Path;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use truthgpt_data::fsio;
use truthgpt_model::{LoraShape, LoraSite, Model};

use crate::error::{InteropError, Result};
use crate::hf::{config::family_of, tensor_map, Family};
use crate::tensors::{serialize_f32, TensorFiles};

pub const ADAPTER_CONFIG: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
/// The safetensors metadata entry that names the base an adapter was trained on.
const BASE_DIGEST: &str = "truthgpt.base_sha256";
/// PEFT's prefix on the tensors of an adapted causal LM.
const PREFIX: &str = "base_model.model.";

/// One linear module of the base's HF checkpoint, as PEFT addresses it, and where it is in ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// `model.layers.0.self_attn.q_proj`
    pub path: String,
    pub site: LoraSite,
}

/// Every linear module of `model` under `family`'s names: what PEFT can target.
pub fn modules(model: &Model, family: Family) -> Vec<Module> {
    let linears: HashSet<String> = model.linears().into_iter().map(|(name, _)| name).collect();
    let mut out = Vec::new();
    for map in tensor_map(family, &model.config) {
        let Some(linear) = map.ours.strip_suffix(".weight").filter(|l| linears.contains(*l)) else {
            continue;
        };
        let mut row = 0;
        for (hf, shape) in &map.parts {
            let path = hf.strip_suffix(".weight").unwrap_or(hf).to_string();
            // GPT-2's Conv1D holds (in, out).
            let rows = if map.transposed { shape[1] } else { shape[0] };
            let part = path.rsplit('.').next().unwrap_or(&path).to_string();
            out.push(Module { path, site: LoraSite { linear: linear.into(), part, rows: row..row + rows } });
            row += rows;
        }
    }
    out
}

/// What a fine-tune may target: the base's HF modules when it has an HF architecture, then
/// every linear layer whole under our names (`blocks.0.attn.qkv`, `head`), so that a model of
/// ours that no HF family matches can be adapted too.
pub fn targetable(model: &Model) -> Vec<Module> {
    let mut out = family_of(model).map(|family| modules(model, family)).unwrap_or_default();
    for (name, linear) in model.linears() {
        let part = name.rsplit('.').next().unwrap_or(&name).to_string();
        out.push(Module { path: name.clone(), site: LoraSite { linear: name, part, rows: 0..linear.out } });
    }
    out
}

/// The modules `targets` name, by PEFT's rule: a target matches a module whose name it is, or
/// whose name ends with `.` and the target (`q_proj`, `mlp.c_proj`). A target that matches no
/// module is an error that lists the names there are.
pub fn select(modules: &[Module], targets: &[String]) -> Result<Vec<Module>> {
    let matches = |m: &Module, t: &str| m.path == t || m.path.ends_with(&format!(".{t}"));
    if let Some(missing) = targets.iter().find(|t| !modules.iter().any(|m| matches(m, t))) {
        let names: BTreeSet<&str> = modules.iter().map(|m| m.site.part.as_str()).collect();
        return Err(InteropError::LoraTarget(format!(
            "no linear layer is named `{missing}`; this model's are {}",
            names.into_iter().collect::<Vec<_>>().join(", ")
        )));
    }
    Ok(modules.iter().filter(|m| targets.iter().any(|t| matches(m, t))).cloned().collect())
}

/// SHA-256 of the base's weights: every tensor but the adapters, as f32, and every quantized
/// linear layer's blocks as stored.
pub fn base_digest(model: &Model) -> String {
    let mut hasher = Sha256::new();
    for spec in model.specs.iter().filter(|s| !s.name.contains(".lora.")) {
        hasher.update(spec.name.as_bytes());
        hasher.update(bytemuck::cast_slice::<f32, u8>(spec.handle.of(&model.params)));
    }
    for (name, linear) in model.linears() {
        if let Some(q) = &linear.quant {
            hasher.update(name.as_bytes());
            q.parts().iter().for_each(|part| hasher.update(part.bytes()));
        }
    }
    hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// What an adapter directory holds.
#[derive(Debug, Clone)]
pub struct Adapter {
    pub shape: LoraShape,
    /// The HF modules it adapts.
    pub modules: Vec<String>,
    /// The base's digest it was made on, when it is one of ours.
    pub base_digest: Option<String>,
}

/// Reads the PEFT adapter in `dir` onto `model`, its base, which is frozen from then on. Shapes,
/// module names and settings we cannot honour (DoRA, per-module ranks, trained biases, saved
/// modules) are refused with the reason, and so is a base other than the one the adapter records.
pub fn load(dir: &Path, model: &mut Model) -> Result<Adapter> {
    let family = family_of(model)?;
    let config_path = dir.join(ADAPTER_CONFIG);
    let shape = read_config(&config_path)?;
    let weights = dir.join(ADAPTER_WEIGHTS);
    let (files, metadata) = TensorFiles::file(&weights)?;
    let invalid = |problem: String| InteropError::Invalid { path: weights.clone(), problem };
    let recorded = metadata.get(BASE_DIGEST).cloned();
    if let Some(recorded) = &recorded {
        let actual = base_digest(model);
        if *recorded != actual {
            return Err(invalid(format!(
                "this adapter was trained on a different base (sha256 {recorded}); this base is {actual}"
            )));
        }
    }
    let all = modules(model, family);
    let mut chosen: Vec<Module> = Vec::new();
    for name in files.names() {
        let module = name
            .strip_prefix(PREFIX)
            .and_then(|n| n.strip_suffix(".lora_A.weight").or_else(|| n.strip_suffix(".lora_B.weight")))
            .ok_or_else(|| {
                invalid(format!("`{name}` is not a LoRA tensor (lora_A/lora_B under {PREFIX})"))
            })?;
        let found = all.iter().find(|m| m.path == module).ok_or_else(|| {
            invalid(format!(
                "`{name}` adapts `{module}`, which this {family:?} base has no linear layer named"
            ))
        })?;
        if !chosen.contains(found) {
            chosen.push(found.clone());
        }
    }
    if chosen.is_empty() {
        return Err(invalid("no adapter tensors".into()));
    }
    chosen.sort_by_key(|m| all.iter().position(|a| a == m));
    let inputs = |linear: &str| model.linears().into_iter().find(|(n, _)| n == linear).map(|(_, l)| l.inp);
    let r = shape.rank;
    for m in &chosen {
        let inp = inputs(&m.site.linear).expect("modules are linears");
        for (ab, want) in [("lora_A", vec![r, inp]), ("lora_B", vec![m.site.rows.len(), r])] {
            let name = format!("{PREFIX}{}.{ab}.weight", m.path);
            match files.shape(&name) {
                Some(got) if got == want.as_slice() => {}
                Some(got) => {
                    return Err(invalid(format!(
                        "`{name}` has shape {got:?}; rank {r} on this base's `{}` needs {want:?}",
                        m.path
                    )))
                }
                None => return Err(invalid(format!("`{name}` is missing"))),
            }
        }
    }
    let sites: Vec<LoraSite> = chosen.iter().map(|m| m.site.clone()).collect();
    model.add_lora(&sites, shape, 0)?;
    for m in &chosen {
        for (ab, ours) in [("lora_A", "A"), ("lora_B", "B")] {
            let name = format!("{PREFIX}{}.{ab}.weight", m.path);
            let spec_name = format!("{}.lora.{}.{ours}", m.site.linear, m.site.part);
            let spec = model.specs.iter().find(|s| s.name == spec_name).expect("add_lora named it");
            let (handle, shape) = (spec.handle, spec.shape.clone());
            files.read_into(&name, &shape, handle.of_mut(&mut model.params))?;
        }
    }
    Ok(Adapter { shape, modules: chosen.into_iter().map(|m| m.path).collect(), base_digest: recorded })
}

fn read_config(path: &Path) -> Result<LoraShape> {
    let text = std::fs::read_to_string(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => {
            InteropError::Missing { path: path.into(), what: "the adapter's settings".into() }
        }
        _ => InteropError::Io { path: path.into(), source },
    })?;
    let bad = |problem: String| InteropError::Invalid { path: path.into(), problem };
    let c: Value = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let unsupported = |problem: String| InteropError::Unsupported { path: path.into(), problem };
    match c.get("peft_type").and_then(Value::as_str) {
        Some("LORA") => {}
        other => return Err(unsupported(format!("peft_type {other:?}: only LORA adapters are read"))),
    }
    let rank = c.get("r").and_then(Value::as_u64).filter(|&r| r > 0);
    let rank = rank.ok_or_else(|| bad("`r` must be a whole number of at least 1".into()))? as usize;
    let alpha = c.get("lora_alpha").and_then(Value::as_f64).filter(|a| a.is_finite() && *a > 0.0);
    let alpha = alpha.ok_or_else(|| bad("`lora_alpha` must be a positive number".into()))? as f32;
    let flag = |key: &str| c.get(key).and_then(Value::as_bool).unwrap_or(false);
    let is_empty = |key: &str| match c.get(key) {
        None | Some(Value::Null) => true,
        Some(Value::Object(o)) => o.is_empty(),
        Some(Value::Array(a)) => a.is_empty(),
        Some(_) => false,
    };
    if flag("use_dora") {
        return Err(unsupported("DoRA adapters (`use_dora`) are not supported".into()));
    }
    if !is_empty("rank_pattern") || !is_empty("alpha_pattern") {
        return Err(unsupported("per-module ranks or alphas (`rank_pattern`, `alpha_pattern`)".into()));
    }
    if !is_empty("modules_to_save") {
        return Err(unsupported("fully trained modules (`modules_to_save`) besides the adapters".into()));
    }
    if c.get("bias").and_then(Value::as_str).is_some_and(|b| b != "none") || flag("lora_bias") {
        return Err(unsupported("trained biases (`bias` other than \"none\", `lora_bias`)".into()));
    }
    Ok(LoraShape { rank, alpha, rslora: flag("use_rslora") })
}

/// Writes `model`'s adapters to `dir` (which must not exist) in PEFT's format, for `base`, the
/// name or path of the base's HF export, recorded as `base_model_name_or_path`.
pub fn save(dir: &Path, model: &Model, base: &str) -> Result<()> {
    let family = family_of(model)?;
    let all = modules(model, family);
    let adapters = model.adapters();
    let Some((_, first)) = adapters.first() else {
        return Err(InteropError::NoTarget("the model has no LoRA adapters".into()));
    };
    let (rank, scale) = (first.rank, first.scale);
    let mut tensors: Vec<(String, Vec<usize>, &[f32])> = Vec::new();
    let mut targets = BTreeSet::new();
    for (linear, lora) in &adapters {
        if lora.merged {
            return Err(InteropError::NoTarget(format!("the adapter on `{linear}` is merged into the base")));
        }
        if lora.rank != rank || lora.scale != scale {
            return Err(InteropError::NoTarget("adapters of different ranks or scales".into()));
        }
        let module =
            all.iter().find(|m| m.site.linear == *linear && m.site.rows == lora.rows).ok_or_else(|| {
                InteropError::NoTarget(format!(
                    "the adapter on rows {:?} of `{linear}` is no single {family:?} module",
                    lora.rows
                ))
            })?;
        let spec = |p| model.specs.iter().find(|s| s.handle == p).expect("adapter tensors have specs");
        for (ab, p) in [("lora_A", lora.a), ("lora_B", lora.b)] {
            let name = format!("{PREFIX}{}.{ab}.weight", module.path);
            tensors.push((name, spec(p).shape.clone(), p.of(&model.params)));
        }
        targets.insert(module.site.part.clone());
    }
    let config = json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base,
        "r": rank,
        // PEFT scales by alpha / r.
        "lora_alpha": scale * rank as f32,
        "use_rslora": false,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": family == Family::Gpt2,
        "target_modules": targets.into_iter().collect::<Vec<_>>(),
        "modules_to_save": null,
        "rank_pattern": {},
        "alpha_pattern": {},
        "use_dora": false,
        "init_lora_weights": true,
        "inference_mode": true,
    });
    let views = tensors.iter().map(|(name, shape, values)| (name.as_str(), &shape[..], *values));
    let weights = serialize_f32(views, &[(BASE_DIGEST, base_digest(model))])?;
    let files = [
        (ADAPTER_CONFIG, serde_json::to_vec_pretty(&config).expect("JSON serialises")),
        (ADAPTER_WEIGHTS, weights),
    ];
    fsio::write_dir_atomic(dir, &files, fsio::Existing::Refuse)?;
    Ok(())
}
