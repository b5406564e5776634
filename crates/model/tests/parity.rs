//! Parity with PyTorch: fixtures made by `scripts/make_fixtures.py` (float64 autograd) hold the
//! weights, inputs, logits, losses and every gradient; our f32 engine must match them to 1e-4
//! (relative for values above 1).

use std::path::PathBuf;

use safetensors::SafeTensors;
use truthgpt_config::{ModelConfig, TrainConfig};
use truthgpt_engine::close;
use truthgpt_model::io::f32_values;
use truthgpt_model::{Batch, Mode, Model, Trainer};

const TOLERANCE: f64 = 1e-4;

struct Fixture {
    bytes: Vec<u8>,
}

impl Fixture {
    fn open(case: &str) -> Fixture {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures")
            .join(format!("{case}.safetensors"));
        Fixture { bytes: std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())) }
    }

    fn tensors(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).unwrap()
    }

    fn metadata<T: serde::de::DeserializeOwned>(&self, key: &str) -> T {
        let (_, metadata) = SafeTensors::read_metadata(&self.bytes).unwrap();
        let json = &metadata.metadata().as_ref().unwrap()[key];
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{key}: {e}"))
    }

    fn f32s(&self, name: &str) -> Vec<f32> {
        let tensors = self.tensors();
        let view = tensors.tensor(name).unwrap_or_else(|_| panic!("fixture has no `{name}`"));
        f32_values(name, &view, view.shape()).unwrap()
    }

    fn ids(&self, name: &str) -> Vec<u32> {
        let tensors = self.tensors();
        tensors
            .tensor(name)
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u32)
            .collect()
    }

    fn model(&self) -> (Model, Vec<u32>, Vec<u32>) {
        let config: ModelConfig = self.metadata("config");
        let mut model = Model::new(&config, 0);
        model.load_params(&self.tensors(), "param.").unwrap();
        (model, self.ids("tokens"), self.ids("targets"))
    }
}

/// Asserts `|got - want| / (1 + |want|) <= TOLERANCE` everywhere; returns the largest.
fn assert_close(what: &str, got: &[f32], want: &[f32]) -> f64 {
    close::assert_close(what, got, want, TOLERANCE)
}

const B: usize = 2;
const T: usize = 16;

/// Forward logits, the losses, and every parameter gradient.
fn check_forward_backward(case: &str) {
    let fixture = Fixture::open(case);
    let (mut model, tokens, targets) = fixture.model();
    let logits = model.forward(&tokens, B, T, Mode::Eval).unwrap().to_vec();
    let mut report = vec![format!("logits {:.1e}", assert_close("logits", &logits, &fixture.f32s("logits")))];
    let (aux, z) = model.router_losses();
    assert_close("aux_loss", &[aux], &fixture.f32s("aux_loss"));
    assert_close("z_loss", &[z], &fixture.f32s("z_loss"));
    let loss = model.loss_and_grad(&targets, 1.0).unwrap();
    assert_close("loss", &[loss], &fixture.f32s("loss"));
    model.zero_grad();
    model.backward(1.0).unwrap();
    for spec in &model.specs {
        let want = fixture.f32s(&format!("grad.{}", spec.name));
        let diff = assert_close(
            &format!("grad.{}", spec.name),
            model.grads.of(spec.handle).expect("nothing is frozen"),
            &want,
        );
        report.push(format!("{} {diff:.1e}", spec.name));
    }
    println!("{case}: max abs diff: {}", report.join(", "));
}

#[test]
fn block_with_learned_positions() {
    check_forward_backward("block_learned");
}

#[test]
fn block_with_sinusoidal_positions() {
    check_forward_backward("block_sinusoidal");
}

#[test]
fn block_with_ntk_scaled_rope() {
    check_forward_backward("block_rope");
}

#[test]
fn block_with_alibi() {
    check_forward_backward("block_alibi");
}

#[test]
fn block_with_t5_relative_bias() {
    check_forward_backward("block_relative");
}

#[test]
fn grouped_query_attention() {
    check_forward_backward("gqa");
}

#[test]
fn swiglu_with_rmsnorm_and_tied_head() {
    check_forward_backward("swiglu");
}

#[test]
fn moe_top2_outputs_gate_gradients_and_aux_loss() {
    check_forward_backward("moe_top2");
}

#[test]
fn one_adamw_step_of_the_tiny_model() {
    let fixture = Fixture::open("adamw");
    let (model, tokens, targets) = fixture.model();
    let train: TrainConfig = fixture.metadata("train");
    let mut trainer = Trainer::new(model, train);
    let stats = trainer.step(&[Batch { tokens: &tokens, targets: &targets, b: B, t: T }]).unwrap();
    assert_close("loss", &[stats.loss], &fixture.f32s("loss"));
    for spec in &trainer.model.specs {
        let want = fixture.f32s(&format!("after.{}", spec.name));
        assert_close(&format!("after.{}", spec.name), spec.handle.of(&trainer.model.params), &want);
    }
}
