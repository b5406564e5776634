//! Saved models and checkpoints, written so that a crash at any instant leaves the last complete
//! checkpoint loadable, and read so that corruption is an error that names the file.
//!
//! ```text
//! RUN_DIR/
//!   latest                      "checkpoints/step-00000200", replaced atomically
//!   metrics.jsonl
//!   checkpoints/step-00000200/  one checkpoint = a model directory + optimiser state
//!     config.json  tokenizer.json  model.safetensors     what `generate` and `eval` need
//!                                                       (an imported model may lack the tokenizer)
//!                  (or adapter.safetensors)             a LoRA run's adapters alone: the base is
//!                                                       loaded from `train.base`
//!     optimizer.safetensors  trainer.json               what `--resume` needs
//!     manifest.json                                     size and SHA-256 of every file
//! ```
//!
//! A checkpoint is built in a hidden temporary directory, every file fsynced, then renamed into
//! place; only then does `latest` move to it. A kill before the rename leaves a stray temporary
//! directory (removed by the next save) and the previous checkpoint still `latest`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use safetensors::{tensor::TensorView, Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use truthgpt_config::Config;
use truthgpt_data::{fsio, Tokenizer};
use truthgpt_interop::gguf;
use truthgpt_interop::gguf::import::{GgufModel, Weights};
use truthgpt_interop::hf::{self, HfModel};
use truthgpt_model::{io::f32_values, Model, Trainer};

use crate::adapter::{self, ADAPTER};
use crate::error::{IoContext, ModelContext, Result, TrainError};

pub const MANIFEST: &str = "manifest.json";
const TOKENIZER: &str = "tokenizer.json";
/// A Hugging Face `tokenizer_config.json`, kept by `import hf` for its chat template and special
/// tokens (the server renders chats with it).
pub const TOKENIZER_CONFIG: &str = "tokenizer_config.json";
pub const LATEST: &str = "latest";
const CHECKPOINTS: &str = "checkpoints";
const FORMAT: u32 = 1;

/// Where a run is in its data and schedule; the whole of the random state, because batches and
/// dropout masks are functions of (seed, step).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    pub step: u64,
    pub tokens_seen: u64,
    pub seed: u64,
    /// Wall-clock seconds of training so far, across resumes.
    pub elapsed_secs: f64,
}

impl TrainerState {
    /// The state of a run before its first step.
    pub fn start(seed: u64) -> Self {
        TrainerState { step: 0, tokens_seen: 0, seed, elapsed_secs: 0.0 }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    format: u32,
    files: BTreeMap<String, FileEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
struct FileEntry {
    bytes: u64,
    sha256: String,
}

/// A model ready to run: its config, weights and tokenizer.
#[derive(Debug)]
pub struct SavedModel {
    pub dir: PathBuf,
    pub config: Config,
    pub model: Model,
    /// Our runs always save one; a Hugging Face directory may not have one.
    pub tokenizer: Option<Tokenizer>,
}

impl SavedModel {
    /// The tokenizer, for commands that take or give text.
    pub fn tokenizer(&self) -> Result<&Tokenizer> {
        self.tokenizer.as_ref().ok_or_else(|| TrainError::NoTokenizer { path: self.dir.clone() })
    }
}

/// A checkpoint to resume from: the model plus optimiser and trainer state.
#[derive(Debug)]
pub struct Checkpoint {
    pub saved: SavedModel,
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    pub state: TrainerState,
}

impl Checkpoint {
    /// A trainer in exactly the state that was saved.
    pub fn into_trainer(self) -> (Trainer, Tokenizer, TrainerState) {
        let Checkpoint { saved, m, v, state } = self;
        let mut trainer = Trainer::new(saved.model, saved.config.train.clone());
        (trainer.m, trainer.v, trainer.step) = (m, v, state.step);
        let tokenizer = saved.tokenizer.expect("load_checkpoint refuses a checkpoint without a tokenizer");
        (trainer, tokenizer, state)
    }
}

/// The model directory `path` names: itself if it has a manifest, else the checkpoint its
/// `latest` file points to (a run directory).
pub fn resolve(path: &Path) -> Result<PathBuf> {
    if path.join(MANIFEST).is_file() {
        return Ok(path.to_path_buf());
    }
    let latest = path.join(LATEST);
    if latest.is_file() {
        let target = fs::read_to_string(&latest).at(&latest)?;
        let dir = path.join(target.trim());
        if !dir.join(MANIFEST).is_file() {
            return Err(TrainError::Corrupt {
                path: latest,
                problem: format!("points to {}, which has no {MANIFEST}", dir.display()),
            });
        }
        return Ok(dir);
    }
    if !path.exists() {
        return Err(TrainError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
        });
    }
    Err(TrainError::NoModel { path: path.to_path_buf() })
}

/// Loads the model a model or run directory holds, checking every file against the manifest, the
/// model of a Hugging Face directory, or a GGUF file's (its matrices kept in their quantized
/// blocks: for inference).
pub fn load_model(path: &Path) -> Result<SavedModel> {
    load_model_as(path, Weights::Quantized)
}

/// [`load_model`] with every weight in f32, a GGUF file's dequantized: for training and export.
pub fn load_model_f32(path: &Path) -> Result<SavedModel> {
    load_model_as(path, Weights::Dequantized)
}

/// The model a fine-tune starts from, `train.base`: in f32, except that LoRA keeps a GGUF base in
/// its quantized blocks (QLoRA). A base that is itself a LoRA run is merged into a plain model.
pub fn load_base(train: &truthgpt_config::TrainConfig) -> Result<SavedModel> {
    let path = train.base.as_deref().ok_or_else(|| TrainError::FineTune("train.base is not set".into()))?;
    let weights = if train.lora.is_some() { Weights::Quantized } else { Weights::Dequantized };
    let mut base = load_model_as(path, weights)?;
    if base.model.has_lora() {
        base.model = base.model.into_merged().during("merging the base's own adapters")?;
        base.config.train.base = None;
        base.config.train.lora = None;
    }
    Ok(base)
}

fn load_model_as(path: &Path, weights: Weights) -> Result<SavedModel> {
    if gguf::read::is_gguf_file(path) {
        let GgufModel { model, tokenizer, .. } = gguf::import::load_with(path, weights)?;
        let config = hf::config::settings_for(&model.config);
        // Logits need no tokenizer; text commands report its absence when they need it.
        return Ok(SavedModel { dir: path.to_path_buf(), config, model, tokenizer: tokenizer.ok() });
    }
    let ours = path.join(MANIFEST).is_file() || path.join(LATEST).is_file();
    if !ours && hf::is_model_dir(path) {
        let HfModel { model, tokenizer, .. } = hf::load(path)?;
        let config = hf::config::settings_for(&model.config);
        return Ok(SavedModel { dir: path.to_path_buf(), config, model, tokenizer });
    }
    let dir = resolve(path)?;
    let files = verified_files(&dir)?;
    saved_model(dir, &files)
}

fn saved_model(dir: PathBuf, files: &VerifiedFiles) -> Result<SavedModel> {
    let config_path = dir.join("config.json");
    let config: Config = serde_json::from_slice(files.read("config.json")?)
        .map_err(|e| corrupt(&config_path, format!("not a valid config: {e}")))?;
    config.validate().map_err(|source| TrainError::Config { path: config_path.clone(), source })?;
    let tokenizer = match files.maps.contains_key(TOKENIZER) {
        true => {
            let tokenizer_path = dir.join(TOKENIZER);
            let tokenizer_json = std::str::from_utf8(files.read(TOKENIZER)?)
                .map_err(|_| corrupt(&tokenizer_path, "not UTF-8".into()))?;
            let tokenizer = Tokenizer::from_json(tokenizer_json)?;
            tokenizer.check_fits(config.model.vocab_size)?;
            Some(tokenizer)
        }
        false => None,
    };
    let model = match (&config.train.lora, files.maps.contains_key(ADAPTER)) {
        (Some(lora), true) => {
            let base = load_base(&config.train)?;
            if base.config.model != config.model {
                return Err(corrupt(&config_path, "the architecture of train.base changed since".into()));
            }
            let mut model = base.model;
            adapter::attach(&mut model, lora, config.train.seed)?;
            adapter::load(&mut model, files.read(ADAPTER)?, &dir.join(ADAPTER))?;
            model
        }
        (None, false) => {
            let weights_path = dir.join("model.safetensors");
            let tensors = SafeTensors::deserialize(files.read("model.safetensors")?)
                .map_err(|e| corrupt(&weights_path, e.to_string()))?;
            let mut model = Model::zeroed(&config.model);
            model.load_safetensors(&tensors).map_err(|e| corrupt(&weights_path, e.to_string()))?;
            model
        }
        _ => return Err(corrupt(&config_path, format!("train.lora and {ADAPTER} go together"))),
    };
    Ok(SavedModel { dir, config, model, tokenizer })
}

/// Loads a checkpoint with its optimiser and trainer state (for `--resume`).
pub fn load_checkpoint(path: &Path) -> Result<Checkpoint> {
    let dir = resolve(path)?;
    let files = verified_files(&dir)?;
    let saved = saved_model(dir, &files)?;
    saved.tokenizer()?;
    let state_path = saved.dir.join("trainer.json");
    let state: TrainerState = serde_json::from_slice(files.read("trainer.json")?)
        .map_err(|e| corrupt(&state_path, format!("not a trainer state: {e}")))?;
    let optimizer_path = saved.dir.join("optimizer.safetensors");
    let tensors = SafeTensors::deserialize(files.read("optimizer.safetensors")?)
        .map_err(|e| corrupt(&optimizer_path, e.to_string()))?;
    let n = saved.model.grads.trainable().len();
    let moment = |name: &str| {
        let view = tensors.tensor(name).map_err(|e| corrupt(&optimizer_path, format!("{name}: {e}")))?;
        f32_values(name, &view, &[n]).map_err(|e| corrupt(&optimizer_path, e.to_string()))
    };
    let (m, v) = (moment("m")?, moment("v")?);
    Ok(Checkpoint { saved, m, v, state })
}

/// Saves a new model directory (what `generate`, `eval` and `serve` load) at `dir`, atomically;
/// an existing `dir` is an error, never overwritten.
pub fn save_model(dir: &Path, config: &Config, model: &Model, tokenizer: Option<&Tokenizer>) -> Result<()> {
    save_model_with(dir, config, model, tokenizer, None)
}

/// [`save_model`], also keeping a Hugging Face `tokenizer_config.json` (its bytes, as read) under
/// the manifest's checksums.
pub fn save_model_with(
    dir: &Path,
    config: &Config,
    model: &Model,
    tokenizer: Option<&Tokenizer>,
    tokenizer_config: Option<Vec<u8>>,
) -> Result<()> {
    let mut files = model_files(config, model, tokenizer)?;
    files.extend(tokenizer_config.map(|bytes| (TOKENIZER_CONFIG, bytes)));
    write_dir_atomically(dir, files, fsio::Existing::Refuse)
}

/// Writes checkpoint `step` into `run_dir`, points `latest` at it and keeps the newest `keep`.
/// A complete checkpoint of the same step is kept as it is: training is deterministic, so it holds
/// this very state (a run resumed and stopped again before its next step), and replacing a
/// directory is two renames, which a crash could split.
pub fn save_checkpoint(
    run_dir: &Path,
    config: &Config,
    trainer: &Trainer,
    tokenizer: &Tokenizer,
    state: &TrainerState,
    keep: usize,
) -> Result<PathBuf> {
    let checkpoints = run_dir.join(CHECKPOINTS);
    let name = format!("step-{:08}", state.step);
    let dir = checkpoints.join(&name);
    if !dir.join(MANIFEST).is_file() {
        let files = checkpoint_files(config, trainer, tokenizer, state)?;
        write_dir_atomically(&dir, files, fsio::Existing::Replace)?;
    }
    let latest = run_dir.join(LATEST);
    fsio::write_atomic(&latest, format!("{CHECKPOINTS}/{name}\n").as_bytes()).at(&latest)?;
    prune(&checkpoints, &name, keep)?;
    Ok(dir)
}

fn checkpoint_files(
    config: &Config,
    trainer: &Trainer,
    tokenizer: &Tokenizer,
    state: &TrainerState,
) -> Result<Vec<(&'static str, Vec<u8>)>> {
    let mut files = model_files(config, &trainer.model, Some(tokenizer))?;
    fn moment(values: &[f32]) -> Result<TensorView<'_>, safetensors::SafeTensorError> {
        TensorView::new(Dtype::F32, vec![values.len()], bytemuck::cast_slice(values))
    }
    let optimizer =
        (|| safetensors::serialize([("m", moment(&trainer.m)?), ("v", moment(&trainer.v)?)], None))()
            .map_err(|e| TrainError::Model {
                context: "serialising optimizer state".into(),
                source: e.into(),
            })?;
    files.push(("optimizer.safetensors", optimizer));
    files.push(("trainer.json", serde_json::to_vec_pretty(state).expect("state serialises")));
    Ok(files)
}

fn model_files(
    config: &Config,
    model: &Model,
    tokenizer: Option<&Tokenizer>,
) -> Result<Vec<(&'static str, Vec<u8>)>> {
    if model.has_lora() != config.train.lora.is_some() {
        return Err(TrainError::FineTune(
            "a model with LoRA adapters is saved with train.lora and train.base in its config, and only then"
                .into(),
        ));
    }
    let weights = match model.has_lora() {
        true => (ADAPTER, adapter::to_bytes(model)?),
        false => ("model.safetensors", model.to_safetensors().during("serialising weights")?),
    };
    let mut files =
        vec![("config.json", serde_json::to_vec_pretty(config).expect("config serialises")), weights];
    if let Some(tokenizer) = tokenizer {
        files.push((TOKENIZER, tokenizer.to_json().into_bytes()));
    }
    Ok(files)
}

/// Writes the model directory `dir` with a manifest of its files' sizes and SHA-256, atomically.
fn write_dir_atomically(
    dir: &Path,
    mut files: Vec<(&'static str, Vec<u8>)>,
    existing: fsio::Existing,
) -> Result<()> {
    let mut manifest = Manifest { format: FORMAT, files: BTreeMap::new() };
    for (file, bytes) in &files {
        manifest.files.insert(
            file.to_string(),
            FileEntry { bytes: bytes.len() as u64, sha256: fsio::sha256_hex(bytes) },
        );
    }
    files.push((MANIFEST, serde_json::to_vec_pretty(&manifest).expect("manifest serialises")));
    fsio::write_dir_atomic(dir, &files, existing)
        .map_err(|fsio::PathError { path, source }| TrainError::Io { path, source })
}

/// Deletes all but the newest `keep` checkpoints (never `current`) and stray temporary
/// directories of interrupted saves.
fn prune(checkpoints: &Path, current: &str, keep: usize) -> Result<()> {
    let mut steps = Vec::new();
    for entry in fs::read_dir(checkpoints).at(checkpoints)? {
        let entry = entry.at(checkpoints)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && name.contains(".tmp-") {
            fs::remove_dir_all(entry.path()).at(&entry.path())?;
        } else if name.starts_with("step-") {
            steps.push(name);
        }
    }
    steps.sort();
    let excess = steps.len().saturating_sub(keep.max(1));
    for name in steps.into_iter().take(excess).filter(|name| name != current) {
        let path = checkpoints.join(name);
        fs::remove_dir_all(&path).at(&path)?;
    }
    Ok(())
}

/// The files of a model directory, memory-mapped and checked against its manifest.
struct VerifiedFiles {
    dir: PathBuf,
    maps: BTreeMap<String, memmap2::Mmap>,
}

impl VerifiedFiles {
    fn read(&self, name: &str) -> Result<&[u8]> {
        self.maps
            .get(name)
            .map(|m| &m[..])
            .ok_or_else(|| corrupt(&self.dir.join(MANIFEST), format!("does not list {name}")))
    }
}

fn verified_files(dir: &Path) -> Result<VerifiedFiles> {
    let manifest_path = dir.join(MANIFEST);
    let text = fs::read(&manifest_path).at(&manifest_path)?;
    let manifest: Manifest =
        serde_json::from_slice(&text).map_err(|e| corrupt(&manifest_path, format!("not a manifest: {e}")))?;
    if manifest.format != FORMAT {
        return Err(corrupt(
            &manifest_path,
            format!("format {} (this build reads {FORMAT})", manifest.format),
        ));
    }
    let mut maps = BTreeMap::new();
    for (name, entry) in manifest.files {
        let path = dir.join(&name);
        let file = fs::File::open(&path).at(&path)?;
        let found = file.metadata().at(&path)?.len();
        if found != entry.bytes {
            return Err(corrupt(
                &path,
                format!("{found} bytes, the manifest says {} (truncated or overwritten)", entry.bytes),
            ));
        }
        // SAFETY: checkpoints are never modified in place (only replaced by rename), so the
        // mapping is not changed under us by this program.
        let map = unsafe { memmap2::Mmap::map(&file) }.at(&path)?;
        if fsio::sha256_hex(&map) != entry.sha256 {
            return Err(corrupt(&path, "SHA-256 does not match the manifest (corrupted)".into()));
        }
        maps.insert(name, map);
    }
    Ok(VerifiedFiles { dir: dir.to_path_buf(), maps })
}

fn corrupt(path: &Path, problem: String) -> TrainError {
    TrainError::Corrupt { path: path.to_path_buf(), problem }
}
