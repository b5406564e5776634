//! Checkpoints and model directories: what is saved loads back bit for bit, damage is an error
//! that names the damaged file, and a run directory keeps only its newest checkpoints.

mod common;

use std::fs;
use std::path::Path;

use common::{assert_bit_identical, config, data, train};
use truthgpt_train::checkpoint::{self, load_checkpoint, load_model, save_model};
use truthgpt_train::TrainError;

const CHECKPOINT_FILES: [&str; 5] =
    ["config.json", "model.safetensors", "optimizer.safetensors", "tokenizer.json", "trainer.json"];

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<_> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

#[test]
fn a_checkpoint_loads_back_exactly_what_was_trained() {
    let config = config();
    let data = data(&config);
    let run = tempfile::tempdir().unwrap();
    let outcome = train(&config, &data, run.path(), Some(3));
    assert_eq!(outcome.checkpoint, run.path().join("checkpoints/step-00000003"));
    assert_eq!(fs::read_to_string(run.path().join("latest")).unwrap(), "checkpoints/step-00000003\n");
    let mut files = names(&outcome.checkpoint);
    files.retain(|f| f != checkpoint::MANIFEST);
    assert_eq!(files, CHECKPOINT_FILES);

    // A run directory and the checkpoint directory it points to are the same model.
    assert_eq!(checkpoint::resolve(run.path()).unwrap(), outcome.checkpoint);
    for path in [run.path(), outcome.checkpoint.as_path()] {
        let loaded = load_checkpoint(path).unwrap();
        assert_eq!(loaded.saved.config, config);
        assert_eq!(loaded.state, outcome.state);
        assert_eq!(loaded.state.step, 3);
        assert_bit_identical("params", &loaded.saved.model.params, &outcome.trainer.model.params);
        assert_bit_identical("m", &loaded.m, &outcome.trainer.m);
        assert_bit_identical("v", &loaded.v, &outcome.trainer.v);
        assert_eq!(loaded.saved.tokenizer.as_ref().unwrap().to_json(), data.tokenizer.to_json());
        let (trainer, _, _) = loaded.into_trainer();
        assert_eq!(trainer.step, 3, "the trainer's schedule resumes at the saved step");
    }
    let model = load_model(run.path()).unwrap();
    assert_bit_identical("params", &model.model.params, &outcome.trainer.model.params);
}

#[test]
fn a_damaged_checkpoint_file_is_an_error_that_names_it() {
    let config = config();
    let data = data(&config);
    let run = tempfile::tempdir().unwrap();
    let dir = train(&config, &data, run.path(), Some(1)).checkpoint;
    let refused = |file: &str, expected: &str| {
        let path = dir.join(file);
        let err = load_checkpoint(run.path()).unwrap_err();
        let message = err.to_string();
        assert!(matches!(&err, TrainError::Corrupt { path: p, .. } if *p == path), "{file}: {err:?}");
        assert!(message.contains(&path.display().to_string()) && message.contains(expected), "{message}");
    };
    for file in CHECKPOINT_FILES {
        let path = dir.join(file);
        let original = fs::read(&path).unwrap();
        let mut flipped = original.clone();
        flipped[original.len() / 2] ^= 0x01;
        fs::write(&path, &flipped).unwrap();
        refused(file, "SHA-256 does not match");
        fs::write(&path, &original[..original.len() - 1]).unwrap();
        refused(file, "truncated");
        fs::write(&path, &original).unwrap();
        load_checkpoint(run.path()).unwrap();
    }

    // The manifest itself, a listed file gone, and `latest` pointing nowhere.
    let manifest = dir.join(checkpoint::MANIFEST);
    let original = fs::read(&manifest).unwrap();
    fs::write(&manifest, &original[..original.len() / 2]).unwrap();
    refused(checkpoint::MANIFEST, "not a manifest");
    fs::write(&manifest, &original).unwrap();
    let weights = dir.join("model.safetensors");
    fs::rename(&weights, run.path().join("aside")).unwrap();
    let err = load_checkpoint(run.path()).unwrap_err();
    assert!(matches!(&err, TrainError::Io { path, .. } if *path == weights), "{err:?}");
    fs::rename(run.path().join("aside"), &weights).unwrap();
    fs::write(run.path().join("latest"), "checkpoints/step-00000099\n").unwrap();
    let err = load_model(run.path()).unwrap_err().to_string();
    assert!(
        err.contains("latest") && err.contains("step-00000099") && err.contains("manifest.json"),
        "{err}"
    );
}

#[test]
fn a_run_keeps_its_newest_checkpoints_and_removes_interrupted_ones() {
    let config = config();
    let data = data(&config);
    let run = tempfile::tempdir().unwrap();
    // What a save killed before its rename leaves behind.
    let stray = run.path().join("checkpoints/.step-00000001.tmp-4242");
    fs::create_dir_all(&stray).unwrap();
    fs::write(stray.join("model.safetensors"), "partial").unwrap();

    // Checkpoints every 2 steps of 8, keeping 2.
    let outcome = train(&config, &data, run.path(), None);
    assert_eq!(outcome.state.step, 8);
    assert_eq!(names(&run.path().join("checkpoints")), ["step-00000006", "step-00000008"]);
    assert_eq!(checkpoint::resolve(run.path()).unwrap(), outcome.checkpoint);
}

#[test]
fn saved_models_load_back_and_are_never_overwritten() {
    let config = config();
    let data = data(&config);
    let root = tempfile::tempdir().unwrap();
    let (trainer, _) = truthgpt_train::run::fresh(&config);
    let dir = root.path().join("model");
    save_model(&dir, &config, &trainer.model, Some(&data.tokenizer)).unwrap();
    let saved = load_model(&dir).unwrap();
    assert_eq!(saved.config, config);
    assert_bit_identical("params", &saved.model.params, &trainer.model.params);
    assert_eq!(saved.tokenizer().unwrap().to_json(), data.tokenizer.to_json());

    let err = save_model(&dir, &config, &trainer.model, None).unwrap_err();
    assert!(
        matches!(&err, TrainError::Io { source, .. } if source.kind() == std::io::ErrorKind::AlreadyExists)
    );
    assert_eq!(load_model(&dir).unwrap().tokenizer().unwrap().to_json(), data.tokenizer.to_json());

    // A model directory has no optimiser state to resume from.
    let err = load_checkpoint(&dir).unwrap_err().to_string();
    assert!(err.contains(&dir.join("manifest.json").display().to_string()), "{err}");
    assert!(err.contains("does not list trainer.json"), "{err}");

    let bare = root.path().join("bare");
    save_model(&bare, &config, &trainer.model, None).unwrap();
    let saved = load_model(&bare).unwrap();
    let err = saved.tokenizer().unwrap_err().to_string();
    assert!(err.contains(&bare.display().to_string()) && err.contains("no tokenizer.json"), "{err}");
    assert!(matches!(load_checkpoint(&bare).unwrap_err(), TrainError::NoTokenizer { .. }));
}

#[test]
fn a_path_without_a_model_is_an_error_that_says_what_was_expected() {
    let root = tempfile::tempdir().unwrap();
    let err = load_model(root.path()).unwrap_err();
    assert!(matches!(&err, TrainError::NoModel { path } if path == root.path()), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("manifest.json") && message.contains("latest"), "{message}");

    let missing = root.path().join("nowhere");
    let err = load_checkpoint(&missing).unwrap_err();
    assert!(matches!(&err, TrainError::Io { path, .. } if *path == missing), "{err:?}");
    assert!(err.to_string().contains("nowhere"), "{err}");
}
