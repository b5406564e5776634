//! Safetensors checkpoints as Hugging Face writes them: one `model.safetensors`, or shards named by
//! `model.safetensors.index.json`. Files are memory-mapped, each header is parsed and checked once
//! when opened, and each tensor is converted to f32 (from f32, f16 or bf16) straight into its
//! destination.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::ops::Range;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use rayon::prelude::*;
use safetensors::{Dtype, SafeTensors};

use crate::error::{InteropError, Result};

pub const SINGLE: &str = "model.safetensors";
pub const INDEX: &str = "model.safetensors.index.json";

struct Shard {
    path: PathBuf,
    map: Mmap,
}

/// Where one tensor's bytes are.
struct Entry {
    shard: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Range<usize>,
}

/// Every tensor of a checkpoint, by name.
pub struct TensorFiles {
    /// The index, or the single file: what errors about the checkpoint as a whole name.
    source: PathBuf,
    shards: Vec<Shard>,
    tensors: BTreeMap<String, Entry>,
}

impl TensorFiles {
    /// Opens the checkpoint in `dir`; every shard's header is checked here, so a truncated or
    /// damaged file, or an index that names a missing shard or tensor, fails before any read.
    pub fn open(dir: &Path) -> Result<Self> {
        let index = dir.join(INDEX);
        if index.is_file() {
            return Self::open_sharded(dir, &index);
        }
        let single = dir.join(SINGLE);
        if !single.is_file() {
            return Err(InteropError::Missing {
                path: single,
                what: format!("the weights ({SINGLE}, or {INDEX} and its shards)"),
            });
        }
        let mut files = TensorFiles { source: single.clone(), shards: Vec::new(), tensors: BTreeMap::new() };
        files.add_shard(&single, None)?;
        Ok(files)
    }

    fn open_sharded(dir: &Path, index: &Path) -> Result<Self> {
        let invalid = |problem: String| InteropError::Invalid { path: index.to_path_buf(), problem };
        let text =
            fs::read_to_string(index).map_err(|source| InteropError::Io { path: index.into(), source })?;
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        let weight_map = json
            .get("weight_map")
            .and_then(|w| w.as_object())
            .ok_or_else(|| invalid("no `weight_map` object".into()))?;
        let mut by_file: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (name, file) in weight_map {
            let file = file.as_str().ok_or_else(|| invalid(format!("`{name}` maps to a non-string")))?;
            if file.contains('/') || file.contains('\\') || file.starts_with('.') {
                return Err(invalid(format!("shard name `{file}` is not a file in the model directory")));
            }
            by_file.entry(file).or_default().push(name);
        }
        let mut files =
            TensorFiles { source: index.to_path_buf(), shards: Vec::new(), tensors: BTreeMap::new() };
        for (file, names) in by_file {
            let path = dir.join(file);
            if !path.is_file() {
                return Err(InteropError::Missing {
                    path,
                    what: format!("a shard that {INDEX} names (for `{}`)", names[0]),
                });
            }
            files.add_shard(&path, Some(&names))?;
        }
        Ok(files)
    }

    /// Maps the file at `path` and records its tensors: all of them, or those the index assigns
    /// it (which it must hold).
    fn add_shard(&mut self, path: &Path, assigned: Option<&[&str]>) -> Result<()> {
        let map = map(path)?;
        let number = self.shards.len();
        let tensors = SafeTensors::deserialize(&map).map_err(|e| InteropError::Invalid {
            path: path.into(),
            problem: format!("not a valid safetensors file: {e}"),
        })?;
        let names: Vec<String> = match assigned {
            Some(names) => names.iter().map(|n| n.to_string()).collect(),
            None => tensors.names().into_iter().map(str::to_string).collect(),
        };
        for name in names {
            let view = tensors.tensor(&name).map_err(|_| InteropError::Invalid {
                path: self.source.clone(),
                problem: format!("`{name}` is mapped to {}, which lacks it", path.display()),
            })?;
            let start = view.data().as_ptr() as usize - map.as_ptr() as usize;
            let entry = Entry {
                shard: number,
                dtype: view.dtype(),
                shape: view.shape().to_vec(),
                bytes: start..start + view.data().len(),
            };
            self.tensors.insert(name, entry);
        }
        self.shards.push(Shard { path: path.to_path_buf(), map });
        Ok(())
    }

    /// One safetensors file, e.g. a PEFT adapter's, with its header's metadata.
    pub fn file(path: &Path) -> Result<(Self, HashMap<String, String>)> {
        if !path.is_file() {
            return Err(InteropError::Missing { path: path.into(), what: "a safetensors file".into() });
        }
        let mut files = TensorFiles { source: path.into(), shards: Vec::new(), tensors: BTreeMap::new() };
        files.add_shard(path, None)?;
        let (_, header) = SafeTensors::read_metadata(&files.shards[0].map[..])
            .map_err(|e| InteropError::Invalid { path: path.into(), problem: format!("header: {e}") })?;
        Ok((files, header.metadata().clone().unwrap_or_default()))
    }

    /// The index or single file, for errors about the checkpoint as a whole.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// Tensor `name`'s shape, if the checkpoint has it.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(|e| &e.shape[..])
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    fn entry(&self, name: &str) -> Result<&Entry> {
        self.tensors.get(name).ok_or_else(|| InteropError::Tensor {
            path: self.source.clone(),
            name: name.into(),
            problem: "missing".into(),
        })
    }

    /// Checks that tensor `name` has `shape` and a dtype we read.
    pub fn check(&self, name: &str, shape: &[usize]) -> Result<()> {
        let entry = self.entry(name)?;
        let problem = |problem: String| InteropError::Tensor {
            path: self.shards[entry.shard].path.clone(),
            name: name.into(),
            problem,
        };
        if entry.shape != shape {
            return Err(problem(format!("shape {:?}, but config.json implies {shape:?}", entry.shape)));
        }
        match entry.dtype {
            Dtype::F32 | Dtype::F16 | Dtype::BF16 => Ok(()),
            other => Err(problem(format!("dtype {other:?}; f32, f16 and bf16 are supported"))),
        }
    }

    /// Reads tensor `name`, which must have `shape`, into `out` as f32. A tensor holding NaN or
    /// infinity is refused: such weights load silently otherwise and decode to nothing.
    pub fn read_into(&self, name: &str, shape: &[usize], out: &mut [f32]) -> Result<()> {
        self.check(name, shape)?;
        let entry = self.entry(name)?;
        let bytes = &self.shards[entry.shard].map[entry.bytes.clone()];
        debug_assert_eq!(out.len(), shape.iter().product::<usize>());
        // Tensors are converted in parallel, in runs of 64K elements.
        const RUN: usize = 1 << 16;
        match entry.dtype {
            // Little-endian f32 is our layout already: a parallel byte copy.
            Dtype::F32 if cfg!(target_endian = "little") => {
                let out: &mut [u8] = bytemuck::cast_slice_mut(out);
                out.par_chunks_mut(RUN * 4)
                    .zip(bytes.par_chunks(RUN * 4))
                    .for_each(|(o, b)| o.copy_from_slice(b));
            }
            Dtype::F32 => convert(out, bytes, 4, RUN, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            Dtype::F16 => convert(out, bytes, 2, RUN, |b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
            _ => convert(out, bytes, 2, RUN, |b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        }
        // While the values are still in cache from the conversion.
        let non_finite: usize =
            out.par_chunks(RUN).map(|run| run.iter().filter(|x| !x.is_finite()).count()).sum();
        if non_finite > 0 {
            return Err(InteropError::Tensor {
                path: self.shards[entry.shard].path.clone(),
                name: name.into(),
                problem: format!(
                    "{non_finite} of {} values are NaN or infinite (a damaged file, or weights saved from a diverged run)",
                    out.len()
                ),
            });
        }
        Ok(())
    }
}

fn convert(out: &mut [f32], bytes: &[u8], width: usize, run: usize, read: impl Fn(&[u8]) -> f32 + Sync) {
    out.par_chunks_mut(run).zip(bytes.par_chunks(run * width)).for_each(|(out, bytes)| {
        for (o, b) in out.iter_mut().zip(bytes.chunks_exact(width)) {
            *o = read(b);
        }
    });
}

fn map(path: &Path) -> Result<Mmap> {
    let file = fs::File::open(path).map_err(|source| InteropError::Io { path: path.into(), source })?;
    // SAFETY: the map is read-only; a file changed underneath while loading is the same hazard
    // every mmap-based loader (HF's included) accepts. Populating maps the file's cached pages in
    // one call instead of one page fault per 4 KiB as the tensors are read.
    unsafe { memmap2::MmapOptions::new().populate().map(&file) }
        .map_err(|source| InteropError::Io { path: path.into(), source })
}

/// A safetensors file of f32 tensors `(name, shape, values)`, with `metadata` besides the
/// `format: pt` entry that transformers refuses files without.
pub fn serialize_f32<'a>(
    tensors: impl IntoIterator<Item = (&'a str, &'a [usize], &'a [f32])>,
    metadata: &[(&str, String)],
) -> Result<Vec<u8>> {
    let views = tensors
        .into_iter()
        .map(|(name, shape, values)| {
            Ok((
                name,
                safetensors::tensor::TensorView::new(
                    Dtype::F32,
                    shape.to_vec(),
                    bytemuck::cast_slice(values),
                )?,
            ))
        })
        .collect::<std::result::Result<Vec<_>, safetensors::SafeTensorError>>()
        .map_err(truthgpt_model::ModelError::from)?;
    let metadata = [("format", "pt".to_string())].into_iter().chain(metadata.iter().cloned());
    let metadata = metadata.map(|(k, v)| (k.to_string(), v)).collect();
    Ok(safetensors::serialize(views, Some(metadata)).map_err(truthgpt_model::ModelError::from)?)
}
