//! Data for training: from text on disk (or in memory) to the token windows of a batch.
//!
//! - [`tokenizer`]: byte-level BPE training and any `tokenizer.json`, via the `tokenizers` crate,
//!   plus a streaming decoder for generated ids;
//! - [`corpus`]: documents from text files, JSONL files and directories of them;
//! - [`shards`]: `truthgpt data prepare`'s memory-mapped token shards with a checksummed manifest,
//!   and in-memory token streams, each split into train and validation;
//! - [`sampler`]: seeded, stateless batch windows (epoch-wise shuffling without replacement);
//! - [`stats`]: the unigram entropy a model must beat;
//! - [`fsio`]: atomic writes and SHA-256.

pub mod corpus;
mod error;
pub mod fsio;
pub mod sampler;
pub mod shards;
pub mod stats;
pub mod tokenizer;

pub use error::DataError;
pub use shards::{TokenDataset, TokenStream};
pub use tokenizer::{TextDecoder, Tokenizer};
