//! Pruning whole models: every block's linears get exactly the zeros asked for and nothing else
//! changes; calibrated methods lose less than magnitude; channels whose output weights are zero
//! are removed first and without changing the logits; bad requests are errors.

use truthgpt_compress::{prune_channels, prune_model, Calibration, CompressError, Method, Pattern};
use truthgpt_config::{FfnKind, ModelConfig};
use truthgpt_engine::close::max_abs_diff;
use truthgpt_model::{Mode, Model};

fn config(ffn: FfnKind) -> ModelConfig {
    ModelConfig {
        vocab_size: 40,
        d_model: 32,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: 2,
        d_ff: 48,
        max_seq_len: 16,
        ffn,
        init_std: 0.2,
        ..ModelConfig::default()
    }
}

fn tokens() -> Vec<u32> {
    (0..64u32).map(|i| (i * 11 + i / 7) % 40).collect()
}

fn calibration(tokens: &[u32]) -> Calibration<'_> {
    Calibration { tokens, windows: 4, seq_len: 16 }
}

fn logits(model: &mut Model) -> Vec<f32> {
    model.forward(&tokens(), 4, 16, Mode::Eval).unwrap().to_vec()
}

#[test]
fn every_block_linear_gets_the_zeros_asked_for_and_nothing_else_changes() {
    let ids = tokens();
    for method in [Method::Magnitude, Method::Wanda, Method::SparseGpt] {
        for pattern in [Pattern::Unstructured(0.5), Pattern::NM { n: 2, m: 4 }] {
            let original = Model::new(&config(FfnKind::Swiglu), 3);
            let mut model = original.clone();
            let report = prune_model(&mut model, method, pattern, Some(calibration(&ids))).unwrap();
            assert_eq!(report.linears.len(), 8, "qkv, proj, fc1, fc2 of two blocks");
            assert_eq!(report.zeros() * 2, report.weights(), "{method:?} {pattern:?}");
            for (name, linear) in model.linears() {
                let w = linear.weight.of(&model.params);
                let zeros = w.iter().filter(|&&v| v == 0.0).count();
                match name.starts_with("blocks.") {
                    true => assert_eq!(zeros * 2, w.len(), "{name}: half its weights"),
                    false => assert_eq!(w, linear.weight.of(&original.params), "{name} is not pruned"),
                }
            }
            let embedding = model.specs.iter().find(|s| s.name == "embed.tokens").unwrap().handle;
            assert_eq!(embedding.of(&model.params), embedding.of(&original.params));
        }
    }
}

#[test]
fn calibrated_methods_lose_less_than_magnitude() {
    let ids = tokens();
    let original = Model::new(&config(FfnKind::Swiglu), 5);
    let dense = logits(&mut original.clone());
    let error = |method| {
        let mut model = original.clone();
        prune_model(&mut model, method, Pattern::Unstructured(0.6), Some(calibration(&ids))).unwrap();
        let pruned = logits(&mut model);
        dense.iter().zip(&pruned).map(|(a, b)| f64::from(a - b).powi(2)).sum::<f64>()
    };
    let (magnitude, wanda, sparsegpt) =
        (error(Method::Magnitude), error(Method::Wanda), error(Method::SparseGpt));
    println!(
        "squared logit error at 60%: magnitude {magnitude:.4}, wanda {wanda:.4}, sparsegpt {sparsegpt:.4}"
    );
    assert!(sparsegpt < magnitude && wanda <= magnitude * 1.05, "{sparsegpt} {wanda} {magnitude}");
}

#[test]
fn channels_without_output_weight_go_first_and_change_nothing() {
    let ids = tokens();
    for (ffn, method) in [(FfnKind::Swiglu, Method::Wanda), (FfnKind::Mlp, Method::Magnitude)] {
        let mut model = Model::new(&ModelConfig { bias: true, ..config(ffn) }, 9);
        // A quarter of each block's channels (every fourth) feed nothing forward.
        let fc2: Vec<_> = model
            .linears()
            .into_iter()
            .filter(|(n, _)| n.ends_with("ffn.fc2"))
            .map(|(_, l)| (l.weight, l.inp))
            .collect();
        for (w, inp) in fc2 {
            for row in w.of_mut(&mut model.params).chunks_exact_mut(inp) {
                row.iter_mut().step_by(4).for_each(|v| *v = 0.0);
            }
        }
        let before = logits(&mut model);
        let (mut pruned, report) = prune_channels(&mut model, 0.25, method, Some(calibration(&ids))).unwrap();
        assert_eq!((report.d_ff_before, report.d_ff_after, pruned.config.d_ff), (48, 36, 36));
        assert!(report.params_after < report.params_before);
        let diff = max_abs_diff(&logits(&mut pruned), &before);
        assert!(diff <= 1e-5, "{ffn:?}: removing dead channels moved the logits by {diff}");
    }
}

#[test]
fn bad_requests_are_errors() {
    let ids = tokens();
    let mut dense = Model::new(&config(FfnKind::Swiglu), 1);
    let err = prune_model(&mut dense, Method::Wanda, Pattern::Unstructured(0.5), None).unwrap_err();
    assert!(matches!(err, CompressError::Unsupported(_)), "{err}");
    let err = prune_channels(&mut dense, 1.0, Method::Magnitude, None).unwrap_err();
    assert!(matches!(err, CompressError::Sparsity(_)), "{err}");
    let err = prune_channels(&mut dense, 0.5, Method::SparseGpt, Some(calibration(&ids))).unwrap_err();
    assert!(err.to_string().contains("magnitude or Wanda"), "{err}");
    let mut moe = Model::new(&config(FfnKind::Moe), 1);
    let err = prune_model(&mut moe, Method::SparseGpt, Pattern::Unstructured(0.5), Some(calibration(&ids)))
        .unwrap_err();
    assert!(err.to_string().contains("MoE"), "{err}");
    let report = prune_model(&mut moe, Method::Magnitude, Pattern::NM { n: 2, m: 4 }, None).unwrap();
    assert!(report.linears.iter().any(|l| l.name.contains("experts")), "magnitude prunes experts");
    assert!(report.linears.iter().all(|l| !l.name.contains("router")), "never the router");
    let err = prune_model(&mut dense, Method::Magnitude, Pattern::NM { n: 2, m: 5 }, None).unwrap_err();
    assert!(err.to_string().contains("blocks.0.attn.qkv"), "the error names the layer: {err}");
}
