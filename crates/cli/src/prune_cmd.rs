//! `truthgpt prune`: one-shot pruning of a model's blocks into a new model directory.

use std::time::Instant;

use anyhow::{bail, Context};
use truthgpt_compress::{prune_channels, prune_model, Calibration, Method, Pattern};
use truthgpt_train::{checkpoint, source};

use crate::args::{PruneArgs, PruneMethod, Structure};
use crate::bench::init_threads;

pub fn run(args: &PruneArgs) -> anyhow::Result<()> {
    init_threads(args.threads)?;
    if args.out.exists() {
        bail!("{} already exists; choose another --out or remove it", args.out.display());
    }
    let pattern = match (args.sparsity, &args.pattern) {
        (Some(s), None) => Pattern::Unstructured(s),
        (None, Some(nm)) => Pattern::parse_nm(nm)?,
        _ => bail!("give one of --sparsity and --pattern"),
    };
    let method = match args.method {
        PruneMethod::Magnitude => Method::Magnitude,
        PruneMethod::Wanda => Method::Wanda,
        PruneMethod::Sparsegpt => Method::SparseGpt,
    };
    let started = Instant::now();
    let mut saved = checkpoint::load_model_f32(&args.model)?;
    if saved.model.has_lora() {
        saved.model = saved.model.into_merged().context("merging the run's adapters into its base")?;
        saved.config.train.base = None;
        saved.config.train.lora = None;
    }
    let seq_len = args.calib_seq_len.min(saved.model.config.max_seq_len);
    let tokens = match (&args.calib, method) {
        (_, Method::Magnitude) => Vec::new(),
        (Some(calib), _) => {
            let tokens = source::tokenize(calib, &saved.config.data.jsonl_field, saved.tokenizer()?)
                .with_context(|| format!("loading {}", calib.display()))?;
            let windows = (tokens.len() / seq_len.max(1)).min(args.calib_windows);
            if windows == 0 {
                bail!("{} has {} tokens: fewer than one window of {seq_len}", calib.display(), tokens.len());
            }
            tokens[..windows * seq_len].to_vec()
        }
        (None, _) => bail!("--method {:?} needs --calib", args.method),
    };
    let calibration = (!tokens.is_empty()).then(|| Calibration {
        tokens: &tokens,
        windows: tokens.len() / seq_len,
        seq_len,
    });
    if let (Some(Structure::Channels), Pattern::Unstructured(fraction)) = (args.structured, pattern) {
        let (pruned, report) = prune_channels(&mut saved.model, fraction, method, calibration)?;
        saved.config.model = pruned.config.clone();
        checkpoint::save_model(&args.out, &saved.config, &pruned, saved.tokenizer.as_ref())?;
        eprintln!(
            "removed {} of {} feed-forward channels in every block of {} by {:?}: {} parameters, from {}; \
             wrote {} in {:.1}s",
            report.d_ff_before - report.d_ff_after,
            report.d_ff_before,
            args.model.display(),
            args.method,
            report.params_after,
            report.params_before,
            args.out.display(),
            started.elapsed().as_secs_f64()
        );
        return Ok(());
    }
    let report = prune_model(&mut saved.model, method, pattern, calibration)?;
    checkpoint::save_model(&args.out, &saved.config, &saved.model, saved.tokenizer.as_ref())?;
    let (zeros, weights) = (report.zeros(), report.weights());
    eprintln!(
        "pruned {} linear layers of {} by {:?} ({pattern}{}): {zeros} of {weights} weights are zero \
         ({:.1}%, {:.1}% of all {} parameters); wrote {} in {:.1}s",
        report.linears.len(),
        args.model.display(),
        args.method,
        match report.tokens {
            0 => String::new(),
            n => format!(", calibrated on {n} tokens"),
        },
        100.0 * zeros as f64 / weights.max(1) as f64,
        100.0 * zeros as f64 / saved.model.num_params().max(1) as f64,
        saved.model.num_params(),
        args.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
