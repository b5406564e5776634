//! `import`, `export` and `logits`: models in and out of other tools' formats, and the logits
//! that show they agree.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context};
use truthgpt_interop::gguf::{self, GgufDtype};
use truthgpt_interop::hf;
use truthgpt_model::Mode;
use truthgpt_train::checkpoint;

use crate::args::{GgufDtypeArg, LogitsArgs};

pub fn import_hf(dir: &Path, out: &Path) -> anyhow::Result<()> {
    if out.exists() {
        bail!("{} already exists; choose another --out or remove it", out.display());
    }
    let started = Instant::now();
    let loaded = hf::load(dir).with_context(|| format!("importing {}", dir.display()))?;
    let settings = hf::config::settings_for(&loaded.model.config);
    // Kept for its chat template and special tokens (`hf::load` has already parsed it).
    let tokenizer_config = dir.join(checkpoint::TOKENIZER_CONFIG);
    let tokenizer_config = match tokenizer_config.is_file() {
        true => Some(
            std::fs::read(&tokenizer_config)
                .with_context(|| format!("reading {}", tokenizer_config.display()))?,
        ),
        false => None,
    };
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

pub fn export_hf(model: &Path, out: &Path) -> anyhow::Result<()> {
    let saved = checkpoint::load_model(model)?;
    let chat_template = chat_template(&saved.dir)?;
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

/// The chat template a model directory keeps in its `tokenizer_config.json` (from `import hf`).
fn chat_template(dir: &Path) -> anyhow::Result<Option<serde_json::Value>> {
    let path = dir.join(checkpoint::TOKENIZER_CONFIG);
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let config: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    Ok(config.get("chat_template").cloned())
}

pub fn export_gguf(model: &Path, out: &Path, dtype: GgufDtypeArg) -> anyhow::Result<()> {
    let saved = checkpoint::load_model(model)?;
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
    let mut saved = checkpoint::load_model(&args.model)?;
    let vocab = saved.model.config.vocab_size;
    let logits = saved.model.forward(&args.ids, 1, args.ids.len(), Mode::Eval)?;
    let rows: Vec<&[f32]> = logits.chunks_exact(vocab).collect();
    let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
    // serde_json writes each f32 in the shortest form that parses back to the same f32.
    serde_json::to_writer(&mut stdout, &std::collections::BTreeMap::from([("logits", rows)]))?;
    writeln!(stdout)?;
    Ok(())
}
