//! Helpers shared by the security tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use truthgpt_security::{
    decrypt_stream, encrypt_stream, Cipher, EncryptOptions, KdfParams, Keyring, SecurityError,
};

pub const PASS: &[u8] = b"correct horse battery staple";

/// A fresh keyring (cheap Argon2 parameters) in its own temporary directory.
pub fn keyring() -> (tempfile::TempDir, Keyring) {
    let dir = tempfile::tempdir().unwrap();
    let ring = Keyring::create(&dir.path().join("keyring.json"), PASS, KdfParams::INSECURE_FAST).unwrap();
    (dir, ring)
}

/// Deterministic, non-repeating bytes.
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

pub fn label() -> PathBuf {
    PathBuf::from("model.safetensors.enc")
}

pub fn encrypt(ring: &Keyring, cipher: Cipher, chunk_size: u32, plain: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let n = encrypt_stream(ring, EncryptOptions { cipher, chunk_size }, &mut &plain[..], &mut out, &label())
        .unwrap();
    assert_eq!(n, plain.len() as u64);
    out
}

pub fn decrypt(ring: &Keyring, sealed: &[u8]) -> Result<Vec<u8>, SecurityError> {
    let mut out = Vec::new();
    decrypt_stream(ring, sealed, &mut out, &label())?;
    Ok(out)
}

/// The error's message names the file.
pub fn names_file(e: &SecurityError, path: &Path) -> bool {
    e.to_string().contains(&path.display().to_string())
}
