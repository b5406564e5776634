//! Interchange with the checkpoints people already have.
//!
//! - [`hf`]: Hugging Face model directories (Llama, Mistral, Qwen2, Mixtral, GPT-2), imported
//!   with the same logits as `transformers` and exported so that `transformers` loads them;
//! - [`gguf`]: GGUF files: export for llama.cpp (Llama-family models, f32, f16, or quantized as
//!   llama-quantize does: q8_0, q4_0, q4_1, q5_0, q5_1, q4_k_m, q5_k_m, q6_k), and a
//!   reader of any GGUF v2/v3 file (memory-mapped; every ggml type of `truthgpt-quant`);
//! - [`tensors`]: memory-mapped safetensors, single or sharded, read as f32 from f32/f16/bf16;
//! - [`awq`]: activation-aware scales that calibrate a model for quantization to a GGUF type;
//! - [`peft`]: LoRA adapters in PEFT's format, onto and from our imports of their HF bases.

pub mod awq;
pub mod error;
pub mod gguf;
pub mod hf;
pub mod peft;
pub mod tensors;

pub use error::{InteropError, Result};
