//! `truthgpt train`, `generate`, `eval` and `plot`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use truthgpt_config::Config;
use truthgpt_data::{shards, TokenDataset, TokenStream};
use truthgpt_model::Sampling;
use truthgpt_model::Trainer;
use truthgpt_train::checkpoint::{self, LATEST};
use truthgpt_train::distill;
use truthgpt_train::finetune::{self, FineTune};
use truthgpt_train::run::{self, RunOptions};
use truthgpt_train::source::TrainingData;
use truthgpt_train::{plot, source, Request, TextStream, TrainError, TrainerState};

use crate::args::{EvalArgs, GenerateArgs, PlotArgs, TrainArgs};
use crate::progress::{stop_on_ctrl_c, Progress};
use crate::{bench::init_threads, config_cmd};

pub fn train(args: &TrainArgs) -> anyhow::Result<()> {
    if !args.resume {
        return train_fresh(args, load_config(args, &[])?);
    }
    init_threads(args.threads)?;
    if !args.out.join(LATEST).is_file() {
        return Err(TrainError::NothingToResume { path: args.out.clone() }.into());
    }
    let checkpoint = checkpoint::load_checkpoint(&args.out)?;
    let mut config = checkpoint.saved.config.clone();
    if let Some(steps) = args.steps {
        config.train.steps = steps;
        config.validate()?;
    }
    let path = data_path(args, &config)?;
    let (mut trainer, tokenizer, state) = checkpoint.into_trainer();
    trainer.config = config.train.clone();
    if let Some(loaded) = distill::load_teacher(&config)? {
        distill::attach(&mut trainer, loaded.teacher)?;
    }
    let data = source::load(&path, &config, Some(tokenizer))
        .with_context(|| format!("loading {}", path.display()))?;
    println!("resuming {} at step {}", args.out.display(), state.step);
    fit(args, &config, trainer, state, &data)
}

/// The config a fresh run of `args` trains with: preset, file, environment, `--set`, `--steps`;
/// `first` are overrides below `--set`.
pub fn load_config(args: &TrainArgs, first: &[String]) -> anyhow::Result<Config> {
    let mut set = first.to_vec();
    set.extend_from_slice(&args.layers.set);
    if let Some(steps) = args.steps {
        set.push(format!("train.steps={steps}"));
    }
    config_cmd::load(args.layers.preset.as_deref(), args.config.as_deref(), &set)
}

/// A new run in `args.out` with `config`: from scratch, or from `train.base` when it is set.
pub fn train_fresh(args: &TrainArgs, config: Config) -> anyhow::Result<()> {
    init_threads(args.threads)?;
    if args.out.join(LATEST).is_file() {
        bail!(
            "{} already holds a run; pass --resume to continue it, or choose another --out",
            args.out.display()
        );
    }
    let teacher = distill::load_teacher(&config)?;
    let (config, mut trainer, state, tokenizer) = match (&config.train.base, &teacher) {
        (Some(_), _) => {
            let tune = finetune::start(&config)?;
            print_fine_tune(&tune);
            (tune.config, tune.trainer, tune.state, Some(tune.tokenizer))
        }
        (None, Some(loaded)) => {
            // A student from scratch reads the teacher's tokens.
            let Some(tokenizer) = loaded.tokenizer.clone() else {
                bail!("the teacher has no tokenizer for the student to share");
            };
            let mut config = config;
            config.model.vocab_size = loaded.teacher.model.config.vocab_size;
            let (trainer, state) = run::fresh(&config);
            (config, trainer, state, Some(tokenizer))
        }
        (None, None) => {
            let (trainer, state) = run::fresh(&config);
            (config, trainer, state, None)
        }
    };
    if let Some(loaded) = teacher {
        let d = config.train.distill.as_ref().expect("a teacher comes from train.distill");
        println!(
            "distilling from {} ({} parameters): temperature {}, alpha {}",
            d.teacher.display(),
            loaded.teacher.model.num_params(),
            d.temperature,
            d.alpha
        );
        distill::attach(&mut trainer, loaded.teacher)?;
    }
    let path = data_path(args, &config)?;
    let data =
        source::load(&path, &config, tokenizer).with_context(|| format!("loading {}", path.display()))?;
    fit(args, &config, trainer, state, &data)
}

fn fit(
    args: &TrainArgs,
    config: &Config,
    trainer: Trainer,
    state: TrainerState,
    data: &TrainingData,
) -> anyhow::Result<()> {
    let stop = stop_on_ctrl_c();
    println!(
        "training {} parameters on {} tokens ({} held out for validation), vocabulary {}",
        trainer.model.num_params(),
        data.dataset.train.len(),
        data.dataset.val.len(),
        data.tokenizer.vocab_size()
    );
    let options = RunOptions { out: args.out.clone(), stop_at: args.stop_at };
    let mut progress = Progress::new();
    let outcome =
        run::run(config, trainer, state, &data.tokenizer, &data.dataset, &options, &mut progress, &stop);
    progress.finish();
    let outcome = outcome?;
    let verb = if outcome.interrupted { "stopped" } else { "finished" };
    println!(
        "{verb} at step {}: validation loss {:.4}, perplexity {:.2}; model saved in {}",
        outcome.state.step,
        outcome.final_eval.val_loss,
        outcome.final_eval.val_perplexity,
        outcome.checkpoint.display()
    );
    Ok(())
}

fn print_fine_tune(tune: &FineTune) {
    let base = tune.config.train.base.as_deref().expect("a fine-tune has a base");
    let (trainable, total) = (tune.trainable_params(), tune.trainer.model.num_params());
    let share = 100.0 * trainable as f64 / total as f64;
    println!("fine-tuning {}: {trainable} of {total} parameters train ({share:.2}%)", base.display());
    if !tune.adapted.is_empty() {
        println!("LoRA adapters on {} modules: {}", tune.adapted.len(), tune.adapted.join(", "));
    }
}

fn data_path(args: &TrainArgs, config: &truthgpt_config::Config) -> anyhow::Result<std::path::PathBuf> {
    match args.data.clone().or_else(|| config.data.path.clone()) {
        Some(path) => Ok(path),
        None => bail!("no training data: pass --data PATH or set data.path in the config"),
    }
}

pub fn generate(args: &GenerateArgs) -> anyhow::Result<()> {
    let mut saved = checkpoint::load_model(&args.model)?;
    let request = Request {
        prompt: args.prompt.clone(),
        max_tokens: args.max_tokens,
        sampling: Sampling {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            repetition_penalty: args.repetition_penalty,
            seed: args.seed,
        },
        stop: args.stop.clone(),
    };
    let tokenizer =
        saved.tokenizer.as_ref().ok_or_else(|| TrainError::NoTokenizer { path: saved.dir.clone() })?;
    let mut stream = TextStream::new(&mut saved.model, tokenizer, &request)?;
    let mut stdout = std::io::stdout().lock();
    write!(stdout, "{}", args.prompt)?;
    let started = std::time::Instant::now();
    for piece in stream.by_ref() {
        write!(stdout, "{}", piece?)?;
        stdout.flush()?;
    }
    writeln!(stdout)?;
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "[{} prompt + {} generated tokens in {seconds:.2}s ({:.1} tokens/s), finish: {:?}]",
        stream.prompt_tokens(),
        stream.completion_tokens(),
        stream.completion_tokens() as f64 / seconds,
        stream.finish_reason().expect("the stream has ended")
    );
    Ok(())
}

pub fn eval(args: &EvalArgs) -> anyhow::Result<()> {
    let mut saved = checkpoint::load_model(&args.model)?;
    let config = &saved.config;
    // A prepared dataset is evaluated on its validation split; raw text whole.
    let stream = if shards::is_complete_dataset_dir(&args.data)? {
        TokenDataset::open(&args.data)?.val
    } else {
        let tokens = source::tokenize(&args.data, &config.data.jsonl_field, saved.tokenizer()?)
            .with_context(|| format!("loading {}", args.data.display()))?;
        TokenStream::from_tokens(tokens)
    };
    let t = &config.train;
    let result =
        truthgpt_train::evaluate(&mut saved.model, &stream, t.seq_len, t.batch_size, args.max_windows)?;
    println!(
        "{}: loss {:.4}, perplexity {:.2} over {} tokens ({})",
        args.data.display(),
        result.loss,
        result.perplexity(),
        result.tokens,
        saved.dir.display()
    );
    Ok(())
}

pub fn plot(args: &PlotArgs) -> anyhow::Result<()> {
    let out = args.out.clone().unwrap_or_else(|| args.runs[0].join("curves.png"));
    let runs: Vec<&Path> = args.runs.iter().map(PathBuf::as_path).collect();
    plot::plot_runs(&runs, &out)?;
    println!("wrote {}", out.display());
    Ok(())
}
