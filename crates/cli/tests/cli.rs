//! Runs the built `truthgpt` binary as a user would: exit codes, stdout and stderr.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

use common::{assert_fails_cleanly, run, stderr, stdout, truthgpt};
use serde_json::Value;

fn write_config(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

/// The single JSON line a bench command prints.
fn json_line(output: &Output) -> Value {
    assert!(output.status.success(), "failed:\n{}", stderr(output));
    let out = stdout(output);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line:\n{out}");
    serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("not JSON ({e}): {}", lines[0]))
}

fn show(command: &mut Command) -> Value {
    let output = run(command);
    assert!(output.status.success(), "config show failed:\n{}", stderr(&output));
    serde_json::from_str(&stdout(&output)).expect("config show prints JSON")
}

#[test]
fn validate_accepts_a_good_file() {
    let (_dir, path) = write_config("good.yaml", "model:\n  n_layers: 3\n");
    let output = run(truthgpt(&["config", "validate"]).arg(&path));
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output).trim(), format!("ok: {}", path.display()));
}

#[test]
fn validate_rejects_heads_not_dividing_d_model() {
    let (_dir, path) = write_config("bad.yaml", "model:\n  d_model: 64\n  n_heads: 5\n  n_kv_heads: 5\n");
    let output = run(truthgpt(&["config", "validate"]).arg(&path));
    let err = assert_fails_cleanly(&output);
    assert!(err.contains("model.n_heads"), "{err}");
    assert!(err.contains("bad.yaml"), "the file is named: {err}");
}

#[test]
fn validate_reports_a_missing_file() {
    let err = assert_fails_cleanly(&run(&mut truthgpt(&["config", "validate", "/nonexistent/x.yaml"])));
    assert!(err.contains("does not exist"), "{err}");
}

#[test]
fn validate_reports_a_type_error_by_field() {
    let (_dir, path) = write_config("type.toml", "[model]\nd_model = \"big\"\n");
    let err = assert_fails_cleanly(&run(truthgpt(&["config", "validate"]).arg(&path)));
    assert!(err.contains("model.d_model") && err.contains("big"), "{err}");
}

#[test]
fn show_applies_preset_and_set() {
    let config = show(&mut truthgpt(&[
        "config",
        "show",
        "--preset",
        "torch-tiny-reference",
        "--set",
        "model.n_layers=3",
    ]));
    assert_eq!(config["model"]["n_layers"], 3);
    assert_eq!(config["model"]["d_model"], 256, "the rest of the preset survives");
}

#[test]
fn show_applies_environment_overrides() {
    let config = show(truthgpt(&["config", "show"]).env("TRUTHGPT_MODEL__N_LAYERS", "5"));
    assert_eq!(config["model"]["n_layers"], 5);
    // --set wins over the environment.
    let config =
        show(truthgpt(&["config", "show", "--set", "model.n_layers=7"]).env("TRUTHGPT_MODEL__N_LAYERS", "5"));
    assert_eq!(config["model"]["n_layers"], 7);
}

#[test]
fn show_layers_a_file_over_a_preset() {
    let (_dir, path) = write_config("over.json", r#"{"model": {"n_layers": 1}}"#);
    let config = show(truthgpt(&["config", "show", "--preset", "gpt2-small"]).arg(&path));
    assert_eq!(
        (config["model"]["n_layers"].as_u64(), config["model"]["d_model"].as_u64()),
        (Some(1), Some(768))
    );
}

#[test]
fn show_rejects_an_unknown_preset() {
    let err = assert_fails_cleanly(&run(&mut truthgpt(&["config", "show", "--preset", "gpt5"])));
    assert!(err.contains("gpt5") && err.contains("torch-tiny-reference"), "{err}");
}

#[test]
fn bench_train_prints_one_json_line() {
    let line = json_line(&run(&mut truthgpt(&[
        "bench", "train", "--preset", "tiny", "--steps", "2", "--warmup", "1",
    ])));
    for key in [
        "tokens_per_sec",
        "ms_per_step",
        "peak_rss_mb",
        "params",
        "activation_mb",
        "loss",
        "threads",
        "preset_or_config",
    ] {
        assert!(line.get(key).is_some(), "missing {key}: {line}");
    }
    assert!(line["tokens_per_sec"].as_f64().unwrap() > 0.0);
    assert!(line["params"].as_u64().unwrap() > 0);
    assert!(line["activation_mb"].as_f64().unwrap() > 0.0);
    assert!(line["loss"].as_f64().unwrap().is_finite());
    assert_eq!(line["preset_or_config"], "tiny");
}

#[test]
fn bench_train_honours_threads_checkpointing_and_config_files() {
    let (_dir, path) = write_config("small.yaml", "model:\n  n_layers: 1\ntrain:\n  batch_size: 2\n");
    let args =
        ["bench", "train", "--steps", "1", "--warmup", "0", "--threads", "1", "--gradient-checkpointing"];
    let line = json_line(&run(truthgpt(&args).arg("--config").arg(&path)));
    assert_eq!(line["threads"], 1);
    assert_eq!(line["preset_or_config"], path.display().to_string());
}

#[test]
fn bench_train_requires_a_config_source() {
    let output = run(&mut truthgpt(&["bench", "train"]));
    assert!(!output.status.success());
    assert!(stderr(&output).contains("--preset"), "{}", stderr(&output));
}

#[test]
fn bench_train_rejects_zero_steps() {
    let err =
        assert_fails_cleanly(&run(&mut truthgpt(&["bench", "train", "--preset", "tiny", "--steps", "0"])));
    assert!(err.contains("--steps"), "{err}");
}

#[test]
fn bench_moe_prints_ratio() {
    let args = ["bench", "moe", "--tokens", "64", "--d-model", "32", "--d-ff", "32", "--iters", "2"];
    let line = json_line(&run(&mut truthgpt(&args)));
    let ratio = line["ratio"].as_f64().expect("ratio is a number");
    assert!(ratio.is_finite() && ratio > 0.0, "{line}");
    assert!(line["moe_ms"].as_f64().is_some() && line["dense_ms"].as_f64().is_some(), "{line}");
    assert_eq!(line["dense_d_ff"], 64);
}

#[test]
fn bench_skinny_times_every_tile_and_rejects_bad_shapes() {
    let line = json_line(&run(&mut truthgpt(&["bench", "skinny", "--shape", "5,33,9", "--threads", "1"])));
    assert_eq!([&line["m"], &line["k"], &line["n"]], [5, 33, 9], "{line}");
    assert!(line["lanes8_gflops"].as_f64().is_some_and(|g| g > 0.0), "{line}");
    // A CPU with AVX-512F times that tile too, against the portable one.
    let avx512 = line["avx512_gflops"].as_f64();
    assert_eq!(avx512.is_some(), line["speedup_vs_lanes8"].as_f64().is_some(), "{line}");
    for bad in ["0,4,4", "4,4", "4,x,4"] {
        let err = assert_fails_cleanly(&run(&mut truthgpt(&["bench", "skinny", "--shape", bad])));
        assert!(err.contains("M,K,N"), "{bad}: {err}");
    }
}

#[test]
fn bench_moe_rejects_top_k_above_experts() {
    let args =
        ["bench", "moe", "--tokens", "8", "--d-model", "8", "--d-ff", "8", "--experts", "2", "--top-k", "3"];
    let err = assert_fails_cleanly(&run(&mut truthgpt(&args)));
    assert!(err.contains("--top-k"), "{err}");
}

#[test]
fn top_k_beyond_the_moe_backward_limit_is_an_error_not_a_panic() {
    let args = [
        "config",
        "show",
        "--set",
        "model.ffn=moe",
        "--set",
        "model.moe.n_experts=80",
        "--set",
        "model.moe.top_k=65",
    ];
    let err = assert_fails_cleanly(&run(&mut truthgpt(&args)));
    assert!(err.contains("model.moe.top_k = 65"), "{err}");
}

/// `truthgpt device` works on any machine; `--check` and `bench kernels` without a usable GPU (as
/// in CI) say what is missing and exit non-zero instead of panicking in the dynamic loader.
#[test]
fn device_lists_what_loads_and_check_fails_cleanly_without_a_gpu() {
    let output = run(&mut truthgpt(&["device"]));
    assert!(output.status.success(), "{}", stderr(&output));
    let listing = stdout(&output);
    assert!(listing.contains("cpu: ") && listing.contains("cuda libraries: driver (libcuda) "), "{listing}");
    if truthgpt_engine::cuda::libraries().driver {
        return; // a GPU machine: `device --check` is the GPU suite itself
    }
    for command in [&["device", "--check"][..], &["bench", "kernels"]] {
        let err = assert_fails_cleanly(&run(&mut truthgpt(command)));
        assert!(err.contains("no NVIDIA driver"), "{command:?}: {err}");
    }
    let err = assert_fails_cleanly(&run(&mut truthgpt(&["device", "--check", "--device", "cpu"])));
    assert!(err.contains("pick --device cuda"), "{err}");
    let err = assert_fails_cleanly(&run(&mut truthgpt(&["device", "--device", "cuda:x"])));
    assert!(err.contains("expected `cpu`, `cuda` or `cuda:N`"), "{err}");
}

#[test]
fn serve_refuses_absurd_sizes_and_keeps_the_key_out_of_help() {
    for (flag, value) in
        [("--queue", "18446744073709551615"), ("--max-batch", "9223372036854775807"), ("--queue", "0")]
    {
        let err =
            assert_fails_cleanly(&run(&mut truthgpt(&["serve", "--model", "no-such-model", flag, value])));
        assert!(err.contains("must be 1 to"), "{flag} {value}: {err}");
    }
    let help = truthgpt(&["serve", "--help"]).env("TRUTHGPT_API_KEY", "sk-secret-123").output().unwrap();
    assert!(help.status.success());
    assert!(!String::from_utf8_lossy(&help.stdout).contains("sk-secret-123"), "--help shows the key");
}

/// Hardening finding 9: a full disk's error was printed twice in one line (`...: No space left on
/// device (os error 28): No space left on device (os error 28)`): our messages include the cause
/// they wrap, and the report printed the cause again. Any I/O error's text now appears once.
#[test]
fn the_enospc_error_text_is_printed_once() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("corpus.txt");
    std::fs::write(&corpus, "To be, or not to be, that is the question.\n".repeat(50)).unwrap();
    // A file where a directory should be: an I/O error through the same error types.
    let out = corpus.join("tokenizer.json");
    let output = run(&mut truthgpt(&[
        "tokenizer",
        "train",
        "--data",
        corpus.to_str().unwrap(),
        "--vocab-size",
        "300",
        "--out",
        out.to_str().unwrap(),
    ]));
    let err = assert_fails_cleanly(&output);
    assert_eq!(err.matches("(os error").count(), 1, "{err}");
}
