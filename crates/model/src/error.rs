/// Errors of building, feeding or loading a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("token id {id} at position {position} is out of range for a vocabulary of {vocab}")]
    TokenOutOfRange { id: u32, position: usize, vocab: usize },
    #[error("sequence length {t} exceeds model.max_seq_len = {max}")]
    SequenceTooLong { t: usize, max: usize },
    #[error("empty batch: batch {b} x seq {t}")]
    EmptyBatch { b: usize, t: usize },
    #[error("expected {expected} tokens for batch {b} x seq {t}, got {got}")]
    BatchShape { b: usize, t: usize, expected: usize, got: usize },
    #[error("backward called before a forward with targets")]
    NoForward,
    #[error("{0} needs a forward before it that kept every block's activations (no checkpointing)")]
    NoActivations(&'static str),
    #[error("the prompt has {tokens} tokens; model.max_seq_len = {max} leaves no room to generate")]
    PromptTooLong { tokens: usize, max: usize },
    #[error("sampling: {0}")]
    Sampling(String),
    #[error("this key/value cache was made for a different model")]
    CacheMismatch,
    #[error("the key/value pool is full: {needed} more blocks needed, {free} free of {capacity}")]
    KvPoolExhausted { needed: usize, free: usize, capacity: usize },
    #[error("this model's weights are quantized: it cannot {0} (quantized models run forwards only)")]
    Quantized(&'static str),
    #[error("LoRA: {0}")]
    Lora(String),
    #[error("tensor `{name}`: {problem}")]
    Tensor { name: String, problem: String },
    #[error("safetensors: {0}")]
    SafeTensors(#[from] safetensors::SafeTensorError),
    /// Turning generated ids into text failed.
    #[error(transparent)]
    Data(#[from] truthgpt_data::DataError),
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;
