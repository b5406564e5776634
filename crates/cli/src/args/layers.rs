//! Where a command's config starts: a preset, then `--set` overrides.

use clap::Args;

#[derive(Debug, Args)]
pub struct Layers {
    /// Start from a named preset (tiny, gpt2-small, llama-like, mixtral-like, torch-tiny-reference,
    /// quickstart).
    #[arg(long, value_name = "NAME")]
    pub preset: Option<String>,
    /// Override one field, e.g. `--set model.n_layers=4`; repeatable, applied last.
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub set: Vec<String>,
}
