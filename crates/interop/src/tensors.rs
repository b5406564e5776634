//! Safetensors checkpoints as Hugging Face writes them: one `model.safetensors`, or shards named by
//! `model.safetensors.index.json`. Files are memory-mapped and each tensor is converted to f32
//! (from f32, f16 or bf16) straight into its destination.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
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

/// Every tensor of a checkpoint, by name.
pub struct TensorFiles {
    shards: Vec<Shard>,
    shard_of: BTreeMap<String, usize>,
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
        let shard = map(&single)?;
        let names = header(&shard)?.names().into_iter().map(str::to_string).collect::<Vec<_>>();
        Ok(TensorFiles { shard_of: names.into_iter().map(|n| (n, 0)).collect(), shards: vec![shard] })
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
        let (mut shards, mut shard_number, mut shard_of) = (Vec::new(), BTreeMap::new(), BTreeMap::new());
        for (name, file) in weight_map {
            let file = file.as_str().ok_or_else(|| invalid(format!("`{name}` maps to a non-string")))?;
            if file.contains('/') || file.contains('\\') || file.starts_with('.') {
                return Err(invalid(format!("shard name `{file}` is not a file in the model directory")));
            }
            let number = match shard_number.get(file) {
                Some(&number) => number,
                None => {
                    let path = dir.join(file);
                    if !path.is_file() {
                        return Err(InteropError::Missing {
                            path,
                            what: format!("a shard that {INDEX} names (for `{name}`)"),
                        });
                    }
                    shards.push(map(&path)?);
                    shard_number.insert(file.to_string(), shards.len() - 1);
                    shards.len() - 1
                }
            };
            shard_of.insert(name.clone(), number);
        }
        for (number, shard) in shards.iter().enumerate() {
            let present: BTreeSet<String> = header(shard)?.names().into_iter().map(str::to_string).collect();
            if let Some((name, _)) = shard_of.iter().find(|(n, &s)| s == number && !present.contains(*n)) {
                return Err(invalid(format!(
                    "`{name}` is mapped to {}, which lacks it",
                    shard.path.display()
                )));
            }
        }
        Ok(TensorFiles { shards, shard_of })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.shard_of.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.shard_of.keys().map(String::as_str)
    }

    fn shard(&self, name: &str) -> Result<&Shard> {
        let number = *self.shard_of.get(name).ok_or_else(|| InteropError::Tensor {
            path: self.shards.first().map(|s| s.path.clone()).unwrap_or_default(),
            name: name.into(),
            problem: "missing".into(),
        })?;
        Ok(&self.shards[number])
    }

    /// Reads tensor `name`, which must have `shape`, into `out` as f32.
    pub fn read_into(&self, name: &str, shape: &[usize], out: &mut [f32]) -> Result<()> {
        let shard = self.shard(name)?;
        let tensors = header(shard)?;
        let problem =
            |problem: String| InteropError::Tensor { path: shard.path.clone(), name: name.into(), problem };
        let view = tensors.tensor(name).map_err(|e| problem(e.to_string()))?;
        if view.shape() != shape {
            return Err(problem(format!("shape {:?}, but config.json implies {shape:?}", view.shape())));
        }
        debug_assert_eq!(out.len(), shape.iter().product::<usize>());
        let bytes = view.data();
        // Tensors are converted in parallel, in runs of 64K elements.
        const RUN: usize = 1 << 16;
        match view.dtype() {
            // Little-endian f32 is our layout already: a parallel byte copy.
            Dtype::F32 if cfg!(target_endian = "little") => {
                let out: &mut [u8] = bytemuck::cast_slice_mut(out);
                out.par_chunks_mut(RUN * 4)
                    .zip(bytes.par_chunks(RUN * 4))
                    .for_each(|(o, b)| o.copy_from_slice(b));
            }
            Dtype::F32 => convert(out, bytes, 4, RUN, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            Dtype::F16 => convert(out, bytes, 2, RUN, |b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
            Dtype::BF16 => convert(out, bytes, 2, RUN, |b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()),
            other => return Err(problem(format!("dtype {other:?}; f32, f16 and bf16 are supported"))),
        }
        Ok(())
    }

    /// The shape of tensor `name`.
    pub fn shape(&self, name: &str) -> Result<Vec<usize>> {
        let shard = self.shard(name)?;
        let view = header(shard)?.tensor(name).map_err(|e| InteropError::Tensor {
            path: shard.path.clone(),
            name: name.into(),
            problem: e.to_string(),
        })?;
        Ok(view.shape().to_vec())
    }
}

fn convert(out: &mut [f32], bytes: &[u8], width: usize, run: usize, read: impl Fn(&[u8]) -> f32 + Sync) {
    out.par_chunks_mut(run).zip(bytes.par_chunks(run * width)).for_each(|(out, bytes)| {
        for (o, b) in out.iter_mut().zip(bytes.chunks_exact(width)) {
            *o = read(b);
        }
    });
}

fn map(path: &Path) -> Result<Shard> {
    let file = fs::File::open(path).map_err(|source| InteropError::Io { path: path.into(), source })?;
    // SAFETY: the map is read-only; a file changed underneath while loading is the same hazard
    // every mmap-based loader (HF's included) accepts. Populating maps the file's cached pages in
    // one call instead of one page fault per 4 KiB as the tensors are read.
    let map = unsafe { memmap2::MmapOptions::new().populate().map(&file) }
        .map_err(|source| InteropError::Io { path: path.into(), source })?;
    Ok(Shard { path: path.to_path_buf(), map })
}

/// The parsed header of a shard; safetensors checks that offsets tile the file exactly.
fn header(shard: &Shard) -> Result<SafeTensors<'_>> {
    SafeTensors::deserialize(&shard.map).map_err(|e| InteropError::Invalid {
        path: shard.path.clone(),
        problem: format!("not a valid safetensors file: {e}"),
    })
}
