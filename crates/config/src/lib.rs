//! The one configuration schema of TruthGPT.
//!
//! A [`Config`] is built in layers, each overriding the one before:
//! 1. the schema's defaults (the `tiny` model);
//! 2. an optional preset (`tiny`, `gpt2-small`, `llama-like`, `mixtral-like`, `torch-tiny-reference`);
//! 3. an optional YAML, JSON or TOML file;
//! 4. environment variables `TRUTHGPT_<SECTION>__<KEY>`, e.g. `TRUTHGPT_MODEL__N_LAYERS=4`;
//! 5. `section.key=value` overrides, as the CLI's `--set` passes them.
//!
//! Unknown keys and wrong types are rejected while loading; [`Config::validate`] then checks the
//! relations between fields. Every error names the field, the bad value and what is allowed.

mod data;
mod error;
mod model;
mod presets;
mod train;
mod validate;

use std::path::Path;

use figment::providers::{Env, Format, Json, Serialized, Toml, Yaml};
use figment::Figment;
use serde::{Deserialize, Serialize};

pub use data::DataConfig;
pub use error::{ConfigError, Invalid};
pub use model::{
    Balancing, ExpertGroup, ExpertKind, FfnKind, GeluApproximate, ModelConfig, MoeConfig, NormKind,
    NormPosition, PimoeConfig, Positional, RopeScaling, RopeScalingKind,
};
pub use presets::PRESETS;
pub use train::{DistillConfig, LoraConfig, Precision, Schedule, TrainConfig};

/// Largest `moe.top_k`: the MoE backward keeps per-token gate gradients on the stack.
pub const MAX_TOP_K: usize = 64;
/// Largest `d_model / n_heads`: the attention kernels keep one head's accumulator on the stack.
pub const MAX_HEAD_SIZE: usize = 256;

/// The prefix of environment overrides; `__` separates the section from the key.
pub const ENV_PREFIX: &str = "TRUTHGPT_";

/// The whole configuration: what to build and how to train it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub model: ModelConfig,
    pub train: TrainConfig,
    pub data: DataConfig,
}

/// Where a configuration comes from; see the crate docs for the order.
#[derive(Debug, Clone, Default)]
pub struct Sources<'a> {
    pub preset: Option<&'a str>,
    pub file: Option<&'a Path>,
    /// Read `TRUTHGPT_<SECTION>__<KEY>` variables.
    pub env: bool,
    /// `section.key=value` pairs; values parse as YAML-ish scalars (`4`, `true`, `1e-3`, `rope`).
    pub overrides: &'a [String],
}

impl Config {
    /// Loads and validates a configuration.
    pub fn load(sources: &Sources) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(name) = sources.preset {
            figment = figment.merge(Yaml::string(presets::yaml(name)?));
        }
        if let Some(path) = sources.file {
            figment = figment.merge(file_provider(path)?);
        }
        if sources.env {
            // Only `SECTION__KEY` variables are config; others (TRUTHGPT_DEVICE, ...) are not ours.
            let env = Env::prefixed(ENV_PREFIX).filter(|key| key.as_str().contains("__")).split("__");
            for (key, value) in env.iter() {
                let name = format!(
                    "environment variable {ENV_PREFIX}{}",
                    key.as_str().replace('.', "__").to_uppercase()
                );
                figment = figment.merge(Assignment::new(name, key.as_str(), &value));
            }
        }
        for assignment in sources.overrides {
            let (key, value) = assignment
                .split_once('=')
                .ok_or_else(|| ConfigError::Override { assignment: assignment.clone() })?;
            figment = figment.merge(Assignment::new(format!("--set {assignment}"), key.trim(), value));
        }
        let config: Config = figment.extract().map_err(ConfigError::from_figment)?;
        config.validate()?;
        Ok(config)
    }

    /// Loads one preset with nothing layered on top.
    pub fn preset(name: &str) -> Result<Config, ConfigError> {
        Config::load(&Sources { preset: Some(name), ..Sources::default() })
    }

    /// The configuration as YAML-compatible JSON-free text, for `config show`.
    pub fn to_pretty_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("Config always serialises")
    }
}

fn file_provider(path: &Path) -> Result<Figment, ConfigError> {
    if !path.is_file() {
        return Err(ConfigError::Missing { path: path.to_path_buf() });
    }
    let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    Ok(match extension.as_str() {
        "yaml" | "yml" => Figment::from(Yaml::file_exact(path)),
        "json" => Figment::from(Json::file_exact(path)),
        "toml" => Figment::from(Toml::file_exact(path)),
        _ => return Err(ConfigError::Format { path: path.to_path_buf() }),
    })
}

/// One `key=value` layer (a `--set` or an environment variable), named in error messages.
struct Assignment {
    name: String,
    key: String,
    value: figment::value::Value,
}

impl Assignment {
    /// Values parse as figment's scalars, except that figment reads a bare number as a float only
    /// when it contains `.`; exponent forms such as `1e-3` are numbers here too.
    fn new(name: String, key: &str, text: &str) -> Self {
        let value: figment::value::Value = text.parse().unwrap_or_else(|never| match never {});
        let value = match value.as_str().map(|s| s.trim().parse::<f64>()) {
            Some(Ok(number)) if number.is_finite() => number.into(),
            _ => value,
        };
        Assignment { name, key: key.to_string(), value }
    }
}

impl figment::Provider for Assignment {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named(self.name.clone())
    }

    fn data(&self) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        Serialized::default(&self.key, &self.value).data()
    }
}
