//! What the router tests share: a small random model and a tokenizer trained for it.

use truthgpt_config::{Config, ModelConfig, Positional};
use truthgpt_data::Tokenizer;
use truthgpt_model::Model;

const TEXT: &str = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer.";

/// A one-layer random model (RoPE, vocabulary 280, 96 positions) initialised from `seed`, its
/// config, and a BPE trained on a line of Hamlet.
pub fn model_and_tokenizer(seed: u64) -> (Config, Model, Tokenizer) {
    let tokenizer = Tokenizer::train_bpe_from_texts(&[TEXT; 4], 280).unwrap();
    let model = ModelConfig {
        vocab_size: 280,
        d_model: 32,
        n_layers: 1,
        n_heads: 2,
        n_kv_heads: 2,
        d_ff: 64,
        max_seq_len: 96,
        positional: Positional::Rope,
        init_std: 0.3,
        ..ModelConfig::default()
    };
    let config = Config { model: model.clone(), ..Config::default() };
    (config, Model::new(&model, seed), tokenizer)
}
