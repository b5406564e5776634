//! Knowledge distillation: the fused loss against PyTorch (`scripts/make_distill_fixture.py`,
//! float64 autograd), its gradient through the whole model by finite differences, and a
//! trainer step with a teacher, which is never changed by it.

use std::path::PathBuf;

use safetensors::SafeTensors;
use truthgpt_config::{ModelConfig, TrainConfig};
use truthgpt_engine::close::assert_close;
use truthgpt_engine::loss::distillation_fused;
use truthgpt_model::io::f32_values;
use truthgpt_model::{Batch, Mode, Model, Teacher, Trainer};

fn fixture() -> Vec<u8> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/distillation.safetensors");
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn f32s(tensors: &SafeTensors, name: &str) -> (Vec<f32>, Vec<usize>) {
    let view = tensors.tensor(name).unwrap_or_else(|_| panic!("no `{name}`"));
    (f32_values(name, &view, view.shape()).unwrap(), view.shape().to_vec())
}

#[test]
fn distillation_loss_and_gradient_match_pytorch() {
    let bytes = fixture();
    let tensors = SafeTensors::deserialize(&bytes).unwrap();
    let (_, metadata) = SafeTensors::read_metadata(&bytes).unwrap();
    let cases: Vec<(f32, f32)> =
        serde_json::from_str(&metadata.metadata().as_ref().unwrap()["cases"]).unwrap();
    let (student, shape) = f32s(&tensors, "student");
    let (teacher, _) = f32s(&tensors, "teacher");
    let targets: Vec<u32> = tensors
        .tensor("targets")
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u32)
        .collect();
    let (n, v) = (shape[0], shape[1]);
    for (k, &(tau, alpha)) in cases.iter().enumerate() {
        let mut grads = student.clone();
        let (mut ce, mut kl) = (vec![0.0; n], vec![0.0; n]);
        let loss = distillation_fused(
            &mut grads,
            &teacher,
            &mut ce,
            &mut kl,
            &targets,
            v,
            (tau, alpha),
            1.0 / n as f32,
        );
        let (want, _) = f32s(&tensors, &format!("case{k}.loss"));
        let case = format!("tau {tau} alpha {alpha}");
        assert_close(
            &format!("{case}: total, kl, ce"),
            &[loss.total, loss.kl, loss.cross_entropy],
            &want,
            1e-5,
        );
        let (want_grad, _) = f32s(&tensors, &format!("case{k}.grad"));
        assert_close(&format!("{case}: d loss / d logits"), &grads, &want_grad, 1e-5);
    }
}

fn config() -> ModelConfig {
    ModelConfig {
        vocab_size: 24,
        d_model: 16,
        n_layers: 2,
        n_heads: 2,
        n_kv_heads: 2,
        d_ff: 32,
        max_seq_len: 8,
        init_std: 0.3,
        ..ModelConfig::default()
    }
}

/// `(tokens, targets)` for a (2, 8) batch.
fn batch() -> (Vec<u32>, Vec<u32>) {
    let tokens: Vec<u32> = (0..16).map(|i| (i * 7 + 3) % 24).collect();
    let targets: Vec<u32> = (0..16).map(|i| (i * 5 + 1) % 24).collect();
    (tokens, targets)
}

/// The distillation objective of `student` on the batch, in f64 from its parts.
fn objective(student: &mut Model, soft: &[f32], targets: &[u32], weights: (f32, f32)) -> f64 {
    student.forward(&batch().0, 2, 8, Mode::Eval).unwrap();
    let loss = student.distillation_loss_and_grad(targets, soft, weights, 1.0).unwrap();
    f64::from(loss.total)
}

#[test]
fn distillation_gradient_through_the_model_matches_finite_differences() {
    let (tokens, targets) = batch();
    let mut teacher = Model::new(&ModelConfig { d_model: 32, ..config() }, 7);
    let soft = teacher.forward(&tokens, 2, 8, Mode::Eval).unwrap().to_vec();
    let weights = (2.0, 0.7);
    let mut student = Model::new(&config(), 1);
    student.zero_grad();
    objective(&mut student, &soft, &targets, weights);
    student.backward(1.0).unwrap();
    let analytic: Vec<f64> = student.grads.as_slice().iter().map(|&g| f64::from(g)).collect();
    // Along the gradient itself (the largest signal) and along random signs (which catch a
    // gradient that is wrong but aligned), as gradcheck.rs does.
    let signs: Vec<f64> =
        (0..analytic.len()).map(|i| if (i * 2654435761) % 7 < 3 { -1.0 } else { 1.0 }).collect();
    let params = student.params.clone();
    for (what, direction) in [("the gradient", &analytic), ("random signs", &signs)] {
        let norm = direction.iter().map(|d| d * d).sum::<f64>().sqrt();
        let step = 1e-2 / norm;
        let mut at = |sign: f64| {
            for ((p, &p0), &d) in student.params.iter_mut().zip(&params).zip(direction) {
                *p = (f64::from(p0) + sign * step * d) as f32;
            }
            objective(&mut student, &soft, &targets, weights)
        };
        let numeric = (at(1.0) - at(-1.0)) / (2.0 * step);
        let expected: f64 = analytic.iter().zip(direction).map(|(g, d)| g * d).sum();
        let rel = (numeric - expected).abs() / expected.abs().max(1e-3);
        assert!(
            rel <= 2e-2,
            "along {what}: finite differences {numeric}, analytic {expected} (relative {rel})"
        );
    }
}

#[test]
fn a_trainer_with_a_teacher_moves_towards_it_and_leaves_it_unchanged() {
    let (tokens, targets) = batch();
    let mut teacher_model = Model::new(&ModelConfig { d_model: 32, ..config() }, 7);
    let soft = teacher_model.forward(&tokens, 2, 8, Mode::Eval).unwrap().to_vec();
    let teacher_params = teacher_model.params.clone();
    let train = TrainConfig { lr: 1e-2, warmup_steps: 0, steps: 20, ..TrainConfig::default() };
    let mut trainer = Trainer::new(Model::new(&config(), 1), train);
    // alpha = 1: the teacher alone; its own logits are the minimum.
    trainer.teacher = Some(Teacher { model: teacher_model, temperature: 1.0, alpha: 1.0 });
    let kl = |trainer: &mut Trainer| {
        trainer.model.forward(&tokens, 2, 8, Mode::Eval).unwrap();
        trainer.model.distillation_loss_and_grad(&targets, &soft, (1.0, 1.0), 1.0).unwrap().kl
    };
    let before = kl(&mut trainer);
    let batch = Batch { tokens: &tokens, targets: &targets, b: 2, t: 8 };
    for _ in 0..20 {
        let stats = trainer.step(&[batch]).unwrap();
        assert!(stats.loss.is_finite(), "the reported cross-entropy is finite");
    }
    let after = kl(&mut trainer);
    assert!(after <= 0.5 * before, "KL to the teacher {before} -> {after}");
    assert_eq!(trainer.teacher.as_ref().unwrap().model.params, teacher_params, "the teacher is frozen");
}
