use std::path::PathBuf;

/// Errors of the security crate. Every error about a file names it; none carries key material.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    // I/O and the operating system.
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the operating system's random source failed: {0}")]
    Random(String),

    // Encrypted files: the header.
    #[error("{}: not a truthgpt encrypted file (no TGPT-ENC magic)", path.display())]
    NotEncrypted { path: PathBuf },
    #[error("{}: encrypted-file format version {version} is not one we read (we read {known})", path.display(), known = crate::header::VERSION)]
    UnsupportedVersion { path: PathBuf, version: u16 },
    #[error("{}: cipher id {id} is not one we know (1 = ChaCha20-Poly1305, 2 = AES-256-GCM)", path.display())]
    UnknownCipher { path: PathBuf, id: u8 },
    #[error("{}: bad header: {reason}", path.display())]
    BadHeader { path: PathBuf, reason: String },

    // Encrypted files: keys and chunks.
    #[error("{}: encrypted under key {id:?}, which this keyring does not have", path.display())]
    UnknownKey { path: PathBuf, id: String },
    #[error("{}: encrypted under key {id:?}, which is retired and can no longer decrypt", path.display())]
    RetiredKey { path: PathBuf, id: String },
    #[error("{}: the data key does not unwrap under key {id:?} (a wrong key, or a tampered header)", path.display())]
    WrongKey { path: PathBuf, id: String },
    #[error("{}: chunk {chunk} fails authentication (the file is corrupted or tampered with, or chunks were reordered, dropped or cut off)", path.display())]
    Tampered { path: PathBuf, chunk: u64 },
    #[error("{}: truncated in {what}", path.display())]
    Truncated { path: PathBuf, what: &'static str },
    #[error("{}: more than 2^32 - 1 chunks; use a larger chunk size", path.display())]
    TooManyChunks { path: PathBuf },
    #[error("chunk size {0} is out of range (16 B to 16 MiB)")]
    ChunkSize(u32),

    // The keyring.
    #[error("{}: wrong passphrase (or the keyring file was tampered with)", path.display())]
    WrongPassphrase { path: PathBuf },
    #[error("{}: not a keyring we read: {reason}", path.display())]
    BadKeyring { path: PathBuf, reason: String },
    #[error("{}: already exists; a keyring is never overwritten by init", path.display())]
    KeyringExists { path: PathBuf },
    #[error("key {id:?}: {reason}")]
    KeyState { id: String, reason: String },
    #[error("no key {id:?} in the keyring")]
    NoSuchKey { id: String },
    #[error("{}: the keyring was opened read-only; open it for update to change it", path.display())]
    ReadOnly { path: PathBuf },
    #[error("bad key-derivation parameters: {0}")]
    Kdf(String),

    // The audit log.
    #[error("{}: {reason}", path.display())]
    Audit { path: PathBuf, reason: String },
    #[error("bad audit public key: {0}")]
    AuditKey(String),
}

pub type Result<T, E = SecurityError> = std::result::Result<T, E>;

/// `Io` errors with the path attached, as `.at(path)`.
pub(crate) trait IoContext<T> {
    fn at(self, path: &std::path::Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: &std::path::Path) -> Result<T> {
        self.map_err(|source| SecurityError::Io { path: path.to_path_buf(), source })
    }
}
