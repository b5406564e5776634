//! Fine-tuning through the binary: `train` with `train.base`, with and without LoRA adapters.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use common::{assert_fails_cleanly, run, stdout, truthgpt};
use safetensors::SafeTensors;
use truthgpt_engine::close::max_abs_diff;
use truthgpt_train::run::{read_metrics, Record};

/// The base: `common::tiny_config` with dropout, trained 4 steps.
fn base_config() -> String {
    let train = "  batch_size: 4\n  seq_len: 16\n  steps: 4\n  eval_every: 2\n  eval_batches: 1\n  checkpoint_every: 2\n";
    common::tiny_config("  dropout: 0.1\n", train)
}

/// The fine-tune's training settings; the architecture comes from the base.
const LORA_CONFIG: &str = "
train:
  batch_size: 4
  seq_len: 16
  steps: 6
  lr: 1.0e-2
  eval_every: 3
  eval_batches: 1
  checkpoint_every: 3
  lora:
    rank: 4
    alpha: 8.0
    targets: [c_attn, c_fc]
";

struct Workspace {
    dir: tempfile::TempDir,
}

impl Workspace {
    /// A corpus, a base trained on it, and the LoRA config pointing at that base.
    fn with_base() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let birds = ["owl", "hen", "jay", "emu"];
        let line =
            |i: usize| format!("The {} number {i} watches the quiet {}.\n", birds[i % 4], birds[i * 3 % 4]);
        let text: String = (0..1500).map(line).collect();
        fs::write(dir.path().join("corpus.txt"), text).unwrap();
        fs::write(dir.path().join("base.yaml"), base_config()).unwrap();
        fs::write(dir.path().join("lora.yaml"), LORA_CONFIG).unwrap();
        let workspace = Workspace { dir };
        let output = run(&mut workspace.train("base.yaml", "base", &[]));
        assert!(output.status.success(), "{}", common::stderr(&output));
        workspace
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn train(&self, config: &str, out: &str, extra: &[&str]) -> std::process::Command {
        let config = self.path(config);
        let mut args = vec!["--config", path(&config)];
        args.extend(extra);
        self.resume(out, &args)
    }

    /// `train` on the corpus into `out` without a config: with `--resume` in `extra`, the run's own.
    fn resume(&self, out: &str, extra: &[&str]) -> std::process::Command {
        let (data, out) = (self.path("corpus.txt"), self.path(out));
        let mut args = vec!["train", "--threads", "1", "--data", path(&data), "--out", path(&out)];
        args.extend(extra);
        truthgpt(&args)
    }

    /// A LoRA fine-tune of the base into `out`, with `extra` arguments.
    fn lora(&self, out: &str, extra: &[&str]) -> std::process::Output {
        let base = format!("train.base={}", self.path("base").display());
        let mut args = vec!["--set", base.as_str()];
        args.extend(extra);
        run(&mut self.train("lora.yaml", out, &args))
    }

    fn latest(&self, run: &str) -> PathBuf {
        let latest = fs::read_to_string(self.path(run).join("latest")).unwrap();
        self.path(run).join(latest.trim())
    }
}

/// Every tensor of a safetensors file, by name, as raw bytes (the header's metadata map has no
/// fixed order, so whole files are not compared).
fn tensors(bytes: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let file = SafeTensors::deserialize(bytes).unwrap();
    file.tensors().into_iter().map(|(name, view)| (name, view.data().to_vec())).collect()
}

fn path(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn lora_run_checkpoints_only_adapters_and_resumes_exactly() {
    let ws = Workspace::with_base();
    let base_weights = fs::read(ws.latest("base").join("model.safetensors")).unwrap();

    let straight = ws.lora("straight", &[]);
    assert!(straight.status.success(), "{}", common::stderr(&straight));
    let said = stdout(&straight);
    assert!(said.contains("LoRA adapters on 4 modules"), "{said}");
    assert!(said.contains("parameters train ("), "{said}");

    let first = ws.lora("resumed", &["--stop-at", "3"]);
    assert!(first.status.success(), "{}", common::stderr(&first));
    let rest = run(&mut ws.resume("resumed", &["--resume"]));
    assert!(rest.status.success(), "{}", common::stderr(&rest));

    let (straight_dir, resumed_dir) = (ws.latest("straight"), ws.latest("resumed"));
    assert!(straight_dir.ends_with("step-00000006"), "{}", straight_dir.display());
    assert!(!straight_dir.join("model.safetensors").exists(), "a LoRA checkpoint holds only adapters");
    let adapters = fs::read(straight_dir.join("adapter.safetensors")).unwrap();
    assert!(adapters.len() * 10 < base_weights.len(), "{} vs {} bytes", adapters.len(), base_weights.len());
    let resumed = fs::read(resumed_dir.join("adapter.safetensors")).unwrap();
    assert_eq!(tensors(&adapters), tensors(&resumed), "resume is exact");
    let base_after = fs::read(ws.latest("base").join("model.safetensors")).unwrap();
    assert_eq!(base_weights, base_after, "the base is frozen");

    let model = path(&straight_dir).to_string();
    let generated =
        run(&mut truthgpt(&["generate", "--model", &model, "--prompt", "The owl", "--max-tokens", "4"]));
    assert!(generated.status.success(), "{}", common::stderr(&generated));
    let data = ws.path("corpus.txt");
    let evaluated = run(&mut truthgpt(&["eval", "--model", &model, "--data", path(&data)]));
    assert!(evaluated.status.success(), "{}", common::stderr(&evaluated));
}

#[test]
fn lora_run_refuses_a_base_changed_since() {
    let ws = Workspace::with_base();
    assert!(ws.lora("lora", &["--stop-at", "3"]).status.success());
    let more = run(&mut ws.resume("base", &["--resume", "--steps", "6"]));
    assert!(more.status.success(), "{}", common::stderr(&more));
    let model = path(&ws.latest("lora")).to_string();
    let err = assert_fails_cleanly(&run(&mut truthgpt(&["generate", "--model", &model, "--prompt", "a"])));
    assert!(err.contains("changed since"), "{err}");
    let err = assert_fails_cleanly(&run(&mut ws.resume("lora", &["--resume"])));
    assert!(err.contains("changed since"), "{err}");
}

#[test]
fn bad_fine_tune_settings_are_clear_errors() {
    let ws = Workspace::with_base();
    let err = assert_fails_cleanly(&ws.lora("a", &["--set", "train.lora.rank=0"]));
    assert!(err.contains("train.lora.rank"), "{err}");
    let err = assert_fails_cleanly(&ws.lora("b", &["--set", r#"train.lora.targets=["q_proj"]"#]));
    assert!(err.contains("no linear layer is named `q_proj`") && err.contains("c_attn"), "{err}");
    let missing = format!("train.base={}", ws.path("nowhere").display());
    let err = assert_fails_cleanly(&run(&mut ws.train("lora.yaml", "c", &["--set", &missing])));
    assert!(err.contains("nowhere"), "{err}");
    let err = assert_fails_cleanly(&run(&mut ws.train("base.yaml", "d", &["--set", "train.lora.rank=4"])));
    assert!(err.contains("train.base"), "{err}");
}

#[test]
fn full_fine_tune_starts_from_the_base() {
    let ws = Workspace::with_base();
    let base = format!("train.base={}", ws.path("base").display());
    let args = ["--set", base.as_str(), "--steps", "1"];
    let output = run(&mut ws.train("base.yaml", "full", &args));
    let said = stdout(&output);
    assert!(output.status.success(), "{}", common::stderr(&output));
    assert!(said.contains("parameters train (100.00%)"), "{said}");
    // Validation before the first step is the base's own final validation: same weights, same data.
    let val_losses = |run: &str| -> Vec<f64> {
        let records = read_metrics(&ws.path(run).join("metrics.jsonl")).unwrap();
        records
            .into_iter()
            .filter_map(|r| if let Record::Eval(e) = r { Some(e.val_loss) } else { None })
            .collect()
    };
    let (base_final, tuned_first) = (*val_losses("base").last().unwrap(), val_losses("full")[0]);
    assert_eq!(base_final, tuned_first);
}

/// `truthgpt logits` of `model` for a few ids.
fn logits(model: &Path) -> Vec<f32> {
    let output = run(&mut truthgpt(&["logits", "--model", path(model), "--ids", "5,17,42,7,99,3"]));
    assert!(output.status.success(), "{}", common::stderr(&output));
    let json: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    let rows = json["logits"].as_array().unwrap();
    rows.iter().flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32)).collect()
}

#[test]
fn finetune_command_trains_adapters_and_exports_them_merged_or_for_peft() {
    let ws = Workspace::with_base();
    let (base, data, out) = (ws.path("base"), ws.path("corpus.txt"), ws.path("tuned"));
    let args = [
        "finetune",
        "--threads",
        "1",
        "--model",
        path(&base),
        "--data",
        path(&data),
        "--out",
        path(&out),
        "--lora-rank",
        "2",
        "--lora-alpha",
        "4",
        "--lora-targets",
        "c_attn,c_proj",
        "--steps",
        "3",
        "--set",
        "train.lr=1e-2",
        "--set",
        "train.batch_size=4",
        "--set",
        "train.seq_len=16",
    ];
    let output = run(&mut truthgpt(&args));
    assert!(output.status.success(), "{}", common::stderr(&output));
    // c_proj is both the attention's and the MLP's output projection, as in PEFT.
    assert!(stdout(&output).contains("LoRA adapters on 6 modules"), "{}", stdout(&output));
    assert!(ws.latest("tuned").join("adapter.safetensors").is_file());

    let peft_dir = ws.path("peft");
    let exported = run(&mut truthgpt(&["export", "peft", path(&out), "--out", path(&peft_dir)]));
    assert!(exported.status.success(), "{}", common::stderr(&exported));
    let config: serde_json::Value =
        serde_json::from_slice(&fs::read(peft_dir.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!((config["r"].as_u64(), config["lora_alpha"].as_f64()), (Some(2), Some(4.0)));
    assert_eq!(config["target_modules"], serde_json::json!(["c_attn", "c_proj"]));
    assert_eq!(config["base_model_name_or_path"].as_str(), Some(path(&base)));
    assert!(SafeTensors::deserialize(&fs::read(peft_dir.join("adapter_model.safetensors")).unwrap()).is_ok());

    // `export hf` of the run merges the adapters: the same logits as the adapted run.
    let merged = ws.path("merged");
    let exported = run(&mut truthgpt(&["export", "hf", path(&out), "--out", path(&merged)]));
    assert!(exported.status.success(), "{}", common::stderr(&exported));
    let (adapted, merged, plain) = (logits(&out), logits(&merged), logits(&base));
    let diff = max_abs_diff(&adapted, &merged);
    assert!(diff <= 1e-4, "the merged export differs by {diff}");
    let moved = max_abs_diff(&adapted, &plain);
    assert!(moved > 1e-4, "the adapters changed nothing ({moved})");

    let err = assert_fails_cleanly(&run(&mut truthgpt(&["export", "peft", path(&base), "--out", "x"])));
    assert!(err.contains("not a LoRA run"), "{err}");
    let err = assert_fails_cleanly(&run(&mut truthgpt(&[
        "finetune",
        "--model",
        path(&base),
        "--full",
        "--lora-rank",
        "2",
    ])));
    assert!(err.contains("cannot be used with"), "{err}");
}

#[test]
fn fine_tune_windows_are_checked_against_the_base_context() {
    let ws = Workspace::with_base();
    // The base's context is 32; the schema's default (64) is not what counts.
    let err = assert_fails_cleanly(&ws.lora("long", &["--set", "train.seq_len=48"]));
    assert!(err.contains("at most model.max_seq_len = 32"), "{err}");
    let fits = ws.lora("fits", &["--set", "train.seq_len=32", "--steps", "1"]);
    assert!(fits.status.success(), "{}", common::stderr(&fits));
}

/// `distill` from the base into a smaller student, with `extra` arguments.
fn distill(ws: &Workspace, out: &str, extra: &[&str]) -> std::process::Output {
    let (teacher, data, out) = (ws.path("base"), ws.path("corpus.txt"), ws.path(out));
    let mut args = vec!["distill", "--threads", "1", "--teacher", path(&teacher), "--data", path(&data)];
    args.extend(["--out", path(&out), "--temperature", "2", "--alpha", "0.7", "--steps", "4"]);
    for set in ["model.d_model=16", "model.n_layers=1", "model.d_ff=32", "model.max_seq_len=32"] {
        args.extend(["--set", set]);
    }
    args.extend([
        "--set",
        "train.seq_len=16",
        "--set",
        "train.batch_size=4",
        "--set",
        "train.checkpoint_every=2",
    ]);
    args.extend(extra);
    run(&mut truthgpt(&args))
}

#[test]
fn distill_trains_a_student_on_the_teachers_vocabulary_and_resumes_exactly() {
    let ws = Workspace::with_base();
    let teacher_weights = fs::read(ws.latest("base").join("model.safetensors")).unwrap();
    let straight = distill(&ws, "straight", &[]);
    assert!(straight.status.success(), "{}", common::stderr(&straight));
    assert!(stdout(&straight).contains("distilling from"), "{}", stdout(&straight));
    let config: serde_json::Value =
        serde_json::from_slice(&fs::read(ws.latest("straight").join("config.json")).unwrap()).unwrap();
    assert_eq!(config["model"]["vocab_size"], 300, "the student reads the teacher's vocabulary");
    assert_eq!(config["train"]["distill"]["alpha"], 0.7);

    let first = distill(&ws, "resumed", &["--stop-at", "2"]);
    assert!(first.status.success(), "{}", common::stderr(&first));
    let rest = run(&mut ws.resume("resumed", &["--resume"]));
    assert!(rest.status.success(), "{}", common::stderr(&rest));
    let weights = |run: &str| tensors(&fs::read(ws.latest(run).join("model.safetensors")).unwrap());
    assert_eq!(weights("straight"), weights("resumed"), "resume with a teacher is exact");
    assert_eq!(
        fs::read(ws.latest("base").join("model.safetensors")).unwrap(),
        teacher_weights,
        "teacher frozen"
    );

    let err = assert_fails_cleanly(&distill(&ws, "a", &["--set", "train.distill.temperature=0"]));
    assert!(err.contains("train.distill.temperature"), "{err}");
    let err = assert_fails_cleanly(&distill(
        &ws,
        "b",
        &["--set", "model.max_seq_len=64", "--set", "train.seq_len=48"],
    ));
    assert!(err.contains("teacher's context (32"), "{err}");
    let err =
        assert_fails_cleanly(&run(&mut truthgpt(&["distill", "--teacher", "/nowhere/t", "--data", "x"])));
    assert!(err.contains("/nowhere/t"), "{err}");
}
