//! `truthgpt registry …` through the binary: a trained model pushed, aliased, pulled and used by
//! `generate --model registry:…`; bad input; and kill -9 at random moments during push and alias.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{assert_fails_cleanly, run, stderr, stdout, truthgpt};
use rand::{Rng, SeedableRng};
use truthgpt_registry::{Registry, VersionRef};

fn config() -> String {
    let train = "  batch_size: 4\n  seq_len: 16\n  steps: 3\n  eval_every: 3\n  eval_batches: 1\n  checkpoint_every: 3\n";
    common::tiny_config("", train)
}

struct Ws {
    dir: tempfile::TempDir,
}

impl Ws {
    /// A workspace with a registry that trusts `alice`, whose key is `alice.key`.
    fn new() -> Self {
        let ws = Ws { dir: tempfile::tempdir().unwrap() };
        let key = ws.arg("alice.key");
        ws.ok(&["keygen", "alice", "--out", &key, "--trust"]);
        ws
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn arg(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    /// `truthgpt registry --registry <ws>/reg ARGS…`.
    fn cmd(&self, args: &[&str]) -> Command {
        let reg = self.arg("reg");
        let mut all = vec!["registry", "--registry", &reg];
        all.extend_from_slice(args);
        truthgpt(&all)
    }

    fn ok(&self, args: &[&str]) -> String {
        let output = run(&mut self.cmd(args));
        assert!(output.status.success(), "{args:?} failed:\n{}", stderr(&output));
        stdout(&output)
    }

    fn push_args(&self, dir: &Path) -> Vec<String> {
        ["push", "m", &dir.display().to_string(), "--key", &self.arg("alice.key")].map(String::from).to_vec()
    }
}

fn generate(model: &str, registry: Option<&Path>) -> String {
    let mut command =
        truthgpt(&["generate", "--model", model, "--prompt", "The fox", "--max-tokens", "8", "--seed", "3"]);
    if let Some(reg) = registry {
        command.env("TRUTHGPT_REGISTRY", reg);
    }
    let output = run(&mut command);
    assert!(output.status.success(), "generate {model} failed:\n{}", stderr(&output));
    stdout(&output)
}

#[test]
fn a_trained_model_is_pushed_aliased_pulled_and_generates_from_a_registry_reference() {
    let ws = Ws::new();
    std::fs::write(ws.path("config.yaml"), config()).unwrap();
    let corpus: String =
        (0..3000).map(|i| format!("The fox number {i} jumps over the lazy dog.\n")).collect();
    std::fs::write(ws.path("corpus.txt"), corpus).unwrap();
    let (config, data, out) = (ws.arg("config.yaml"), ws.arg("corpus.txt"), ws.arg("run"));
    let train = run(&mut truthgpt(&["train", "--config", &config, "--data", &data, "--out", &out]));
    assert!(train.status.success(), "{}", stderr(&train));
    let latest = std::fs::read_to_string(ws.path("run/latest")).unwrap();
    let model_dir = ws.path("run").join(latest.trim());

    let pushed = ws.ok(&[
        &ws.push_args(&model_dir)[..],
        &["--alias", "prod", "--meta", "steps=3", "--run-id", "run-1"].map(String::from),
    ]
    .concat()
    .iter()
    .map(String::as_str)
    .collect::<Vec<_>>());
    assert!(pushed.starts_with("pushed m/1 (manifest bafkrei"), "{pushed}");
    assert!(ws.ok(&["list"]).contains("m\tversions 1\tlatest 1\taliases prod=1"));
    let shown: serde_json::Value = serde_json::from_str(&ws.ok(&["show", "m@prod"])).unwrap();
    assert_eq!(shown["manifest"]["metadata"]["steps"], "3");
    assert_eq!(shown["manifest"]["lineage"]["run_id"], "run-1");
    assert_eq!(shown["signer"], "alice");

    let direct = generate(&model_dir.display().to_string(), None);
    assert_eq!(generate("registry:m@prod", Some(&ws.path("reg"))), direct);
    assert_eq!(generate("registry:m/1", Some(&ws.path("reg"))), direct, "the cached copy serves again");
    ws.ok(&["pull", "m/1", "--out", &ws.arg("pulled")]);
    assert_eq!(generate(&ws.arg("pulled"), None), direct);
    assert!(ws.ok(&["verify"]).contains("checked 1 versions"));
    ws.ok(&["tag", "m/1", "stage=smoke"]);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&ws.ok(&["show", "m/1"])).unwrap()["tags"]["stage"],
        "smoke"
    );
    assert!(ws.ok(&["diff", "m/1", "m@prod"]).contains("unchanged"));
}

#[test]
fn registry_errors_are_clean() {
    let ws = Ws::new();
    let model = ws.path("model");
    std::fs::create_dir(&model).unwrap();
    std::fs::write(model.join("w.bin"), b"weights").unwrap();
    ws.ok(&ws.push_args(&model).iter().map(String::as_str).collect::<Vec<_>>());
    let cases: [(&[&str], &str); 6] = [
        (&["show", "nope/1"], "no model named \"nope\""),
        (&["show", "m/9"], "has no version 9"),
        (&["pull", "m@prod", "--out", "/tmp/x"], "has no alias \"prod\""),
        (&["alias", "m", "latest", "1"], "reserved"),
        (&["show", "m/zero"], "not a number"),
        (&["tag", "m/1", "novalue"], "expected KEY=VALUE"),
    ];
    for (args, message) in cases {
        let err = assert_fails_cleanly(&run(&mut ws.cmd(args)));
        assert!(err.contains(message), "{args:?}: {err}");
    }
    let err = assert_fails_cleanly(&run(&mut truthgpt(&["registry", "list"])));
    assert!(err.contains("TRUTHGPT_REGISTRY"), "{err}");
    let err =
        assert_fails_cleanly(&run(&mut truthgpt(&["generate", "--model", "registry:m@x", "--prompt", "a"])));
    assert!(err.contains("TRUTHGPT_REGISTRY"), "{err}");
    // A tampered blob: verify fails with the reason and a non-zero exit.
    let reg = Registry::open(&ws.path("reg")).unwrap();
    let v = reg.load(&"m/1".parse::<VersionRef>().unwrap()).unwrap();
    let cid = v.manifest.files[0].cid.to_string();
    let n = cid.len();
    let blob = ws.path("reg/blobs").join(&cid[n - 3..n - 1]).join(&cid);
    std::fs::write(&blob, b"weightz").unwrap();
    let output = run(&mut ws.cmd(&["verify"]));
    assert_fails_cleanly(&output);
    assert!(
        stdout(&output).contains(&format!("FAIL m/1: w.bin: blob {cid} is corrupt")),
        "{}",
        stdout(&output)
    );
}

/// Checks the invariants after a kill: every version loads and its blobs re-hash (no row without
/// its blob), and `prod` points at an existing version. Returns (versions, prod).
fn check_consistent(reg_dir: &Path) -> (u64, Option<u64>) {
    let reg = Registry::open(reg_dir).unwrap();
    let report = reg.verify().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let Ok(versions) = reg.versions("m") else { return (0, None) };
    let numbers: Vec<u64> = versions.iter().map(|v| v.number).collect();
    assert_eq!(numbers, (1..=numbers.len() as u64).collect::<Vec<_>>(), "numbers are 1..n with no gap");
    let prod = reg.resolve(&"m@prod".parse().unwrap()).ok().map(|v| v.number);
    (numbers.len() as u64, prod)
}

/// Spawns `args`, kills it with SIGKILL after `delay` unless it finished; returns whether it was
/// killed in flight.
fn run_and_kill(mut command: Command, delay: Duration) -> bool {
    let mut child = command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    std::thread::sleep(delay);
    let in_flight = child.try_wait().unwrap().is_none();
    child.kill().ok(); // SIGKILL
    child.wait().unwrap();
    in_flight
}

#[test]
fn kill_9_during_push_and_alias_leaves_the_registry_consistent() {
    let ws = Ws::new();
    let model = ws.path("model");
    std::fs::create_dir(&model).unwrap();
    std::fs::write(model.join("config.json"), b"{}").unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(19);
    let write_weights = |rng: &mut rand::rngs::StdRng| {
        let weights: Vec<u8> = (0..4 << 20).map(|_| rng.gen()).collect();
        std::fs::write(model.join("weights.bin"), weights).unwrap();
    };
    // How long an undisturbed push takes here; kills land within 1.5 times it.
    write_weights(&mut rng);
    let start = Instant::now();
    ws.ok(&ws.push_args(&model).iter().map(String::as_str).collect::<Vec<_>>());
    let push_time = start.elapsed();
    let (mut versions, mut prod) = check_consistent(&ws.path("reg"));
    let (mut killed, mut rounds) = (0, 0);
    while rounds < 40 {
        rounds += 1;
        let delay = push_time.mul_f64(rng.gen_range(0.0..1.5));
        let alias_op = versions > 0 && rng.gen_bool(0.3);
        let target = rng.gen_range(1..=versions.max(1));
        let command = if alias_op {
            ws.cmd(&["alias", "m", "prod", &target.to_string()])
        } else {
            write_weights(&mut rng);
            let mut args = ws.push_args(&model);
            args.extend(["--alias".to_string(), "prod".to_string()]);
            ws.cmd(&args.iter().map(String::as_str).collect::<Vec<_>>())
        };
        killed += usize::from(run_and_kill(command, delay));
        let (now_versions, now_prod) = check_consistent(&ws.path("reg"));
        if alias_op {
            assert_eq!(now_versions, versions);
            assert!(
                now_prod == prod || now_prod == Some(target),
                "prod moved to {now_prod:?}, not {prod:?} or {target}"
            );
        } else if now_versions == versions + 1 {
            assert_eq!(now_prod, Some(now_versions), "a committed push moved prod with it");
        } else {
            assert_eq!((now_versions, now_prod), (versions, prod), "an uncommitted push changed nothing");
        }
        (versions, prod) = (now_versions, now_prod);
    }
    assert!(killed >= 10, "only {killed} of {rounds} kills landed in flight");
    let gc = ws.ok(&["gc", "--grace-secs", "0"]);
    assert!(ws.ok(&["verify"]).contains(": 0 problems"));
    eprintln!(
        "{rounds} rounds, {killed} killed in flight, {versions} versions committed; push {push_time:?}; {gc}"
    );
}
