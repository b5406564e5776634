//! Shared by the registry tests: a registry in a temporary directory with a trusted signer, and
//! small model directories.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use truthgpt_registry::{PushOptions, Registry, SigningKey, VersionRef, VersionRow};

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub registry: Registry,
    pub key: SigningKey,
}

impl Fixture {
    /// A fresh local registry that trusts `alice`.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::open(&dir.path().join("reg")).unwrap();
        Self::with_registry(dir, registry)
    }

    /// A fixture around a registry opened elsewhere (e.g. on S3); trusts `alice`.
    pub fn with_registry(dir: tempfile::TempDir, mut registry: Registry) -> Self {
        let key = SigningKey::generate("alice").unwrap();
        registry.trust("alice", &key.public_hex()).unwrap();
        Self { dir, registry, key }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Pushes `model_dir` as the next version of `model`.
    pub fn push(&mut self, model: &str, model_dir: &Path) -> VersionRow {
        self.registry.push(model, model_dir, &self.key, &PushOptions::default()).unwrap()
    }
}

/// A reference from its text form (`NAME/3`, `NAME@prod`).
pub fn r(text: &str) -> VersionRef {
    text.parse().unwrap()
}

/// A small model directory (46 bytes besides the weights): a config, a tokenizer in a subfolder, an empty file and `weights`
/// of `weights_len` bytes whose content depends on `seed`.
pub fn model_dir(root: &Path, name: &str, seed: u8, weights_len: usize) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(dir.join("tokenizer")).unwrap();
    std::fs::write(dir.join("config.json"), br#"{"n_layers": 2, "d_model": 64}"#).unwrap();
    std::fs::write(dir.join("tokenizer/vocab.json"), br#"{"a": 0, "b": 1}"#).unwrap();
    std::fs::write(dir.join("EMPTY"), b"").unwrap();
    let weights: Vec<u8> = (0..weights_len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
    std::fs::write(dir.join("model.safetensors"), weights).unwrap();
    dir
}

/// Every file under `dir`, relative path and content, sorted.
pub fn read_tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                let rel = p.strip_prefix(base).unwrap().to_string_lossy().into_owned();
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Flips one bit of the byte at `offset` in a file.
pub fn flip_byte(path: &Path, offset: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset] ^= 0x01;
    std::fs::write(path, bytes).unwrap();
}

/// Where a local store keeps a blob (the layout docs/registry.md describes).
pub fn blob_path(registry_root: &Path, cid: &str) -> PathBuf {
    let n = cid.len();
    registry_root.join("blobs").join(&cid[n - 3..n - 1]).join(cid)
}
