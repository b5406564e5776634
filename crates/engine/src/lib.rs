//! The TruthGPT compute engine: f32 CPU kernels, each an explicit forward and backward over
//! caller-owned buffers (llm.c style). Callers preallocate; the only allocations per call are the
//! `gemm` crate's packing scratch inside GEMMs.
//!
//! Argument order follows llm.c: outputs, then what forward saves for backward, then inputs,
//! weights and sizes. Parameter gradients accumulate (`+=`); input gradients are written (`=`)
//! unless the doc says otherwise.
//!
//! Shape legend used in every doc comment:
//! - `N`: rows, i.e. tokens `B * T` flattened; `B` batch, `T` time;
//! - `C`: model width; `OC`: output width of a linear layer; `F`: feed-forward width;
//! - `NH`: query heads, `KVH`: key/value heads, `HS`: head size; `V`: vocabulary.

pub mod activation;
pub mod attention;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod bf16;
pub mod close;
pub mod cuda;
pub mod device;
pub mod embedding;
pub mod fastmath;
mod lanes;
pub mod loss;
pub mod matmul;
pub mod memory;
pub mod norm;
pub mod optim;
#[cfg(target_arch = "x86_64")]
mod packed;
pub mod par;
pub mod qmatmul;
pub mod rng;
pub mod rope;
