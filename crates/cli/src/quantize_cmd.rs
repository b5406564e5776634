//! `truthgpt quantize`: a model to a quantized GGUF file, by round-to-nearest or calibrated with
//! AWQ first.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{bail, Context};
use truthgpt_interop::awq;
use truthgpt_interop::gguf::{self, read::is_gguf_file, Gguf, Vocabulary};
use truthgpt_train::{checkpoint, source};

use crate::args::{QuantMethod, QuantizeArgs};

/// Calibration windows are this long, or the model's context if shorter.
const CALIB_WINDOW: usize = 512;

pub fn run(args: &QuantizeArgs) -> anyhow::Result<()> {
    if args.out.exists() {
        bail!("{} already exists; choose another --out or remove it", args.out.display());
    }
    let started = Instant::now();
    let mut saved = checkpoint::load_model_f32(&args.model)?;
    // A GGUF source keeps its own tokenizer keys, as llama-quantize does.
    let source_gguf = if is_gguf_file(&args.model) { Some(Gguf::open(&args.model)?) } else { None };
    if args.method == QuantMethod::Awq {
        let calib = args.calib.as_ref().context("--method awq needs --calib")?;
        let tokens = source::tokenize(calib, &saved.config.data.jsonl_field, saved.tokenizer()?)
            .with_context(|| format!("loading {}", calib.display()))?;
        let window = CALIB_WINDOW.min(saved.model.config.max_seq_len);
        let tokens = &tokens[..tokens.len().min(args.calib_tokens)];
        let windows: Vec<Vec<u32>> = tokens.chunks(window).map(<[u32]>::to_vec).collect();
        let report = awq::calibrate(&mut saved.model, &windows, args.to)?;
        let (rtn, awq) = report.totals();
        eprintln!(
            "AWQ: calibrated on {} tokens of {}: output error {awq:.4e} against {rtn:.4e} by round-to-nearest ({:+.1}%)",
            report.tokens,
            calib.display(),
            100.0 * (awq / rtn - 1.0)
        );
    }
    let vocabulary = match &source_gguf {
        Some(g) => Vocabulary::Gguf(g),
        None => Vocabulary::Tokenizer(saved.tokenizer()?),
    };
    let exported = gguf::export_with(&saved.model, vocabulary, &args.out, args.to)?;
    report(args, &exported, started);
    Ok(())
}

/// Counts of each type written, and llama.cpp's fallbacks, said once per kind.
fn report(args: &QuantizeArgs, exported: &gguf::GgufExported, started: Instant) {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut fallbacks: BTreeMap<(&str, &str), Vec<&str>> = BTreeMap::new();
    for (name, choice) in &exported.types {
        *counts.entry(choice.ty.name()).or_default() += 1;
        if let Some(wanted) = choice.wanted {
            fallbacks.entry((wanted.name(), choice.ty.name())).or_default().push(name);
        }
    }
    for ((wanted, written), names) in &fallbacks {
        let n = names.len();
        let shown = names.iter().take(3).copied().collect::<Vec<_>>().join(", ");
        let more = if n > 3 { format!(" and {} more", n - 3) } else { String::new() };
        eprintln!(
            "note: {n} tensors have rows that are not whole {wanted} blocks; wrote them as {written}: {shown}{more}"
        );
    }
    let counts: Vec<String> = counts.iter().map(|(ty, n)| format!("{n} {ty}")).collect();
    eprintln!(
        "wrote {} ({}, {:?}, {} tensors: {}; {:.1} MB) in {:.1}s",
        args.out.display(),
        args.to,
        args.method,
        exported.tensors,
        counts.join(", "),
        exported.bytes as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
}
