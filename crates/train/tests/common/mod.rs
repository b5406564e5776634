//! Helpers shared by the train crate's tests: a tiny model, a tiny corpus, and runs of them.

#![allow(dead_code)] // each test binary uses its own subset

use std::path::Path;
use std::sync::atomic::AtomicBool;

use truthgpt_config::{Balancing, Config, FfnKind, Positional};
use truthgpt_engine::close::max_abs_diff;
use truthgpt_train::checkpoint::load_checkpoint;
use truthgpt_train::run::{self, read_metrics, EvalRecord, Quiet, RunOptions, StepRecord, METRICS};
use truthgpt_train::source::{self, TrainingData};
use truthgpt_train::{Outcome, Record};

/// A model of a few thousand parameters that trains a step in milliseconds; MoE with bias
/// balancing and dropout, so exact resume covers the router biases and the dropout seeds too.
pub fn config() -> Config {
    let mut config = Config::default();
    let m = &mut config.model;
    (m.vocab_size, m.d_model, m.n_layers, m.n_heads, m.n_kv_heads, m.d_ff, m.max_seq_len) =
        (300, 16, 2, 2, 1, 24, 32);
    (m.positional, m.ffn, m.dropout) = (Positional::Rope, FfnKind::Moe, 0.1);
    (m.moe.n_experts, m.moe.top_k, m.moe.balancing) = (4, 2, Balancing::Bias);
    let t = &mut config.train;
    (t.batch_size, t.seq_len, t.grad_accum, t.steps, t.lr, t.warmup_steps) = (2, 16, 2, 8, 3e-3, 2);
    (t.eval_every, t.eval_batches, t.checkpoint_every, t.keep_checkpoints) = (4, 2, 2, 2);
    config.data.val_fraction = 0.1;
    config.validate().unwrap();
    config
}

/// About 25 KB of repetitive sentences, tokenized by a BPE fitted on them.
pub fn data(config: &Config) -> TrainingData {
    let animals = ["fox", "dog", "cat", "owl", "hen", "elk"];
    let texts: Vec<String> = (0..4)
        .map(|part| {
            (0..100)
                .map(|i| {
                    let (a, b) = (animals[(i * 7 + part) % 6], animals[(i * 5 + 1) % 6]);
                    format!("The {a} number {i} jumps over the lazy {b}, and the {b} sleeps.\n")
                })
                .collect()
        })
        .collect();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    source::from_texts(&texts, config, None).unwrap()
}

/// Trains `config` from scratch in run directory `out` until `stop_at` (or `train.steps`).
pub fn train(config: &Config, data: &TrainingData, out: &Path, stop_at: Option<u64>) -> Outcome {
    let (trainer, state) = run::fresh(config);
    let options = RunOptions { out: out.to_path_buf(), stop_at };
    run::run(
        config,
        trainer,
        state,
        &data.tokenizer,
        &data.dataset,
        &options,
        &mut Quiet,
        &AtomicBool::new(false),
    )
    .unwrap()
}

/// Resumes the run in `out` from its `latest` checkpoint, with the config it saved.
pub fn resume(data: &TrainingData, out: &Path, stop_at: Option<u64>) -> Outcome {
    let checkpoint = load_checkpoint(out).unwrap();
    let config = checkpoint.saved.config.clone();
    let (trainer, tokenizer, state) = checkpoint.into_trainer();
    let options = RunOptions { out: out.to_path_buf(), stop_at };
    run::run(
        &config,
        trainer,
        state,
        &tokenizer,
        &data.dataset,
        &options,
        &mut Quiet,
        &AtomicBool::new(false),
    )
    .unwrap()
}

/// The training and the validation records of a run's `metrics.jsonl`.
pub fn metrics(out: &Path) -> (Vec<StepRecord>, Vec<EvalRecord>) {
    let (mut train, mut eval) = (Vec::new(), Vec::new());
    for record in read_metrics(&out.join(METRICS)).unwrap() {
        match record {
            Record::Train(r) => train.push(r),
            Record::Eval(r) => eval.push(r),
        }
    }
    (train, eval)
}

/// Asserts `got` and `want` are finite and equal bit for bit (bits alone would let NaN match).
#[track_caller]
pub fn assert_bit_identical(what: &str, got: &[f32], want: &[f32]) {
    assert!(want.iter().all(|v| v.is_finite()), "{what}: not all finite");
    let bits = |values: &[f32]| values.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert!(bits(got) == bits(want), "{what}: differs (max |diff| {})", max_abs_diff(got, want));
}
