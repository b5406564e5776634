//! Gradient checkpointing keeps only the residual stream between blocks plus one block's
//! buffers, so activation memory falls by more than half once a model has a few layers.

use truthgpt_config::Config;
use truthgpt_model::{Mode, Model};

fn activation_bytes(checkpointing: bool) -> usize {
    let mut config = Config::preset("gpt2-small").unwrap();
    // gpt2-small's block shapes at a size a test can afford: the ratio depends on layers, not width.
    config.model.vocab_size = 512;
    config.model.d_model = 64;
    config.model.n_heads = 4;
    config.model.n_kv_heads = 4;
    config.model.d_ff = 256;
    config.model.max_seq_len = 256;
    let mut model = Model::new(&config.model, 0);
    model.set_gradient_checkpointing(checkpointing);
    let tokens = vec![1u32; 256];
    model.forward(&tokens, 1, 256, Mode::Eval).unwrap();
    model.activation_bytes()
}

#[test]
fn checkpointing_drops_most_activation_memory_of_a_12_layer_model() {
    let (full, checkpointed) = (activation_bytes(false), activation_bytes(true));
    // Per block: about 16 (N, C)-sized buffers without checkpointing; with it, one residual per block.
    assert!(checkpointed * 2 < full, "checkpointed {checkpointed} bytes vs {full} without");
    assert!(checkpointed * 5 < full, "expected a >80% drop at 12 layers: {checkpointed} vs {full}");
}
