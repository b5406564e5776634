//! The README's config reference names every key of the schema, so it cannot fall behind it.

use truthgpt_config::Config;

/// Every key of `value`, as `section.key` paths (objects only; arrays are leaves).
fn keys(prefix: &str, value: &serde_json::Value, out: &mut Vec<String>) {
    if let serde_json::Value::Object(map) = value {
        for (key, child) in map {
            let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
            out.push(path.clone());
            keys(&path, child, out);
        }
    }
}

#[test]
fn readme_config_reference_lists_every_key() {
    let readme = include_str!("../../../README.md");
    let start = readme.find("## Config reference").expect("README has a config reference");
    let end = readme[start + 3..].find("\n## ").map_or(readme.len(), |i| start + 3 + i);
    let reference = &readme[start..end];
    let mut all = Vec::new();
    let mut config = Config::default();
    config.model.rope_scaling = Some(truthgpt_config::RopeScaling {
        original_max_seq_len: Some(1024),
        ..truthgpt_config::RopeScaling::new(truthgpt_config::RopeScalingKind::Llama3, 8.0)
    });
    config.model.sliding_window = Some(4096);
    keys("", &serde_json::to_value(&config).unwrap(), &mut all);
    let listed =
        |key: &str| reference.contains(&format!("`{key}`")) || reference.contains(&format!("`{key}:`"));
    let missing: Vec<&String> = all.iter().filter(|path| !listed(path.rsplit('.').next().unwrap())).collect();
    assert!(missing.is_empty(), "README's config reference lacks {missing:?}");
}
