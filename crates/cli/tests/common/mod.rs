//! Helpers shared by the CLI tests: run the built binary as a user would.

#![allow(dead_code)] // each test binary uses its own subset

use std::process::{Command, Output};

pub fn truthgpt(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_truthgpt"));
    command.args(args);
    // A developer's own overrides must not leak into the assertions.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("TRUTHGPT_") {
            command.env_remove(key);
        }
    }
    command
}

pub fn run(command: &mut Command) -> Output {
    command.output().expect("the truthgpt binary runs")
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts a clean failure: non-zero exit, an `error:` line, no panic.
pub fn assert_fails_cleanly(output: &Output) -> String {
    let err = stderr(output);
    assert!(!output.status.success(), "expected failure; stdout:\n{}", stdout(output));
    assert!(!err.contains("panicked"), "panicked:\n{err}");
    assert!(err.contains("error:"), "no error line:\n{err}");
    err
}

/// A config for a GPT-2-shaped model small enough to train a few steps in well under a second:
/// its `model:` section plus `model_extra` (indented lines such as `  ffn: swiglu\n`), then
/// `train`, the `train:` section's lines.
pub fn tiny_config(model_extra: &str, train: &str) -> String {
    let model = "model:\n  vocab_size: 300\n  d_model: 32\n  n_layers: 2\n  n_heads: 2\n  n_kv_heads: 2\n  \
                 d_ff: 64\n  max_seq_len: 32\n";
    format!("{model}{model_extra}train:\n{train}")
}
