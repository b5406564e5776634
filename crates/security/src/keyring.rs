//! The local keyring: key-encryption keys (KEKs) and the audit log's signing key, in one file
//! sealed under a key derived from a passphrase with Argon2id.
//!
//! ```json
//! {"format": "truthgpt-keyring", "version": 1,
//!  "kdf": {"algorithm": "argon2id", "m_cost_kib": 65536, "t_cost": 3, "p_cost": 1, "salt": "<16 bytes hex>"},
//!  "nonce": "<12 bytes hex>", "sealed": "<ChaCha20-Poly1305 of the key list, hex>"}
//! ```
//!
//! The sealed payload's associated data is the format, version and every KDF parameter, so none
//! can be changed without the passphrase failing. Each save seals with a fresh nonce and replaces
//! the file atomically; changes are made under an exclusive lock on `<keyring>.lock`, so two
//! rotations cannot lose each other's key.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::cipher::{Cipher, Key, KEY_LEN, NONCE_LEN};
use crate::error::{IoContext, Result, SecurityError};
use crate::fsutil::{self, hex, unhex};
use crate::header::{valid_key_id, KeySlot, WRAPPED_LEN};

const FORMAT: &str = "truthgpt-keyring";
const VERSION: u32 = 1;
const SALT_LEN: usize = 16;
/// The keyring's own cipher (its payload is small; one cipher keeps the format simple).
const SEAL: Cipher = Cipher::ChaCha20Poly1305;

/// What a key-encryption key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyState {
    /// Wraps new data keys and unwraps old ones. Exactly one key is active.
    Active,
    /// Unwraps data keys only: a key rotation has replaced it.
    DecryptOnly,
    /// Its material is erased; files still naming it cannot be decrypted.
    Retired,
}

impl std::fmt::Display for KeyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KeyState::Active => "active",
            KeyState::DecryptOnly => "decrypt-only",
            KeyState::Retired => "retired",
        })
    }
}

/// Argon2id's cost parameters. [`KdfParams::default`] is 64 MiB, 3 passes, 1 lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    pub m_cost_kib: u32,
    pub t_cost: u32,
    pub p_cost: u32,
}

impl Default for KdfParams {
    fn default() -> Self {
        KdfParams { m_cost_kib: 64 << 10, t_cost: 3, p_cost: 1 }
    }
}

impl KdfParams {
    /// The cheapest parameters Argon2 allows; for tests only.
    pub const INSECURE_FAST: KdfParams = KdfParams { m_cost_kib: 8, t_cost: 1, p_cost: 1 };

    /// Bounds on what a keyring file may ask for, so a crafted file cannot make opening it take
    /// gigabytes or hours: at most 4 GiB, 64 passes, 16 lanes.
    fn check(&self) -> Result<()> {
        let ok =
            self.m_cost_kib <= 4 << 20 && (1..=64).contains(&self.t_cost) && (1..=16).contains(&self.p_cost);
        if !ok {
            return Err(SecurityError::Kdf(format!(
                "{self:?} is beyond the bounds (m <= 4 GiB, t 1..=64, p 1..=16)"
            )));
        }
        argon2::Params::new(self.m_cost_kib, self.t_cost, self.p_cost, Some(KEY_LEN))
            .map(|_| ())
            .map_err(|e| SecurityError::Kdf(e.to_string()))
    }

    fn derive(&self, passphrase: &[u8], salt: &[u8; SALT_LEN]) -> Result<Key> {
        self.check()?;
        let params = argon2::Params::new(self.m_cost_kib, self.t_cost, self.p_cost, Some(KEY_LEN))
            .map_err(|e| SecurityError::Kdf(e.to_string()))?;
        let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        argon
            .hash_password_into(passphrase, salt, key.as_mut())
            .map_err(|e| SecurityError::Kdf(e.to_string()))?;
        Ok(key)
    }
}

/// A key-encryption key. Its material never leaves this module (nor its `Debug`).
#[derive(Clone)]
pub struct Kek {
    pub id: String,
    pub state: KeyState,
    /// Unix milliseconds.
    pub created_ms: u64,
    material: Option<Key>,
}

/// The keyring in memory. Its `Debug` shows ids and states, never key material.
pub struct Keyring {
    path: PathBuf,
    kdf: KdfParams,
    salt: [u8; SALT_LEN],
    master: Key,
    keys: Vec<Kek>,
    audit_key: Key,
    /// Held while the keyring may be changed and saved.
    lock: Option<File>,
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kek")
            .field("id", &self.id)
            .field("state", &self.state)
            .field("created_ms", &self.created_ms)
            .finish()
    }
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("path", &self.path)
            .field("kdf", &self.kdf)
            .field("keys", &self.keys)
            .finish()
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileKdf {
    algorithm: String,
    #[serde(flatten)]
    params: KdfParams,
    salt: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyringFile {
    format: String,
    version: u32,
    kdf: FileKdf,
    nonce: String,
    sealed: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    keys: Vec<PayloadKey>,
    audit_signing_key: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PayloadKey {
    id: String,
    state: KeyState,
    created_ms: u64,
    /// Hex; `None` once retired.
    material: Option<String>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn seal_aad(kdf: &KdfParams, salt: &[u8; SALT_LEN]) -> Vec<u8> {
    format!("{FORMAT}|{VERSION}|argon2id|{}|{}|{}|{}", kdf.m_cost_kib, kdf.t_cost, kdf.p_cost, hex(salt))
        .into_bytes()
}

fn lock_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".lock");
    PathBuf::from(p)
}

/// An exclusive lock on `<keyring>.lock`, released when the file closes.
fn acquire_lock(path: &Path) -> Result<File> {
    let lp = lock_path(path);
    let f = OpenOptions::new().create(true).truncate(false).write(true).open(&lp).at(&lp)?;
    f.lock().at(&lp)?;
    Ok(f)
}

impl Keyring {
    /// Makes a keyring at `path` (which must not exist) with one active KEK and an audit signing
    /// key, and saves it. The keyring stays locked for update.
    pub fn create(path: &Path, passphrase: &[u8], kdf: KdfParams) -> Result<Keyring> {
        kdf.check()?;
        let lock = acquire_lock(path)?;
        if path.exists() {
            return Err(SecurityError::KeyringExists { path: path.to_path_buf() });
        }
        let salt = fsutil::random::<SALT_LEN>()?;
        let master = kdf.derive(passphrase, &salt)?;
        let audit_key = Zeroizing::new(fsutil::random::<KEY_LEN>()?);
        let mut ring = Keyring {
            path: path.to_path_buf(),
            kdf,
            salt,
            master,
            keys: Vec::new(),
            audit_key,
            lock: Some(lock),
        };
        ring.add_active_key()?;
        ring.save()?;
        Ok(ring)
    }

    /// Opens the keyring to decrypt; it cannot be saved.
    pub fn open(path: &Path, passphrase: &[u8]) -> Result<Keyring> {
        Keyring::load(path, passphrase, None)
    }

    /// Opens the keyring to change it, holding its lock until dropped.
    pub fn open_for_update(path: &Path, passphrase: &[u8]) -> Result<Keyring> {
        let lock = acquire_lock(path)?;
        Keyring::load(path, passphrase, Some(lock))
    }

    fn load(path: &Path, passphrase: &[u8], lock: Option<File>) -> Result<Keyring> {
        let bad =
            |reason: &str| SecurityError::BadKeyring { path: path.to_path_buf(), reason: reason.to_string() };
        let text = std::fs::read(path).at(path)?;
        let file: KeyringFile = serde_json::from_slice(&text).map_err(|e| bad(&e.to_string()))?;
        if file.format != FORMAT {
            return Err(bad(&format!("format {:?}, expected {FORMAT:?}", file.format)));
        }
        if file.version != VERSION {
            return Err(bad(&format!("version {} (we read {VERSION})", file.version)));
        }
        if file.kdf.algorithm != "argon2id" {
            return Err(bad(&format!("kdf {:?} (we use argon2id)", file.kdf.algorithm)));
        }
        let salt = unhex::<SALT_LEN>(&file.kdf.salt).ok_or_else(|| bad("the salt is not 16 hex bytes"))?;
        let nonce = unhex::<NONCE_LEN>(&file.nonce).ok_or_else(|| bad("the nonce is not 12 hex bytes"))?;
        let sealed = fsutil::unhex_vec(&file.sealed).ok_or_else(|| bad("the sealed payload is not hex"))?;
        let kdf = file.kdf.params;
        let master = kdf.derive(passphrase, &salt)?;
        let plain = SEAL
            .open(&master, &nonce, &seal_aad(&kdf, &salt), &sealed)
            .ok_or_else(|| SecurityError::WrongPassphrase { path: path.to_path_buf() })?;
        let payload: Payload = serde_json::from_slice(&plain).map_err(|e| bad(&e.to_string()))?;
        let (keys, audit_key) = Keyring::keys_from(payload).map_err(|reason| bad(&reason))?;
        Ok(Keyring { path: path.to_path_buf(), kdf, salt, master, keys, audit_key, lock })
    }

    fn keys_from(payload: Payload) -> std::result::Result<(Vec<Kek>, Key), String> {
        let mut keys = Vec::with_capacity(payload.keys.len());
        for k in payload.keys {
            if !valid_key_id(&k.id) || keys.iter().any(|o: &Kek| o.id == k.id) {
                return Err(format!("key id {:?} is invalid or repeated", k.id));
            }
            let material = match (&k.material, k.state) {
                (None, KeyState::Retired) => None,
                (Some(m), KeyState::Active | KeyState::DecryptOnly) => Some(Zeroizing::new(
                    unhex::<KEY_LEN>(m)
                        .ok_or_else(|| format!("key {:?}: material is not 32 hex bytes", k.id))?,
                )),
                _ => return Err(format!("key {:?}: state {} does not match its material", k.id, k.state)),
            };
            keys.push(Kek { id: k.id, state: k.state, created_ms: k.created_ms, material });
        }
        if keys.iter().filter(|k| k.state == KeyState::Active).count() != 1 {
            return Err("not exactly one active key".into());
        }
        let audit =
            unhex::<KEY_LEN>(&payload.audit_signing_key).ok_or("the audit key is not 32 hex bytes")?;
        Ok((keys, Zeroizing::new(audit)))
    }

    /// Seals and atomically replaces the keyring file (mode 0600).
    pub fn save(&self) -> Result<()> {
        if self.lock.is_none() {
            return Err(SecurityError::ReadOnly { path: self.path.clone() });
        }
        let payload = Payload {
            keys: self
                .keys
                .iter()
                .map(|k| PayloadKey {
                    id: k.id.clone(),
                    state: k.state,
                    created_ms: k.created_ms,
                    material: k.material.as_ref().map(|m| hex(m.as_ref())),
                })
                .collect(),
            audit_signing_key: hex(self.audit_key.as_ref()),
        };
        let plain = Zeroizing::new(serde_json::to_vec(&payload).map_err(|e| SecurityError::BadKeyring {
            path: self.path.clone(),
            reason: format!("serializing the key list: {e}"),
        })?);
        let nonce = fsutil::random::<NONCE_LEN>()?;
        let sealed =
            SEAL.seal(&self.master, &nonce, &seal_aad(&self.kdf, &self.salt), &plain).ok_or_else(|| {
                SecurityError::BadKeyring {
                    path: self.path.clone(),
                    reason: "the key list is too large to seal".into(),
                }
            })?;
        let file = KeyringFile {
            format: FORMAT.into(),
            version: VERSION,
            kdf: FileKdf { algorithm: "argon2id".into(), params: self.kdf, salt: hex(&self.salt) },
            nonce: hex(&nonce),
            sealed: hex(&sealed),
        };
        let text = serde_json::to_vec_pretty(&file).map_err(|e| SecurityError::BadKeyring {
            path: self.path.clone(),
            reason: format!("serializing the keyring: {e}"),
        })?;
        fsutil::atomic_write(&self.path, |w| {
            fsutil::owner_only(w.get_ref(), &self.path)?;
            std::io::Write::write_all(w, &text).at(&self.path)
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every key, oldest first.
    pub fn keys(&self) -> &[Kek] {
        &self.keys
    }

    /// The key that wraps new data keys.
    pub fn active(&self) -> &Kek {
        // `keys_from` and every change keep exactly one active key.
        self.keys.iter().find(|k| k.state == KeyState::Active).unwrap_or(&self.keys[0])
    }

    fn add_active_key(&mut self) -> Result<String> {
        let tag = hex(&fsutil::random::<4>()?);
        let id = format!("kek-{}-{tag}", self.keys.len() + 1);
        for k in &mut self.keys {
            if k.state == KeyState::Active {
                k.state = KeyState::DecryptOnly;
            }
        }
        let material = Some(Zeroizing::new(fsutil::random::<KEY_LEN>()?));
        self.keys.push(Kek { id: id.clone(), state: KeyState::Active, created_ms: now_ms(), material });
        Ok(id)
    }

    /// Makes a new active KEK; the old active one becomes decrypt-only. In memory: call
    /// [`Keyring::save`] before wrapping anything under the new key. Returns the new id.
    pub fn rotate(&mut self) -> Result<String> {
        if self.lock.is_none() {
            return Err(SecurityError::ReadOnly { path: self.path.clone() });
        }
        self.add_active_key()
    }

    /// Retires a decrypt-only key: erases its material, so nothing it wrapped can be decrypted.
    /// The active key cannot be retired (rotate first).
    pub fn retire(&mut self, id: &str) -> Result<()> {
        if self.lock.is_none() {
            return Err(SecurityError::ReadOnly { path: self.path.clone() });
        }
        let key =
            self.keys.iter_mut().find(|k| k.id == id).ok_or(SecurityError::NoSuchKey { id: id.into() })?;
        match key.state {
            KeyState::Active => Err(SecurityError::KeyState {
                id: id.into(),
                reason: "is the active key; rotate to a new key before retiring it".into(),
            }),
            KeyState::Retired => {
                Err(SecurityError::KeyState { id: id.into(), reason: "is already retired".into() })
            }
            KeyState::DecryptOnly => {
                key.state = KeyState::Retired;
                key.material = None;
                Ok(())
            }
        }
    }

    /// Seals `data_key` under the active KEK for a file whose wrap associated data is `aad(id)`.
    pub(crate) fn wrap(
        &self,
        cipher: Cipher,
        data_key: &Key,
        aad: impl Fn(&str) -> Vec<u8>,
    ) -> Result<KeySlot> {
        let kek = self.active();
        let material = kek.material.as_ref().ok_or_else(|| SecurityError::KeyState {
            id: kek.id.clone(),
            reason: "is active but has no material".into(),
        })?;
        let nonce = fsutil::random::<NONCE_LEN>()?;
        let sealed = cipher.seal(material, &nonce, &aad(&kek.id), data_key.as_ref()).unwrap_or_default();
        let wrapped: [u8; WRAPPED_LEN] = sealed.try_into().map_err(|_| SecurityError::KeyState {
            id: kek.id.clone(),
            reason: "sealing a data key gave the wrong length".into(),
        })?;
        Ok(KeySlot { kek_id: kek.id.clone(), nonce, wrapped })
    }

    /// The data key in `slot`; `path` names the file in errors.
    pub(crate) fn unwrap(&self, cipher: Cipher, slot: &KeySlot, aad: &[u8], path: &Path) -> Result<Key> {
        let id = || slot.kek_id.clone();
        let kek = self
            .keys
            .iter()
            .find(|k| k.id == slot.kek_id)
            .ok_or_else(|| SecurityError::UnknownKey { path: path.to_path_buf(), id: id() })?;
        let material = kek
            .material
            .as_ref()
            .ok_or_else(|| SecurityError::RetiredKey { path: path.to_path_buf(), id: id() })?;
        let plain = cipher
            .open(material, &slot.nonce, aad, &slot.wrapped)
            .ok_or_else(|| SecurityError::WrongKey { path: path.to_path_buf(), id: id() })?;
        let key: [u8; KEY_LEN] = plain
            .as_slice()
            .try_into()
            .map_err(|_| SecurityError::WrongKey { path: path.to_path_buf(), id: id() })?;
        Ok(Zeroizing::new(key))
    }

    /// The Ed25519 key that signs audit checkpoints.
    pub fn audit_signing_key(&self) -> SigningKey {
        SigningKey::from_bytes(&self.audit_key)
    }

    pub fn audit_public_key(&self) -> VerifyingKey {
        self.audit_signing_key().verifying_key()
    }
}
