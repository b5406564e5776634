//! The training pipeline through the binary: tokenizer, data preparation, training with exact
//! resume, Ctrl-C and SIGKILL durability, generation, evaluation and bad input.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{assert_fails_cleanly, run, stderr, stdout, truthgpt};
use truthgpt_train::run::{read_metrics, Record};

/// A small model that trains in well under a second per few steps; MoE with bias balancing and
/// dropout, so exact resume covers every piece of state.
const CONFIG: &str = "
model:
  vocab_size: 320
  d_model: 32
  n_layers: 2
  n_heads: 2
  n_kv_heads: 1
  d_ff: 48
  max_seq_len: 32
  positional: rope
  ffn: moe
  dropout: 0.1
  moe:
    n_experts: 4
    top_k: 2
    balancing: bias
train:
  batch_size: 4
  seq_len: 16
  grad_accum: 2
  steps: 12
  lr: 3.0e-3
  warmup_steps: 2
  eval_every: 4
  eval_batches: 2
  checkpoint_every: 4
  keep_checkpoints: 2
data:
  val_fraction: 0.1
";

struct Workspace {
    dir: tempfile::TempDir,
}

impl Workspace {
    /// A temporary directory with `config.yaml` and a ~40 KB corpus in `corpus/`.
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("config.yaml"), CONFIG).unwrap();
        fs::create_dir(dir.path().join("corpus")).unwrap();
        let animals = ["fox", "dog", "cat", "owl", "hen", "elk"];
        for part in 0..2 {
            let text: String = (0..400)
                .map(|i| {
                    let (a, b) = (animals[(i * 7 + part) % 6], animals[(i * 5 + 1) % 6]);
                    format!("The {a} number {i} jumps over the lazy {b}, and the {b} sleeps.\n")
                })
                .collect();
            fs::write(dir.path().join(format!("corpus/part{part}.txt")), text).unwrap();
        }
        Workspace { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn arg(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    fn train(&self, out: &str, extra: &[&str]) -> Command {
        let (config, corpus, out) = (self.arg("config.yaml"), self.arg("corpus"), self.arg(out));
        let mut args = vec!["train", "--config", &config, "--data", &corpus, "--out", &out];
        args.extend_from_slice(extra);
        truthgpt(&args)
    }

    fn resume(&self, out: &str, extra: &[&str]) -> Command {
        let (corpus, out) = (self.arg("corpus"), self.arg(out));
        let mut args = vec!["train", "--resume", "--data", &corpus, "--out", &out];
        args.extend_from_slice(extra);
        truthgpt(&args)
    }
}

fn succeed(command: &mut Command) -> String {
    let output = run(command);
    assert!(output.status.success(), "failed:\n{}\n{}", stdout(&output), stderr(&output));
    stdout(&output)
}

/// The `train` lines of a run's metrics, as written.
fn train_lines(run_dir: &Path) -> Vec<String> {
    let text = fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
    text.lines().filter(|l| l.contains("\"kind\":\"train\"")).map(String::from).collect()
}

fn latest_weights(run_dir: &Path) -> Vec<u8> {
    let latest = fs::read_to_string(run_dir.join("latest")).unwrap();
    fs::read(run_dir.join(latest.trim()).join("model.safetensors")).unwrap()
}

#[test]
fn resume_continues_exactly() {
    let ws = Workspace::new();
    succeed(&mut ws.train("full", &[]));
    let out = succeed(&mut ws.train("split", &["--stop-at", "6"]));
    assert!(out.contains("at step 6"), "{out}");
    let out = succeed(&mut ws.resume("split", &[]));
    assert!(out.contains("resuming") && out.contains("at step 12"), "{out}");

    let (full, split) = (train_lines(&ws.path("full")), train_lines(&ws.path("split")));
    assert_eq!(full.len(), 12);
    // Losses, learning rates and gradient norms are bit-identical at every step (timings differ).
    let numbers = |line: &String| line.split(",\"tokens_per_sec\"").next().unwrap().to_string();
    assert_eq!(full.iter().map(numbers).collect::<Vec<_>>(), split.iter().map(numbers).collect::<Vec<_>>());
    assert_eq!(latest_weights(&ws.path("full")), latest_weights(&ws.path("split")));
}

#[test]
fn a_finished_run_generates_evaluates_and_plots() {
    let ws = Workspace::new();
    let out = succeed(&mut ws.train("run", &[]));
    assert!(out.contains("finished at step 12"), "{out}");
    let run_dir = ws.arg("run");
    let kept: Vec<_> =
        fs::read_dir(ws.path("run/checkpoints")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(kept.len(), 2, "keep_checkpoints: 2 {kept:?}");
    // Resuming a finished run trains nothing and keeps its checkpoint as it is.
    let weights = latest_weights(&ws.path("run"));
    let out = succeed(&mut ws.resume("run", &[]));
    assert!(out.contains("finished at step 12"), "{out}");
    assert_eq!(latest_weights(&ws.path("run")), weights);

    let generate = |seed: &str| {
        let args =
            ["generate", "--model", &run_dir, "--prompt", "The fox", "--max-tokens", "12", "--seed", seed];
        succeed(&mut truthgpt(&args))
    };
    let text = generate("3");
    assert!(text.starts_with("The fox"), "{text}");
    assert_eq!(text, generate("3"), "seeded sampling is deterministic");

    let out = succeed(&mut truthgpt(&["eval", "--model", &run_dir, "--data", &ws.arg("corpus/part1.txt")]));
    assert!(out.contains("perplexity"), "{out}");
    succeed(&mut truthgpt(&["plot", &run_dir]));
    assert!(fs::read(ws.path("run/curves.png")).unwrap().starts_with(b"\x89PNG"));
}

#[test]
fn prepared_datasets_train_and_evaluate() {
    let ws = Workspace::new();
    let (corpus, tokenizer, prepared) = (ws.arg("corpus"), ws.arg("tok.json"), ws.arg("prepared"));
    succeed(&mut truthgpt(&[
        "tokenizer",
        "train",
        "--data",
        &corpus,
        "--vocab-size",
        "300",
        "--out",
        &tokenizer,
    ]));
    let args = [
        "data",
        "prepare",
        "--data",
        &corpus,
        "--tokenizer",
        &tokenizer,
        "--out",
        &prepared,
        "--shard-tokens",
        "2000",
    ];
    let out = succeed(&mut truthgpt(&args));
    assert!(out.contains("u16"), "{out}");
    let (config, run_dir) = (ws.arg("config.yaml"), ws.arg("run"));
    succeed(&mut truthgpt(&[
        "train", "--config", &config, "--data", &prepared, "--out", &run_dir, "--steps", "3",
    ]));
    let out = succeed(&mut truthgpt(&["eval", "--model", &run_dir, "--data", &prepared]));
    assert!(out.contains("loss"), "{out}");

    // A damaged shard is named, and training refuses it.
    let shard = ws.path("prepared/train-00001.bin");
    let mut bytes = fs::read(&shard).unwrap();
    bytes[10] ^= 0x40;
    fs::write(&shard, bytes).unwrap();
    let args = ["train", "--config", &config, "--data", &prepared, "--out", &ws.arg("run2")];
    let err = assert_fails_cleanly(&run(&mut truthgpt(&args)));
    assert!(err.contains("train-00001.bin") && err.contains("checksum"), "{err}");
}

#[test]
fn damaged_checkpoints_are_errors_that_name_the_file() {
    let ws = Workspace::new();
    succeed(&mut ws.train("run", &["--steps", "2"]));
    let run_dir = ws.arg("run");
    let dir = ws.path("run/checkpoints/step-00000002");
    let generate =
        || run(&mut truthgpt(&["generate", "--model", &run_dir, "--prompt", "The", "--max-tokens", "2"]));

    let weights = dir.join("model.safetensors");
    let original = fs::read(&weights).unwrap();
    let mut flipped = original.clone();
    flipped[original.len() / 2] ^= 1;
    fs::write(&weights, &flipped).unwrap();
    let err = assert_fails_cleanly(&generate());
    assert!(err.contains("model.safetensors") && err.contains("SHA-256"), "{err}");

    fs::write(&weights, &original[..original.len() - 100]).unwrap();
    let err = assert_fails_cleanly(&generate());
    assert!(err.contains("model.safetensors") && err.contains("truncated"), "{err}");

    fs::write(&weights, &original).unwrap();
    fs::write(dir.join("trainer.json"), "{").unwrap();
    let err = assert_fails_cleanly(&run(&mut ws.resume("run", &[])));
    assert!(err.contains("trainer.json"), "{err}");

    fs::remove_file(dir.join("manifest.json")).unwrap();
    let err = assert_fails_cleanly(&generate());
    assert!(err.contains("latest") && err.contains("manifest.json"), "{err}");
}

/// Waits until the run has logged `steps` training steps.
fn wait_for_steps(run_dir: &Path, steps: usize, child: &mut std::process::Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while fs::read_to_string(run_dir.join("metrics.jsonl")).map_or(0, |t| t.matches("\"train\"").count())
        < steps
    {
        assert!(child.try_wait().unwrap().is_none(), "training exited early");
        assert!(Instant::now() < deadline, "training made no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(child: &std::process::Child, name: &str) {
    let status = Command::new("kill").args([&format!("-{name}"), &child.id().to_string()]).status().unwrap();
    assert!(status.success());
}

#[test]
fn ctrl_c_saves_a_checkpoint_and_exits_cleanly() {
    let ws = Workspace::new();
    let mut child = ws
        .train("run", &["--steps", "100000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_steps(&ws.path("run"), 3, &mut child);
    signal(&child, "INT");
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let out = stdout(&output);
    assert!(out.contains("stopped at step"), "{out}");
    let args = ["generate", "--model", &ws.arg("run"), "--prompt", "The", "--max-tokens", "3"];
    succeed(&mut truthgpt(&args));
    let out = succeed(&mut ws.resume("run", &["--stop-at", "100"]));
    assert!(out.contains("at step 100"), "{out}");
}

/// A checkpoint being built: `checkpoints/.step-NNNNNNNN.tmp-PID`, which a kill before its rename
/// leaves behind (see `fsio::write_dir_atomic`).
#[derive(Debug, PartialEq)]
struct TempCheckpoint {
    step: u64,
    pid: u32,
}

fn temp_checkpoints(run_dir: &Path) -> Vec<TempCheckpoint> {
    let Ok(entries) = fs::read_dir(run_dir.join("checkpoints")) else { return Vec::new() };
    let mut temps: Vec<_> = entries
        .filter_map(|entry| {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            let (step, pid) = name.strip_prefix(".step-")?.split_once(".tmp-")?;
            Some(TempCheckpoint { step: step.parse().unwrap(), pid: pid.parse().unwrap() })
        })
        .collect();
    temps.sort_by_key(|t| (t.step, t.pid));
    temps
}

/// The step of the checkpoint `latest` points to.
fn latest_step(run_dir: &Path) -> u64 {
    let latest = fs::read_to_string(run_dir.join("latest")).unwrap();
    latest.trim().strip_prefix("checkpoints/step-").unwrap().parse().unwrap()
}

/// Waits until `child` is building a checkpoint.
fn wait_for_checkpoint_write(run_dir: &Path, child: &mut std::process::Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !temp_checkpoints(run_dir).iter().any(|t| t.pid == child.id()) {
        assert!(child.try_wait().unwrap().is_none(), "training exited early");
        assert!(Instant::now() < deadline, "no checkpoint write began");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// SIGKILL at arbitrary moments, then aimed at checkpoint writes until one provably lands inside
/// one, never leaves the run without a loadable model: `latest` still names a complete
/// checkpoint, each resume continues from it, and a resumed run's first save removes the
/// temporaries that killed writes left.
#[test]
fn sigkill_during_checkpoint_writes_leaves_the_previous_checkpoint_loadable() {
    // Kills at phases spread over about one step and its checkpoint (~100 ms with this config)...
    const ARBITRARY_KILLS: u64 = 4;
    // ...then kills just after a write began, until one lands before the rename (nearly always
    // the first: a write of these ~11 MB with fsyncs takes tens of milliseconds).
    const MAX_KILLS: u64 = 12;
    let ws = Workspace::new();
    // Larger tables make each checkpoint ~11 MB, so a write lasts long enough to be hit.
    let config = CONFIG.replace("vocab_size: 320", "vocab_size: 4000").replace("d_model: 32", "d_model: 96");
    let config =
        config.replace("checkpoint_every: 4", "checkpoint_every: 1").replace("steps: 12", "steps: 100000");
    fs::write(ws.path("config.yaml"), config).unwrap();
    let run_dir = ws.path("run");
    let (mut kills, mut inside_writes) = (0, 0);
    loop {
        let (command, resumed_from) = if kills == 0 {
            (ws.train("run", &[]), 0)
        } else {
            (ws.resume("run", &[]), latest_step(&run_dir))
        };
        let mut child = { command }.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        // A killed run logged at most one step past `latest`, so two more prove that this one
        // resumed, trained, and saved (and pruned) at least once.
        wait_for_steps(&run_dir, resumed_from as usize + 2, &mut child);
        if kills < ARBITRARY_KILLS {
            std::thread::sleep(Duration::from_millis(29 * kills));
        } else {
            wait_for_checkpoint_write(&run_dir, &mut child);
            std::thread::sleep(Duration::from_millis(5 * (kills % 3)));
        }
        let pid = child.id();
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;

        let temps = temp_checkpoints(&run_dir);
        assert!(temps.iter().all(|t| t.pid == pid), "earlier kills' temporaries survived a save: {temps:?}");
        let latest = latest_step(&run_dir);
        let landed = temps.first().inspect(|t| {
            assert!(t.step > latest, "latest (step {latest}) moved before checkpoint {} was complete", t.step)
        });
        inside_writes += landed.is_some() as u64;
        // `generate` loads `latest` with every file checked against its manifest.
        let args = ["generate", "--model", &ws.arg("run"), "--prompt", "The", "--max-tokens", "2"];
        succeed(&mut truthgpt(&args));
        if landed.is_some() && kills >= ARBITRARY_KILLS {
            break;
        }
        assert!(
            kills < MAX_KILLS,
            "{kills} kills, {inside_writes} inside a checkpoint write, none of the {} aimed at one",
            kills - ARBITRARY_KILLS
        );
    }
    eprintln!("kills: {kills}, inside a checkpoint write: {inside_writes}");

    // The last kill interrupted a write: resuming past it removes its temporary, and the log holds
    // every step once, in order.
    let end = latest_step(&run_dir) + 2;
    let out = succeed(&mut ws.resume("run", &["--stop-at", &end.to_string()]));
    assert!(out.contains(&format!("at step {end}")), "{out}");
    assert_eq!(temp_checkpoints(&run_dir), []);
    let records = read_metrics(&run_dir.join("metrics.jsonl")).unwrap();
    let steps: Vec<u64> = records
        .iter()
        .filter_map(|r| match r {
            Record::Train(r) => Some(r.step),
            Record::Eval(_) => None,
        })
        .collect();
    assert_eq!(steps, (1..=end).collect::<Vec<_>>());
}

#[test]
fn bad_input_gets_a_clear_error() {
    let ws = Workspace::new();
    let config = ws.arg("config.yaml");
    let fails = |args: &[&str], expected: &[&str]| {
        let err = assert_fails_cleanly(&run(&mut truthgpt(args)));
        for text in expected {
            assert!(err.contains(text), "expected {text:?} in:\n{err}");
        }
    };
    let missing = ws.arg("no-such-corpus");
    fails(
        &["train", "--config", &config, "--data", &missing, "--out", &ws.arg("a")],
        &["no-such-corpus", "does not exist"],
    );
    fails(&["train", "--config", &config, "--out", &ws.arg("a")], &["--data"]);

    fs::create_dir(ws.path("empty")).unwrap();
    fs::write(ws.path("empty/blank.txt"), "  \n\n").unwrap();
    fails(
        &["train", "--config", &config, "--data", &ws.arg("empty"), "--out", &ws.arg("a")],
        &["empty", "no text"],
    );

    fs::write(ws.path("bad.jsonl"), "{\"text\": \"fine\"}\n{\"body\": 1}\n").unwrap();
    fails(
        &["tokenizer", "train", "--data", &ws.arg("bad.jsonl"), "--vocab-size", "300"],
        &["bad.jsonl:2", "text"],
    );

    let big = ws.arg("big.json");
    succeed(&mut truthgpt(&[
        "tokenizer",
        "train",
        "--data",
        &ws.arg("corpus"),
        "--vocab-size",
        "400",
        "--out",
        &big,
    ]));
    let set = format!("data.tokenizer={big}");
    fails(
        &["train", "--config", &config, "--set", &set, "--data", &ws.arg("corpus"), "--out", &ws.arg("a")],
        &["400 tokens", "model.vocab_size is 320"],
    );

    succeed(&mut ws.train("run", &["--steps", "1"]));
    let long_prompt = "The fox jumps over the lazy dog ".repeat(20);
    fails(
        &["generate", "--model", &ws.arg("run"), "--prompt", &long_prompt],
        &["prompt", "max_seq_len = 32"],
    );
    fails(&["generate", "--model", &ws.arg("run"), "--prompt", "The", "--top-p", "0"], &["top_p"]);
    fails(&["generate", "--model", &ws.arg("corpus"), "--prompt", "The"], &["no model in"]);
    let out = run(&mut ws.train("run", &[]));
    assert!(assert_fails_cleanly(&out).contains("--resume"));
    fails(
        &["train", "--resume", "--data", &ws.arg("corpus"), "--out", &ws.arg("fresh")],
        &["no checkpoint to resume"],
    );
}

#[test]
fn quickstart_trains_saves_and_its_model_serves_generate_and_eval() {
    let out_dir = tempfile::tempdir().unwrap();
    let out_arg = out_dir.path().display().to_string();
    let out = succeed(&mut truthgpt(&["quickstart", "--steps", "4", "--out", &out_arg]));
    for expected in
        ["validation perplexity", "unigram model gets", "expert utilisation", "layer 2:", "sample", "saved"]
    {
        assert!(out.contains(expected), "expected {expected:?} in:\n{out}");
    }
    succeed(&mut truthgpt(&["generate", "--model", &out_arg, "--prompt", "ROMEO.", "--max-tokens", "5"]));
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/shakespeare/tempest.txt");
    let out = succeed(&mut truthgpt(&["eval", "--model", &out_arg, "--data", &repo.display().to_string()]));
    assert!(out.contains("perplexity"), "{out}");
}
