//! The training loop: exact resume, what `metrics.jsonl` records, the stop flag and observer, and
//! the plot drawn from a run.

mod common;

use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use common::{assert_bit_identical, config, data, metrics, resume, train};
use truthgpt_engine::close::assert_close;
use truthgpt_train::checkpoint::TrainerState;
use truthgpt_train::plot::{plot_run, plot_runs};
use truthgpt_train::run::{self, EvalRecord, RunOptions, StepRecord, METRICS};
use truthgpt_train::{Observer, TrainError};

/// What a step record holds apart from its timings.
fn numbers(r: &StepRecord) -> (u64, u32, u32, u32, u32) {
    (r.step, r.loss.to_bits(), r.lr.to_bits(), r.grad_norm.to_bits(), r.aux_loss.to_bits())
}

#[test]
fn stopping_and_resuming_trains_exactly_as_one_straight_run() {
    let config = config();
    let data = data(&config);
    let (straight, split) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let full = train(&config, &data, straight.path(), None);
    // Step 3 is between checkpoints (every 2), so the resume starts from the stop's own save.
    let first = train(&config, &data, split.path(), Some(3));
    assert_eq!((first.state.step, first.interrupted), (3, false));
    let resumed = resume(&data, split.path(), None);
    assert!(resumed.initial_eval.is_none(), "a resumed run does not validate before its first step");

    assert_eq!(
        resumed.state,
        TrainerState { elapsed_secs: resumed.state.elapsed_secs, ..full.state.clone() }
    );
    assert_bit_identical("params", &resumed.trainer.model.params, &full.trainer.model.params);
    assert_bit_identical("m", &resumed.trainer.m, &full.trainer.m);
    assert_bit_identical("v", &resumed.trainer.v, &full.trainer.v);
    let (full_steps, full_evals) = metrics(straight.path());
    let (split_steps, mut split_evals) = metrics(split.path());
    assert!(full_steps.iter().all(|r| r.loss.is_finite() && r.grad_norm.is_finite()), "{full_steps:?}");
    assert_eq!(
        full_steps.iter().map(numbers).collect::<Vec<_>>(),
        split_steps.iter().map(numbers).collect::<Vec<_>>()
    );
    // The stopped run validated at its last step, 3; every other validation is the straight run's.
    assert_eq!(split_evals.remove(1).step, 3);
    assert_eq!(full_evals, split_evals);
    assert_eq!(full.final_eval, resumed.final_eval);
    let weights = |run: &Path| fs::read(run.join("checkpoints/step-00000008/model.safetensors")).unwrap();
    assert_eq!(weights(straight.path()), weights(split.path()));
}

#[test]
fn metrics_log_every_step_and_each_validation() {
    let config = config();
    let data = data(&config);
    let out = tempfile::tempdir().unwrap();
    let outcome = train(&config, &data, out.path(), None);
    let (steps, evals) = metrics(out.path());
    let t = &config.train;

    assert_eq!(steps.iter().map(|r| r.step).collect::<Vec<_>>(), (1..=8).collect::<Vec<_>>());
    for r in &steps {
        assert_eq!(r.lr.to_bits(), t.lr_at(r.step as usize - 1).to_bits(), "step {}", r.step);
        assert!(r.loss.is_finite() && r.grad_norm > 0.0 && r.tokens_per_sec > 0.0, "{r:?}");
    }
    let elapsed: Vec<f64> = steps.iter().map(|r| r.elapsed_secs).collect();
    assert!(elapsed.windows(2).all(|w| w[0] < w[1]), "elapsed time accumulates: {elapsed:?}");
    assert_eq!(outcome.state.tokens_seen, (8 * t.grad_accum * t.batch_size * t.seq_len) as u64);

    // Before the first step, every `eval_every` (4), and at the end.
    assert_eq!(evals.iter().map(|r| r.step).collect::<Vec<_>>(), [0, 4, 8]);
    // The logged numbers are the outcome's, to within JSON's decimal round trip (an ulp).
    for (logged, kept) in
        [(&evals[0], outcome.initial_eval.as_ref().unwrap()), (&evals[2], &outcome.final_eval)]
    {
        assert_eq!((logged.step, logged.val_tokens), (kept.step, kept.val_tokens));
        assert_close("val_loss", &[logged.val_loss], &[kept.val_loss], 1e-15);
    }
    let windows = (t.eval_batches * t.batch_size) as u64;
    for r in &evals {
        assert_eq!(r.val_tokens, windows * t.seq_len as u64, "{r:?}");
        assert_close("val_perplexity", &[r.val_perplexity], &[r.val_loss.exp()], 1e-12);
    }
    // An untrained model is near uniform over the vocabulary; training on this corpus improves it.
    assert_close("initial loss", &[evals[0].val_loss], &[(config.model.vocab_size as f64).ln()], 0.05);
    assert!(evals[2].val_loss < evals[0].val_loss - 0.1, "{evals:?}");
}

/// Issue 16: a log whose last line was torn (the writer died mid-line) must not swallow the
/// resumed run's first record, which used to be appended onto the torn line.
#[test]
fn a_torn_last_metrics_line_is_dropped_on_resume() {
    let config = config();
    let data = data(&config);
    let out = tempfile::tempdir().unwrap();
    train(&config, &data, out.path(), Some(4));
    let mut log = fs::OpenOptions::new().append(true).open(out.path().join(METRICS)).unwrap();
    log.write_all(b"{\"kind\":\"train\",\"step\":5,\"lo").unwrap();
    drop(log);
    resume(&data, out.path(), Some(6));
    let (steps, _) = metrics(out.path());
    assert_eq!(steps.iter().map(|r| r.step).collect::<Vec<_>>(), (1..=6).collect::<Vec<_>>());
    assert!(fs::read_to_string(out.path().join(METRICS)).unwrap().ends_with('\n'));
}

/// Records the callbacks, and sets the stop flag (as Ctrl-C does) once `stop_after` steps are done.
struct StopAfter<'a> {
    stop: &'a AtomicBool,
    stop_after: u64,
    events: Vec<String>,
}

impl Observer for StopAfter<'_> {
    fn started(&mut self, state: &TrainerState, total_steps: u64) {
        self.events.push(format!("started {} of {total_steps}", state.step));
    }
    fn step(&mut self, record: &StepRecord) {
        self.events.push(format!("step {}", record.step));
        if record.step == self.stop_after {
            self.stop.store(true, Ordering::Relaxed);
        }
    }
    fn evaluated(&mut self, record: &EvalRecord) {
        self.events.push(format!("evaluated {}", record.step));
    }
    fn checkpointed(&mut self, dir: &Path) {
        self.events.push(format!("checkpointed {}", dir.file_name().unwrap().to_string_lossy()));
    }
}

#[test]
fn the_stop_flag_ends_the_run_with_a_validation_and_a_checkpoint() {
    let config = config();
    let data = data(&config);
    let out = tempfile::tempdir().unwrap();
    let stop = AtomicBool::new(false);
    let mut observer = StopAfter { stop: &stop, stop_after: 3, events: Vec::new() };
    let (trainer, state) = run::fresh(&config);
    let options = RunOptions { out: out.path().to_path_buf(), stop_at: None };
    let outcome =
        run::run(&config, trainer, state, &data.tokenizer, &data.dataset, &options, &mut observer, &stop)
            .unwrap();
    assert!(outcome.interrupted);
    assert_eq!(outcome.state.step, 3);
    assert_eq!(
        observer.events,
        [
            "started 0 of 8",
            "evaluated 0",
            "step 1",
            "step 2",
            "checkpointed step-00000002",
            "step 3",
            "evaluated 3",
            "checkpointed step-00000003"
        ]
    );
    assert_eq!(truthgpt_train::load_checkpoint(out.path()).unwrap().state.step, 3);
}

#[test]
fn a_run_plots_as_a_png_and_a_log_without_steps_is_refused() {
    let config = config();
    let data = data(&config);
    let out = tempfile::tempdir().unwrap();
    train(&config, &data, out.path(), Some(2));
    let png = out.path().join("curves.png");
    plot_run(out.path(), &png).unwrap();
    let bytes = fs::read(&png).unwrap();
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    // The IHDR chunk's width and height.
    assert_eq!((&bytes[16..20], &bytes[20..24]), (&1000u32.to_be_bytes()[..], &700u32.to_be_bytes()[..]));

    // Two runs overlaid: another picture, and one run missing its log fails it, naming the file.
    let other = tempfile::tempdir().unwrap();
    train(&config, &data, other.path(), Some(3));
    let both = out.path().join("both.png");
    plot_runs(&[out.path(), other.path()], &both).unwrap();
    let overlaid = fs::read(&both).unwrap();
    assert!(overlaid.starts_with(b"\x89PNG\r\n\x1a\n") && overlaid != bytes, "two runs draw another PNG");
    let err = plot_runs(&[out.path(), &out.path().join("nowhere")], &both).unwrap_err();
    assert!(err.to_string().contains("nowhere"), "{err}");

    let evals_only = tempfile::tempdir().unwrap();
    let line = fs::read_to_string(out.path().join(METRICS)).unwrap().lines().next().unwrap().to_string();
    assert!(line.contains("\"kind\":\"eval\""), "{line}");
    fs::write(evals_only.path().join(METRICS), line + "\n").unwrap();
    let err = plot_run(evals_only.path(), &evals_only.path().join("curves.png")).unwrap_err();
    assert!(matches!(err, TrainError::Plot(_)), "{err:?}");
    assert!(err.to_string().contains(METRICS) && err.to_string().contains("no training steps"), "{err}");
    assert!(!evals_only.path().join("curves.png").exists());

    let err = plot_run(&out.path().join("nowhere"), &png).unwrap_err();
    assert!(
        matches!(&err, TrainError::Io { path, .. } if path.ends_with("nowhere/metrics.jsonl")),
        "{err:?}"
    );
}
