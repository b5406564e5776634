//! Token datasets. `truthgpt data prepare` tokenizes a corpus once into raw little-endian shards
//! (u16 when the vocabulary fits, else u32) plus a manifest, `data.json`, with each shard's size
//! and SHA-256; training memory-maps them, so a corpus larger than RAM streams from the page cache.
//!
//! Train/validation split: the token stream is cut into blocks, and each block goes to validation
//! with probability `val_fraction`, decided by a hash of (seed, block index). It is deterministic,
//! needs one pass, and spreads validation over the whole corpus instead of taking its tail.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{corpus, fsio, DataError, Tokenizer};

pub const MANIFEST: &str = "data.json";
const FORMAT: u32 = 1;

/// How `prepare` splits and shards.
#[derive(Debug, Clone)]
pub struct PrepareOptions {
    pub jsonl_field: String,
    pub val_fraction: f64,
    pub seed: u64,
    /// Tokens per shard file.
    pub shard_tokens: usize,
    /// Tokens per split block.
    pub block_tokens: usize,
}

impl Default for PrepareOptions {
    fn default() -> Self {
        PrepareOptions {
            jsonl_field: "text".into(),
            val_fraction: 0.05,
            seed: 1337,
            shard_tokens: 64 << 20,
            block_tokens: 4096,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatasetInfo {
    pub format: u32,
    pub dtype: String,
    pub vocab_size: usize,
    pub tokenizer_sha256: String,
    pub eos_id: Option<u32>,
    pub documents: usize,
    pub train: Vec<ShardEntry>,
    pub val: Vec<ShardEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardEntry {
    pub file: String,
    pub tokens: u64,
    pub sha256: String,
}

/// One split's tokens, in memory or memory-mapped shards.
#[derive(Debug)]
pub struct TokenStream {
    storage: Storage,
    len: u64,
}

#[derive(Debug)]
enum Storage {
    Memory(Vec<u32>),
    /// (map, bytes per token, first token index) per shard.
    Shards(Vec<(memmap2::Mmap, usize, u64)>),
}

impl TokenStream {
    pub fn from_tokens(tokens: Vec<u32>) -> Self {
        TokenStream { len: tokens.len() as u64, storage: Storage::Memory(tokens) }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies tokens `start..start + out.len()`, which must be in range.
    pub fn copy_to(&self, start: u64, out: &mut [u32]) {
        assert!(start + out.len() as u64 <= self.len, "token range past the end of the stream");
        if out.is_empty() {
            return;
        }
        match &self.storage {
            Storage::Memory(tokens) => {
                out.copy_from_slice(&tokens[start as usize..start as usize + out.len()])
            }
            Storage::Shards(shards) => {
                let mut done = 0;
                let first = shards.partition_point(|(_, _, begin)| *begin <= start) - 1;
                for (map, width, begin) in &shards[first..] {
                    if done == out.len() {
                        break;
                    }
                    let offset = (start + done as u64 - begin) as usize;
                    let available = map.len() / width - offset;
                    let n = available.min(out.len() - done);
                    decode(&map[offset * width..(offset + n) * width], *width, &mut out[done..done + n]);
                    done += n;
                }
            }
        }
    }
}

fn decode(bytes: &[u8], width: usize, out: &mut [u32]) {
    match width {
        2 => out
            .iter_mut()
            .zip(bytes.chunks_exact(2))
            .for_each(|(o, b)| *o = u16::from_le_bytes([b[0], b[1]]) as u32),
        _ => out
            .iter_mut()
            .zip(bytes.chunks_exact(4))
            .for_each(|(o, b)| *o = u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
    }
}

/// Train and validation tokens.
#[derive(Debug)]
pub struct TokenDataset {
    pub train: TokenStream,
    pub val: TokenStream,
    pub vocab_size: usize,
    /// SHA-256 of the `tokenizer.json` that made a prepared dataset (None in memory), to check
    /// that a model is trained and run with the same tokenizer.
    pub tokenizer_sha256: Option<String>,
}

pub fn is_dataset_dir(path: &Path) -> bool {
    path.join(MANIFEST).is_file()
}

/// Whether `path` is a prepared dataset (`Ok(true)`) or text (`Ok(false)`). A directory holding
/// shards but no manifest is an error that says so: read as text it would hold no documents.
pub fn is_complete_dataset_dir(path: &Path) -> Result<bool, DataError> {
    if is_dataset_dir(path) {
        return Ok(true);
    }
    if path.join("train-00000.bin").is_file() {
        return Err(DataError::Dataset {
            path: path.join(MANIFEST),
            problem: "missing beside the token shards: an incomplete `truthgpt data prepare` (older builds \
                      wrote in place); prepare it again"
                .into(),
        });
    }
    Ok(false)
}

impl TokenDataset {
    pub fn from_tokens(train: Vec<u32>, val: Vec<u32>, vocab_size: usize) -> Self {
        TokenDataset {
            train: TokenStream::from_tokens(train),
            val: TokenStream::from_tokens(val),
            vocab_size,
            tokenizer_sha256: None,
        }
    }

    /// Splits one token stream into train and validation blocks, as `prepare` does.
    pub fn split_tokens(
        tokens: Vec<u32>,
        vocab_size: usize,
        val_fraction: f64,
        seed: u64,
        block_tokens: usize,
    ) -> Result<Self, DataError> {
        let (mut train, mut val) = (Vec::new(), Vec::new());
        let mut splitter = Splitter::new(val_fraction, seed, block_tokens)?;
        splitter.push(&tokens, &mut |block, to_val| {
            if to_val { &mut val } else { &mut train }.extend_from_slice(block);
            Ok(())
        })?;
        splitter.finish(&mut |block, to_val| {
            if to_val { &mut val } else { &mut train }.extend_from_slice(block);
            Ok(())
        })?;
        Ok(TokenDataset::from_tokens(train, val, vocab_size))
    }

    /// Opens a prepared dataset, checking every shard's size, checksum and token ids.
    pub fn open(dir: &Path) -> Result<Self, DataError> {
        let manifest_path = dir.join(MANIFEST);
        let text = fs::read(&manifest_path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => DataError::Dataset {
                path: manifest_path.clone(),
                problem: "missing: not a directory made by `truthgpt data prepare`".into(),
            },
            _ => DataError::Io { path: manifest_path.clone(), source: e },
        })?;
        let info: DatasetInfo = serde_json::from_slice(&text).map_err(|e| DataError::Dataset {
            path: manifest_path.clone(),
            problem: format!("not a dataset manifest: {e}"),
        })?;
        let width = match (info.format, info.dtype.as_str()) {
            (FORMAT, "u16") => 2,
            (FORMAT, "u32") => 4,
            (format, dtype) => {
                return Err(DataError::Dataset {
                    path: manifest_path,
                    problem: format!(
                        "format {format} with dtype {dtype} (this build reads format {FORMAT}, u16 or u32)"
                    ),
                })
            }
        };
        let open_split = |entries: &[ShardEntry]| -> Result<TokenStream, DataError> {
            let mut shards = Vec::new();
            let mut len = 0;
            for entry in entries {
                // A manifest names files beside it, never paths elsewhere.
                if Path::new(&entry.file).file_name() != Some(std::ffi::OsStr::new(&entry.file)) {
                    return Err(DataError::Dataset {
                        path: manifest_path.clone(),
                        problem: format!("shard {:?} is not a plain file name", entry.file),
                    });
                }
                let path = dir.join(&entry.file);
                let map = open_shard(&path, entry, width, info.vocab_size)?;
                shards.push((map, width, len));
                len += entry.tokens;
            }
            Ok(TokenStream { storage: Storage::Shards(shards), len })
        };
        Ok(TokenDataset {
            train: open_split(&info.train)?,
            val: open_split(&info.val)?,
            vocab_size: info.vocab_size,
            tokenizer_sha256: Some(info.tokenizer_sha256.clone()),
        })
    }
}

fn open_shard(
    path: &Path,
    entry: &ShardEntry,
    width: usize,
    vocab_size: usize,
) -> Result<memmap2::Mmap, DataError> {
    let bad = |problem: String| DataError::Dataset { path: path.to_path_buf(), problem };
    let file = fs::File::open(path).map_err(DataError::io(path))?;
    let found = file.metadata().map_err(DataError::io(path))?.len();
    let expected =
        entry.tokens.checked_mul(width as u64).ok_or_else(|| bad("impossible token count".into()))?;
    if found != expected {
        let what = if found < expected { "truncated" } else { "longer than its manifest entry" };
        return Err(bad(format!("{what}: expected {expected} bytes, found {found}")));
    }
    // SAFETY: shards are written once, by rename, and never modified in place.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(DataError::io(path))?;
    if fsio::sha256_hex(&map) != entry.sha256 {
        return Err(bad("checksum mismatch: the file is corrupted".into()));
    }
    // In chunks: decoding a whole shard at once would hold 4 bytes per token in memory.
    const CHUNK: usize = 1 << 16;
    let mut ids = vec![0u32; CHUNK];
    for (i, bytes) in map.chunks(CHUNK * width).enumerate() {
        let ids = &mut ids[..bytes.len() / width];
        decode(bytes, width, ids);
        if let Some(at) = ids.iter().position(|&id| id as usize >= vocab_size) {
            let position = i * CHUNK + at;
            return Err(bad(format!(
                "token {} at {position} is outside the vocabulary of {vocab_size}",
                ids[at]
            )));
        }
    }
    Ok(map)
}

/// Tokenizes the corpus at `source` into shards under `out`. The dataset is built in a hidden
/// sibling and renamed into place only when complete, so an interrupted or failed prepare (a
/// full disk) leaves no partial dataset, and a dataset already at `out` stays whole until the new
/// one replaces it. Any other non-empty directory at `out` is refused, never replaced.
pub fn prepare(
    source: &Path,
    tokenizer: &Tokenizer,
    out: &Path,
    options: &PrepareOptions,
) -> Result<DatasetInfo, DataError> {
    if options.shard_tokens == 0 {
        return Err(DataError::InvalidOption {
            name: "shard_tokens",
            value: "0".into(),
            requirement: "at least 1",
        });
    }
    let splitter = Splitter::new(options.val_fraction, options.seed, options.block_tokens)?;
    if out.is_dir() && !is_dataset_dir(out) && fs::read_dir(out).map_err(DataError::io(out))?.next().is_some()
    {
        return Err(DataError::Dataset {
            path: out.into(),
            problem: "exists and is not a prepared dataset; choose another output or remove it".into(),
        });
    }
    fsio::build_dir_atomic(out, fsio::Existing::Replace, |dir| {
        write_dataset(source, tokenizer, dir, options, splitter)
    })
}

fn write_dataset(
    source: &Path,
    tokenizer: &Tokenizer,
    out: &Path,
    options: &PrepareOptions,
    mut splitter: Splitter,
) -> Result<DatasetInfo, DataError> {
    let vocab_size = tokenizer.vocab_size();
    let width = if vocab_size <= 1 << 16 { 2 } else { 4 };
    let manifest_path = out.join(MANIFEST);
    let mut writers = [
        ShardWriter::new(out, "train", width, options.shard_tokens),
        ShardWriter::new(out, "val", width, options.shard_tokens),
    ];
    let mut sink = |block: &[u32], to_val: bool| writers[to_val as usize].extend(block);
    let eos = tokenizer.eos_id();
    let stats = corpus::for_each_document(source, &options.jsonl_field, |document| {
        let mut ids = tokenizer.encode(document)?;
        ids.extend(eos);
        splitter.push(&ids, &mut sink)
    })?;
    splitter.finish(&mut sink)?;
    let [train, val] = writers.map(ShardWriter::finish);
    let (train, val) = (train?, val?);
    let tokenizer_json = tokenizer.to_json();
    let info = DatasetInfo {
        format: FORMAT,
        dtype: if width == 2 { "u16" } else { "u32" }.into(),
        vocab_size,
        tokenizer_sha256: fsio::sha256_hex(tokenizer_json.as_bytes()),
        eos_id: eos,
        documents: stats.documents,
        train,
        val,
    };
    let tokenizer_path = out.join("tokenizer.json");
    fsio::write_atomic(&tokenizer_path, tokenizer_json.as_bytes()).map_err(DataError::io(&tokenizer_path))?;
    let manifest = serde_json::to_vec_pretty(&info).expect("manifest serialises");
    fsio::write_atomic(&manifest_path, &manifest).map_err(DataError::io(&manifest_path))?;
    Ok(info)
}

type Sink<'a> = dyn FnMut(&[u32], bool) -> Result<(), DataError> + 'a;

/// Cuts a token stream into blocks and sends each to train or validation. The latest full block
/// is held back: if no block was drawn for validation, it goes there at the end. (Not a trailing
/// partial block, which could be too short to hold one evaluation window.)
struct Splitter {
    val_fraction: f64,
    seed: u64,
    block_tokens: usize,
    block: Vec<u32>,
    index: u64,
    /// The latest full block, not yet sent.
    held: Option<Vec<u32>>,
    tokens: u64,
    any_val: bool,
    any_train: bool,
}

impl Splitter {
    fn new(val_fraction: f64, seed: u64, block_tokens: usize) -> Result<Self, DataError> {
        if !(0.0..1.0).contains(&val_fraction) {
            let value = val_fraction.to_string();
            return Err(DataError::InvalidOption { name: "val_fraction", value, requirement: "in [0, 1)" });
        }
        if block_tokens == 0 {
            return Err(DataError::InvalidOption {
                name: "block_tokens",
                value: "0".into(),
                requirement: "at least 1",
            });
        }
        Ok(Splitter {
            val_fraction,
            seed,
            block_tokens,
            block: Vec::with_capacity(block_tokens),
            index: 0,
            held: None,
            tokens: 0,
            any_val: false,
            any_train: false,
        })
    }

    fn push(&mut self, mut tokens: &[u32], sink: &mut Sink) -> Result<(), DataError> {
        self.tokens += tokens.len() as u64;
        while !tokens.is_empty() {
            let n = (self.block_tokens - self.block.len()).min(tokens.len());
            self.block.extend_from_slice(&tokens[..n]);
            tokens = &tokens[n..];
            if self.block.len() == self.block_tokens {
                let full = std::mem::take(&mut self.block);
                if let Some(mut previous) = self.held.replace(full) {
                    self.send(&previous, false, sink)?;
                    previous.clear();
                    self.block = previous;
                }
            }
        }
        Ok(())
    }

    fn send(&mut self, block: &[u32], force_val: bool, sink: &mut Sink) -> Result<(), DataError> {
        let draw = splitmix64(self.seed ^ self.index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        self.index += 1;
        let drawn = (draw >> 11) as f64 / (1u64 << 53) as f64 <= self.val_fraction;
        let to_val = self.val_fraction > 0.0 && (drawn || force_val);
        self.any_val |= to_val;
        self.any_train |= !to_val;
        sink(block, to_val)
    }

    fn finish(mut self, sink: &mut Sink) -> Result<(), DataError> {
        let partial = std::mem::take(&mut self.block);
        if let Some(last_full) = self.held.take() {
            self.send(&last_full, !self.any_val, sink)?;
        }
        if !partial.is_empty() {
            // Forced only when the stream is shorter than one block, and then nothing is left to train on.
            self.send(&partial, !self.any_val, sink)?;
        }
        if !self.any_train {
            return Err(DataError::EmptyTrainSplit {
                tokens: self.tokens,
                blocks: self.index,
                block_tokens: self.block_tokens,
            });
        }
        Ok(())
    }
}

pub(crate) fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Writes one split's shards, each through an atomic write once full.
struct ShardWriter {
    dir: PathBuf,
    prefix: &'static str,
    width: usize,
    shard_tokens: usize,
    buffer: Vec<u8>,
    entries: Vec<ShardEntry>,
}

impl ShardWriter {
    fn new(dir: &Path, prefix: &'static str, width: usize, shard_tokens: usize) -> Self {
        ShardWriter {
            dir: dir.to_path_buf(),
            prefix,
            width,
            shard_tokens: shard_tokens.max(1),
            buffer: Vec::new(),
            entries: Vec::new(),
        }
    }

    fn extend(&mut self, tokens: &[u32]) -> Result<(), DataError> {
        for &id in tokens {
            match self.width {
                2 => self.buffer.extend_from_slice(&(id as u16).to_le_bytes()),
                _ => self.buffer.extend_from_slice(&id.to_le_bytes()),
            }
            if self.buffer.len() == self.shard_tokens * self.width {
                self.flush()?;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), DataError> {
        let file = format!("{}-{:05}.bin", self.prefix, self.entries.len());
        let path = self.dir.join(&file);
        fsio::write_atomic(&path, &self.buffer).map_err(DataError::io(&path))?;
        let tokens = (self.buffer.len() / self.width) as u64;
        self.entries.push(ShardEntry { file, tokens, sha256: fsio::sha256_hex(&self.buffer) });
        self.buffer.clear();
        Ok(())
    }

    fn finish(mut self) -> Result<Vec<ShardEntry>, DataError> {
        if !self.buffer.is_empty() {
            self.flush()?;
        }
        Ok(self.entries)
    }
}
