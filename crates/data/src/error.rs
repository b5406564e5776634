use std::path::PathBuf;

/// Errors of reading corpora, tokenizers and datasets. Each names the file involved.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("data path {path} does not exist")]
    Missing { path: PathBuf },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} holds no text (every document is empty)")]
    EmptyCorpus { path: PathBuf },
    #[error("{path}: not UTF-8 text (invalid byte at offset {offset})")]
    NotUtf8 { path: PathBuf, offset: usize },
    #[error("{path}:{line}: {problem}")]
    Jsonl { path: PathBuf, line: usize, problem: String },
    #[error("tokenizer {source_name}: {problem}")]
    Tokenizer { source_name: String, problem: String },
    #[error("a vocabulary of {vocab_size} is too small: a byte-level BPE needs at least {min} (256 bytes and <|endoftext|>)")]
    VocabTooSmall { vocab_size: usize, min: usize },
    #[error(
        "the tokenizer has {tokenizer} tokens but model.vocab_size is {model}; raise model.vocab_size or use a smaller tokenizer"
    )]
    TokenizerTooLarge { tokenizer: usize, model: usize },
    #[error("dataset file {path}: {problem}")]
    Dataset { path: PathBuf, problem: String },
    #[error(
        "nothing left to train on: {tokens} tokens make {blocks} block(s) of up to {block_tokens} and validation \
         takes at least one; add text, or lower the validation fraction or block size"
    )]
    EmptyTrainSplit { tokens: u64, blocks: u64, block_tokens: usize },
    #[error("invalid {name} {value}: {requirement}")]
    InvalidOption { name: &'static str, value: String, requirement: &'static str },
    #[error("{split} split has {tokens} tokens; a window of seq_len {seq_len} needs {needed}")]
    TooShort { split: &'static str, tokens: u64, seq_len: usize, needed: u64 },
}

impl DataError {
    pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
        move |source| DataError::Io { path: path.to_path_buf(), source }
    }
}

impl From<crate::fsio::PathError> for DataError {
    fn from(crate::fsio::PathError { path, source }: crate::fsio::PathError) -> Self {
        DataError::Io { path, source }
    }
}
