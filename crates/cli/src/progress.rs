//! What a training run shows while it runs: an indicatif bar (loss, lr, tokens/s, ETA) on a
//! terminal, plain lines for validation and checkpoints everywhere, and Ctrl-C as a stop flag.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use truthgpt_train::checkpoint::TrainerState;
use truthgpt_train::run::{EvalRecord, StepRecord};
use truthgpt_train::Observer;

pub struct Progress {
    bar: Option<ProgressBar>,
    /// Exponential average of tokens/s: single steps are noisy.
    tokens_per_sec: f64,
}

impl Progress {
    pub fn new() -> Self {
        Progress { bar: None, tokens_per_sec: 0.0 }
    }

    /// A line above the bar (or on stdout when there is no terminal to draw on).
    fn line(&self, text: String) {
        match &self.bar {
            Some(bar) if !bar.is_hidden() => bar.println(text),
            _ => println!("{text}"),
        }
    }

    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

impl Observer for Progress {
    fn started(&mut self, state: &TrainerState, total_steps: u64) {
        let bar = ProgressBar::new(total_steps);
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:30.cyan/blue} {pos}/{len} steps  {msg}  [{elapsed_precise} < {eta}]",
            )
            .expect("the template is valid"),
        );
        bar.set_position(state.step);
        bar.reset_eta();
        bar.enable_steady_tick(Duration::from_millis(250));
        self.bar = Some(bar);
    }

    fn step(&mut self, r: &StepRecord) {
        self.tokens_per_sec = if self.tokens_per_sec == 0.0 {
            r.tokens_per_sec
        } else {
            0.9 * self.tokens_per_sec + 0.1 * r.tokens_per_sec
        };
        if let Some(bar) = &self.bar {
            bar.set_position(r.step);
            bar.set_message(format!("loss {:.3}  lr {:.2e}  {:.0} tok/s", r.loss, r.lr, self.tokens_per_sec));
        }
    }

    fn evaluated(&mut self, r: &EvalRecord) {
        self.line(format!(
            "step {:>6}  validation loss {:.4}  perplexity {:.2}",
            r.step, r.val_loss, r.val_perplexity
        ));
    }

    fn checkpointed(&mut self, dir: &Path) {
        self.line(format!("saved checkpoint {}", dir.display()));
    }
}

/// A flag that Ctrl-C sets; a second Ctrl-C exits at once.
pub fn stop_on_ctrl_c() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let installed = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\nstopping: finishing this step and saving a checkpoint (Ctrl-C again to abort)");
    });
    if let Err(e) = installed {
        eprintln!("warning: Ctrl-C will not save a checkpoint: {e}");
    }
    stop
}
