//! Logits of every supported family against `transformers` on committed fixtures: tiny random
//! models saved with `save_pretrained`, made by `scripts/make_hf_fixtures.py`.

mod common;

use common::{expected, fixture};
use truthgpt_engine::close::max_abs_diff;
use truthgpt_interop::hf::{self, Family};
use truthgpt_model::Mode;

/// Each fixture, its family, and what it exercises.
const FIXTURES: [(&str, Family); 9] = [
    ("llama", Family::Llama),             // GQA 4/2, rope_theta 5e5, untied head
    ("llama_linear_bf16", Family::Llama), // bf16 on disk, linear RoPE scaling, head size 12
    ("llama_dynamic", Family::Llama),     // dynamic NTK past max_position_embeddings
    ("llama3_f16", Family::Llama),        // f16 on disk, llama3 RoPE bands, MQA, tied
    ("mistral", Family::Mistral),         // sliding window 6 over 20 tokens
    ("qwen2", Family::Qwen2),             // q/k/v biases, GQA 6/2, tied
    ("mixtral", Family::Mixtral),         // 4 experts, top-2, per-expert w1/w2/w3
    ("gpt2", Family::Gpt2),               // Conv1D weights, learned positions, gelu_new, tied
    ("llama_sharded", Family::Llama),     // three shards and an index
];

#[test]
fn every_family_matches_transformers_logits() {
    for (name, family) in FIXTURES {
        let dir = fixture(name);
        let mut loaded = hf::load(&dir).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(loaded.family, family, "{name}");
        let (ids, want) = expected(&dir);
        let got = loaded.model.forward(&ids, 1, ids.len(), Mode::Eval).unwrap();
        let diff = max_abs_diff(got, &want);
        println!("{name:>18}: max |ours - transformers| = {diff:.2e} over {} logits", want.len());
        assert!(diff <= 1e-4, "{name}: logits differ from transformers by {diff:e}");
    }
}

/// The KV-cache decode path gives the same logits as the full forward on imported models too
/// (sliding window, llama3 RoPE, MoE and learned positions), one token at a time. Not dynamic
/// NTK: there, as in transformers, a full forward rotates every position with the base of its
/// whole length while decoding rotates each with the base of the length so far.
#[test]
fn cached_decoding_of_imported_models_matches_transformers() {
    for name in ["mistral", "llama3_f16", "mixtral", "gpt2"] {
        let dir = fixture(name);
        let mut model = hf::load(&dir).unwrap().model;
        let (ids, want) = expected(&dir);
        let vocab = model.config.vocab_size;
        let mut cache = model.new_cache();
        for (i, &id) in ids.iter().enumerate() {
            let got = model.forward_cached(&mut cache, &[id]).unwrap();
            let diff = max_abs_diff(got, &want[i * vocab..(i + 1) * vocab]);
            assert!(diff <= 1e-4, "{name} position {i}: cached logits differ by {diff:e}");
        }
    }
}

#[test]
fn tokenizer_and_its_end_of_sequence_token_come_along() {
    let dir = fixture("gpt2");
    let loaded = hf::load(&dir).unwrap();
    let tokenizer = loaded.tokenizer.expect("the gpt2 fixture has a tokenizer");
    let text_ids = common::int_tensor(&dir, "text_ids");
    assert_eq!(tokenizer.encode("To be, or not to be").unwrap(), text_ids);
    assert_eq!(tokenizer.eos_token().as_deref(), Some("<|endoftext|>"));
    assert!(hf::load(&fixture("llama")).unwrap().tokenizer.is_none());
}
