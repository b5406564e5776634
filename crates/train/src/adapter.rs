//! A LoRA run's adapters: where the config's targets put them on a base, and the checkpoint file
//! that holds them (only them: the base stays where `train.base` names it, and the file records
//! the base's SHA-256 so that a base changed since is refused rather than silently adapted).

use std::path::Path;

use safetensors::SafeTensors;
use truthgpt_config::LoraConfig;
use truthgpt_interop::{peft, tensors::serialize_f32};
use truthgpt_model::{io::f32_values, LoraShape, LoraSite, Model};

use crate::error::{ModelContext, Result, TrainError};

/// The checkpoint file of a LoRA run's adapters, in place of `model.safetensors`.
pub const ADAPTER: &str = "adapter.safetensors";
/// Its metadata entry for the base's digest ([`peft::base_digest`]).
const BASE_DIGEST: &str = "truthgpt.base_sha256";

/// Attaches `lora`'s adapters to `model`, freezing it, and returns the modules they adapt.
pub fn attach(model: &mut Model, lora: &LoraConfig, seed: u64) -> Result<Vec<String>> {
    let modules = peft::select(&peft::targetable(model), &lora.targets)?;
    let sites: Vec<LoraSite> = modules.iter().map(|m| m.site.clone()).collect();
    let shape = LoraShape { rank: lora.rank, alpha: lora.alpha, rslora: lora.rslora };
    model.add_lora(&sites, shape, seed).during("attaching LoRA adapters")?;
    Ok(modules.into_iter().map(|m| m.path).collect())
}

/// The adapters of `model` as safetensors bytes, with its base's digest.
pub fn to_bytes(model: &Model) -> Result<Vec<u8>> {
    let adapters = model.specs.iter().filter(|s| is_adapter(&s.name));
    let tensors = adapters.map(|s| (s.name.as_str(), &s.shape[..], s.handle.of(&model.params)));
    Ok(serialize_f32(tensors, &[(BASE_DIGEST, peft::base_digest(model))])?)
}

/// Reads the adapter values `bytes` (the file at `path`) into `model`'s attached adapters, after
/// checking that `model`'s base is the one they were trained on.
pub fn load(model: &mut Model, bytes: &[u8], path: &Path) -> Result<()> {
    let corrupt = |problem: String| TrainError::Corrupt { path: path.to_path_buf(), problem };
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| corrupt(e.to_string()))?;
    let recorded = header.metadata().as_ref().and_then(|m| m.get(BASE_DIGEST)).cloned();
    let recorded = recorded.ok_or_else(|| corrupt(format!("no `{BASE_DIGEST}` entry")))?;
    let actual = peft::base_digest(model);
    if recorded != actual {
        return Err(TrainError::BaseChanged { path: path.to_path_buf(), recorded, actual });
    }
    let tensors = SafeTensors::deserialize(bytes).map_err(|e| corrupt(e.to_string()))?;
    for spec in model.specs.iter().filter(|s| is_adapter(&s.name)) {
        let view = tensors.tensor(&spec.name).map_err(|_| corrupt(format!("`{}` is missing", spec.name)))?;
        let values = f32_values(&spec.name, &view, &spec.shape).map_err(|e| corrupt(e.to_string()))?;
        spec.handle.of_mut(&mut model.params).copy_from_slice(&values);
    }
    Ok(())
}

fn is_adapter(name: &str) -> bool {
    name.contains(".lora.")
}
