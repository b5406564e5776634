//! Transformer modules on the TruthGPT engine. Each module owns parameter handles, builds the
//! buffers its forward saves, and has an explicit backward that a reader can check against the
//! math (llm.c style); there is no autograd graph.
//!
//! - [`params`]: one flat parameter buffer and a named table of tensors;
//! - [`linear`]: `Linear`, LayerNorm/RMSNorm; [`lora`]: low-rank adapters on a frozen linear,
//!   attached to a model by [`adapters`];
//! - [`attention`]: causal attention with RoPE, ALiBi or T5 relative bias, GQA/MQA;
//! - [`ffn`], [`moe`]: dense MLP/GEGLU/SwiGLU, and routed MoE/PiMoE;
//! - [`block`], [`model`]: pre/post-norm blocks, embeddings and head, gradient checkpointing;
//! - [`decode`], [`paged`]: incremental decoding, one sequence or a batch, over a paged
//!   key/value pool whose prompt-prefix blocks are shared;
//! - [`generate`]: sampling, and the generation of one sequence;
//! - [`sequence`]: one generated sequence's rules (stop tokens and strings, streamed text,
//!   limits, usage), shared by [`Generator`] and the server's scheduler;
//! - [`train`]: the optimiser step.

pub mod adapters;
pub mod attention;
pub mod block;
pub mod decode;
pub mod error;
pub mod ffn;
pub mod generate;
pub mod io;
pub mod linear;
pub mod lora;
pub mod model;
pub mod moe;
pub mod paged;
pub mod params;
pub mod sequence;
pub mod train;

pub use adapters::{LoraShape, LoraSite};
pub use decode::{DecodeWork, KvCache};
pub use error::{ModelError, Result};
pub use generate::{Generator, Sampler, Sampling};
pub use model::{LinearInputs, Mode, Model};
pub use paged::{KvPool, SeqKv};
pub use params::Grads;
pub use sequence::{FinishReason, Limits, Sequence, Step, Usage};
pub use train::{Batch, StepStats, Teacher, Trainer};
