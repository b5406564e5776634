use std::path::PathBuf;

use truthgpt_config::ConfigError;
use truthgpt_data::DataError;
use truthgpt_model::ModelError;

/// Errors of training runs and saved models. Each names the file or setting involved.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "no model in {path}: expected a model directory (manifest.json), a run directory (latest) \
         or a Hugging Face model directory (config.json)"
    )]
    NoModel { path: PathBuf },
    #[error("the model in {path} has no tokenizer.json (nor, for a GGUF file, gpt2 BPE metadata we read); text in or out needs one")]
    NoTokenizer { path: PathBuf },
    #[error(transparent)]
    Interop(#[from] truthgpt_interop::InteropError),
    #[error("no checkpoint to resume in {path}")]
    NothingToResume { path: PathBuf },
    #[error("checkpoint file {path}: {problem}")]
    Corrupt { path: PathBuf, problem: String },
    #[error("{path}: {source}")]
    Config { path: PathBuf, source: ConfigError },
    #[error(transparent)]
    InvalidConfig(#[from] ConfigError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("{context}: {source}")]
    Model { context: String, source: ModelError },
    #[error("{0}")]
    Plot(String),
    #[error(
        "{path}: these adapters were trained on a base whose weights had SHA-256 {recorded}; the \
         base there now has {actual} (it changed since)"
    )]
    BaseChanged { path: PathBuf, recorded: String, actual: String },
    #[error("{0}")]
    FineTune(String),
}

pub type Result<T, E = TrainError> = std::result::Result<T, E>;

/// Attaches a path to an I/O error.
pub(crate) trait IoContext<T> {
    fn at(self, path: &std::path::Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: &std::path::Path) -> Result<T> {
        self.map_err(|source| TrainError::Io { path: path.to_path_buf(), source })
    }
}

/// Attaches what was being done to a model error.
pub(crate) trait ModelContext<T> {
    fn during(self, context: &str) -> Result<T>;
}

impl<T> ModelContext<T> for std::result::Result<T, ModelError> {
    fn during(self, context: &str) -> Result<T> {
        self.map_err(|source| TrainError::Model { context: context.to_string(), source })
    }
}
