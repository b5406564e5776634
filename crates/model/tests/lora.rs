//! LoRA adapters: a fresh one changes nothing, merging equals the adapter path, training moves
//! only the adapters, QLoRA's gradients are those of the dequantized base, and bad requests are
//! errors. The gradient checks are in gradcheck.rs.

use std::collections::HashMap;

use truthgpt_config::{FfnKind, ModelConfig, Positional, TrainConfig};
use truthgpt_engine::close::{assert_close, max_abs_diff, nan_max};
use truthgpt_engine::qmatmul::{QMatrix, QWeight};
use truthgpt_engine::rng::Rng;
use truthgpt_model::{Batch, LoraShape, LoraSite, Mode, Model, ModelError, Trainer};
use truthgpt_quant::GgmlType;

const B: usize = 2;
const T: usize = 8;

/// Widths that are whole Q8_0 blocks, for the quantized base.
fn config() -> ModelConfig {
    ModelConfig {
        vocab_size: 64,
        d_model: 64,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: 2,
        d_ff: 96,
        max_seq_len: 16,
        ffn: FfnKind::Swiglu,
        positional: Positional::Rope,
        tie_embeddings: false,
        ..ModelConfig::default()
    }
}

fn batch(seed: u64, vocab: usize) -> (Vec<u32>, Vec<u32>) {
    let mut rng = Rng::new(seed);
    let mut draw = || (0..B * T).map(|_| (rng.next_u64() % vocab as u64) as u32).collect::<Vec<_>>();
    (draw(), draw())
}

fn site(linear: &str, part: &str, rows: std::ops::Range<usize>) -> LoraSite {
    LoraSite { linear: linear.into(), part: part.into(), rows }
}

/// q and v of every layer's fused projection, and every `fc2`: PEFT's usual targets.
fn sites(model: &Model) -> Vec<LoraSite> {
    let m = &model.config;
    let (q, kv) = (m.n_heads * m.head_dim(), m.n_kv_heads * m.head_dim());
    (0..m.n_layers)
        .flat_map(|l| {
            [
                site(&format!("blocks.{l}.attn.qkv"), "q_proj", 0..q),
                site(&format!("blocks.{l}.attn.qkv"), "v_proj", q + kv..q + 2 * kv),
                site(&format!("blocks.{l}.ffn.fc2"), "down_proj", 0..m.d_model),
            ]
        })
        .collect()
}

const SHAPE: LoraShape = LoraShape { rank: 4, alpha: 8.0, rslora: false };

fn logits(model: &mut Model, tokens: &[u32]) -> Vec<f32> {
    model.forward(tokens, B, T, Mode::Eval).unwrap().to_vec()
}

/// Draws every `B` so that the adapters do something.
fn perturb(model: &mut Model, seed: u64) {
    let mut rng = Rng::new(seed);
    for spec in model.specs.iter().filter(|s| s.name.ends_with(".B")) {
        rng.fill_normal(spec.handle.of_mut(&mut model.params), 0.05);
    }
}

#[test]
fn a_fresh_adapter_changes_nothing_and_merging_is_the_adapter_path() {
    let (tokens, _) = batch(1, 64);
    let mut model = Model::new(&config(), 3);
    let base = logits(&mut model, &tokens);
    let base_params = model.params.clone();
    model.add_lora(&sites(&model), SHAPE, 9).unwrap();
    assert_eq!(logits(&mut model, &tokens), base, "B starts at zero");
    assert_eq!(model.specs.iter().filter(|s| s.name.contains(".lora.")).count(), 12);

    perturb(&mut model, 4);
    let adapted = logits(&mut model, &tokens);
    let moved = max_abs_diff(&adapted, &base);
    assert!(moved >= 1e-3, "the adapters change the logits ({moved})");

    model.merge_lora().unwrap();
    let weights_moved = max_abs_diff(&model.params[..base_params.len()], &base_params);
    assert!(weights_moved >= 1e-4, "merging changes the base weights ({weights_moved})");
    assert_close("merged logits", &logits(&mut model, &tokens), &adapted, 1e-5);
    model.merge_lora().unwrap();
    assert_close("merging twice is merging once", &logits(&mut model, &tokens), &adapted, 1e-5);

    model.unmerge_lora().unwrap();
    let restored = max_abs_diff(&model.params[..base_params.len()], &base_params);
    assert!(restored <= 1e-6, "unmerge gives the base back ({restored})");
    assert_close("unmerged logits", &logits(&mut model, &tokens), &adapted, 1e-5);
}

#[test]
fn training_moves_only_the_adapters() {
    let mut model = Model::new(&config(), 3);
    let base_len = model.params.len();
    model.add_lora(&sites(&model), SHAPE, 9).unwrap();
    let adapter_len = model.params.len() - base_len;
    assert_eq!(model.grads.as_slice().len(), adapter_len, "no gradient for the base");
    let before = model.params.clone();
    let train = TrainConfig { seq_len: T, lr: 1e-2, warmup_steps: 0, ..TrainConfig::default() };
    let mut trainer = Trainer::new(model, train);
    assert_eq!(
        (trainer.m.len(), trainer.v.len()),
        (adapter_len, adapter_len),
        "no optimizer state for the base"
    );
    // One batch, learned: the loss must fall through the adapters alone.
    let (tokens, targets) = batch(2, 64);
    let step =
        |trainer: &mut Trainer| trainer.step(&[Batch { tokens: &tokens, targets: &targets, b: B, t: T }]);
    let first = step(&mut trainer).unwrap().loss;
    let mut last = first;
    for _ in 0..30 {
        last = step(&mut trainer).unwrap().loss;
    }
    assert!(last <= 0.8 * first, "loss {first} -> {last}");
    let params = &trainer.model.params;
    assert_eq!(&params[..base_len], &before[..base_len], "the base is bit for bit as it was");
    let moved = max_abs_diff(&params[base_len..], &before[base_len..]);
    assert!(moved >= 1e-3, "the adapters trained ({moved})");
}

/// `model` with every linear weight in Q8_0 blocks, and its twin whose f32 weights are those
/// blocks decoded.
fn quantized_and_twin(model: &Model) -> (Model, Model) {
    let mut blocks = HashMap::new();
    let mut twin = model.clone();
    for (name, linear) in model.linears() {
        let w = linear.weight.of(&model.params);
        let q = QMatrix::from(QWeight::quantize(GgmlType::Q8_0, w, linear.out, linear.inp).unwrap());
        let decoded = linear.weight.of_mut(&mut twin.params);
        for (r, row) in decoded.chunks_exact_mut(linear.inp).enumerate() {
            q.dequantize_row(r, row);
        }
        blocks.insert(format!("{name}.weight"), q);
    }
    let mut quantized = Model::zeroed_quantized(&model.config, blocks);
    for spec in quantized.specs.clone().iter().filter(|s| !s.quantized) {
        let from = model.specs.iter().find(|s| s.name == spec.name).unwrap();
        spec.handle.of_mut(&mut quantized.params).copy_from_slice(from.handle.of(&model.params));
    }
    (quantized, twin)
}

#[test]
fn qlora_gradients_are_those_of_the_dequantized_base() {
    let (quantized, twin) = quantized_and_twin(&Model::new(&config(), 3));
    assert!(quantized.is_quantized());
    let (tokens, targets) = batch(5, 64);
    let grads = |mut model: Model| {
        model.add_lora(&sites(&model), SHAPE, 9).unwrap();
        perturb(&mut model, 4);
        model.zero_grad();
        model.forward(&tokens, B, T, Mode::Eval).unwrap();
        model.loss_and_grad(&targets, 1.0).unwrap();
        model.backward(1.0).unwrap();
        model.grads.as_slice().to_vec()
    };
    let (got, want) = (grads(quantized.clone()), grads(twin));
    // The products differ only by the activations' 8-bit rounding in the quantized forward.
    let scale = want.iter().map(|g| (*g as f64).abs()).fold(0.0, nan_max);
    let diff = max_abs_diff(&got, &want);
    assert!(diff <= 2e-2 * scale, "QLoRA gradients differ by {diff} (largest {scale})");

    let mut model = quantized;
    model.add_lora(&sites(&model), SHAPE, 9).unwrap();
    let train = TrainConfig { seq_len: T, lr: 1e-2, warmup_steps: 0, ..TrainConfig::default() };
    let mut trainer = Trainer::new(model, train);
    let step =
        |trainer: &mut Trainer| trainer.step(&[Batch { tokens: &tokens, targets: &targets, b: B, t: T }]);
    let first = step(&mut trainer).unwrap().loss;
    let last = (0..30).map(|_| step(&mut trainer).unwrap().loss).last().unwrap();
    assert!(last <= 0.8 * first, "QLoRA loss {first} -> {last}");
    assert!(matches!(trainer.model.merge_lora(), Err(ModelError::Quantized(_))));
}

#[test]
fn bad_adapters_are_errors() {
    let model = Model::new(&config(), 3);
    let lora = |sites: &[LoraSite], shape: LoraShape| {
        model.clone().add_lora(sites, shape, 1).unwrap_err().to_string()
    };
    let good = sites(&model);
    assert!(lora(&good, LoraShape { rank: 0, ..SHAPE }).contains("rank"));
    assert!(lora(&good, LoraShape { alpha: f32::NAN, ..SHAPE }).contains("alpha"));
    assert!(lora(&[], SHAPE).contains("no layer"));
    assert!(lora(&[site("blocks.9.attn.qkv", "q_proj", 0..8)], SHAPE).contains("no linear layer"));
    assert!(lora(&[site("blocks.0.ffn.router", "router", 0..4)], SHAPE).contains("no linear layer"));
    assert!(lora(&[site("blocks.0.attn.proj", "o_proj", 0..65)], SHAPE).contains("output rows"));
    let overlapping = [site("blocks.0.attn.qkv", "q_proj", 0..64), site("blocks.0.attn.qkv", "x", 32..80)];
    assert!(lora(&overlapping, SHAPE).contains("same rows"));
    let mut twice = model.clone();
    twice.add_lora(&good, SHAPE, 1).unwrap();
    assert!(twice.add_lora(&good, SHAPE, 1).unwrap_err().to_string().contains("already"));
}
