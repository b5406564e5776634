//! A run's tokens and tokenizer, from a prepared dataset, from raw text on disk, or from texts in
//! memory (the quickstart's embedded corpus).

use std::path::Path;

use truthgpt_config::Config;
use truthgpt_data::{corpus, shards, DataError, TokenDataset, Tokenizer};

use crate::error::Result;

/// Raw text is cut into blocks of this many tokens, each sent to validation with probability
/// `data.val_fraction`.
const SPLIT_BLOCK_TOKENS: usize = 4096;

/// Tokenized training and validation data with the tokenizer that made it.
#[derive(Debug)]
pub struct TrainingData {
    pub tokenizer: Tokenizer,
    pub dataset: TokenDataset,
}

/// Loads `path`: a directory from `truthgpt data prepare` (which brings its tokenizer), or text to
/// tokenize with `tokenizer`, else `data.tokenizer`, else a byte-level BPE of `model.vocab_size`
/// fitted here on the text.
pub fn load(path: &Path, config: &Config, tokenizer: Option<Tokenizer>) -> Result<TrainingData> {
    if shards::is_complete_dataset_dir(path)? {
        let dataset = TokenDataset::open(path)?;
        let tokenizer = match tokenizer {
            Some(tokenizer) => tokenizer,
            None => Tokenizer::from_file(&path.join("tokenizer.json"))?,
        };
        tokenizer.check_fits(config.model.vocab_size)?;
        return Ok(TrainingData { tokenizer, dataset });
    }
    let field = &config.data.jsonl_field;
    let tokenizer = match (tokenizer, &config.data.tokenizer) {
        (Some(tokenizer), _) => tokenizer,
        (None, Some(file)) => Tokenizer::from_file(file)?,
        (None, None) => Tokenizer::train_bpe(path, field, config.model.vocab_size)?,
    };
    tokenizer.check_fits(config.model.vocab_size)?;
    let tokens = tokenize(path, field, &tokenizer)?;
    split(tokens, tokenizer, config)
}

/// Every document under `path`, tokenized and joined by end-of-text tokens.
pub fn tokenize(path: &Path, jsonl_field: &str, tokenizer: &Tokenizer) -> Result<Vec<u32>> {
    let mut tokens = Vec::new();
    corpus::for_each_document(path, jsonl_field, |document| {
        append_document(&mut tokens, tokenizer, document)
    })?;
    Ok(tokens)
}

/// Tokenizes texts held in memory, fitting a tokenizer on them unless one is given.
pub fn from_texts(texts: &[&str], config: &Config, tokenizer: Option<Tokenizer>) -> Result<TrainingData> {
    let tokenizer = match tokenizer {
        Some(tokenizer) => tokenizer,
        None => Tokenizer::train_bpe_from_texts(texts, config.model.vocab_size)?,
    };
    tokenizer.check_fits(config.model.vocab_size)?;
    let mut tokens = Vec::new();
    for text in texts {
        append_document(&mut tokens, &tokenizer, text)?;
    }
    split(tokens, tokenizer, config)
}

/// Documents are separated by the end-of-text token, so the model learns where one ends.
fn append_document(tokens: &mut Vec<u32>, tokenizer: &Tokenizer, document: &str) -> Result<(), DataError> {
    tokens.extend(tokenizer.encode(document)?);
    tokens.extend(tokenizer.eos_id());
    Ok(())
}

fn split(tokens: Vec<u32>, tokenizer: Tokenizer, config: &Config) -> Result<TrainingData> {
    let dataset = TokenDataset::split_tokens(
        tokens,
        config.model.vocab_size,
        config.data.val_fraction,
        config.train.seed,
        SPLIT_BLOCK_TOKENS,
    )?;
    Ok(TrainingData { tokenizer, dataset })
}
