//! The training loop: batches from a seeded sampler, periodic validation, metrics appended as
//! JSONL, checkpoints, and exact resume.
//!
//! Resume is exact because nothing in a step depends on history outside the checkpoint: batch
//! `s` is drawn from the sampler by its sample index, dropout masks are a hash of (seed, step),
//! and the weights and AdamW moments are saved bit for bit.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use truthgpt_config::Config;
use truthgpt_data::{fsio, sampler::WindowSampler, TokenDataset, Tokenizer};
use truthgpt_model::{Batch, Model, Trainer};

use crate::checkpoint::{self, TrainerState};
use crate::error::{IoContext, ModelContext, Result};
use crate::eval::{evaluate, Evaluation};

pub const METRICS: &str = "metrics.jsonl";

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Record {
    Train(StepRecord),
    Eval(EvalRecord),
}

impl Record {
    fn step(&self) -> u64 {
        match self {
            Record::Train(r) => r.step,
            Record::Eval(r) => r.step,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Optimiser steps done, this one included.
    pub step: u64,
    pub loss: f32,
    pub lr: f32,
    pub grad_norm: f32,
    pub aux_loss: f32,
    pub tokens_per_sec: f64,
    pub elapsed_secs: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    pub step: u64,
    pub val_loss: f64,
    pub val_perplexity: f64,
    pub val_tokens: u64,
}

impl EvalRecord {
    fn new(step: u64, evaluation: Evaluation) -> Self {
        EvalRecord {
            step,
            val_loss: evaluation.loss,
            val_perplexity: evaluation.perplexity(),
            val_tokens: evaluation.tokens,
        }
    }
}

/// Progress callbacks (the CLI draws its progress bar from them).
pub trait Observer {
    fn started(&mut self, _state: &TrainerState, _total_steps: u64) {}
    fn step(&mut self, _record: &StepRecord) {}
    fn evaluated(&mut self, _record: &EvalRecord) {}
    fn checkpointed(&mut self, _dir: &Path) {}
}

/// An observer that ignores everything.
pub struct Quiet;
impl Observer for Quiet {}

#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The run directory: checkpoints, `latest` and `metrics.jsonl`.
    pub out: PathBuf,
    /// Stop (with a checkpoint) once this many steps are done, without changing the schedule,
    /// which still spans `train.steps`.
    pub stop_at: Option<u64>,
}

/// How a run ended.
#[derive(Debug)]
pub struct Outcome {
    pub trainer: Trainer,
    pub state: TrainerState,
    /// Validation before the first step (fresh runs only).
    pub initial_eval: Option<EvalRecord>,
    pub final_eval: EvalRecord,
    pub checkpoint: PathBuf,
    /// Stopped by the `stop` flag (Ctrl-C) before the last step.
    pub interrupted: bool,
}

/// A fresh trainer and state for `config`.
pub fn fresh(config: &Config) -> (Trainer, TrainerState) {
    let model = Model::new(&config.model, config.train.seed);
    let state = TrainerState::start(config.train.seed);
    (Trainer::new(model, config.train.clone()), state)
}

/// Trains until `train.steps` (or `stop_at`, or `stop` is set), then validates and checkpoints.
#[allow(clippy::too_many_arguments)]
pub fn run(
    config: &Config,
    mut trainer: Trainer,
    mut state: TrainerState,
    tokenizer: &Tokenizer,
    data: &TokenDataset,
    options: &RunOptions,
    observer: &mut dyn Observer,
    stop: &AtomicBool,
) -> Result<Outcome> {
    let t = &config.train;
    let (b, seq, accum) = (t.batch_size, t.seq_len, t.grad_accum);
    let total = t.steps as u64;
    let end = options.stop_at.map_or(total, |s| s.min(total));
    fs::create_dir_all(&options.out).at(&options.out)?;
    let metrics_path = options.out.join(METRICS);
    let mut metrics = open_metrics(&metrics_path, state.step)?;
    let mut sampler = WindowSampler::new(data.train.len(), seq, state.seed)?;
    let eval_windows = t.eval_batches * b;
    let validate = |model: &mut Model, step: u64| -> Result<EvalRecord> {
        Ok(EvalRecord::new(step, evaluate(model, &data.val, seq, b, eval_windows)?))
    };

    observer.started(&state, total);
    let initial_eval = if state.step == 0 {
        let record = validate(&mut trainer.model, 0)?;
        append(&mut metrics, &metrics_path, &Record::Eval(record.clone()))?;
        observer.evaluated(&record);
        Some(record)
    } else {
        None
    };

    let mut tokens = vec![0u32; accum * b * seq];
    let mut targets = vec![0u32; accum * b * seq];
    let mut last_eval = initial_eval.clone();
    let mut interrupted = false;
    while state.step < end {
        if stop.load(Ordering::Relaxed) {
            interrupted = true;
            break;
        }
        let started = Instant::now();
        let first_sample = state.step * (accum * b) as u64;
        for (micro, (x, y)) in
            tokens.chunks_exact_mut(b * seq).zip(targets.chunks_exact_mut(b * seq)).enumerate()
        {
            sampler.fill_batch(&data.train, first_sample + (micro * b) as u64, b, x, y);
        }
        let batches: Vec<Batch> = tokens
            .chunks_exact(b * seq)
            .zip(targets.chunks_exact(b * seq))
            .map(|(tokens, targets)| Batch { tokens, targets, b, t: seq })
            .collect();
        let stats = trainer.step(&batches).during("training step")?;
        let seconds = started.elapsed().as_secs_f64();
        state.step = trainer.step;
        state.tokens_seen += (accum * b * seq) as u64;
        state.elapsed_secs += seconds;
        let record = StepRecord {
            step: state.step,
            loss: stats.loss,
            lr: stats.lr,
            grad_norm: stats.grad_norm,
            aux_loss: stats.aux_loss,
            tokens_per_sec: (accum * b * seq) as f64 / seconds,
            elapsed_secs: state.elapsed_secs,
        };
        append(&mut metrics, &metrics_path, &Record::Train(record.clone()))?;
        observer.step(&record);
        let due = |every: usize| every > 0 && state.step.is_multiple_of(every as u64) && state.step < end;
        if due(t.eval_every) {
            let record = validate(&mut trainer.model, state.step)?;
            append(&mut metrics, &metrics_path, &Record::Eval(record.clone()))?;
            observer.evaluated(&record);
            last_eval = Some(record);
        }
        if due(t.checkpoint_every) {
            let dir = checkpoint::save_checkpoint(
                &options.out,
                config,
                &trainer,
                tokenizer,
                &state,
                t.keep_checkpoints,
            )?;
            observer.checkpointed(&dir);
        }
    }
    let final_eval = match last_eval {
        Some(record) if record.step == state.step => record,
        _ => {
            let record = validate(&mut trainer.model, state.step)?;
            append(&mut metrics, &metrics_path, &Record::Eval(record.clone()))?;
            observer.evaluated(&record);
            record
        }
    };
    let checkpoint =
        checkpoint::save_checkpoint(&options.out, config, &trainer, tokenizer, &state, t.keep_checkpoints)?;
    observer.checkpointed(&checkpoint);
    Ok(Outcome { trainer, state, initial_eval, final_eval, checkpoint, interrupted })
}

/// Opens the metrics log for appending, first dropping records past `step` (a run killed after
/// its last checkpoint logged steps that its resume will run again) and a torn last line (the
/// next record would be appended onto it and lost with it).
fn open_metrics(path: &Path, step: u64) -> Result<fs::File> {
    if path.exists() {
        let text = fs::read_to_string(path).at(path)?;
        let records = parse_metrics(&text);
        let torn = !text.is_empty() && !text.ends_with('\n');
        if torn || records.iter().any(|r| r.step() > step) {
            let kept: String = records
                .iter()
                .filter(|r| r.step() <= step)
                .map(|r| serde_json::to_string(r).expect("records serialise") + "\n")
                .collect();
            fsio::write_atomic(path, kept.as_bytes()).at(path)?;
        }
    }
    fs::OpenOptions::new().create(true).append(true).open(path).at(path)
}

fn append(file: &mut fs::File, path: &Path, record: &Record) -> Result<()> {
    let line = serde_json::to_string(record).expect("records serialise") + "\n";
    file.write_all(line.as_bytes()).at(path)
}

/// Every record of a metrics log. A torn last line (the process died mid-write) is skipped.
pub fn read_metrics(path: &Path) -> Result<Vec<Record>> {
    Ok(parse_metrics(&fs::read_to_string(path).at(path)?))
}

fn parse_metrics(text: &str) -> Vec<Record> {
    text.lines().filter_map(|line| serde_json::from_str(line).ok()).collect()
}
