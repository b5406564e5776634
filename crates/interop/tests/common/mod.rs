#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf").join(name)
}

/// An int64 tensor of a fixture's `expected.safetensors`, as token ids.
pub fn int_tensor(dir: &Path, name: &str) -> Vec<u32> {
    let bytes = std::fs::read(dir.join("expected.safetensors")).unwrap();
    let tensors = SafeTensors::deserialize(&bytes).unwrap();
    let view = tensors.tensor(name).unwrap();
    assert_eq!(view.dtype(), Dtype::I64);
    view.data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32).collect()
}

/// A float32 tensor of a fixture's `expected.safetensors`.
pub fn f32_tensor(dir: &Path, name: &str) -> Vec<f32> {
    let bytes = std::fs::read(dir.join("expected.safetensors")).unwrap();
    let tensors = SafeTensors::deserialize(&bytes).unwrap();
    let view = tensors.tensor(name).unwrap_or_else(|_| panic!("{}: no `{name}`", dir.display()));
    assert_eq!(view.dtype(), Dtype::F32);
    view.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
}

/// The fixture's ids and transformers' logits for them, (T, V) row-major.
pub fn expected(dir: &Path) -> (Vec<u32>, Vec<f32>) {
    (int_tensor(dir, "ids"), f32_tensor(dir, "logits"))
}

/// A GGUF fixture's directory under tests/fixtures/gguf.
pub fn gguf_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf").join(name)
}

/// The index of a row's largest value (`total_cmp`, so a NaN row has a definite answer and the
/// comparison it feeds fails instead of passing).
pub fn argmax(row: &[f32]) -> usize {
    (0..row.len()).max_by(|&a, &b| row[a].total_cmp(&row[b])).expect("a non-empty row")
}

/// Positions (rows of `vocab` logits) where `got` and `want` have the same top-1 token.
pub fn top1_agreement(got: &[f32], want: &[f32], vocab: usize) -> usize {
    got.chunks(vocab).zip(want.chunks(vocab)).filter(|(g, w)| argmax(g) == argmax(w)).count()
}
