//! The `data:` section: where training text comes from and how it becomes tokens.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The `data:` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// A text file, a JSONL file, a directory of them, or a dataset made by `truthgpt data
    /// prepare`. `truthgpt train --data` overrides it.
    pub path: Option<PathBuf>,
    /// A `tokenizer.json`. Without one, training fits a byte-level BPE of `model.vocab_size`
    /// tokens on the training text (a prepared dataset brings its own).
    pub tokenizer: Option<PathBuf>,
    /// The field of each JSONL line that holds a document's text.
    pub jsonl_field: String,
    /// Share of the tokens held out for validation, chosen in blocks by `train.seed`.
    pub val_fraction: f64,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig { path: None, tokenizer: None, jsonl_field: "text".into(), val_fraction: 0.05 }
    }
}
