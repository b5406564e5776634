//! Security for artifacts at rest: what lets a model trained on private data be stored, moved and
//! audited without its bytes or its history being open to whoever can read the disk.
//!
//! - [`envelope`]: envelope encryption of files. Each file gets a fresh random data key, sealed
//!   under a key-encryption key (KEK) from the keyring; the data is chunked under the STREAM
//!   construction with ChaCha20-Poly1305 or AES-256-GCM, so multi-GB files are encrypted and
//!   decrypted in one chunk of memory, and a wrong key, a truncated file, a flipped bit or a
//!   reordered or dropped chunk is an error that names the file ([`header`] has the layout).
//! - [`keyring`]: the KEKs (each with an id and a state: active, decrypt-only, retired) and the
//!   audit signing key, in a file sealed under a passphrase through Argon2id. Rotation makes a
//!   new active KEK; [`envelope::rewrap_file`] moves a file to it by rewriting only its header.
//! - [`audit`]: an append-only, hash-chained log with Ed25519-signed checkpoints, and a verifier
//!   that names every edited, removed, inserted or reordered entry.
//!
//! No cipher, KDF, hash or signature is written here: `chacha20poly1305`, `aes-gcm` and their
//! `aead::stream` (RustCrypto) encrypt, `argon2` derives, `sha2` hashes, `ed25519-dalek` signs,
//! `getrandom` supplies randomness. docs/security.md describes the formats.

pub mod audit;
pub mod cipher;
pub mod envelope;
mod error;
mod fsutil;
pub mod header;
pub mod keyring;

pub use audit::{verify_log, AuditReport, AuditWriter};
pub use cipher::Cipher;
pub use envelope::{
    decrypt_file, decrypt_stream, encrypt_file, encrypt_stream, is_encrypted, open_decrypted, read_header,
    rewrap_file, DecryptReader, EncryptOptions, EncryptWriter, Rewrap,
};
pub use error::{Result, SecurityError};
pub use keyring::{KdfParams, Kek, KeyState, Keyring};
