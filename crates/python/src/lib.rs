//! `optimization_core._native`: the PyO3 extension under the `optimization_core` Python package.
//!
//! The heavy lifting stays in the Rust crates; this crate only converts. The Python package
//! (`python/optimization_core`) gives it the seed's names (`create_truthgpt_model`,
//! `ConfigManager`, ...) and does what is natural in Python (iterating a `DataLoader`, `tqdm`).
//!
//! - Errors: config errors become `ValueError`s (their message names the field); every other
//!   engine error a `TruthGPTError` (a `RuntimeError`), with the Rust message and its causes.
//!   A Rust panic becomes pyo3's `PanicException`, never an abort.
//! - Calls that compute (forward, training, evaluation, generation, loading) release the GIL.
//! - Logits come back as NumPy arrays that own the engine's buffer (no copy); weights are
//!   read-only NumPy views into the model's parameter buffer.

mod config;
mod model;
mod serve;

use std::error::Error;

use pyo3::create_exception;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;

create_exception!(_native, TruthGPTError, PyRuntimeError, "An error from the TruthGPT engine.");

/// The error and its causes, each said once (our messages often include the cause they wrap),
/// as the CLI reports them.
fn report(error: &dyn Error) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !line.contains(&cause_text) {
            line.push_str(": ");
            line.push_str(&cause_text);
        }
        source = cause.source();
    }
    line
}

/// An engine error as a Python exception. Config errors, anywhere in the chain, are `ValueError`s.
pub(crate) fn engine_err(error: impl Error + 'static) -> PyErr {
    let message = report(&error);
    let mut cause: Option<&(dyn Error + 'static)> = Some(&error);
    while let Some(e) = cause {
        if e.is::<truthgpt_config::ConfigError>() {
            return PyValueError::new_err(message);
        }
        cause = e.source();
    }
    TruthGPTError::new_err(message)
}

/// Sets the engine's thread count (rayon's global pool). It can be set once, before any model
/// runs; later calls raise. Without it the engine uses every core (or `RAYON_NUM_THREADS`).
#[pyfunction]
fn set_threads(threads: usize) -> PyResult<usize> {
    if threads == 0 {
        return Err(PyValueError::new_err("threads must be at least 1"));
    }
    rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().map_err(|e| {
        TruthGPTError::new_err(format!("the thread pool already exists ({e}); call set_threads first"))
    })?;
    Ok(rayon::current_num_threads())
}

/// How many threads the engine computes on.
#[pyfunction]
fn threads() -> usize {
    rayon::current_num_threads()
}

/// Whether the CUDA driver finds a GPU. Models train and run on the CPU either way for now.
#[pyfunction]
fn cuda_device_count() -> usize {
    use truthgpt_engine::cuda;
    if !cuda::libraries().driver {
        return 0;
    }
    cuda::device_count().unwrap_or(0)
}

/// Panics in Rust. It exists so the tests can show that a panic reaches Python as an exception
/// rather than aborting the interpreter.
#[pyfunction]
fn _panic_for_test(message: &str) {
    panic!("{message}");
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("TruthGPTError", m.py().get_type::<TruthGPTError>())?;
    m.add_class::<config::Config>()?;
    m.add_class::<model::Model>()?;
    m.add_class::<serve::Server>()?;
    m.add_function(wrap_pyfunction!(set_threads, m)?)?;
    m.add_function(wrap_pyfunction!(threads, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_device_count, m)?)?;
    m.add_function(wrap_pyfunction!(_panic_for_test, m)?)?;
    m.add("PRESETS", truthgpt_config::PRESETS.to_vec())?;
    Ok(())
}
