//! A version's manifest: its files with their digests and sizes, its metadata and lineage, signed
//! with Ed25519.
//!
//! The stored form is one JSON document, `{"manifest": {...}, "signature": {...}}`, itself a blob
//! named by its digest. Serialization is canonical: compact, fields in declared order, maps
//! sorted, no floats, and files sorted by path. A stored manifest whose bytes are not exactly the
//! re-serialization of what they parse to is refused, so the signed bytes are always the
//! `manifest` object as we write it.

use std::collections::BTreeMap;

use ed25519_dalek::Signer as _;
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::keys::{SigningKey, TrustedKeys};

/// The manifest format's version.
pub const SCHEMA: u32 = 1;

/// One file of a version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Relative, `/`-separated, with no `.`, `..` or empty components.
    pub path: String,
    pub cid: Digest,
    pub size: u64,
}

/// Where a version came from. Every field is optional; `parent` names another version
/// (`NAME/VERSION`), e.g. the base of a fine-tune or the source of a quantized copy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lineage {
    pub run_id: Option<String>,
    pub data_hash: Option<String>,
    pub config_hash: Option<String>,
    pub parent: Option<String>,
}

/// What is signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub schema: u32,
    pub model: String,
    pub version: u64,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
    pub files: Vec<FileEntry>,
    pub metadata: BTreeMap<String, String>,
    pub lineage: Lineage,
}

/// An Ed25519 signature over the canonical bytes of a [`Manifest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    pub algorithm: String,
    pub signer: String,
    /// Hex of the 32-byte public key.
    pub public_key: String,
    /// Hex of the 64-byte signature.
    pub signature: String,
}

/// The stored document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedManifest {
    pub manifest: Manifest,
    pub signature: Option<Signature>,
}

impl Manifest {
    /// The bytes that are signed.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a manifest of strings and integers serializes")
    }

    /// Checks the file list: sorted, unique, safe relative paths.
    pub fn check(&self) -> std::result::Result<(), String> {
        if self.schema != SCHEMA {
            return Err(format!("schema {} (this build reads {SCHEMA})", self.schema));
        }
        for file in &self.files {
            check_path(&file.path)?;
        }
        if let Some(w) = self.files.windows(2).find(|w| w[0].path >= w[1].path) {
            return Err(format!("files are not sorted and unique at {:?}", w[1].path));
        }
        Ok(())
    }

    /// Signs the manifest.
    pub fn sign(self, key: &SigningKey) -> SignedManifest {
        let sig = key.secret().sign(&self.canonical_bytes());
        let signature = Signature {
            algorithm: "ed25519".into(),
            signer: key.name().to_string(),
            public_key: hex::encode(key.secret().verifying_key().as_bytes()),
            signature: hex::encode(sig.to_bytes()),
        };
        SignedManifest { manifest: self, signature: Some(signature) }
    }
}

impl SignedManifest {
    /// The stored bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a manifest of strings and integers serializes")
    }

    /// Parses stored bytes (named `cid`), refusing malformed or non-canonical JSON and bad paths.
    /// The signature is not checked here; [`SignedManifest::verify`] checks it.
    pub fn parse(cid: &Digest, bytes: &[u8]) -> Result<Self> {
        let bad = |reason: String| Error::BadManifest { cid: cid.to_string(), reason };
        let doc: Self = serde_json::from_slice(bytes).map_err(|e| bad(format!("malformed JSON: {e}")))?;
        if doc.to_bytes() != bytes {
            return Err(bad("not in canonical form".into()));
        }
        doc.manifest.check().map_err(bad)?;
        Ok(doc)
    }

    /// Checks the signature and that its key is trusted. Returns the signer's name.
    pub fn verify(&self, cid: &Digest, trusted: &TrustedKeys) -> Result<String> {
        let Some(sig) = &self.signature else {
            return Err(Error::Unsigned { cid: cid.to_string() });
        };
        let bad = || Error::BadSignature { cid: cid.to_string(), signer: sig.signer.clone() };
        if sig.algorithm != "ed25519" {
            return Err(Error::BadManifest {
                cid: cid.to_string(),
                reason: format!("signature algorithm {:?}", sig.algorithm),
            });
        }
        let key_bytes: [u8; 32] =
            hex::decode(&sig.public_key).ok().and_then(|b| b.try_into().ok()).ok_or_else(bad)?;
        let sig_bytes: [u8; 64] =
            hex::decode(&sig.signature).ok().and_then(|b| b.try_into().ok()).ok_or_else(bad)?;
        if !trusted.contains(&key_bytes) {
            return Err(Error::UntrustedSigner {
                cid: cid.to_string(),
                signer: sig.signer.clone(),
                public_key: sig.public_key.clone(),
            });
        }
        let key = ed25519_dalek::VerifyingKey::from_bytes(&key_bytes).map_err(|_| bad())?;
        let signature = ed25519_dalek::Signature::from_bytes(&sig_bytes);
        key.verify_strict(&self.manifest.canonical_bytes(), &signature).map_err(|_| bad())?;
        Ok(trusted.name_of(&key_bytes).unwrap_or(&sig.signer).to_string())
    }
}

/// A manifest path must stay inside the directory it is pulled into.
pub fn check_path(path: &str) -> std::result::Result<(), String> {
    let bad = |why: &str| Err(format!("file path {path:?} {why}"));
    if path.is_empty() {
        return bad("is empty");
    }
    if path.starts_with('/') || path.contains('\\') || path.contains('\0') {
        return bad("is not a relative /-separated path");
    }
    if path.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return bad("has an empty, '.' or '..' component");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_path;

    #[test]
    fn paths_that_escape_are_refused() {
        for bad in ["", "/etc/passwd", "../x", "a/../b", "a//b", "./a", "a/", "a\\b"] {
            assert!(check_path(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["model.safetensors", "tokenizer/vocab.json", ".hidden"] {
            assert!(check_path(good).is_ok(), "{good:?} refused");
        }
    }
}
