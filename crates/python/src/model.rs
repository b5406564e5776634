//! `Model`: one model with its tokenizer and (once it trains) its optimiser, calling the same
//! library functions as the CLI's `train`, `eval`, `generate` and `logits`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use numpy::ndarray::{ArrayView, IxDyn};
use numpy::{IntoPyArray, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::{PyKeyError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use truthgpt_data::{shards, TokenDataset, TokenStream, Tokenizer};
use truthgpt_model::{Batch, Mode, Sampling, Trainer};
use truthgpt_train::checkpoint::{self, TrainerState};
use truthgpt_train::run::{self, Observer, RunOptions, StepRecord};
use truthgpt_train::{source, Request, TextStream, TrainError};

use crate::config::Config;
use crate::{engine_err, TruthGPTError};

/// The model alone (inference), or inside a trainer with its AdamW moments (after training
/// starts): a loaded 1B-parameter model should not pay for optimiser state it never uses.
enum Engine {
    Inference(truthgpt_model::Model),
    Training(Trainer),
    /// Only while `trainer` moves the model into a trainer.
    Moving,
}

impl Engine {
    fn model(&self) -> &truthgpt_model::Model {
        match self {
            Engine::Inference(model) => model,
            Engine::Training(trainer) => &trainer.model,
            Engine::Moving => unreachable!("the engine is never left moving"),
        }
    }

    fn model_mut(&mut self) -> &mut truthgpt_model::Model {
        match self {
            Engine::Inference(model) => model,
            Engine::Training(trainer) => &mut trainer.model,
            Engine::Moving => unreachable!("the engine is never left moving"),
        }
    }

    /// The trainer, made on first use, with `config` as its settings.
    fn trainer(&mut self, config: &truthgpt_config::TrainConfig) -> &mut Trainer {
        if let Engine::Inference(_) = self {
            let Engine::Inference(model) = std::mem::replace(self, Engine::Moving) else { unreachable!() };
            *self = Engine::Training(Trainer::new(model, config.clone()));
        }
        let Engine::Training(trainer) = self else { unreachable!("made a trainer above") };
        trainer.config = config.clone();
        trainer
    }
}

/// A model: its config, weights, tokenizer (if it has one) and training state.
#[pyclass(module = "optimization_core._native")]
pub struct Model {
    config: truthgpt_config::Config,
    engine: Engine,
    tokenizer: Option<Tokenizer>,
    state: TrainerState,
}

/// Text to train or evaluate on: a path (a text file, a directory of them, JSONL, or a dataset
/// from `truthgpt data prepare`), or texts in memory.
#[derive(FromPyObject)]
enum TextData {
    Path(PathBuf),
    Texts(Vec<String>),
}

#[pymethods]
impl Model {
    /// A fresh model for `config`, initialised from `config.train.seed`, with the tokenizer
    /// `data.tokenizer` names (if it does; else training on text fits one).
    #[staticmethod]
    fn create(py: Python<'_>, config: &Config) -> PyResult<Self> {
        let config = config.inner.clone();
        let tokenizer = match &config.data.tokenizer {
            Some(path) => {
                let tokenizer = Tokenizer::from_file(path).map_err(engine_err)?;
                tokenizer.check_fits(config.model.vocab_size).map_err(engine_err)?;
                Some(tokenizer)
            }
            None => None,
        };
        let model = py.allow_threads(|| truthgpt_model::Model::new(&config.model, config.train.seed));
        Ok(Model::new(config, model, tokenizer))
    }

    /// Loads what `truthgpt` loads: our model or run directory, a Hugging Face directory, or a
    /// GGUF file (its matrices kept quantized, for inference).
    #[staticmethod]
    fn load(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let saved = py.allow_threads(|| checkpoint::load_model(&path)).map_err(engine_err)?;
        Ok(Model::new(saved.config, saved.model, saved.tokenizer))
    }

    /// The configuration the model was built with.
    #[getter]
    fn config(&self) -> Config {
        Config { inner: self.config.clone() }
    }

    #[getter]
    fn num_params(&self) -> usize {
        self.engine.model().num_params()
    }

    /// Optimiser steps taken so far.
    #[getter]
    fn step(&self) -> u64 {
        self.state.step
    }

    #[getter]
    fn has_tokenizer(&self) -> bool {
        self.tokenizer.is_some()
    }

    /// One forward pass in evaluation mode, as `truthgpt logits` runs it. `ids`: (T) or (B, T)
    /// uint32; returns float32 logits (T, V) or (B, T, V), an array that owns its buffer.
    fn logits<'py>(
        &mut self,
        py: Python<'py>,
        ids: PyReadonlyArrayDyn<'py, u32>,
    ) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        let (b, t) = batch_shape(&ids, "ids")?;
        let ndim = ids.ndim();
        let ids = ids.as_slice()?;
        let model = self.engine.model_mut();
        let vocab = model.config.vocab_size;
        let logits = py
            .allow_threads(|| model.forward(ids, b, t, Mode::Eval).map(<[f32]>::to_vec))
            .map_err(engine_err)?;
        let shape = if ndim == 1 { vec![t, vocab] } else { vec![b, t, vocab] };
        let array = logits.into_pyarray(py).reshape(shape)?;
        Ok(array.into_any().downcast_into::<PyArrayDyn<f32>>()?)
    }

    /// One optimiser step on `tokens` and next-token `targets`, each (B, T) uint32, or
    /// (A, B, T) for A accumulated micro-batches. Returns the step's loss, lr, grad_norm and
    /// aux_loss.
    fn train_step<'py>(
        &mut self,
        py: Python<'py>,
        tokens: PyReadonlyArrayDyn<'py, u32>,
        targets: PyReadonlyArrayDyn<'py, u32>,
    ) -> PyResult<Bound<'py, PyDict>> {
        if tokens.shape() != targets.shape() {
            return Err(PyValueError::new_err(format!(
                "tokens {:?} and targets {:?} must have the same shape",
                tokens.shape(),
                targets.shape()
            )));
        }
        let (micro, b, t) = micro_batch_shape(&tokens)?;
        let (x, y) = (tokens.as_slice()?, targets.as_slice()?);
        let trainer = self.engine.trainer(&self.config.train);
        let started = Instant::now();
        let stats = py
            .allow_threads(|| {
                let batches: Vec<Batch> = x
                    .chunks_exact(b * t)
                    .zip(y.chunks_exact(b * t))
                    .map(|(tokens, targets)| Batch { tokens, targets, b, t })
                    .collect();
                trainer.step(&batches)
            })
            .map_err(engine_err)?;
        self.state.step = trainer.step;
        self.state.tokens_seen += (micro * b * t) as u64;
        self.state.elapsed_secs += started.elapsed().as_secs_f64();
        let out = PyDict::new(py);
        out.set_item("step", self.state.step)?;
        out.set_item("loss", stats.loss)?;
        out.set_item("lr", stats.lr)?;
        out.set_item("grad_norm", stats.grad_norm)?;
        out.set_item("aux_loss", stats.aux_loss)?;
        Ok(out)
    }

    /// Trains `steps` more steps on text, as `truthgpt train` does: batches sampled from the
    /// training split, validation, metrics and checkpoints in `out`. A model without a tokenizer
    /// first fits a BPE of `model.vocab_size` on the text. `progress(step, loss)` is called after
    /// each step. Ctrl-C (or `progress` raising `KeyboardInterrupt`) stops at the next step with
    /// a checkpoint, and returns with `interrupted` set.
    #[pyo3(signature = (data, steps, out, progress=None))]
    fn train_text<'py>(
        &mut self,
        py: Python<'py>,
        data: TextData,
        steps: usize,
        out: PathBuf,
        progress: Option<PyObject>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let mut config = self.config.clone();
        config.train.steps = self.state.step as usize + steps;
        config.validate().map_err(engine_err)?;
        let tokenizer = self.tokenizer.clone();
        let data = py.allow_threads(|| match &data {
            TextData::Path(path) => source::load(path, &config, tokenizer),
            TextData::Texts(texts) => {
                let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
                source::from_texts(&texts, &config, tokenizer)
            }
        });
        let data = data.map_err(engine_err)?;
        let stop = AtomicBool::new(false);
        let mut observer = PyObserver { progress, stop: &stop, error: None };
        let options = RunOptions { out, stop_at: None };
        let (state, train_config) = (self.state.clone(), config.train.clone());
        let outcome = self.with_trainer_copy(&train_config, |trainer| {
            py.allow_threads(|| {
                run::run(
                    &config,
                    trainer,
                    state,
                    &data.tokenizer,
                    &data.dataset,
                    &options,
                    &mut observer,
                    &stop,
                )
                .map(|o| (o.trainer, (o.state, o.final_eval, o.checkpoint, o.interrupted)))
            })
        });
        let (state, final_eval, checkpoint, interrupted) = outcome.map_err(engine_err)?;
        (self.state, self.config, self.tokenizer) = (state, config, Some(data.tokenizer));
        if let Some(error) = observer.error {
            return Err(error);
        }
        let out = PyDict::new(py);
        out.set_item("step", self.state.step)?;
        out.set_item("val_loss", final_eval.val_loss)?;
        out.set_item("val_perplexity", final_eval.val_perplexity)?;
        out.set_item("checkpoint", checkpoint)?;
        out.set_item("interrupted", interrupted)?;
        Ok(out)
    }

    /// Mean next-token loss over up to `max_windows` windows of `train.seq_len` spread over the
    /// data, as `truthgpt eval` measures it: a path (a prepared dataset's validation split, or
    /// text, tokenized whole), texts, or a 1-D uint32 array of token ids. Returns
    /// (loss, perplexity, tokens).
    #[pyo3(signature = (data, max_windows=1000))]
    fn eval(
        &mut self,
        py: Python<'_>,
        data: &Bound<'_, PyAny>,
        max_windows: usize,
    ) -> PyResult<(f64, f64, u64)> {
        let stream = if let Ok(ids) = data.extract::<PyReadonlyArrayDyn<u32>>() {
            if ids.ndim() != 1 {
                return Err(PyValueError::new_err(format!("ids: expected 1-D, got shape {:?}", ids.shape())));
            }
            TokenStream::from_tokens(ids.as_slice()?.to_vec())
        } else {
            let data: TextData = data.extract()?;
            let tokenizer = self.tokenizer.as_ref();
            let field = self.config.data.jsonl_field.clone();
            py.allow_threads(|| eval_stream(&data, &field, tokenizer)).map_err(engine_err)?
        };
        let t = &self.config.train;
        let (seq_len, batch_size) = (t.seq_len, t.batch_size);
        let model = self.engine.model_mut();
        let result = py
            .allow_threads(|| truthgpt_train::evaluate(model, &stream, seq_len, batch_size, max_windows))
            .map_err(engine_err)?;
        Ok((result.loss, result.perplexity(), result.tokens))
    }

    /// Generates text after `prompt` with the engine's sampler, as `truthgpt generate` does.
    /// `on_piece(text)` is called with each piece as it is decoded. Returns (text,
    /// finish_reason, prompt_tokens, completion_tokens).
    #[pyo3(signature = (prompt, max_tokens=128, temperature=0.8, top_k=0, top_p=1.0,
        repetition_penalty=1.0, seed=0, stop=Vec::new(), on_piece=None))]
    #[allow(clippy::too_many_arguments)]
    fn generate(
        &mut self,
        py: Python<'_>,
        prompt: String,
        max_tokens: usize,
        temperature: f32,
        top_k: usize,
        top_p: f32,
        repetition_penalty: f32,
        seed: u64,
        stop: Vec<String>,
        on_piece: Option<PyObject>,
    ) -> PyResult<(String, String, usize, usize)> {
        let sampling = Sampling { temperature, top_k, top_p, repetition_penalty, seed };
        let request = Request { prompt, max_tokens, sampling, stop };
        let tokenizer = self.tokenizer.as_ref().ok_or_else(|| no_tokenizer("generate"))?;
        let model = self.engine.model_mut();
        py.allow_threads(|| {
            let mut stream = TextStream::new(model, tokenizer, &request).map_err(engine_err)?;
            let mut text = String::new();
            for piece in stream.by_ref() {
                let piece = piece.map_err(engine_err)?;
                if let Some(callback) = &on_piece {
                    Python::with_gil(|py| callback.call1(py, (piece.as_str(),)))?;
                }
                text.push_str(&piece);
            }
            let finish = stream.finish_reason().map_or("length".into(), |r| format!("{r:?}").to_lowercase());
            Ok((text, finish, stream.prompt_tokens(), stream.completion_tokens()))
        })
    }

    /// Saves a model directory (what `load`, `truthgpt generate` and `truthgpt serve` read) at
    /// `path`, which must not exist.
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        let (config, model, tokenizer) = (&self.config, self.engine.model(), self.tokenizer.as_ref());
        py.allow_threads(|| checkpoint::save_model(&path, config, model, tokenizer)).map_err(engine_err)
    }

    /// Every float parameter by name, as read-only NumPy views of the model's own buffer (no
    /// copy). They follow training (`train_step` updates them in place) and keep the model alive.
    fn weights<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyDict>> {
        let py = slf.py();
        let out = PyDict::new(py);
        let this = slf.borrow();
        let model = this.engine.model();
        for spec in model.specs.iter().filter(|s| !s.quantized) {
            let values = spec.handle.of(&model.params);
            // SAFETY: the shape's product is the handle's length (the model's layout), and the
            // buffer lives as long as `slf`, which the array holds: `Model` never reallocates
            // `params` (training keeps the buffer; see `with_trainer_copy`).
            let view = unsafe { ArrayView::from_shape_ptr(IxDyn(&spec.shape), values.as_ptr()) };
            let array = unsafe { PyArrayDyn::borrow_from_array(&view, slf.clone().into_any()) };
            array.getattr("flags")?.setattr("writeable", false)?;
            out.set_item(&spec.name, array)?;
        }
        Ok(out)
    }

    /// Copies `values` (float32, the parameter's shape) into parameter `name`.
    fn set_weight(&mut self, name: &str, values: PyReadonlyArrayDyn<'_, f32>) -> PyResult<()> {
        let model = self.engine.model_mut();
        let spec = model
            .specs
            .iter()
            .find(|s| s.name == name && !s.quantized)
            .ok_or_else(|| PyKeyError::new_err(format!("no float parameter named {name:?}")))?;
        if values.shape() != spec.shape.as_slice() {
            return Err(PyValueError::new_err(format!(
                "{name}: shape {:?} does not match the parameter's {:?}",
                values.shape(),
                spec.shape
            )));
        }
        let handle = spec.handle;
        handle.of_mut(&mut model.params).copy_from_slice(values.as_slice()?);
        Ok(())
    }

    /// Token ids of `text` under the model's tokenizer.
    fn encode<'py>(&self, py: Python<'py>, text: &str) -> PyResult<Bound<'py, PyArrayDyn<u32>>> {
        let tokenizer = self.tokenizer.as_ref().ok_or_else(|| no_tokenizer("encode"))?;
        let ids = tokenizer.encode(text).map_err(engine_err)?;
        Ok(ids.into_pyarray(py).to_dyn().clone())
    }

    /// The text of `ids` under the model's tokenizer.
    fn decode(&self, ids: Vec<u32>) -> PyResult<String> {
        let tokenizer = self.tokenizer.as_ref().ok_or_else(|| no_tokenizer("decode"))?;
        tokenizer.decode(&ids).map_err(engine_err)
    }

    /// Milliseconds of `rounds` forwards of `ids` (T) timed inside Rust, the call
    /// `truthgpt logits` makes: the baseline of `logits`' overhead in docs/benchmarks.md.
    fn _time_forward(&mut self, py: Python<'_>, ids: Vec<u32>, rounds: usize) -> PyResult<Vec<f64>> {
        let model = self.engine.model_mut();
        py.allow_threads(|| {
            (0..rounds)
                .map(|_| {
                    let started = Instant::now();
                    model.forward(&ids, 1, ids.len(), Mode::Eval)?;
                    Ok(started.elapsed().as_secs_f64() * 1e3)
                })
                .collect::<truthgpt_model::Result<Vec<f64>>>()
        })
        .map_err(engine_err)
    }

    fn __repr__(&self) -> String {
        let m = &self.config.model;
        format!(
            "Model({} parameters, {} layers, d_model {}, vocab {}, step {})",
            self.num_params(),
            m.n_layers,
            m.d_model,
            m.vocab_size,
            self.state.step
        )
    }
}

impl Model {
    fn new(
        config: truthgpt_config::Config,
        model: truthgpt_model::Model,
        tokenizer: Option<Tokenizer>,
    ) -> Self {
        let state = TrainerState::start(config.train.seed);
        Model { config, engine: Engine::Inference(model), tokenizer, state }
    }

    /// Runs `f` on a trainer that owns a copy of the parameters, and copies them back into the
    /// model's own buffer after. `run::run` consumes its trainer and drops it on an error; the
    /// NumPy views that `weights` hands out point into this buffer, which must outlive them.
    fn with_trainer_copy<T>(
        &mut self,
        config: &truthgpt_config::TrainConfig,
        f: impl FnOnce(Trainer) -> Result<(Trainer, T), TrainError>,
    ) -> Result<T, TrainError> {
        let trainer = self.engine.trainer(config);
        // On an error the model is as it was before the call.
        let (mut trained, summary) = f(trainer.clone())?;
        trainer.model.params.copy_from_slice(&trained.model.params);
        // Our buffer, now holding the trained values, goes into the trained model; the rest of
        // it (moments, step, routing statistics) is kept whole.
        std::mem::swap(&mut trained.model.params, &mut trainer.model.params);
        *trainer = trained;
        Ok(summary)
    }
}

/// The tokens `eval` measures: a prepared dataset's validation split, or all of a text.
fn eval_stream(
    data: &TextData,
    field: &str,
    tokenizer: Option<&Tokenizer>,
) -> truthgpt_train::Result<TokenStream> {
    let tokenizer = tokenizer.ok_or(TrainError::NoTokenizer { path: PathBuf::from("<model>") });
    match data {
        TextData::Path(path) if shards::is_complete_dataset_dir(path)? => Ok(TokenDataset::open(path)?.val),
        TextData::Path(path) => Ok(TokenStream::from_tokens(source::tokenize(path, field, tokenizer?)?)),
        TextData::Texts(texts) => {
            let tokenizer = tokenizer?;
            let mut tokens = Vec::new();
            for text in texts {
                tokens.extend(tokenizer.encode(text)?);
                tokens.extend(tokenizer.eos_id());
            }
            Ok(TokenStream::from_tokens(tokens))
        }
    }
}

fn no_tokenizer(what: &str) -> PyErr {
    TruthGPTError::new_err(format!(
        "this model has no tokenizer, so it cannot {what}: train it on text first, or load a model \
         directory that has one"
    ))
}

/// (B, T) of a (T) or (B, T) array of ids.
fn batch_shape(ids: &PyReadonlyArrayDyn<u32>, name: &str) -> PyResult<(usize, usize)> {
    match *ids.shape() {
        [t] if t > 0 => Ok((1, t)),
        [b, t] if b > 0 && t > 0 => Ok((b, t)),
        ref shape => Err(PyValueError::new_err(format!(
            "{name}: expected a non-empty (T) or (B, T) array, got {shape:?}"
        ))),
    }
}

/// (A, B, T) of a (B, T) or (A, B, T) array of micro-batches.
fn micro_batch_shape(tokens: &PyReadonlyArrayDyn<u32>) -> PyResult<(usize, usize, usize)> {
    match *tokens.shape() {
        [b, t] if b > 0 && t > 0 => Ok((1, b, t)),
        [a, b, t] if a > 0 && b > 0 && t > 0 => Ok((a, b, t)),
        ref shape => Err(PyValueError::new_err(format!(
            "tokens: expected a non-empty (B, T) or (A, B, T) array, got {shape:?}"
        ))),
    }
}

/// Progress and Ctrl-C for `run::run`, which calls it between steps with the GIL released.
struct PyObserver<'a> {
    progress: Option<PyObject>,
    stop: &'a AtomicBool,
    /// What `progress` raised (other than `KeyboardInterrupt`), raised once the run has saved.
    error: Option<PyErr>,
}

impl Observer for PyObserver<'_> {
    fn step(&mut self, record: &StepRecord) {
        Python::with_gil(|py| {
            let interrupted = py.check_signals().err();
            let raised = match &self.progress {
                Some(progress) => progress.call1(py, (record.step, record.loss)).err(),
                None => None,
            };
            for error in interrupted.into_iter().chain(raised) {
                self.stop.store(true, Ordering::Relaxed);
                if !error.is_instance_of::<pyo3::exceptions::PyKeyboardInterrupt>(py) && self.error.is_none()
                {
                    self.error = Some(error);
                }
            }
        });
    }
}
