//! The start of a fine-tune: a run whose weights begin as `train.base`'s rather than at random.
//! With `train.lora` the base stays frozen and only the adapters train (and are checkpointed);
//! without it every weight trains, as in a run from scratch.

use truthgpt_config::{Config, TrainConfig};
use truthgpt_data::Tokenizer;
use truthgpt_model::Trainer;

use crate::adapter;
use crate::checkpoint::{load_base, TrainerState};
use crate::error::{IoContext, Result, TrainError};

/// A fine-tune ready for [`crate::run::run`].
#[derive(Debug)]
pub struct FineTune {
    /// The run's config: the base's architecture, and `train.base` made absolute so that the
    /// run's checkpoints still find it from another working directory.
    pub config: Config,
    pub trainer: Trainer,
    pub state: TrainerState,
    /// The base's tokenizer: the adapted model only knows its vocabulary.
    pub tokenizer: Tokenizer,
    /// The modules given adapters, as PEFT names them (empty for a full fine-tune).
    pub adapted: Vec<String>,
}

impl FineTune {
    /// Parameters the optimiser updates.
    pub fn trainable_params(&self) -> usize {
        self.trainer.model.grads.trainable().len()
    }
}

/// Loads `config.train.base` and sets up the fine-tune `config` asks for.
pub fn start(config: &Config) -> Result<FineTune> {
    let base = load_base(&config.train)?;
    let mut config = config.clone();
    let base_path = config.train.base.clone().expect("load_base checked train.base");
    config.train.base = Some(std::fs::canonicalize(&base_path).at(&base_path)?);
    config.model = base.config.model.clone();
    // Validation skips the model-dependent rules while `train.base` is set (the `model:` section
    // is a placeholder until here); check them now, against the base's architecture.
    let as_plain_run =
        Config { train: TrainConfig { base: None, lora: None, ..config.train.clone() }, ..config.clone() };
    as_plain_run.validate()?;
    config.validate()?;
    let tokenizer = base.tokenizer.ok_or_else(|| {
        TrainError::FineTune(format!("{} has no tokenizer to fine-tune with", base_path.display()))
    })?;
    let mut model = base.model;
    let adapted = match &config.train.lora {
        Some(lora) => adapter::attach(&mut model, lora, config.train.seed)?,
        None => Vec::new(),
    };
    let state = TrainerState::start(config.train.seed);
    let trainer = Trainer::new(model, config.train.clone());
    Ok(FineTune { config, trainer, state, tokenizer, adapted })
}
