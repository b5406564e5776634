//! Export then import gives back the same model: the same config and bit-identical parameters,
//! for every family and the options each carries.

use truthgpt_config::{
    Balancing, ExpertKind, FfnKind, GeluApproximate, ModelConfig, NormKind, Positional, RopeScaling,
    RopeScalingKind,
};
use truthgpt_data::Tokenizer;
use truthgpt_interop::hf::{self, Family};
use truthgpt_model::{Mode, Model};

fn llama() -> ModelConfig {
    ModelConfig {
        vocab_size: 300,
        d_model: 32,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: 2,
        d_ff: 48,
        max_seq_len: 64,
        bias: false,
        norm: NormKind::RmsNorm,
        norm_eps: 1e-6,
        positional: Positional::Rope,
        rope_theta: 500_000.0,
        ffn: FfnKind::Swiglu,
        init_std: 0.1,
        ..ModelConfig::default()
    }
}

fn cases() -> Vec<(&'static str, ModelConfig, Family)> {
    let scaled =
        |kind, original| RopeScaling { original_max_seq_len: original, ..RopeScaling::new(kind, 4.0) };
    let mut mixtral = ModelConfig { ffn: FfnKind::Moe, tie_embeddings: true, ..llama() };
    mixtral.moe.n_experts = 4;
    mixtral.moe.expert = ExpertKind::Swiglu;
    mixtral.moe.aux_loss_coef = 0.02;
    vec![
        ("llama", llama(), Family::Llama),
        ("llama, biases, tied", ModelConfig { bias: true, tie_embeddings: true, ..llama() }, Family::Llama),
        (
            "llama, linear RoPE",
            ModelConfig { rope_scaling: Some(scaled(RopeScalingKind::Linear, None)), ..llama() },
            Family::Llama,
        ),
        (
            "llama, dynamic RoPE",
            // HF measures dynamic scaling from max_position_embeddings; import allows factor x it.
            ModelConfig { rope_scaling: Some(scaled(RopeScalingKind::Dynamic, Some(16))), ..llama() },
            Family::Llama,
        ),
        (
            "llama, llama3 RoPE",
            ModelConfig { rope_scaling: Some(scaled(RopeScalingKind::Llama3, Some(16))), ..llama() },
            Family::Llama,
        ),
        ("mistral", ModelConfig { sliding_window: Some(8), n_kv_heads: 1, ..llama() }, Family::Mistral),
        ("qwen2", ModelConfig { qkv_bias: true, tie_embeddings: true, ..llama() }, Family::Qwen2),
        ("mixtral", mixtral.clone(), Family::Mixtral),
        ("mixtral, window", ModelConfig { sliding_window: Some(16), ..mixtral }, Family::Mixtral),
        (
            "gpt2",
            ModelConfig {
                vocab_size: 300,
                d_model: 32,
                n_heads: 4,
                d_ff: 64,
                max_seq_len: 48,
                gelu_approximate: GeluApproximate::Tanh,
                tie_embeddings: true,
                init_std: 0.1,
                ..ModelConfig::default()
            },
            Family::Gpt2,
        ),
        (
            "gpt2, exact GELU, untied",
            ModelConfig { vocab_size: 300, d_model: 32, tie_embeddings: false, ..ModelConfig::default() },
            Family::Gpt2,
        ),
    ]
}

#[test]
fn export_then_import_is_the_identity() {
    let tokenizer =
        Tokenizer::train_bpe_from_texts(&["to be or not to be, that is the question"; 4], 280).unwrap();
    for (name, config, family) in cases() {
        let model = Model::new(&config, 3);
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("hf");
        let exported =
            hf::export(&model, Some(&tokenizer), None, &out).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(exported.family, family, "{name}");
        let loaded = hf::load(&out).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(loaded.family, family, "{name}");
        let mut want = config.clone();
        if let Some(RopeScaling { kind: RopeScalingKind::Dynamic, factor, original_max_seq_len, .. }) =
            config.rope_scaling
        {
            want.max_seq_len = (original_max_seq_len.unwrap() as f32 * factor).ceil() as usize;
        }
        assert_eq!(loaded.model.config, want, "{name}: config");
        assert_eq!(loaded.model.params, model.params, "{name}: parameters");
        let back = loaded.tokenizer.expect("the tokenizer is exported");
        assert_eq!(back.to_json(), tokenizer.to_json(), "{name}: tokenizer");
        assert_eq!(back.eos_id(), tokenizer.eos_id(), "{name}: end-of-sequence id");
    }
}

#[test]
fn models_without_a_hugging_face_equivalent_are_refused_with_reasons() {
    let dir = tempfile::tempdir().unwrap();
    for (config, reason) in [
        (ModelConfig { positional: Positional::Alibi, ..llama() }, "positional must be rope"),
        (ModelConfig { ffn: FfnKind::Geglu, ..llama() }, "ffn Geglu"),
        (ModelConfig { share_layers: true, ..llama() }, "share_layers"),
        (ModelConfig { norm: NormKind::LayerNorm, ..llama() }, "rmsnorm"),
        (
            ModelConfig { rope_scaling: Some(RopeScaling::new(RopeScalingKind::Ntk, 2.0)), ..llama() },
            "static NTK",
        ),
        (ModelConfig { bias: false, ..ModelConfig::default() }, "bias: true"),
        (ModelConfig { n_kv_heads: 2, ..ModelConfig::default() }, "grouped-query"),
        (dropping_moe(), "drops tokens"),
    ] {
        let err =
            hf::export(&Model::new(&config, 1), None, None, &dir.path().join("out")).unwrap_err().to_string();
        assert!(err.contains(reason), "{err}");
    }
    // Aux-free balancing leaves routing biases that Mixtral has no place for.
    let mut moe = ModelConfig { ffn: FfnKind::Moe, ..llama() };
    moe.moe.balancing = Balancing::Bias;
    let mut model = Model::new(&moe, 1);
    let tokens: Vec<u32> = (0..32).map(|i| i % 7).collect();
    model.forward(&tokens, 1, 32, Mode::Train { dropout_seed: 0 }).unwrap();
    model.update_selection_bias();
    let err = hf::export(&model, None, None, &dir.path().join("out")).unwrap_err().to_string();
    assert!(err.contains("aux-free balancing"), "{err}");
    assert!(!dir.path().join("out").exists(), "a refused export writes nothing");
}

/// An MoE with a capacity limit, which drops tokens at inference too.
fn dropping_moe() -> ModelConfig {
    let mut config = ModelConfig { ffn: FfnKind::Moe, ..llama() };
    config.moe.dropless = false;
    config
}

#[test]
fn export_never_replaces_an_existing_directory() {
    let dir = tempfile::tempdir().unwrap();
    let err = hf::export(&Model::new(&llama(), 1), None, None, dir.path()).unwrap_err().to_string();
    assert!(err.contains("already exists"), "{err}");
}
