use std::path::PathBuf;

use truthgpt_data::{fsio::PathError, DataError};
use truthgpt_model::ModelError;

/// Errors of reading or writing another tool's model files. Each names the file and, for a
/// tensor, the tensor.
#[derive(Debug, thiserror::Error)]
pub enum InteropError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is missing: {what}")]
    Missing { path: PathBuf, what: String },
    #[error("{path}: {problem}")]
    Invalid { path: PathBuf, problem: String },
    #[error("{path}: tensor `{name}`: {problem}")]
    Tensor { path: PathBuf, name: String, problem: String },
    #[error("{path}: {problem}")]
    Unsupported { path: PathBuf, problem: String },
    #[error("cannot export: {0}")]
    NoTarget(String),
    #[error("LoRA targets: {0}")]
    LoraTarget(String),
    #[error("cannot calibrate: {0}")]
    Calibration(String),
    #[error("{path} already exists; choose another output or remove it")]
    Exists { path: PathBuf },
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Model(#[from] ModelError),
}

impl From<PathError> for InteropError {
    fn from(PathError { path, source }: PathError) -> Self {
        InteropError::Io { path, source }
    }
}

pub type Result<T, E = InteropError> = std::result::Result<T, E>;
