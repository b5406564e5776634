//! Damaged or unsupported Hugging Face directories give errors that name the file and the
//! problem, never a panic.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::fixture;
use truthgpt_interop::hf;

/// A writable copy of fixture `name`.
fn copy(name: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(name);
    fs::create_dir(&dir).unwrap();
    for entry in fs::read_dir(fixture(name)).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    (tmp, dir)
}

fn load_err(dir: &Path) -> String {
    hf::load(dir).map(|_| ()).expect_err("a damaged model must not load").to_string()
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut json: serde_json::Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut json);
    fs::write(&path, serde_json::to_string(&json).unwrap()).unwrap();
}

#[test]
fn missing_files() {
    let (_tmp, dir) = copy("llama");
    fs::remove_file(dir.join("model.safetensors")).unwrap();
    let err = load_err(&dir);
    assert!(err.contains("model.safetensors") && err.contains("missing"), "{err}");
    fs::remove_file(dir.join("config.json")).unwrap();
    let err = load_err(&dir);
    assert!(err.contains("config.json") && err.contains("missing"), "{err}");
}

#[test]
fn unknown_architecture() {
    let (_tmp, dir) = copy("llama");
    edit_config(&dir, |c| c["architectures"] = serde_json::json!(["FalconForCausalLM"]));
    let err = load_err(&dir);
    assert!(err.contains("FalconForCausalLM") && err.contains("LlamaForCausalLM"), "{err}");
}

#[test]
fn config_fields_of_the_wrong_type_or_unsupported_values() {
    for (edit, expect) in [
        (serde_json::json!({"hidden_size": "64"}), "`hidden_size` is \"64\""),
        (serde_json::json!({"hidden_act": "gelu"}), "hidden_act `gelu`"),
        (serde_json::json!({"rope_parameters": {"rope_type": "yarn", "factor": 2.0}}), "type `yarn`"),
        (serde_json::json!({"num_key_value_heads": 3}), "not one we can build"),
        (serde_json::json!({"head_dim": 8}), "head_dim 8"),
    ] {
        let (_tmp, dir) = copy("llama");
        edit_config(&dir, |c| c.as_object_mut().unwrap().extend(edit.as_object().unwrap().clone()));
        let err = load_err(&dir);
        assert!(err.contains(expect), "{edit}: {err}");
        assert!(err.contains("config.json"), "{err}");
    }
    let (_tmp, dir) = copy("llama");
    fs::write(dir.join("config.json"), "{ not json").unwrap();
    assert!(load_err(&dir).contains("not JSON"));
}

#[test]
fn tensors_of_the_wrong_shape() {
    let (_tmp, dir) = copy("llama");
    edit_config(&dir, |c| c["intermediate_size"] = 80.into());
    let err = load_err(&dir);
    assert!(
        err.contains("mlp.gate_proj.weight") && err.contains("[96, 64]") && err.contains("[80, 64]"),
        "{err}"
    );
}

/// A config claiming a model far larger than its files fails on a tensor's shape before anything
/// of that size is allocated.
#[test]
fn sizes_the_files_do_not_back() {
    for (key, value) in [("vocab_size", 1u64 << 40), ("intermediate_size", 1 << 40)] {
        let (_tmp, dir) = copy("llama");
        edit_config(&dir, |c| c[key] = value.into());
        let err = load_err(&dir);
        assert!(err.contains("shape") && err.contains("config.json implies"), "{key}: {err}");
    }
    // A huge context allocates nothing up front: positions and the KV cache grow with use.
    let (_tmp, dir) = copy("llama");
    edit_config(&dir, |c| c["max_position_embeddings"] = (1u64 << 40).into());
    let mut model = hf::load(&dir).unwrap().model;
    let mut cache = model.new_cache();
    let logits = model.forward_cached(&mut cache, &[1, 2, 3]).unwrap();
    assert!(logits.iter().all(|x| x.is_finite()));
}

#[test]
fn tensors_the_config_does_not_account_for() {
    let (_tmp, dir) = copy("llama");
    edit_config(&dir, |c| c["num_hidden_layers"] = 1.into());
    let err = load_err(&dir);
    assert!(err.contains("does not have") && err.contains("model.layers.1."), "{err}");
}

#[test]
fn truncated_or_damaged_safetensors_at_any_length() {
    let (_tmp, dir) = copy("llama");
    let path = dir.join("model.safetensors");
    let bytes = fs::read(&path).unwrap();
    for len in [0, 7, 8, 100, bytes.len() / 2, bytes.len() - 1] {
        fs::write(&path, &bytes[..len]).unwrap();
        let err = load_err(&dir);
        assert!(err.contains("model.safetensors") && err.contains("not a valid safetensors"), "{len}: {err}");
    }
    // A header that claims a huge length.
    let mut damaged = bytes.clone();
    damaged[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    fs::write(&path, &damaged).unwrap();
    assert!(load_err(&dir).contains("not a valid safetensors"));
}

#[test]
fn a_sharded_index_that_names_a_missing_shard() {
    let (_tmp, dir) = copy("llama_sharded");
    fs::remove_file(dir.join("model-00002-of-00003.safetensors")).unwrap();
    let err = load_err(&dir);
    assert!(err.contains("model-00002-of-00003.safetensors") && err.contains("shard"), "{err}");

    let (_tmp, dir) = copy("llama_sharded");
    let index = dir.join("model.safetensors.index.json");
    let text = fs::read_to_string(&index).unwrap().replace("model-00003-of-00003", "model-00001-of-00003");
    fs::write(&index, text).unwrap();
    let err = load_err(&dir);
    assert!(err.contains("lacks"), "{err}");

    fs::write(&index, r#"{"weight_map": {"x": "../../etc/passwd"}}"#).unwrap();
    assert!(load_err(&dir).contains("not a file in the model directory"));
}

#[test]
fn a_tokenizer_config_naming_a_token_the_tokenizer_lacks() {
    let (_tmp, dir) = copy("gpt2");
    fs::write(dir.join("tokenizer_config.json"), r#"{"eos_token": "</nonexistent>"}"#).unwrap();
    let err = load_err(&dir);
    assert!(err.contains("tokenizer_config.json") && err.contains("</nonexistent>"), "{err}");
}

/// Hardening finding 7: a model with 1,024 NaN weights loaded without a word, and greedy decoding
/// returned an empty completion. A tensor holding NaN or infinity is refused, naming the tensor
/// and the count, in f32 and in f16 files alike.
#[test]
fn nan_weights_no_longer_load_silently() {
    use safetensors::tensor::TensorView;
    use safetensors::{Dtype, SafeTensors};
    let target = "model.layers.0.mlp.up_proj.weight";
    for (name, nan) in
        [("llama", f32::NAN.to_le_bytes().to_vec()), ("llama3_f16", half::f16::NAN.to_le_bytes().to_vec())]
    {
        let (_tmp, dir) = copy(name);
        let path = dir.join("model.safetensors");
        let bytes = fs::read(&path).unwrap();
        let tensors = SafeTensors::deserialize(&bytes).unwrap();
        let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = tensors
            .tensors()
            .into_iter()
            .map(|(n, t)| (n, t.dtype(), t.shape().to_vec(), t.data().to_vec()))
            .collect();
        let (_, dtype, _, data) =
            owned.iter_mut().find(|(n, ..)| n == target).expect("the fixture has the tensor");
        assert_eq!(dtype.bitsize(), 8 * nan.len(), "{name}");
        for value in data.chunks_exact_mut(nan.len()).take(1024) {
            value.copy_from_slice(&nan);
        }
        let views = owned.iter().map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()));
        fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
        let err = load_err(&dir);
        assert!(
            err.contains(target) && err.contains("1024 of") && err.contains("NaN or infinite"),
            "{name}: {err}"
        );
    }
}
