//! `truthgpt config validate|show`, and the config loading every command shares.

use std::path::Path;

use anyhow::Context;
use truthgpt_config::{Config, Sources};

use crate::args::Layers;

/// Loads preset, file, environment and `--set` layers, with context naming what was loaded.
pub fn load(preset: Option<&str>, file: Option<&Path>, set: &[String]) -> anyhow::Result<Config> {
    let what = match (file, preset) {
        (Some(file), _) => format!("loading config {}", file.display()),
        (None, Some(preset)) => format!("loading preset {preset}"),
        (None, None) => "loading config".to_string(),
    };
    Config::load(&Sources { preset, file, env: true, overrides: set }).context(what)
}

pub fn validate(file: &Path) -> anyhow::Result<()> {
    load(None, Some(file), &[])?;
    println!("ok: {}", file.display());
    Ok(())
}

pub fn show(file: Option<&Path>, layers: &Layers) -> anyhow::Result<()> {
    let config = load(layers.preset.as_deref(), file, &layers.set)?;
    println!("{}", config.to_pretty_json());
    Ok(())
}
