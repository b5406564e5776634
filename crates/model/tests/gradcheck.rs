//! Finite-difference gradient checks of every module and variant, through the whole model.
//!
//! For each parameter tensor, the analytic gradient `g` is compared with central differences of
//! the full objective (cross-entropy + MoE router losses) along two directions: `g` itself (the
//! largest signal) and a random sign vector (which catches a gradient that is wrong but aligned).
//! A tensor whose gradient is wrong fails here even if it only feeds later layers.

use truthgpt_config::{
    Balancing, Config, ExpertGroup, ExpertKind, FfnKind, GeluApproximate, ModelConfig, NormKind,
    NormPosition, Positional, RopeScaling, RopeScalingKind, TrainConfig,
};
use truthgpt_engine::rng::Rng;
use truthgpt_model::{LoraShape, LoraSite, Mode, Model};

const B: usize = 2;
const T: usize = 8;

fn base() -> ModelConfig {
    ModelConfig {
        vocab_size: 32,
        d_model: 16,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: 4,
        d_ff: 24,
        max_seq_len: 16,
        init_std: 0.3,
        relative_buckets: 6,
        relative_max_distance: 12,
        ..ModelConfig::default()
    }
}

fn objective(model: &mut Model, tokens: &[u32], targets: &[u32], mode: Mode) -> f64 {
    model.forward(tokens, B, T, mode).unwrap();
    let (aux, z) = model.router_losses();
    model.loss(targets).unwrap() as f64 + aux as f64 + z as f64
}

/// Every forward runs in `mode`: training with a fixed dropout seed keeps one mask throughout.
fn check(name: &str, config: ModelConfig, mode: Mode) {
    let train = TrainConfig { seq_len: T, ..TrainConfig::default() };
    Config { model: config.clone(), train, ..Config::default() }.validate().unwrap();
    check_model(name, Model::new(&config, 7), mode);
}

/// Checks the gradient of every tensor that is not frozen.
fn check_model(name: &str, mut model: Model, mode: Mode) {
    let config = model.config.clone();
    let mut rng = Rng::new(11);
    let mut draw =
        |n: usize| (0..n).map(|_| (rng.next_u64() % config.vocab_size as u64) as u32).collect::<Vec<_>>();
    let (tokens, targets) = (draw(B * T), draw(B * T));

    model.zero_grad();
    model.forward(&tokens, B, T, mode).unwrap();
    model.loss_and_grad(&targets, 1.0).unwrap();
    model.backward(1.0).unwrap();
    let grads = model.grads.clone();
    let base_routing = model.routing().concat();

    let mut signs = Rng::new(3);
    let mut failures = Vec::new();
    for spec in model.specs.clone() {
        let Some(g) = grads.of(spec.handle) else { continue };
        let range = spec.handle.range();
        let norm = g.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        let random: Vec<f64> =
            range.clone().map(|_| if signs.uniform() < 0.5 { -1.0 } else { 1.0 }).collect();
        let along_g: Vec<f64> = g.iter().map(|&x| x as f64 / norm.max(1e-12)).collect();
        for (label, dir) in [("gradient", along_g), ("random", random)] {
            let analytic: f64 = g.iter().zip(&dir).map(|(&g, d)| g as f64 * d).sum();
            let saved = model.params[range.clone()].to_vec();
            let shifted = |eps: f64, model: &mut Model| {
                for ((p, s), d) in model.params[range.clone()].iter_mut().zip(&saved).zip(&dir) {
                    *p = (*s as f64 + eps * d) as f32;
                }
                let loss = objective(model, &tokens, &targets, mode);
                (loss, model.routing().concat())
            };
            // Top-k routing is piecewise: shrink the step until both sides route like the base point.
            let mut eps = 1e-2 / dir.iter().map(|d| d * d).sum::<f64>().sqrt().max(1.0);
            let (numeric, eps) = loop {
                let ((plus, route_plus), (minus, route_minus)) =
                    (shifted(eps, &mut model), shifted(-eps, &mut model));
                if (route_plus == base_routing && route_minus == base_routing) || eps < 1e-5 {
                    break ((plus - minus) / (2.0 * eps), eps);
                }
                eps /= 4.0;
            };
            model.params[range.clone()].copy_from_slice(&saved);
            // f32 forward passes round the objective at ~1e-6, which a small step amplifies.
            let tolerance = 2e-3 + 2e-6 / eps + 3e-2 * analytic.abs().max(numeric.abs());
            // NaN on either side fails: the comparison is the one that must hold.
            let agrees = (analytic - numeric).abs() <= tolerance;
            if !agrees {
                failures.push(format!(
                    "{} ({label}): analytic {analytic:.6e}, numeric {numeric:.6e}, step {eps:.1e}",
                    spec.name
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{name}: gradient mismatches:\n  {}", failures.join("\n  "));
}

#[test]
fn positional_schemes() {
    for positional in [
        Positional::Learned,
        Positional::Sinusoidal,
        Positional::Rope,
        Positional::Alibi,
        Positional::Relative,
    ] {
        check(&format!("{positional:?}"), ModelConfig { positional, ..base() }, Mode::Eval);
    }
}

#[test]
fn rope_scaling() {
    // An original context of 4 < T makes dynamic NTK rescale; llama3's bands split the 2 frequencies.
    for kind in
        [RopeScalingKind::Linear, RopeScalingKind::Ntk, RopeScalingKind::Dynamic, RopeScalingKind::Llama3]
    {
        let scaling = RopeScaling { original_max_seq_len: Some(4), ..RopeScaling::new(kind, 4.0) };
        let config = ModelConfig { positional: Positional::Rope, rope_scaling: Some(scaling), ..base() };
        check(&format!("rope {kind:?}"), config, Mode::Eval);
    }
}

#[test]
fn norms_and_their_position() {
    for norm in [NormKind::LayerNorm, NormKind::RmsNorm] {
        for norm_position in [NormPosition::Pre, NormPosition::Post] {
            check(
                &format!("{norm:?} {norm_position:?}"),
                ModelConfig { norm, norm_position, ..base() },
                Mode::Eval,
            );
        }
    }
}

#[test]
fn grouped_and_multi_query_attention() {
    for n_kv_heads in [2, 1] {
        let config = ModelConfig { n_kv_heads, positional: Positional::Rope, ..base() };
        check(&format!("kv heads {n_kv_heads}"), config, Mode::Eval);
    }
}

#[test]
fn sliding_window_and_qkv_bias() {
    for sliding_window in [1, 3] {
        let config = ModelConfig {
            sliding_window: Some(sliding_window),
            n_kv_heads: 2,
            bias: false,
            qkv_bias: true,
            positional: Positional::Rope,
            ..base()
        };
        check(&format!("window {sliding_window}"), config, Mode::Eval);
    }
}

#[test]
fn dense_feed_forwards() {
    for ffn in [FfnKind::Mlp, FfnKind::Geglu, FfnKind::Swiglu] {
        check(&format!("{ffn:?}"), ModelConfig { ffn, ..base() }, Mode::Eval);
    }
    for ffn in [FfnKind::Mlp, FfnKind::Geglu] {
        let config = ModelConfig { ffn, gelu_approximate: GeluApproximate::Tanh, ..base() };
        check(&format!("{ffn:?} tanh"), config, Mode::Eval);
    }
}

fn moe(top_k: usize, dropless: bool, balancing: Balancing) -> ModelConfig {
    let mut config = ModelConfig { ffn: FfnKind::Moe, ..base() };
    config.moe.n_experts = 4;
    config.moe.top_k = top_k;
    config.moe.dropless = dropless;
    config.moe.capacity_factor = 1.0;
    config.moe.balancing = balancing;
    config.moe.aux_loss_coef = 0.1;
    config.moe.z_loss_coef = 0.01;
    config
}

#[test]
fn moe_top2_with_aux_and_z_losses() {
    check("moe top-2", moe(2, true, Balancing::Aux), Mode::Eval);
}

#[test]
fn moe_top1_switch_gate() {
    check("moe top-1", moe(1, true, Balancing::Aux), Mode::Eval);
}

#[test]
fn moe_with_capacity_drops() {
    check("moe capacity 1.0", moe(2, false, Balancing::Aux), Mode::Eval);
}

#[test]
fn moe_with_aux_free_bias_balancing() {
    let mut config = moe(2, true, Balancing::Bias);
    config.moe.expert = ExpertKind::Geglu;
    check("moe bias balancing", config, Mode::Eval);
}

#[test]
fn pimoe_typed_experts() {
    let mut config = ModelConfig { ffn: FfnKind::Pimoe, ..base() };
    config.moe.top_k = 2;
    config.moe.aux_loss_coef = 0.1;
    config.pimoe.groups = vec![
        ExpertGroup { name: "reasoning".into(), kind: ExpertKind::Swiglu, count: 2, width: 24 },
        ExpertGroup { name: "computation".into(), kind: ExpertKind::Mlp, count: 3, width: 8 },
    ];
    check("pimoe", config, Mode::Eval);
}

#[test]
fn tied_embeddings_shared_layers_and_no_bias() {
    check("tied", ModelConfig { tie_embeddings: true, ..base() }, Mode::Eval);
    check("shared layers", ModelConfig { share_layers: true, ..base() }, Mode::Eval);
    check("no bias", ModelConfig { bias: false, ..base() }, Mode::Eval);
}

#[test]
fn dropout_with_a_fixed_mask() {
    check("dropout", ModelConfig { dropout: 0.2, ..base() }, Mode::Train { dropout_seed: 42 });
}

/// Checkpointing must change memory, not numbers: gradients are bit-identical.
#[test]
fn gradient_checkpointing_gives_identical_gradients() {
    for ffn in [FfnKind::Mlp, FfnKind::Moe] {
        let config = ModelConfig { ffn, dropout: 0.1, ..base() };
        let tokens: Vec<u32> = (0..(B * T) as u32).map(|i| (i * 7) % 32).collect();
        let targets: Vec<u32> = (0..(B * T) as u32).map(|i| (i * 5 + 3) % 32).collect();
        let grads = |checkpointing: bool| {
            let mut model = Model::new(&config, 7);
            model.set_gradient_checkpointing(checkpointing);
            model.forward(&tokens, B, T, Mode::Train { dropout_seed: 9 }).unwrap();
            model.loss_and_grad(&targets, 1.0).unwrap();
            model.backward(1.0).unwrap();
            let stats: Vec<_> = model.moe_layers().map(|m| m.stats.clone()).collect();
            (model.grads, stats)
        };
        assert_eq!(grads(false), grads(true), "{ffn:?}");
    }
}

/// An adapter on every part of every linear layer: q, k and v apart on the fused projection,
/// gate and up apart on a gated `fc1`, the router, each expert and the head.
fn every_site(model: &Model) -> Vec<LoraSite> {
    let m = &model.config;
    let (q, kv) = (m.n_heads * m.head_dim(), m.n_kv_heads * m.head_dim());
    let site = |linear: &str, part: &str, rows| LoraSite { linear: linear.into(), part: part.into(), rows };
    let mut sites = Vec::new();
    for (name, linear) in model.linears() {
        if name.ends_with("attn.qkv") {
            sites.push(site(&name, "q_proj", 0..q));
            sites.push(site(&name, "k_proj", q..q + kv));
            sites.push(site(&name, "v_proj", q + kv..q + 2 * kv));
        } else if name.ends_with("fc1") && linear.out == 2 * m.d_ff {
            sites.push(site(&name, "gate_proj", 0..m.d_ff));
            sites.push(site(&name, "up_proj", m.d_ff..2 * m.d_ff));
        } else {
            sites.push(site(&name, name.rsplit('.').next().unwrap(), 0..linear.out));
        }
    }
    sites
}

/// Adapters of rank 3 on every site, with `B` drawn too (a fresh `B` is zero, which would leave
/// `A` without a gradient to check), over a frozen base.
fn adapted(config: &ModelConfig) -> Model {
    let mut model = Model::new(config, 7);
    let sites = every_site(&model);
    model.add_lora(&sites, LoraShape { rank: 3, alpha: 6.0, rslora: false }, 5).unwrap();
    let mut rng = Rng::new(13);
    for spec in model.specs.iter().filter(|s| s.name.ends_with(".B")) {
        rng.fill_normal(spec.handle.of_mut(&mut model.params), 0.1);
    }
    model
}

#[test]
fn lora_adapters_over_a_frozen_base() {
    let swiglu = ModelConfig { ffn: FfnKind::Swiglu, n_kv_heads: 2, positional: Positional::Rope, ..base() };
    let model = adapted(&swiglu);
    let frozen =
        model.specs.iter().filter(|s| model.grads.of(s.handle).is_some() != s.name.contains(".lora."));
    assert_eq!(frozen.count(), 0, "exactly the adapters train");
    check_model("lora swiglu", model, Mode::Eval);
    let gelu = ModelConfig { tie_embeddings: false, bias: true, ..base() };
    check_model("lora mlp", adapted(&gelu), Mode::Eval);
    check_model("lora moe", adapted(&moe(2, true, Balancing::Aux)), Mode::Eval);
}
