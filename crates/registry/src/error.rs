//! The registry's one error type. Every refusal names what was refused and why, so the CLI can
//! print it as it is.

use std::path::PathBuf;

/// Errors of the registry, grouped by kind: I/O and storage, integrity (digests and signatures),
/// lookups of names that do not exist, and bad input.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // --- I/O and storage ---
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("registry database {}: {source}", path.display())]
    Db { path: PathBuf, source: rusqlite::Error },
    #[error("blob store {store}: {message}")]
    Store { store: String, message: String },
    #[error("blob {cid} is missing from {store}")]
    BlobMissing { cid: String, store: String },

    // --- integrity ---
    #[error("blob {expected} is corrupt: its content hashes to {actual}")]
    DigestMismatch { expected: String, actual: String },
    #[error("blob {cid} is {actual} bytes, the manifest says {expected}")]
    SizeMismatch { cid: String, expected: u64, actual: u64 },
    #[error("not a CIDv1 raw sha2-256 digest: {text:?} ({reason})")]
    BadDigest { text: String, reason: String },
    #[error("manifest {cid}: {reason}")]
    BadManifest { cid: String, reason: String },
    #[error("manifest {cid} is unsigned; only signed versions are loaded")]
    Unsigned { cid: String },
    #[error(
        "manifest {cid}: the signature of {signer} does not verify (tampered, or signed by another key)"
    )]
    BadSignature { cid: String, signer: String },
    #[error("manifest {cid} is signed by {signer} with key {public_key}, which is not in the trusted keys")]
    UntrustedSigner { cid: String, signer: String, public_key: String },
    #[error("registry is inconsistent: {reason}")]
    Inconsistent { reason: String },

    // --- lookups ---
    #[error("no model named {name:?} in the registry")]
    UnknownModel { name: String },
    #[error("model {model:?} has no version {version}")]
    UnknownVersion { model: String, version: u64 },
    #[error("model {model:?} has no alias {alias:?}")]
    UnknownAlias { model: String, alias: String },

    // --- bad input ---
    #[error("invalid {kind} {name:?}: {reason}")]
    InvalidName { kind: &'static str, name: String, reason: String },
    #[error(
        "invalid model reference {text:?}: {reason} (expected registry:NAME@ALIAS or registry:NAME/VERSION)"
    )]
    BadReference { text: String, reason: String },
    #[error("key {}: {reason}", path.display())]
    Key { path: PathBuf, reason: String },
    #[error("{0}")]
    Input(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Returns early with an [`Error::Input`] built from a format string.
macro_rules! bail_input {
    ($($arg:tt)*) => {
        return Err($crate::error::Error::Input(format!($($arg)*)))
    };
}
pub(crate) use bail_input;

/// Attaches a path to an I/O error.
pub(crate) trait IoContext<T> {
    fn at(self, path: &std::path::Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: &std::path::Path) -> Result<T> {
        self.map_err(|source| Error::Io { path: path.to_path_buf(), source })
    }
}
