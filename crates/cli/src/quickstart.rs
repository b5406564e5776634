//! `truthgpt quickstart`: the whole pipeline on embedded defaults. It fits a BPE tokenizer on
//! twelve Shakespeare plays (shipped in `data/shakespeare/`, compiled into the binary), trains the
//! `quickstart` preset (a 4-expert top-2 MoE) for about 90 s, reports validation perplexity
//! against the unigram baseline and each expert's share of tokens, samples some text, and leaves
//! a model directory that `generate`, `eval` and `train --resume` use.

use std::fs;
use std::time::Instant;

use anyhow::{ensure, Context};
use truthgpt_config::{Config, Sources};
use truthgpt_data::stats::unigram_entropy;
use truthgpt_model::Sampling;
use truthgpt_train::checkpoint::LATEST;
use truthgpt_train::run::{self, RunOptions, METRICS};
use truthgpt_train::{source, Request, TextStream};

use crate::args::QuickstartArgs;
use crate::progress::{stop_on_ctrl_c, Progress};

macro_rules! plays {
    ($($name:literal),* $(,)?) => {
        [$(include_str!(concat!("../../../data/shakespeare/", $name, ".txt"))),*]
    };
}

const PLAYS: [&str; 12] = plays!(
    "hamlet",
    "macbeth",
    "lear",
    "othello",
    "romeo_and_juliet",
    "julius_caesar",
    "tempest",
    "midsummer_nights_dream",
    "twelfth_night",
    "much_ado_about_nothing",
    "merchant_of_venice",
    "as_you_like_it",
);

const PROMPT: &str = "HAMLET.\n";

pub fn run(args: &QuickstartArgs) -> anyhow::Result<()> {
    let overrides: Vec<String> = args.steps.map(|s| format!("train.steps={s}")).into_iter().collect();
    // No environment layer: the quickstart is a fixed recipe whose output should be reproducible.
    let config =
        Config::load(&Sources { preset: Some("quickstart"), overrides: &overrides, ..Sources::default() })
            .context("building the quickstart config")?;
    let out = &args.out;
    if out.join(LATEST).is_file() {
        println!("replacing the previous run in {}", out.display());
        for stale in ["checkpoints", LATEST, METRICS] {
            let path = out.join(stale);
            if path.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) }
                .with_context(|| format!("removing {}", path.display()))?;
        }
    }

    let started = Instant::now();
    let data = source::from_texts(&PLAYS, &config, None).context("tokenizing the corpus")?;
    let (train, val) = (&data.dataset.train, &data.dataset.val);
    let bytes: usize = PLAYS.iter().map(|p| p.len()).sum();
    println!(
        "corpus: 12 Shakespeare plays, {:.1} MB -> {} train + {} validation tokens (BPE of {} fitted in {:.1}s)",
        bytes as f64 / 1e6,
        train.len(),
        val.len(),
        data.tokenizer.vocab_size(),
        started.elapsed().as_secs_f64()
    );
    let unigram = unigram_entropy(train, config.model.vocab_size);
    let m = &config.model;
    let (trainer, state) = run::fresh(&config);
    println!(
        "model: {} parameters, {} layers, d_model {}, {} experts (top-{}) per layer; {} steps of {} x {} tokens",
        trainer.model.num_params(),
        m.n_layers,
        m.d_model,
        m.moe.n_experts,
        m.moe.top_k,
        config.train.steps,
        config.train.batch_size,
        config.train.seq_len
    );

    let stop = stop_on_ctrl_c();
    let mut progress = Progress::new();
    let options = RunOptions { out: out.clone(), stop_at: None };
    let outcome =
        run::run(&config, trainer, state, &data.tokenizer, &data.dataset, &options, &mut progress, &stop);
    progress.finish();
    let mut outcome = outcome?;
    let before = outcome.initial_eval.as_ref().context("a fresh run measures validation first")?;
    let after = &outcome.final_eval;
    println!();
    println!(
        "validation perplexity {:.1} -> {:.1} (loss {:.3} -> {:.3} nats/token; a unigram model gets {:.3})",
        before.val_perplexity, after.val_perplexity, before.val_loss, after.val_loss, unigram
    );
    ensure!(after.val_loss.is_finite(), "training diverged");

    println!("expert utilisation (share of routed tokens, training):");
    for (layer, moe) in outcome.trainer.model.moe_layers().enumerate() {
        let tokens = &moe.stats.tokens;
        let total = tokens.iter().sum::<u64>().max(1) as f64;
        let shares: Vec<String> =
            tokens.iter().map(|&n| format!("{:5.1}%", 100.0 * n as f64 / total)).collect();
        println!("  layer {layer}: {}", shares.join("  "));
    }

    let request = Request {
        prompt: PROMPT.into(),
        max_tokens: 120,
        sampling: Sampling { temperature: 0.8, top_k: 50, seed: 7, ..Sampling::default() },
        stop: vec![],
    };
    let mut sample = String::from(PROMPT);
    for piece in TextStream::new(&mut outcome.trainer.model, &data.tokenizer, &request)? {
        sample.push_str(&piece?);
    }
    println!("\nsample (temperature 0.8, top-k 50):\n----\n{}\n----", sample.trim_end());
    println!("\nsaved {} (run directory {})", outcome.checkpoint.display(), out.display());
    println!("next:");
    println!("  cargo run --release -- generate --model {} --prompt \"ROMEO.\\n\"", out.display());
    println!("  cargo run --release -- eval --model {} --data data/shakespeare", out.display());
    println!("  cargo run --release -- plot {}", out.display());
    Ok(())
}
