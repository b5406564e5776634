//! Every way a config can be wrong must produce an error that names the field and the bad value,
//! so a user can fix it without reading the source.

use std::path::{Path, PathBuf};

use truthgpt_config::{Config, ConfigError, FfnKind, NormKind, Positional, Sources, PRESETS};

/// Writes `text` to `name` inside a fresh temporary directory (kept alive by the returned guard).
fn write(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(name);
    std::fs::write(&path, text).expect("write config");
    (dir, path)
}

fn load_file(path: &Path) -> Result<Config, ConfigError> {
    Config::load(&Sources { file: Some(path), ..Sources::default() })
}

/// Loads `text` as a file called `name` and returns the error message, failing if it loads.
fn error_of(name: &str, text: &str) -> (ConfigError, String) {
    let (_dir, path) = write(name, text);
    match load_file(&path) {
        Ok(config) => panic!("{name} should not load, got {config:?}"),
        Err(e) => {
            let message = e.to_string();
            (e, message)
        }
    }
}

fn assert_mentions(message: &str, needles: &[&str]) {
    for needle in needles {
        assert!(message.contains(needle), "error message lacks `{needle}`:\n{message}");
    }
}

#[test]
fn negative_size_is_rejected_with_field_and_value() {
    let (e, message) = error_of("neg.yaml", "model:\n  n_layers: -4\n");
    assert!(matches!(e, ConfigError::Parse { .. }), "{e:?}");
    assert_mentions(&message, &["model.n_layers", "-4"]);
}

#[test]
fn zero_size_is_rejected_by_validation() {
    let (e, message) = error_of("zero.yaml", "model:\n  n_layers: 0\n");
    assert!(matches!(e, ConfigError::Invalid { .. }), "{e:?}");
    assert_mentions(&message, &["model.n_layers = 0", "positive"]);
}

#[test]
fn heads_must_divide_d_model() {
    let (e, message) = error_of("heads.yaml", "model:\n  d_model: 64\n  n_heads: 5\n  n_kv_heads: 5\n");
    assert!(matches!(e, ConfigError::Invalid { .. }), "{e:?}");
    assert_mentions(&message, &["model.n_heads = 5", "d_model = 64"]);
}

#[test]
fn kv_heads_must_divide_heads() {
    let (_, message) = error_of("kv.yaml", "model:\n  n_heads: 4\n  n_kv_heads: 3\n");
    assert_mentions(&message, &["model.n_kv_heads = 3", "n_heads = 4"]);
}

#[test]
fn top_k_cannot_exceed_experts() {
    let (_, message) = error_of("moe.yaml", "model:\n  ffn: moe\n  moe:\n    n_experts: 4\n    top_k: 5\n");
    assert_mentions(&message, &["model.moe.top_k = 5", "(4)"]);
}

#[test]
fn top_k_is_not_checked_for_dense_ffn() {
    // The moe section is inert unless ffn is moe/pimoe, so a stale top_k must not fail a dense model.
    let (_dir, path) = write("dense.yaml", "model:\n  ffn: mlp\n  moe:\n    n_experts: 2\n    top_k: 5\n");
    load_file(&path).expect("dense model ignores moe settings");
}

#[test]
fn every_violation_is_reported_at_once() {
    let (e, message) = error_of("many.yaml", "model:\n  n_heads: 5\n  n_kv_heads: 5\ntrain:\n  lr: -1.0\n");
    match e {
        ConfigError::Invalid { invalid } => {
            let fields: Vec<_> = invalid.iter().map(|i| i.field).collect();
            assert!(fields.contains(&"model.n_heads"), "{fields:?}");
            assert!(fields.contains(&"train.lr"), "{fields:?}");
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert_mentions(&message, &["model.n_heads", "train.lr = -1"]);
}

#[test]
fn unknown_key_is_rejected_by_name() {
    let (e, message) = error_of("typo.yaml", "model:\n  n_layerz: 4\n");
    assert!(matches!(e, ConfigError::Parse { .. }), "{e:?}");
    assert_mentions(&message, &["model.n_layerz", "unknown field"]);
}

#[test]
fn unknown_section_is_rejected_by_name() {
    let (_, message) = error_of("section.yaml", "optimizer:\n  lr: 1.0\n");
    assert_mentions(&message, &["optimizer"]);
}

#[test]
fn wrong_type_names_field_and_value() {
    let (e, message) = error_of("type.yaml", "model:\n  d_model: big\n");
    assert!(matches!(e, ConfigError::Parse { .. }), "{e:?}");
    assert_mentions(&message, &["model.d_model", "big"]);
}

#[test]
fn unknown_enum_variant_names_field_and_value() {
    let (_, message) = error_of("enum.yaml", "model:\n  norm: batchnorm\n");
    assert_mentions(&message, &["model.norm", "batchnorm"]);
}

#[test]
fn yaml_syntax_error_names_the_file() {
    let (e, message) = error_of("syntax.yaml", "model: [unclosed\n");
    assert!(matches!(e, ConfigError::Parse { .. }), "{e:?}");
    assert_mentions(&message, &["syntax.yaml"]);
}

#[test]
fn unknown_preset_lists_the_available_ones() {
    let e = Config::preset("gpt5").expect_err("no such preset");
    assert!(matches!(e, ConfigError::UnknownPreset { .. }), "{e:?}");
    let message = e.to_string();
    assert_mentions(&message, &["gpt5"]);
    assert_mentions(&message, PRESETS);
}

#[test]
fn missing_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.yaml");
    let e = load_file(&path).expect_err("missing file");
    assert!(matches!(e, ConfigError::Missing { .. }), "{e:?}");
    assert_mentions(&e.to_string(), &["nope.yaml", "does not exist"]);
}

#[test]
fn unknown_extension_lists_the_formats() {
    let (e, message) = error_of("config.ini", "[model]\nn_layers = 4\n");
    assert!(matches!(e, ConfigError::Format { .. }), "{e:?}");
    assert_mentions(&message, &["config.ini", ".yaml", ".json", ".toml"]);
}

#[test]
fn json_file_loads() {
    let (_dir, path) =
        write("c.json", r#"{"model": {"n_layers": 3, "ffn": "swiglu"}, "train": {"lr": 0.001}}"#);
    let config = load_file(&path).expect("json loads");
    assert_eq!(config.model.n_layers, 3);
    assert_eq!(config.model.ffn, FfnKind::Swiglu);
    assert_eq!(config.train.lr, 1e-3);
}

#[test]
fn toml_file_loads() {
    let (_dir, path) =
        write("c.toml", "[model]\nn_layers = 5\nnorm = \"rmsnorm\"\n\n[train]\nbatch_size = 2\n");
    let config = load_file(&path).expect("toml loads");
    assert_eq!(config.model.n_layers, 5);
    assert_eq!(config.model.norm, NormKind::RmsNorm);
    assert_eq!(config.train.batch_size, 2);
}

#[test]
fn uppercase_extension_is_accepted() {
    let (_dir, path) = write("c.YML", "model:\n  n_layers: 1\n");
    assert_eq!(load_file(&path).expect("YML loads").model.n_layers, 1);
}

#[test]
fn file_layers_over_preset() {
    let (_dir, path) = write("over.yaml", "model:\n  n_layers: 1\n");
    let sources = Sources { preset: Some("gpt2-small"), file: Some(&path), ..Sources::default() };
    let config = Config::load(&sources).unwrap();
    assert_eq!(config.model.n_layers, 1);
    // The rest of the preset survives.
    assert_eq!(config.model.d_model, 768);
}

/// The only test that touches the process environment (tests share it across threads).
#[test]
fn env_override_takes_effect_and_loses_to_set() {
    std::env::set_var("TRUTHGPT_MODEL__N_LAYERS", "4");
    // Not config: no `__`, so it must be ignored rather than rejected as an unknown key.
    std::env::set_var("TRUTHGPT_UNRELATED", "x");
    let (_dir, path) = write("env.yaml", "model:\n  n_layers: 2\n");
    let env = Config::load(&Sources { file: Some(&path), env: true, ..Sources::default() });
    let overrides = ["model.n_layers=6".to_string()];
    let set =
        Config::load(&Sources { file: Some(&path), env: true, overrides: &overrides, ..Sources::default() });
    let off = Config::load(&Sources { file: Some(&path), env: false, ..Sources::default() });
    std::env::set_var("TRUTHGPT_MODEL__N_LAYERS", "-1");
    let bad = Config::load(&Sources { env: true, ..Sources::default() });
    std::env::remove_var("TRUTHGPT_MODEL__N_LAYERS");
    std::env::remove_var("TRUTHGPT_UNRELATED");

    assert_eq!(env.expect("env loads").model.n_layers, 4, "env beats the file");
    assert_eq!(set.expect("set loads").model.n_layers, 6, "--set beats env");
    assert_eq!(off.expect("file loads").model.n_layers, 2, "env off is ignored");
    let message = bad.expect_err("negative env value").to_string();
    assert_mentions(&message, &["model.n_layers", "-1"]);
}

#[test]
fn set_overrides_take_effect() {
    let overrides =
        ["model.n_layers=3".to_string(), "train.lr=0.001".to_string(), "model.positional=rope".to_string()];
    let config =
        Config::load(&Sources { preset: Some("tiny"), overrides: &overrides, ..Sources::default() }).unwrap();
    assert_eq!(config.model.n_layers, 3);
    assert_eq!(config.train.lr, 1e-3);
    assert_eq!(config.model.positional, Positional::Rope);
}

/// figment's scalar parser reads a bare number as a float only when it contains `.`; overrides
/// and env values such as `1e-3` must still be numbers.
#[test]
fn set_override_accepts_exponent_floats() {
    let overrides = ["train.lr=1e-3".to_string(), "train.min_lr=1e-5".to_string()];
    let config = Config::load(&Sources { overrides: &overrides, ..Sources::default() }).unwrap();
    assert_eq!(config.train.lr, 1e-3);
    assert_eq!(config.train.min_lr, 1e-5);
}

#[test]
fn set_override_can_reach_nested_sections() {
    let overrides =
        ["model.ffn=moe".to_string(), "model.moe.n_experts=4".to_string(), "model.moe.top_k=1".to_string()];
    let config = Config::load(&Sources { overrides: &overrides, ..Sources::default() }).unwrap();
    assert_eq!(config.model.moe.n_experts, 4);
    assert_eq!(config.model.moe.top_k, 1);
}

#[test]
fn malformed_set_override_is_named() {
    let overrides = ["model.n_layers".to_string()];
    let e = Config::load(&Sources { overrides: &overrides, ..Sources::default() }).expect_err("no `=`");
    assert!(matches!(e, ConfigError::Override { .. }), "{e:?}");
    assert_mentions(&e.to_string(), &["model.n_layers", "section.key=value"]);
}

#[test]
fn set_override_with_unknown_key_is_rejected() {
    let overrides = ["model.n_layerz=3".to_string()];
    let e = Config::load(&Sources { overrides: &overrides, ..Sources::default() }).expect_err("typo");
    assert_mentions(&e.to_string(), &["model.n_layerz", "unknown field"]);
}

#[test]
fn set_override_with_bad_value_is_rejected() {
    let overrides = ["model.n_heads=3".to_string()];
    let e = Config::load(&Sources { preset: Some("tiny"), overrides: &overrides, ..Sources::default() })
        .expect_err("3 does not divide 64");
    assert_mentions(&e.to_string(), &["model.n_heads = 3"]);
}

#[test]
fn every_preset_loads_and_validates() {
    for name in PRESETS {
        let config = Config::preset(name).unwrap_or_else(|e| panic!("preset {name}: {e}"));
        config.validate().unwrap_or_else(|e| panic!("preset {name}: {e}"));
        // The printed form is what `config show` emits; it must load back to the same config.
        let (_dir, path) = write("roundtrip.json", &config.to_pretty_json());
        assert_eq!(load_file(&path).unwrap_or_else(|e| panic!("preset {name} round trip: {e}")), config);
    }
}

#[test]
fn torch_tiny_reference_matches_the_pytorch_baseline() {
    let c = Config::preset("torch-tiny-reference").unwrap();
    let m = &c.model;
    assert_eq!(
        (m.vocab_size, m.d_model, m.n_layers, m.n_heads, m.n_kv_heads, m.d_ff, m.max_seq_len),
        (1024, 256, 2, 4, 4, 1024, 128)
    );
    assert_eq!(m.positional, Positional::Learned);
    assert_eq!(m.norm, NormKind::LayerNorm);
    assert_eq!(m.ffn, FfnKind::Mlp);
    assert!(m.bias);
    assert!(!m.tie_embeddings);
    assert_eq!(m.dropout, 0.0);
    let t = &c.train;
    assert_eq!(t.lr, 3e-4);
    assert_eq!(t.batch_size, 8);
    assert_eq!(t.seq_len, 128);
    // A constant schedule at lr: the baseline has no warmup, decay or clipping.
    assert_eq!(t.lr_at(0), 3e-4);
    assert_eq!(t.lr_at(10_000), 3e-4);
    assert_eq!(t.grad_clip, 0.0);
}
