//! `import`, `export` and `logits`: models in and out of other tools' formats, and the logits
//! that show they agree.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context};
use truthgpt_interop::gguf::{self, GgufDtype};
use truthgpt_interop::{hf, peft};
use truthgpt_model::Mode;
use truthgpt_train::{checkpoint, SavedModel};

use crate::args::{GgufDtypeArg, LogitsArgs};

pub fn import_hf(dir: &Path, out: &Path) -> anyhow::Result<()> {
    if out.exists() {
        bail!("{} already exists; choose another --out or remove it", out.display());
    }
    let started = Instant::now();
    let loaded = hf::load(dir).with_context(|| format!("importing {}", dir.display()))?;
    let settings = hf::config::settings_for(&loaded.model.config);
    let tokenizer_config = kept_tokenizer_config(dir)?;
    checkpoint::save_model_with(out, &settings, &loaded.model, loaded.tokenizer.as_ref(), tokenizer_config)?;
    eprintln!(
        "imported {} ({:?}, {:.1}M parameters, {}) into {} in {:.2}s",
        dir.display(),
        loaded.family,
        loaded.model.num_params() as f64 / 1e6,
        if loaded.tokenizer.is_some() { "with its tokenizer" } else { "no tokenizer" },
        out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The `tokenizer_config.json` an import keeps, for its chat template and special tokens (`hf::load`
/// has already parsed it), as read; a template in `chat_template.jinja` is moved into it, where
/// our model directories keep theirs.
fn kept_tokenizer_config(dir: &Path) -> anyhow::Result<Option<Vec<u8>>> {
    let path = dir.join(checkpoint::TOKENIZER_CONFIG);
    let bytes = match path.is_file() {
        true => Some(std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?),
        false => None,
    };
    if !dir.join(hf::CHAT_TEMPLATE).is_file() {
        return Ok(bytes);
    }
    let mut config: serde_json::Value = match &bytes {
        Some(bytes) => {
            serde_json::from_slice(bytes).with_context(|| format!("{}: not JSON", path.display()))?
        }
        None => serde_json::json!({}),
    };
    config["chat_template"] = hf::chat_template(dir)?.unwrap_or_default();
    Ok(Some(serde_json::to_vec_pretty(&config).expect("JSON serialises")))
}

pub fn export_hf(model: &Path, out: &Path) -> anyhow::Result<()> {
    let saved = merged(checkpoint::load_model_f32(model)?)?;
    let chat_template = hf::chat_template(&saved.dir)?;
    let exported = hf::export(&saved.model, saved.tokenizer.as_ref(), chat_template.as_ref(), out)?;
    eprintln!(
        "wrote {} as {} ({} tensors{})",
        out.display(),
        exported.family.architecture(),
        exported.tensors,
        if saved.tokenizer.is_some() { ", tokenizer" } else { "" }
    );
    Ok(())
}

/// A LoRA run exports as one model, its adapters merged into the base (`export peft` writes the
/// adapters alone).
fn merged(mut saved: SavedModel) -> anyhow::Result<SavedModel> {
    if saved.model.has_lora() {
        saved.model = saved.model.into_merged().context("merging the run's adapters into its base")?;
    }
    Ok(saved)
}

pub fn export_peft(model: &Path, out: &Path, base: Option<&str>) -> anyhow::Result<()> {
    let saved = checkpoint::load_model(model)?;
    if !saved.model.has_lora() {
        bail!(
            "{} is not a LoRA run: it has no adapters to export (export hf writes whole models)",
            model.display()
        );
    }
    let recorded = saved.config.train.base.as_ref().map(|p| p.display().to_string());
    let base = base.map(str::to_owned).or(recorded).unwrap_or_default();
    peft::save(out, &saved.model, &base)?;
    eprintln!(
        "wrote {} (PEFT LoRA: {} adapters, rank {}, base {base})",
        out.display(),
        saved.model.adapters().len(),
        saved.model.adapters()[0].1.rank
    );
    Ok(())
}

pub fn export_gguf(model: &Path, out: &Path, dtype: GgufDtypeArg) -> anyhow::Result<()> {
    let saved = merged(checkpoint::load_model_f32(model)?)?;
    let dtype = match dtype {
        GgufDtypeArg::F32 => GgufDtype::F32,
        GgufDtypeArg::F16 => GgufDtype::F16,
        GgufDtypeArg::Q8_0 => GgufDtype::Q8_0,
    };
    let exported = gguf::export(&saved.model, saved.tokenizer()?, out, dtype)?;
    eprintln!(
        "wrote {} (GGUF, arch {}, {} tensors, {:.1} MB, {dtype:?})",
        out.display(),
        exported.architecture,
        exported.tensors,
        exported.bytes as f64 / 1e6
    );
    Ok(())
}

/// One forward pass over `ids` as a single sequence; prints every position's logits.
pub fn logits(args: &LogitsArgs) -> anyhow::Result<()> {
    let load = if args.f32 { checkpoint::load_model_f32 } else { checkpoint::load_model };
    let mut saved = load(&args.model)?;
    let vocab = saved.model.config.vocab_size;
    let logits = saved.model.forward(&args.ids, 1, args.ids.len(), Mode::Eval)?;
    let rows: Vec<&[f32]> = logits.chunks_exact(vocab).collect();
    let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
    // serde_json writes each f32 in the shortest form that parses back to the same f32.
    serde_json::to_writer(&mut stdout, &std::collections::BTreeMap::from([("logits", rows)]))?;
    writeln!(stdout)?;
    Ok(())
}
