//! Incremental decoding against full recomputation: the key/value cache must change the cost of
//! generating, never its numbers.

use truthgpt_config::{Config, FfnKind, ModelConfig, NormPosition, Positional, TrainConfig};
use truthgpt_engine::close::max_abs_diff;
use truthgpt_engine::rng::Rng;
use truthgpt_model::generate::argmax;
use truthgpt_model::{FinishReason, Generator, Mode, Model, ModelError, Sampler, Sampling};

const T: usize = 40;

fn base() -> ModelConfig {
    ModelConfig {
        vocab_size: 50,
        d_model: 32,
        n_layers: 3,
        n_heads: 4,
        n_kv_heads: 4,
        d_ff: 48,
        max_seq_len: 48,
        init_std: 0.2,
        relative_buckets: 8,
        relative_max_distance: 20,
        ..ModelConfig::default()
    }
}

fn variants() -> Vec<(&'static str, ModelConfig)> {
    let mut moe = ModelConfig { ffn: FfnKind::Moe, positional: Positional::Rope, ..base() };
    moe.moe.n_experts = 4;
    moe.moe.top_k = 2;
    vec![
        ("learned", base()),
        (
            "sinusoidal post-norm",
            ModelConfig { positional: Positional::Sinusoidal, norm_position: NormPosition::Post, ..base() },
        ),
        (
            "rope gqa swiglu",
            ModelConfig { positional: Positional::Rope, n_kv_heads: 2, ffn: FfnKind::Swiglu, ..base() },
        ),
        ("alibi mqa", ModelConfig { positional: Positional::Alibi, n_kv_heads: 1, ..base() }),
        ("relative shared", ModelConfig { positional: Positional::Relative, share_layers: true, ..base() }),
        ("moe tied", ModelConfig { tie_embeddings: true, ..moe }),
    ]
}

fn model(config: &ModelConfig) -> Model {
    Config {
        model: config.clone(),
        train: TrainConfig { seq_len: T, ..TrainConfig::default() },
        ..Config::default()
    }
    .validate()
    .unwrap();
    Model::new(config, 3)
}

fn random_tokens(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| (rng.next_u64() % vocab as u64) as u32).collect()
}

/// Prefill, single tokens, and a multi-token chunk in the middle (the cached kernel with n > 1)
/// each give the logits of the full causal forward at the same position.
#[test]
fn cached_logits_equal_full_recomputation() {
    for (name, config) in variants() {
        let mut model = model(&config);
        let tokens = random_tokens(T, config.vocab_size, 5);
        let v = config.vocab_size;
        let full = model.forward(&tokens, 1, T, Mode::Eval).unwrap().to_vec();
        let mut cache = model.new_cache();
        let mut at = 0;
        for chunk in [10, 1, 1, 6, 1, 21] {
            let logits = model.forward_cached(&mut cache, &tokens[at..at + chunk]).unwrap();
            at += chunk;
            let want = &full[(at - 1) * v..at * v];
            let diff = max_abs_diff(logits, want);
            assert!(diff <= 1e-4, "{name}: position {}: max diff {diff:e}", at - 1);
        }
        assert_eq!(at, T);
        assert_eq!(cache.len(), T);
    }
}

/// Greedy generation through the cache picks exactly the tokens that re-running the whole
/// sequence and taking the argmax picks.
#[test]
fn greedy_generation_equals_recomputation() {
    for (name, config) in variants() {
        let mut model = model(&config);
        let prompt = random_tokens(7, config.vocab_size, 9);
        let generated: Vec<u32> = Generator::new(&mut model, &prompt, 25, Sampling::greedy(), vec![])
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let mut sequence = prompt.clone();
        for _ in 0..25 {
            let t = sequence.len();
            let logits = model.forward(&sequence, 1, t, Mode::Eval).unwrap();
            let last = &logits[(t - 1) * config.vocab_size..];
            sequence.push(argmax(last));
        }
        assert_eq!(generated, sequence[prompt.len()..], "{name}");
    }
}

#[test]
fn generation_stops_at_max_tokens_stop_tokens_and_max_seq_len() {
    let config = base();
    let mut model = model(&config);
    let prompt = random_tokens(5, config.vocab_size, 1);
    let mut generator = Generator::new(&mut model, &prompt, 3, Sampling::greedy(), vec![]).unwrap();
    assert_eq!(generator.by_ref().count(), 3);
    assert_eq!(generator.finish_reason(), Some(FinishReason::Length));

    let first =
        Generator::new(&mut model, &prompt, 1, Sampling::greedy(), vec![]).unwrap().next().unwrap().unwrap();
    let mut generator = Generator::new(&mut model, &prompt, 10, Sampling::greedy(), vec![first]).unwrap();
    assert!(generator.next().is_none());
    assert_eq!(generator.finish_reason(), Some(FinishReason::Stop));

    let mut generator = Generator::new(&mut model, &prompt, 1000, Sampling::greedy(), vec![]).unwrap();
    assert_eq!(generator.by_ref().count(), config.max_seq_len - prompt.len());
    assert_eq!(generator.finish_reason(), Some(FinishReason::Length));
    assert_eq!(generator.tokens().len(), config.max_seq_len);
}

#[test]
fn seeded_sampling_is_deterministic() {
    let config = base();
    let mut model = model(&config);
    let prompt = random_tokens(4, config.vocab_size, 2);
    let mut run = |seed| {
        let sampling = Sampling { temperature: 1.0, top_k: 20, top_p: 0.95, repetition_penalty: 1.2, seed };
        Generator::new(&mut model, &prompt, 30, sampling, vec![])
            .unwrap()
            .map(Result::unwrap)
            .collect::<Vec<_>>()
    };
    assert_eq!(run(7), run(7));
    assert_ne!(run(7), run(8));
}

#[test]
fn bad_prompts_and_settings_are_errors() {
    let config = base();
    let mut model = model(&config);
    let long = vec![1; config.max_seq_len];
    assert!(matches!(
        Generator::new(&mut model, &long, 5, Sampling::greedy(), vec![]),
        Err(ModelError::PromptTooLong { tokens: 48, max: 48 })
    ));
    assert!(matches!(
        Generator::new(&mut model, &[1, 99], 5, Sampling::greedy(), vec![]),
        Err(ModelError::TokenOutOfRange { id: 99, position: 1, .. })
    ));
    assert!(Generator::new(&mut model, &[], 5, Sampling::greedy(), vec![]).is_err());
    for bad in [
        Sampling { temperature: -1.0, ..Sampling::default() },
        Sampling { temperature: f32::NAN, ..Sampling::default() },
        Sampling { top_p: 0.0, ..Sampling::default() },
        Sampling { repetition_penalty: 0.0, ..Sampling::default() },
    ] {
        assert!(matches!(Generator::new(&mut model, &[1], 5, bad, vec![]), Err(ModelError::Sampling(_))));
    }
    let mut cache = model.new_cache();
    model.forward_cached(&mut cache, &[1; 40]).unwrap();
    assert!(matches!(
        model.forward_cached(&mut cache, &[1; 9]),
        Err(ModelError::SequenceTooLong { t: 49, max: 48 })
    ));
    assert_eq!(cache.len(), 40, "a refused chunk leaves the cache as it was");
}

#[test]
fn sampler_filters_and_frequencies() {
    let logits = [0.5f32.ln(), 0.3f32.ln(), 0.2f32.ln(), f32::NEG_INFINITY];
    let draw = |sampling: Sampling, n: usize| {
        let mut sampler = Sampler::new(sampling).unwrap();
        let mut counts = [0usize; 4];
        for _ in 0..n {
            counts[sampler.sample(&logits, &[]) as usize] += 1;
        }
        counts
    };
    let n = 20_000;
    let counts = draw(Sampling { temperature: 1.0, ..Sampling::default() }, n);
    for (count, p) in counts.iter().zip([0.5, 0.3, 0.2, 0.0]) {
        assert!((*count as f64 / n as f64 - p).abs() < 0.015, "{counts:?}");
    }
    assert_eq!(draw(Sampling { temperature: 1.0, top_k: 1, ..Sampling::default() }, 100), [100, 0, 0, 0]);
    let nucleus = draw(Sampling { temperature: 1.0, top_p: 0.8, ..Sampling::default() }, n);
    assert_eq!(nucleus[2..], [0, 0], "0.5 + 0.3 reaches top_p = 0.8");
    assert!((nucleus[0] as f64 / n as f64 - 0.625).abs() < 0.015, "{nucleus:?}");
    // A penalty of 2 halves token 0's positive logit and doubles token 1's negative one.
    let mut sampler = Sampler::new(Sampling { repetition_penalty: 2.0, ..Sampling::greedy() }).unwrap();
    assert_eq!(sampler.sample(&[1.0, 0.8, -0.5], &[0, 0]), 1);
    assert_eq!(sampler.sample(&[1.0, -0.1, 0.6], &[0, 1]), 2);
    // Greedy without a penalty takes its own path; both break ties to the lowest id.
    for penalty in [1.0, 1.0 + f32::EPSILON] {
        let mut sampler =
            Sampler::new(Sampling { repetition_penalty: penalty, ..Sampling::greedy() }).unwrap();
        assert_eq!(sampler.sample(&[0.1, 0.7, -0.2, 0.7], &[]), 1, "penalty {penalty}");
        assert_eq!(sampler.sample(&[f32::NEG_INFINITY, -3.0, -3.0], &[]), 1, "penalty {penalty}");
        assert_eq!(sampler.sample(&[2.0], &[]), 0, "penalty {penalty}");
    }
}

/// Past the 4096 positions whose rotations each layer precomputes, RoPE rows are computed per
/// forward; both must give the same numbers, through the cache and without it.
#[test]
fn rope_beyond_the_precomputed_positions() {
    let config = ModelConfig {
        positional: Positional::Rope,
        n_layers: 1,
        d_model: 16,
        max_seq_len: 4200,
        sliding_window: Some(64),
        ..base()
    };
    let mut model = model(&config);
    let tokens = random_tokens(4150, config.vocab_size, 9);
    let vocab = config.vocab_size;
    let full = model.forward(&tokens, 1, tokens.len(), Mode::Eval).unwrap().to_vec();
    let mut cache = model.new_cache();
    model.forward_cached(&mut cache, &tokens[..4090]).unwrap();
    for (i, &token) in tokens.iter().enumerate().skip(4090) {
        let got = model.forward_cached(&mut cache, &[token]).unwrap();
        let want = &full[i * vocab..(i + 1) * vocab];
        let diff = max_abs_diff(got, want);
        assert!(diff <= 1e-4, "position {i}: cached logits differ by {diff:e}");
    }
}
