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

/// The fixture's ids and transformers' logits for them, (T, V) row-major.
pub fn expected(dir: &Path) -> (Vec<u32>, Vec<f32>) {
    let bytes = std::fs::read(dir.join("expected.safetensors")).unwrap();
    let tensors = SafeTensors::deserialize(&bytes).unwrap();
    let logits = tensors.tensor("logits").unwrap();
    assert_eq!(logits.dtype(), Dtype::F32);
    let logits = logits.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    (int_tensor(dir, "ids"), logits)
}
