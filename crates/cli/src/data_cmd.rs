//! `truthgpt tokenizer train` and `truthgpt data prepare`.

use std::path::Path;

use anyhow::Context;
use truthgpt_data::shards::{self, PrepareOptions};
use truthgpt_data::Tokenizer;

use crate::args::PrepareArgs;

pub fn train_tokenizer(data: &Path, vocab_size: usize, out: &Path, jsonl_field: &str) -> anyhow::Result<()> {
    let tokenizer = Tokenizer::train_bpe(data, jsonl_field, vocab_size).context("training the tokenizer")?;
    tokenizer.save(out)?;
    println!("wrote {} ({} tokens)", out.display(), tokenizer.vocab_size());
    Ok(())
}

pub fn prepare(args: &PrepareArgs) -> anyhow::Result<()> {
    let tokenizer = match &args.tokenizer {
        Some(file) => Tokenizer::from_file(file)?,
        None => Tokenizer::train_bpe(&args.data, &args.jsonl_field, args.vocab_size)
            .context("training the tokenizer")?,
    };
    let options = PrepareOptions {
        jsonl_field: args.jsonl_field.clone(),
        val_fraction: args.val_fraction,
        seed: args.seed,
        shard_tokens: args.shard_tokens,
        ..PrepareOptions::default()
    };
    anyhow::ensure!(
        args.val_fraction > 0.0 && args.val_fraction < 1.0,
        "--val-fraction must be in (0, 1), got {}",
        args.val_fraction
    );
    let info = shards::prepare(&args.data, &tokenizer, &args.out, &options)?;
    let count = |entries: &[shards::ShardEntry]| entries.iter().map(|e| e.tokens).sum::<u64>();
    println!(
        "wrote {}: {} documents, {} train and {} validation tokens ({}) in {} shards, vocabulary {}",
        args.out.display(),
        info.documents,
        count(&info.train),
        count(&info.val),
        info.dtype,
        info.train.len() + info.val.len(),
        info.vocab_size
    );
    Ok(())
}
