//! Signing keys and the trusted-keys list.
//!
//! - A signer's secret key is a file of its own, `{"signer": NAME, "secret_key": HEX}`, created
//!   with mode 0600; one readable by group or others is refused, as ssh refuses such keys.
//! - The registry trusts the public keys listed in `<registry>/trusted_keys`, one `NAME HEX` a
//!   line (`#` starts a comment). A version signed by any other key is refused on load.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::names::check_name;
use crate::store::sync_dir;

/// A signer's Ed25519 key.
pub struct SigningKey {
    name: String,
    secret: ed25519_dalek::SigningKey,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    signer: String,
    secret_key: String,
}

impl SigningKey {
    /// A fresh key from the OS's random source.
    pub fn generate(name: &str) -> Result<Self> {
        check_name("signer", name)?;
        let secret = ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng);
        Ok(Self { name: name.to_string(), secret })
    }

    /// Writes the key to a new file (never over an existing one) with mode 0600.
    pub fn save(&self, path: &Path) -> Result<()> {
        let doc = KeyFile { signer: self.name.clone(), secret_key: hex::encode(self.secret.to_bytes()) };
        let text = serde_json::to_string(&doc).expect("strings serialize");
        let mut file =
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).at(path)?;
        file.write_all(text.as_bytes()).and_then(|()| file.sync_all()).at(path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            sync_dir(dir)?;
        }
        Ok(())
    }

    /// Reads a key file, refusing one that others may read.
    pub fn load(path: &Path) -> Result<Self> {
        let bad = |reason: String| Error::Key { path: path.to_path_buf(), reason };
        let mode = std::fs::metadata(path).at(path)?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(bad(format!("mode {:o} lets others read it; chmod 600 it", mode & 0o777)));
        }
        let text = std::fs::read_to_string(path).at(path)?;
        let doc: KeyFile = serde_json::from_str(&text).map_err(|e| bad(format!("not a key file: {e}")))?;
        check_name("signer", &doc.signer)?;
        let bytes: [u8; 32] = hex::decode(doc.secret_key.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| bad("secret_key is not 64 hex digits".into()))?;
        Ok(Self { name: doc.signer, secret: ed25519_dalek::SigningKey::from_bytes(&bytes) })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn secret(&self) -> &ed25519_dalek::SigningKey {
        &self.secret
    }

    /// The public key, as 64 hex digits.
    pub fn public_hex(&self) -> String {
        hex::encode(self.public_bytes())
    }

    /// The public key's 32 bytes.
    pub fn public_bytes(&self) -> [u8; 32] {
        self.secret.verifying_key().to_bytes()
    }
}

/// The public keys a registry accepts signatures from, by signer name.
#[derive(Debug, Default, Clone)]
pub struct TrustedKeys {
    by_key: BTreeMap<[u8; 32], String>,
}

impl TrustedKeys {
    /// Reads a trusted-keys file; a missing file trusts nothing.
    pub fn load(path: &Path) -> Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => return Err(Error::Io { path: path.to_path_buf(), source }),
        };
        let mut keys = Self::default();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let bad = |reason: &str| Error::Key {
                path: path.to_path_buf(),
                reason: format!("line {}: {reason}", i + 1),
            };
            let mut parts = line.split_whitespace();
            let (Some(name), Some(hex_key), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(bad("expected NAME HEX"));
            };
            let key = parse_public(hex_key)
                .ok_or_else(|| bad("the key is not 64 hex digits of an Ed25519 point"))?;
            keys.by_key.insert(key, name.to_string());
        }
        Ok(keys)
    }

    /// Adds a key and rewrites the file atomically (temporary file, fsync, rename, fsync).
    pub fn add_and_save(&mut self, path: &Path, name: &str, public_hex: &str) -> Result<()> {
        check_name("signer", name)?;
        let key = parse_public(public_hex).ok_or_else(|| {
            Error::Input(format!("{public_hex:?} is not 64 hex digits of an Ed25519 public key"))
        })?;
        self.by_key.insert(key, name.to_string());
        let mut text = String::from("# Public keys whose signatures this registry accepts: NAME HEX\n");
        for (key, name) in &self.by_key {
            text.push_str(&format!("{name} {}\n", hex::encode(key)));
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut tmp = tempfile::NamedTempFile::new_in(dir).at(dir)?;
        tmp.write_all(text.as_bytes()).and_then(|()| tmp.as_file().sync_all()).at(tmp.path())?;
        tmp.persist(path).map_err(|e| Error::Io { path: path.to_path_buf(), source: e.error })?;
        sync_dir(dir)
    }

    pub fn contains(&self, key: &[u8; 32]) -> bool {
        self.by_key.contains_key(key)
    }

    pub fn name_of(&self, key: &[u8; 32]) -> Option<&str> {
        self.by_key.get(key).map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

fn parse_public(hex_key: &str) -> Option<[u8; 32]> {
    let bytes: [u8; 32] = hex::decode(hex_key).ok()?.try_into().ok()?;
    ed25519_dalek::VerifyingKey::from_bytes(&bytes).ok()?;
    Some(bytes)
}
