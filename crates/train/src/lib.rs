//! Training runs and saved models, on top of the model crate's single optimiser step.
//!
//! - [`run`]: the training loop: seeded batches, validation, `metrics.jsonl`, checkpoints, exact
//!   resume, and a stop flag for Ctrl-C;
//! - [`checkpoint`]: model directories and checkpoints, written atomically with a SHA-256
//!   manifest, loaded with every file verified;
//! - [`finetune`]: a run that starts from a saved, HF or GGUF model, with or without LoRA;
//! - [`source`]: a run's tokens from a prepared dataset, raw text, or texts in memory;
//! - [`eval`]: validation loss and perplexity;
//! - [`text`]: prompt in, streamed text out, with stop strings;
//! - [`plot`]: loss and learning-rate curves of a run as a PNG.

pub mod adapter;
pub mod checkpoint;
pub mod distill;
mod error;
pub mod eval;
pub mod finetune;
pub mod plot;
pub mod run;
pub mod source;
pub mod text;

pub use checkpoint::{
    load_checkpoint, load_model, load_model_f32, save_model, Checkpoint, SavedModel, TrainerState,
};
pub use error::{Result, TrainError};
pub use eval::{evaluate, Evaluation};
pub use run::{Observer, Outcome, Record, RunOptions};
pub use text::{Request, TextStream};
