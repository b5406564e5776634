//! `truthgpt quickstart`: an interim end-to-end demo. Trains the `tiny` preset with a 4-expert,
//! top-2 MoE feed-forward on the bytes of chapter 1 of *Pride and Prejudice* (Austen, 1813; public
//! domain) and reports held-out loss and expert utilisation. The text is ~4.5 KB, so the model
//! mostly memorises it; the held-out tail shows how much of that is byte statistics that transfer.

use std::time::Instant;

use anyhow::{ensure, Context};
use truthgpt_config::{Config, Sources};
use truthgpt_engine::rng::Rng;
use truthgpt_model::{Batch, Model, Trainer};

use crate::args::QuickstartArgs;

const TEXT: &str = include_str!("quickstart.txt");

/// Share of the text, from the end, kept out of training.
const HELD_OUT: f64 = 0.1;

pub fn run(args: &QuickstartArgs) -> anyhow::Result<()> {
    ensure!(args.steps > 0, "--steps must be at least 1");
    let overrides: Vec<String> =
        ["model.ffn=moe", "model.moe.n_experts=4", "model.moe.top_k=2"].map(String::from).into();
    // No environment layer: the quickstart is a fixed recipe whose output should be reproducible.
    let mut config =
        Config::load(&Sources { preset: Some("tiny"), overrides: &overrides, ..Sources::default() })
            .context("building the quickstart config")?;
    config.train.steps = args.steps;
    config.train.warmup_steps = config.train.warmup_steps.min(args.steps / 10);

    // Byte-level: the `tiny` vocabulary is exactly 256.
    let bytes: Vec<u32> = TEXT.bytes().map(u32::from).collect();
    let split = bytes.len() - (bytes.len() as f64 * HELD_OUT) as usize;
    let (train_text, held_out) = bytes.split_at(split);
    let (b, t) = (config.train.batch_size, config.train.seq_len);
    ensure!(
        train_text.len() > t && held_out.len() > t,
        "the embedded text is shorter than one window of {t}"
    );

    // Non-overlapping held-out windows, all in one batch.
    let windows = (held_out.len() - 1) / t;
    let eval_tokens: Vec<u32> = held_out[..windows * t].to_vec();
    let eval_targets: Vec<u32> = held_out[1..windows * t + 1].to_vec();
    let held_out_loss = |model: &mut Model| -> anyhow::Result<f32> {
        model.forward(&eval_tokens, windows, t).context("held-out forward")?;
        model.loss(&eval_targets).context("held-out loss")
    };

    let mut trainer = Trainer::new(Model::new(&config.model, config.train.seed), config.train.clone());
    println!(
        "quickstart: {} parameters, {} layers of {} experts (top-{}), {} training bytes, {} held-out",
        trainer.model.num_params(),
        config.model.n_layers,
        config.model.moe.n_experts,
        config.model.moe.top_k,
        train_text.len(),
        held_out.len()
    );
    let before = held_out_loss(&mut trainer.model)?;

    let mut rng = Rng::new(config.train.seed);
    let (mut tokens, mut targets) = (vec![0; b * t], vec![0; b * t]);
    let start = Instant::now();
    for step in 0..args.steps {
        for row in 0..b {
            let offset = (rng.next_u64() % (train_text.len() - t) as u64) as usize;
            tokens[row * t..(row + 1) * t].copy_from_slice(&train_text[offset..offset + t]);
            targets[row * t..(row + 1) * t].copy_from_slice(&train_text[offset + 1..offset + t + 1]);
        }
        let stats =
            trainer.step(&[Batch { tokens: &tokens, targets: &targets, b, t }]).context("training step")?;
        if step % 20 == 0 || step + 1 == args.steps {
            println!(
                "step {step:>4}  loss {:.3}  aux {:.4}  grad_norm {:.2}  lr {:.1e}",
                stats.loss, stats.aux_loss, stats.grad_norm, stats.lr
            );
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "trained {} steps in {seconds:.1}s ({:.0} tokens/s)",
        args.steps,
        (args.steps * b * t) as f64 / seconds
    );
    // Counters see training forwards only, not the held-out evaluations.
    let utilisation: Vec<Vec<u64>> = trainer.model.moe_layers().map(|moe| moe.stats.tokens.clone()).collect();
    let after = held_out_loss(&mut trainer.model)?;
    println!("held-out loss: {before:.3} -> {after:.3} (uniform over 256 bytes: {:.3})", (256f32).ln());
    for (layer, tokens) in utilisation.iter().enumerate() {
        let total = tokens.iter().sum::<u64>().max(1) as f64;
        let shares: Vec<String> =
            tokens.iter().map(|&n| format!("{:.1}%", 100.0 * n as f64 / total)).collect();
        println!("layer {layer} expert tokens {tokens:?}  shares [{}]", shares.join(", "));
    }
    Ok(())
}
