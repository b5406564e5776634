//! `import`, `export` and `logits` through the binary, on the committed Hugging Face fixtures.

mod common;

use std::path::{Path, PathBuf};

use common::{assert_fails_cleanly, run, stdout, truthgpt};
use safetensors::SafeTensors;
use truthgpt_engine::close::max_abs_diff;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../interop/tests/fixtures/hf").join(name)
}

fn logits(model: &Path, ids: &[u32]) -> Vec<Vec<f32>> {
    let ids = ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    let output = run(&mut truthgpt(&["logits", "--model", model.to_str().unwrap(), "--ids", &ids]));
    assert!(output.status.success(), "{}", common::stderr(&output));
    let json: serde_json::Value = serde_json::from_str(&stdout(&output)).expect("one JSON object");
    serde_json::from_value(json["logits"].clone()).expect("logits: rows of floats")
}

/// The fixture's ids and transformers' logits.
fn expected(name: &str) -> (Vec<u32>, Vec<f32>) {
    let bytes = std::fs::read(fixture(name).join("expected.safetensors")).unwrap();
    let tensors = SafeTensors::deserialize(&bytes).unwrap();
    let ids = tensors.tensor("ids").unwrap();
    let ids = ids.data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32).collect();
    let logits = tensors.tensor("logits").unwrap();
    let logits = logits.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    (ids, logits)
}

#[test]
fn logits_of_a_hugging_face_directory_match_transformers() {
    let (ids, want) = expected("qwen2");
    let rows = logits(&fixture("qwen2"), &ids);
    assert_eq!(rows.len(), ids.len());
    let got: Vec<f32> = rows.concat();
    assert_eq!(got.len(), want.len(), "one row of the whole vocabulary per position");
    let diff = max_abs_diff(&got, &want);
    assert!(diff <= 1e-4, "max diff {diff:e}");
}

#[test]
fn import_export_and_logits_agree_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let (imported, exported) = (tmp.path().join("imported"), tmp.path().join("exported"));
    let source = fixture("gpt2");
    succeeds(&["import", "hf", source.to_str().unwrap(), "--out", imported.to_str().unwrap()]);
    assert!(imported.join("manifest.json").is_file() && imported.join("tokenizer.json").is_file());
    succeeds(&["export", "hf", imported.to_str().unwrap(), "--out", exported.to_str().unwrap()]);
    let ids = [0, 5, 299, 17, 42];
    let original = logits(&source, &ids);
    assert_eq!(logits(&imported, &ids), original);
    assert_eq!(logits(&exported, &ids), original);

    // The imported model generates text with its own tokenizer.
    continues_the_prompt(&imported);
}

/// `generate` on `model` runs with the model's own tokenizer and starts with the prompt.
fn continues_the_prompt(model: &Path) {
    let model = model.to_str().unwrap();
    let output =
        run(&mut truthgpt(&["generate", "--model", model, "--prompt", "To be", "--max-tokens", "5"]));
    assert!(output.status.success(), "{}", common::stderr(&output));
    assert!(stdout(&output).starts_with("To be"));
}

#[test]
fn bad_requests_fail_cleanly() {
    let llama = fixture("llama");
    let llama = llama.to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x.gguf");
    for (args, expect) in [
        (vec!["logits", "--model", llama, "--ids", "1,128"], "out of range"),
        (vec!["logits", "--model", llama, "--ids", "1,x"], "invalid digit"),
        (vec!["logits", "--model", "/nonexistent", "--ids", "1"], "/nonexistent"),
        (vec!["export", "gguf", llama, "--out", out.to_str().unwrap()], "no tokenizer.json"),
        (vec!["import", "hf", llama, "--out", tmp.path().to_str().unwrap()], "already exists"),
        (vec!["generate", "--model", llama, "--prompt", "hi"], "no tokenizer.json"),
    ] {
        let err = assert_fails_cleanly(&run(&mut truthgpt(&args)));
        assert!(err.contains(expect), "{args:?}: {err}");
    }
    // A damaged Hugging Face directory says what is wrong with it, not just "no model".
    std::fs::write(tmp.path().join("config.json"), "{ not json").unwrap();
    let err = assert_fails_cleanly(&run(&mut truthgpt(&[
        "logits",
        "--model",
        tmp.path().to_str().unwrap(),
        "--ids",
        "1",
    ])));
    assert!(err.contains("config.json") && err.contains("not JSON"), "{err}");

    let too_long: String = (0..300).map(|i| (i % 100).to_string()).collect::<Vec<_>>().join(",");
    let err = assert_fails_cleanly(&run(&mut truthgpt(&["logits", "--model", llama, "--ids", &too_long])));
    assert!(err.contains("max_seq_len"), "{err}");
}

/// A temporary directory with a writable copy of fixture `name` (`source`), and where its import
/// and that import's export go.
fn round_trip_dirs(name: &str) -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let (source, imported, exported) =
        (tmp.path().join("source"), tmp.path().join("imported"), tmp.path().join("exported"));
    std::fs::create_dir(&source).unwrap();
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, source.join(path.file_name().unwrap())).unwrap();
    }
    (tmp, source, imported, exported)
}

fn succeeds(args: &[&str]) {
    let output = run(&mut truthgpt(args));
    assert!(output.status.success(), "{args:?}: {}", common::stderr(&output));
}

/// A model's chat template survives `import hf` (kept, under the manifest, in the file the server
/// reads it from) and `export hf`, so an imported model chats as it was trained to.
#[test]
fn the_chat_template_survives_import_and_export() {
    let (_tmp, source, imported, exported) = round_trip_dirs("gpt2");
    let template = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}<|assistant|>";
    let config_path = source.join("tokenizer_config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["chat_template"] = serde_json::json!(template);
    std::fs::write(&config_path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();

    succeeds(&["import", "hf", source.to_str().unwrap(), "--out", imported.to_str().unwrap()]);
    assert_eq!(
        std::fs::read(imported.join("tokenizer_config.json")).unwrap(),
        std::fs::read(&config_path).unwrap()
    );
    let manifest = std::fs::read_to_string(imported.join("manifest.json")).unwrap();
    assert!(manifest.contains("tokenizer_config.json"), "checksummed: {manifest}");

    succeeds(&["export", "hf", imported.to_str().unwrap(), "--out", exported.to_str().unwrap()]);
    let exported_config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(exported.join("tokenizer_config.json")).unwrap())
            .unwrap();
    assert_eq!(exported_config["chat_template"], template);
}

/// Hardening finding 8: transformers 4.43 and later saves a model's chat template in
/// `chat_template.jinja`, not `tokenizer_config.json`, and such a model was served with the
/// default format. The file is read (it wins over `tokenizer_config.json`, as in transformers),
/// kept by `import hf` and written back by `export hf`; the server renders with it.
#[test]
fn a_chat_template_in_chat_template_jinja_is_no_longer_ignored() {
    let (_tmp, source, imported, exported) = round_trip_dirs("gpt2");
    let template = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}[assistant] ";
    std::fs::write(source.join("chat_template.jinja"), template).unwrap();
    let messages = [truthgpt_serve::types::Message { role: "user".into(), content: "Hi".into() }];
    // Beside a `tokenizer_config.json` that has no template (the gpt2 fixture's).
    let format = truthgpt_serve::template::ChatFormat::for_model(&source).unwrap();
    assert_eq!(format.render(&messages).unwrap(), "[user] Hi\n[assistant] ");
    succeeds(&["import", "hf", source.to_str().unwrap(), "--out", imported.to_str().unwrap()]);
    let kept: serde_json::Value =
        serde_json::from_slice(&std::fs::read(imported.join("tokenizer_config.json")).unwrap()).unwrap();
    assert_eq!(kept["chat_template"], template, "kept where our model directories keep it");
    let format = truthgpt_serve::template::ChatFormat::for_model(&imported).unwrap();
    assert_eq!(format.render(&messages).unwrap(), "[user] Hi\n[assistant] ");

    succeeds(&["export", "hf", imported.to_str().unwrap(), "--out", exported.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(exported.join("chat_template.jinja")).unwrap(), template);
    let exported_config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(exported.join("tokenizer_config.json")).unwrap())
            .unwrap();
    assert_eq!(exported_config["chat_template"], template, "and where older transformers looks");
}

/// Any `--model` takes a GGUF file: a committed one in mixed ggml types, run through the
/// quantized kernels, stays within 5% of the range of transformers' logits for it (2.4%
/// measured, see crates/interop/tests/gguf_import.rs) with the same top-1, one with a tokenizer in its metadata (our export of a random model) generates,
/// and a damaged one says what is wrong with it.
#[test]
fn a_gguf_file_serves_as_a_model() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../interop/tests/fixtures/gguf/llama");
    let bytes = std::fs::read(dir.join("expected.safetensors")).unwrap();
    let tensors = SafeTensors::deserialize(&bytes).unwrap();
    let ids: Vec<u32> = tensors.tensor("ids").unwrap().data().chunks_exact(8).map(|b| b[0] as u32).collect();
    let want: Vec<f32> = tensors
        .tensor("logits")
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let rows = logits(&dir.join("model.gguf"), &ids);
    let got = rows.concat();
    let diff = max_abs_diff(&got, &want);
    let range = want.iter().fold(0.0f32, |m, v| m.max(v.abs())) as f64;
    assert!(diff <= 0.05 * range, "GGUF logits differ from transformers' by {diff:e} (range {range})");
    let argmax = |row: &[f32]| (0..row.len()).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap();
    for (i, (row, want)) in rows.iter().zip(want.chunks(rows[0].len())).enumerate() {
        assert_eq!(argmax(row), argmax(want), "top-1 at position {i}");
    }

    let tmp = tempfile::tempdir().unwrap();
    let gguf = tmp.path().join("model.gguf");
    let text = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer";
    let tokenizer = truthgpt_data::Tokenizer::train_bpe_from_texts(&[text, text], 280).unwrap();
    let config = truthgpt_config::ModelConfig {
        vocab_size: 288,
        d_model: 32,
        n_layers: 1,
        n_heads: 2,
        n_kv_heads: 2,
        d_ff: 64,
        max_seq_len: 32,
        bias: false,
        norm: truthgpt_config::NormKind::RmsNorm,
        positional: truthgpt_config::Positional::Rope,
        ffn: truthgpt_config::FfnKind::Swiglu,
        ..Default::default()
    };
    let model = truthgpt_model::Model::new(&config, 7);
    truthgpt_interop::gguf::export(&model, &tokenizer, &gguf, truthgpt_interop::gguf::GgufDtype::Q8_0)
        .unwrap();
    continues_the_prompt(&gguf);

    let bad = tmp.path().join("bad.gguf");
    std::fs::write(&bad, b"GGUF\x03\x00\x00\x00").unwrap();
    let err = assert_fails_cleanly(&run(&mut truthgpt(&[
        "logits",
        "--model",
        bad.to_str().unwrap(),
        "--ids",
        "1",
    ])));
    assert!(err.contains("bad.gguf") && err.contains("tensor count"), "{err}");
}

/// `quantize` from a GGUF file (dequantized, requantized, its tokenizer keys kept) reads back in
/// the asked type and still continues a prompt; bad requests fail with a reason.
#[test]
fn quantize_requantizes_a_gguf_file_and_refuses_bad_requests() {
    let source =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../interop/tests/fixtures/gguf/llama/model.gguf");
    let source = source.to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("q4_0.gguf");
    let out = out.to_str().unwrap();
    succeeds(&["quantize", "--model", source, "--to", "q4_0", "--out", out]);
    let file = truthgpt_interop::gguf::Gguf::open(Path::new(out)).unwrap();
    let original = truthgpt_interop::gguf::Gguf::open(Path::new(source)).unwrap();
    let keys = |g: &truthgpt_interop::gguf::Gguf| {
        g.metadata().iter().filter(|(k, _)| k.starts_with("tokenizer.")).cloned().collect::<Vec<_>>()
    };
    assert_eq!(keys(&file), keys(&original), "the tokenizer keys are copied");
    assert!(file.tensors().iter().any(|t| t.ty == truthgpt_quant::GgmlType::Q4_0));
    let rows = logits(Path::new(out), &[1, 2, 3]);
    assert!(rows.concat().iter().all(|v| v.is_finite()));

    let err = assert_fails_cleanly(&run(&mut truthgpt(&[
        "quantize", "--model", source, "--to", "q4_0", "--out", out,
    ])));
    assert!(err.contains("already exists"), "{err}");
    let other = tmp.path().join("other.gguf");
    let other = other.to_str().unwrap();
    let err = assert_fails_cleanly(&run(&mut truthgpt(&[
        "quantize", "--model", source, "--to", "q3_k_xl", "--out", other,
    ])));
    assert!(err.contains("q3_k_xl") && err.contains("q4_k_m"), "{err}");
    let err = assert_fails_cleanly(&run(&mut truthgpt(&[
        "quantize", "--model", source, "--to", "q4_0", "--method", "awq", "--out", other,
    ])));
    assert!(err.contains("--calib"), "{err}");
}
