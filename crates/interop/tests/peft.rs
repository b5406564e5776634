//! PEFT LoRA adapters against PEFT itself, on committed fixtures made by
//! `scripts/make_peft_fixtures.py`: PEFT's logits, loss and adapter gradients from our import of
//! the adapter onto our import of its base; our saved adapters read back as written; bad
//! adapters refused with the reason.

mod common;

use std::path::PathBuf;

use common::{f32_tensor, fixture, int_tensor};
use truthgpt_engine::close::{assert_close, max_abs_diff};
use truthgpt_interop::hf;
use truthgpt_interop::peft::{self, ADAPTER_CONFIG, ADAPTER_WEIGHTS};
use truthgpt_model::{Mode, Model};

fn adapter(name: &str) -> PathBuf {
    fixture("../peft").join(name)
}

/// Each adapter, its base, and what it exercises.
const ADAPTERS: [(&str, &str); 4] = [
    ("llama", "llama"),    // every projection: q, k, v rows of our fused qkv, gate and up of fc1
    ("llama_qv", "llama"), // q and v only, alpha / r = 8
    ("gpt2", "gpt2"),      // Conv1D (fan_in_fan_out), rsLoRA, c_proj in attention and MLP
    // Ours: `truthgpt finetune` then `export peft` of a GQA Llama base, the expected values from
    // PEFT reading those files (scripts/check_peft_export.py --fixture).
    (OURS, "../peft/ours/base"),
];
const OURS: &str = "ours/adapter";

fn base(name: &str) -> Model {
    hf::load(&fixture(name)).unwrap().model
}

#[test]
fn peft_adapters_give_peft_logits_loss_and_gradients() {
    for (name, base_name) in ADAPTERS {
        let dir = adapter(name);
        let mut model = base(base_name);
        let loaded = peft::load(&dir, &mut model).unwrap_or_else(|e| panic!("{name}: {e}"));
        let digest = (name == OURS).then(|| peft::base_digest(&model));
        assert_eq!(loaded.base_digest, digest, "{name}: only ours record the base's digest");
        let (ids, targets) = (int_tensor(&dir, "ids"), int_tensor(&dir, "targets"));
        let t = ids.len();
        let logits = model.forward(&ids, 1, t, Mode::Eval).unwrap().to_vec();
        let diff = max_abs_diff(&logits, &f32_tensor(&dir, "logits"));
        println!("{name:>9}: logits {diff:.2e} from PEFT over {} modules", loaded.modules.len());
        assert!(diff <= 1e-4, "{name}: logits differ from PEFT by {diff:e}");
        model.zero_grad();
        let loss = model.loss_and_grad(&targets, 1.0).unwrap();
        assert_close(&format!("{name} loss"), &[loss], &f32_tensor(&dir, "loss"), 1e-5);
        model.backward(1.0).unwrap();
        let family = hf::config::family_of(&model).unwrap();
        let modules = peft::modules(&model, family);
        for path in &loaded.modules {
            let m = modules.iter().find(|m| &m.path == path).unwrap();
            for (ab, ours) in [("lora_A", "A"), ("lora_B", "B")] {
                let spec_name = format!("{}.lora.{}.{ours}", m.site.linear, m.site.part);
                let spec = model.specs.iter().find(|s| s.name == spec_name).unwrap();
                let got = model.grads.of(spec.handle).unwrap();
                let want = f32_tensor(&dir, &format!("grad.base_model.model.{path}.{ab}.weight"));
                assert_close(&format!("{name} d{spec_name}"), got, &want, 1e-4);
            }
        }
        assert!(model.grads.as_slice().len() < model.params.len() / 4, "{name}: the base has no gradients");
    }
}

#[test]
fn saved_adapters_read_back_as_written() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, base_name) in ADAPTERS {
        let mut model = base(base_name);
        peft::load(&adapter(name), &mut model).unwrap();
        let out = tmp.path().join(name);
        peft::save(&out, &model, base_name).unwrap();
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join(ADAPTER_CONFIG)).unwrap()).unwrap();
        assert_eq!(config["peft_type"], "LORA");
        let mut again = base(base_name);
        let read = peft::load(&out, &mut again).unwrap();
        assert_eq!(read.base_digest.as_deref(), Some(peft::base_digest(&again).as_str()));
        assert_eq!(again.params, model.params, "{name}: the adapter's values");
        assert!(peft::save(&out, &model, base_name).is_err(), "an existing directory is not overwritten");

        let mut changed = base(base_name);
        changed.params[0] += 1.0;
        let err = peft::load(&out, &mut changed).unwrap_err().to_string();
        assert!(err.contains("different base"), "{name}: {err}");
    }
}

/// A copy of adapter `name` with its config edited by `edit`.
fn edited(tmp: &std::path::Path, name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let out = tmp.join(format!("{name}-{}", rand_suffix()));
    std::fs::create_dir(&out).unwrap();
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(adapter(name).join(ADAPTER_CONFIG)).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(out.join(ADAPTER_CONFIG), serde_json::to_vec(&config).unwrap()).unwrap();
    std::fs::copy(adapter(name).join(ADAPTER_WEIGHTS), out.join(ADAPTER_WEIGHTS)).unwrap();
    out
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

#[test]
fn bad_adapters_are_refused_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let load = |dir: &std::path::Path, base_name: &str| {
        peft::load(dir, &mut base(base_name)).unwrap_err().to_string()
    };
    let cases: [(&str, PathBuf, &str); 7] = [
        ("another base's modules", adapter("gpt2"), "no linear layer named"),
        ("a rank the tensors do not have", edited(tmp.path(), "llama", |c| c["r"] = 8.into()), "has shape"),
        ("rank 0", edited(tmp.path(), "llama", |c| c["r"] = 0.into()), "at least 1"),
        ("DoRA", edited(tmp.path(), "llama", |c| c["use_dora"] = true.into()), "DoRA"),
        ("another method", edited(tmp.path(), "llama", |c| c["peft_type"] = "IA3".into()), "only LORA"),
        (
            "per-module ranks",
            edited(tmp.path(), "llama", |c| c["rank_pattern"] = serde_json::json!({"q_proj": 2})),
            "per-module",
        ),
        ("no directory", tmp.path().join("absent"), "missing"),
    ];
    for (what, dir, want) in cases {
        let err = load(&dir, "llama");
        assert!(err.contains(want), "{what}: {err}");
    }
    // A shape that disagrees with the base: the llama adapter onto a base of another width.
    let err = load(&adapter("llama"), "llama3_f16");
    assert!(err.contains("shape") || err.contains("no linear layer"), "{err}");
}
