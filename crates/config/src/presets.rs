//! Named starting points. Each is a YAML overlay on the schema defaults, so `config show --preset X`
//! prints exactly what it sets.

use crate::ConfigError;

/// Every preset name, in the order `--help` lists them.
pub const PRESETS: &[&str] =
    &["tiny", "gpt2-small", "llama-like", "mixtral-like", "torch-tiny-reference", "quickstart"];

pub(crate) fn yaml(name: &str) -> Result<&'static str, ConfigError> {
    Ok(match name {
        "tiny" => include_str!("../presets/tiny.yaml"),
        "gpt2-small" => include_str!("../presets/gpt2-small.yaml"),
        "llama-like" => include_str!("../presets/llama-like.yaml"),
        "mixtral-like" => include_str!("../presets/mixtral-like.yaml"),
        "torch-tiny-reference" => include_str!("../presets/torch-tiny-reference.yaml"),
        "quickstart" => include_str!("../presets/quickstart.yaml"),
        _ => return Err(ConfigError::UnknownPreset { name: name.to_string() }),
    })
}
