//! `truthgpt prune` through the binary: the pruned model is a model directory every command
//! loads, with the zeros asked for; channel removal shrinks the saved architecture; bad requests
//! are clear errors.

mod common;

use std::fs;
use std::path::Path;

use common::{assert_fails_cleanly, run, stderr, stdout, truthgpt};
use safetensors::SafeTensors;

/// A Llama-style (SwiGLU, RMSNorm, RoPE) variant of `common::tiny_config`, trained 3 steps.
fn base_config() -> String {
    let train = "  batch_size: 4\n  seq_len: 16\n  steps: 3\n  eval_every: 3\n  eval_batches: 1\n";
    common::tiny_config("  ffn: swiglu\n  norm: rmsnorm\n  positional: rope\n", train)
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A corpus and a small SwiGLU base trained on it, in a temporary directory.
fn workspace() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let text: String = (0..800).map(|i| format!("The heron number {i} fishes the grey river.\n")).collect();
    fs::write(dir.path().join("corpus.txt"), text).unwrap();
    fs::write(dir.path().join("base.yaml"), base_config()).unwrap();
    let (config, data, out) =
        (dir.path().join("base.yaml"), dir.path().join("corpus.txt"), dir.path().join("base"));
    let trained = run(&mut truthgpt(&[
        "train",
        "--threads",
        "1",
        "--config",
        path(&config),
        "--data",
        path(&data),
        "--out",
        path(&out),
    ]));
    assert!(trained.status.success(), "{}", stderr(&trained));
    dir
}

fn prune(dir: &Path, out: &str, extra: &[&str]) -> std::process::Output {
    let (base, data, out) = (dir.join("base"), dir.join("corpus.txt"), dir.join(out));
    let mut args = vec!["prune", "--threads", "1", "--model", path(&base), "--calib", path(&data)];
    args.extend(["--calib-windows", "4", "--calib-seq-len", "16", "--out", path(&out)]);
    args.extend(extra);
    run(&mut truthgpt(&args))
}

/// Zeros among `model.safetensors`' block weights (2-D tensors under `blocks.`), and their count.
fn block_zeros(dir: &Path) -> (usize, usize) {
    let bytes = fs::read(dir.join("model.safetensors")).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let mut counts = (0, 0);
    for (name, view) in file.tensors() {
        if name.starts_with("blocks.") && view.shape().len() == 2 {
            let values: Vec<f32> =
                view.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
            counts.0 += values.iter().filter(|&&v| v == 0.0).count();
            counts.1 += values.len();
        }
    }
    counts
}

#[test]
fn pruned_models_have_the_zeros_asked_for_and_load_everywhere() {
    let ws = workspace();
    for (out, extra) in [
        ("sparsegpt", ["--method", "sparsegpt", "--sparsity", "0.5"]),
        ("wanda24", ["--method", "wanda", "--pattern", "2:4"]),
        ("magnitude", ["--method", "magnitude", "--sparsity", "0.5"]),
    ] {
        let output = prune(ws.path(), out, &extra);
        assert!(output.status.success(), "{out}: {}", stderr(&output));
        assert!(stderr(&output).contains("8 linear layers"), "{}", stderr(&output));
        let (zeros, weights) = block_zeros(&ws.path().join(out));
        assert_eq!(zeros * 2, weights, "{out}: half the block weights");
        let data = ws.path().join("corpus.txt");
        let eval =
            run(&mut truthgpt(&["eval", "--model", path(&ws.path().join(out)), "--data", path(&data)]));
        assert!(eval.status.success() && stdout(&eval).contains("perplexity"), "{}", stderr(&eval));
    }
}

#[test]
fn channel_removal_shrinks_the_saved_architecture() {
    let ws = workspace();
    let output =
        prune(ws.path(), "slim", &["--method", "wanda", "--structured", "channels", "--sparsity", "0.25"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stderr(&output).contains("removed 16 of 64 feed-forward channels"), "{}", stderr(&output));
    let config: serde_json::Value =
        serde_json::from_slice(&fs::read(ws.path().join("slim/config.json")).unwrap()).unwrap();
    assert_eq!(config["model"]["d_ff"], 48);
    let generated = run(&mut truthgpt(&[
        "generate",
        "--model",
        path(&ws.path().join("slim")),
        "--prompt",
        "The heron",
        "--max-tokens",
        "3",
    ]));
    assert!(generated.status.success(), "{}", stderr(&generated));
}

#[test]
fn bad_prune_requests_are_clear_errors() {
    let ws = workspace();
    let err = assert_fails_cleanly(&prune(ws.path(), "a", &["--method", "magnitude", "--sparsity", "1.5"]));
    assert!(err.contains("blocks.0.attn.qkv") && err.contains("1.5"), "{err}");
    let err = assert_fails_cleanly(&prune(ws.path(), "b", &["--method", "wanda", "--pattern", "3:4:5"]));
    assert!(err.contains("3:4:5"), "{err}");
    let err = assert_fails_cleanly(&prune(ws.path(), "base", &["--sparsity", "0.5"]));
    assert!(err.contains("already exists"), "{err}");
    let base = ws.path().join("base");
    let err = assert_fails_cleanly(&run(&mut truthgpt(&[
        "prune",
        "--model",
        path(&base),
        "--method",
        "sparsegpt",
        "--sparsity",
        "0.5",
        "--out",
        "x",
    ])));
    assert!(err.contains("--calib"), "{err}");
    let err = assert_fails_cleanly(&prune(
        ws.path(),
        "c",
        &["--method", "sparsegpt", "--structured", "channels", "--sparsity", "0.5"],
    ));
    assert!(err.contains("magnitude or Wanda"), "{err}");
}
