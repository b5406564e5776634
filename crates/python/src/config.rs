//! `Config`: the engine's one configuration (model, train and data sections), loaded in the same
//! layers as the CLI's (preset, file, `TRUTHGPT_SECTION__KEY` environment, `section.key=value`).

use std::path::PathBuf;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use truthgpt_config::Sources;

use crate::engine_err;

/// A validated configuration. Build one with `Config.load` or `Config.from_json`; read it with
/// `to_json`. Python's `optimization_core.config` wraps it.
#[pyclass(module = "optimization_core._native", frozen)]
#[derive(Clone)]
pub struct Config {
    pub(crate) inner: truthgpt_config::Config,
}

#[pymethods]
impl Config {
    /// Loads defaults, then `preset`, then the YAML/JSON/TOML file `path`, then (if `env`) the
    /// `TRUTHGPT_<SECTION>__<KEY>` environment variables, then `overrides` (`section.key=value`),
    /// and validates the result. Raises `ValueError` naming the field on a bad value.
    #[staticmethod]
    #[pyo3(signature = (preset=None, path=None, overrides=Vec::new(), env=true))]
    fn load(
        preset: Option<&str>,
        path: Option<PathBuf>,
        overrides: Vec<String>,
        env: bool,
    ) -> PyResult<Self> {
        let sources = Sources { preset, file: path.as_deref(), env, overrides: &overrides };
        truthgpt_config::Config::load(&sources).map(|inner| Config { inner }).map_err(engine_err)
    }

    /// A configuration from JSON text (the shape `to_json` writes; missing keys take their
    /// defaults), validated. Unknown keys and bad values are `ValueError`s naming the field.
    #[staticmethod]
    fn from_json(text: &str) -> PyResult<Self> {
        let inner: truthgpt_config::Config =
            serde_json::from_str(text).map_err(|e| PyValueError::new_err(format!("invalid config: {e}")))?;
        inner.validate().map_err(engine_err)?;
        Ok(Config { inner })
    }

    /// The whole configuration as JSON, every field included.
    fn to_json(&self) -> String {
        self.inner.to_pretty_json()
    }

    fn __repr__(&self) -> String {
        let m = &self.inner.model;
        format!(
            "Config(vocab_size={}, d_model={}, n_layers={}, n_heads={}, steps={})",
            m.vocab_size, m.d_model, m.n_layers, m.n_heads, self.inner.train.steps
        )
    }
}
