use std::fmt;
use std::path::PathBuf;

/// A relation between fields that does not hold, e.g. heads that do not divide `d_model`.
#[derive(Debug, Clone, PartialEq)]
pub struct Invalid {
    /// Dotted path of the field, e.g. `model.n_heads`.
    pub field: &'static str,
    pub value: String,
    /// What would have been accepted.
    pub allowed: String,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} = {}: {}", self.field, self.value, self.allowed)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {} does not exist", path.display())]
    Missing { path: PathBuf },
    #[error("config file {}: unknown format; use .yaml, .yml, .json or .toml", path.display())]
    Format { path: PathBuf },
    #[error("unknown preset `{name}`; available: {}", crate::PRESETS.join(", "))]
    UnknownPreset { name: String },
    #[error("override `{assignment}` is not of the form section.key=value")]
    Override { assignment: String },
    /// Syntax errors, wrong types and unknown keys, one line each.
    #[error("{}", lines.join("\n"))]
    Parse { lines: Vec<String> },
    #[error("invalid config:\n  {}", invalid.iter().map(Invalid::to_string).collect::<Vec<_>>().join("\n  "))]
    Invalid { invalid: Vec<Invalid> },
}

impl ConfigError {
    /// Rewrites figment's errors as `field: problem (source)`, dropping its profile prefix.
    pub(crate) fn from_figment(error: figment::Error) -> ConfigError {
        let lines = error
            .into_iter()
            .map(|e| {
                let field = e.path.join(".");
                let source = e
                    .metadata
                    .as_ref()
                    .map(|m| match &m.source {
                        Some(source) => format!(" (in {} {source})", m.name),
                        None => format!(" (in {})", m.name),
                    })
                    .unwrap_or_default();
                if field.is_empty() {
                    format!("{}{source}", e.kind)
                } else {
                    format!("{field}: {}{source}", e.kind)
                }
            })
            .collect();
        ConfigError::Parse { lines }
    }
}
