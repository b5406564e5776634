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
