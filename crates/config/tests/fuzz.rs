//! Whatever a config file holds, loading returns a value or an error; it never panics.

use proptest::prelude::*;
use truthgpt_config::{Config, Sources};

fn load_text(text: &str, extension: &str) -> Result<Config, String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("config.{extension}"));
    std::fs::write(&path, text).unwrap();
    Config::load(&Sources { file: Some(&path), ..Sources::default() }).map_err(|e| e.to_string())
}

/// Plausible keys with arbitrary values, so inputs get past the parser into validation.
fn yaml_document() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec![
        "vocab_size",
        "d_model",
        "n_layers",
        "n_heads",
        "n_kv_heads",
        "d_ff",
        "max_seq_len",
        "positional",
        "ffn",
        "norm",
        "dropout",
        "rope_theta",
        "share_layers",
    ]);
    let value = prop_oneof![
        any::<i64>().prop_map(|v| v.to_string()),
        any::<f32>().prop_map(|v| v.to_string()),
        "[a-z]{0,8}",
        Just("[1, 2]".to_string()),
        Just("{}".to_string()),
    ];
    prop::collection::vec((key, value), 0..6).prop_map(|pairs| {
        let body: String = pairs.iter().map(|(k, v)| format!("  {k}: {v}\n")).collect();
        format!("model:\n{body}")
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn arbitrary_bytes_never_panic(text in ".{0,200}", extension in prop::sample::select(vec!["yaml", "json", "toml"])) {
        let _ = load_text(&text, extension);
    }

    #[test]
    fn plausible_documents_load_or_explain(doc in yaml_document()) {
        if let Err(message) = load_text(&doc, "yaml") {
            prop_assert!(!message.is_empty());
        }
    }
}
