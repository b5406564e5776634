//! The two AEADs, behind one enum, as single messages (key wrapping) and as STREAM
//! (chunked files). Nothing here is cryptography of ours: `chacha20poly1305` and `aes-gcm` do the
//! ciphers, `aead::stream` the STREAM construction (Hoang, Reyhanitabar, Rogaway, Vizár 2015).

use aes_gcm::Aes256Gcm;
use chacha20poly1305::aead::generic_array::GenericArray;
use chacha20poly1305::aead::stream::{DecryptorBE32, EncryptorBE32};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::ChaCha20Poly1305;
use zeroize::Zeroizing;

/// Bytes of a key (both ciphers take 256-bit keys).
pub const KEY_LEN: usize = 32;
/// Bytes of a single-message nonce (both ciphers take 96-bit nonces).
pub const NONCE_LEN: usize = 12;
/// Bytes of the STREAM nonce prefix: the 12-byte nonce less the 32-bit counter and the last-chunk
/// flag byte (`StreamBE32`).
pub const STREAM_PREFIX_LEN: usize = 7;
/// Bytes of the authentication tag both ciphers append.
pub const TAG_LEN: usize = 16;

/// A 256-bit key, wiped from memory when dropped.
pub type Key = Zeroizing<[u8; KEY_LEN]>;

/// The AEAD of a file (its chunks and its wrapped data key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cipher {
    ChaCha20Poly1305,
    Aes256Gcm,
}

impl Cipher {
    pub const ALL: [Cipher; 2] = [Cipher::ChaCha20Poly1305, Cipher::Aes256Gcm];

    /// The id written in file headers.
    pub fn id(self) -> u8 {
        match self {
            Cipher::ChaCha20Poly1305 => 1,
            Cipher::Aes256Gcm => 2,
        }
    }

    pub fn from_id(id: u8) -> Option<Cipher> {
        Cipher::ALL.into_iter().find(|c| c.id() == id)
    }

    /// `chacha20-poly1305` or `aes-256-gcm`.
    pub fn name(self) -> &'static str {
        match self {
            Cipher::ChaCha20Poly1305 => "chacha20-poly1305",
            Cipher::Aes256Gcm => "aes-256-gcm",
        }
    }

    pub fn from_name(name: &str) -> Option<Cipher> {
        Cipher::ALL.into_iter().find(|c| c.name() == name)
    }

    /// One message: `ciphertext || tag`; `None` only for a message beyond the cipher's length
    /// limit (~256 GiB).
    pub(crate) fn seal(
        self,
        key: &[u8; KEY_LEN],
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        msg: &[u8],
    ) -> Option<Vec<u8>> {
        let payload = Payload { msg, aad };
        let nonce = GenericArray::from_slice(nonce);
        let out = match self {
            Cipher::ChaCha20Poly1305 => ChaCha20Poly1305::new(key.into()).encrypt(nonce, payload),
            Cipher::Aes256Gcm => Aes256Gcm::new(key.into()).encrypt(nonce, payload),
        };
        out.ok()
    }

    /// The plaintext of [`Cipher::seal`]'s output, or `None` if it fails authentication.
    pub(crate) fn open(
        self,
        key: &[u8; KEY_LEN],
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        ct: &[u8],
    ) -> Option<Zeroizing<Vec<u8>>> {
        let payload = Payload { msg: ct, aad };
        let nonce = GenericArray::from_slice(nonce);
        let out = match self {
            Cipher::ChaCha20Poly1305 => ChaCha20Poly1305::new(key.into()).decrypt(nonce, payload),
            Cipher::Aes256Gcm => Aes256Gcm::new(key.into()).decrypt(nonce, payload),
        };
        out.ok().map(Zeroizing::new)
    }

    pub(crate) fn stream_encryptor(
        self,
        key: &[u8; KEY_LEN],
        prefix: &[u8; STREAM_PREFIX_LEN],
    ) -> StreamEncryptor {
        let prefix = GenericArray::from_slice(prefix);
        match self {
            Cipher::ChaCha20Poly1305 => {
                StreamEncryptor::ChaCha(EncryptorBE32::from_aead(ChaCha20Poly1305::new(key.into()), prefix))
            }
            Cipher::Aes256Gcm => {
                StreamEncryptor::Aes(Box::new(EncryptorBE32::from_aead(Aes256Gcm::new(key.into()), prefix)))
            }
        }
    }

    pub(crate) fn stream_decryptor(
        self,
        key: &[u8; KEY_LEN],
        prefix: &[u8; STREAM_PREFIX_LEN],
    ) -> StreamDecryptor {
        let prefix = GenericArray::from_slice(prefix);
        match self {
            Cipher::ChaCha20Poly1305 => {
                StreamDecryptor::ChaCha(DecryptorBE32::from_aead(ChaCha20Poly1305::new(key.into()), prefix))
            }
            Cipher::Aes256Gcm => {
                StreamDecryptor::Aes(Box::new(DecryptorBE32::from_aead(Aes256Gcm::new(key.into()), prefix)))
            }
        }
    }
}

impl std::fmt::Display for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Cipher {
    type Err = String;
    fn from_str(s: &str) -> Result<Cipher, String> {
        Cipher::from_name(s).ok_or_else(|| format!("{s:?} is not a cipher: chacha20-poly1305 or aes-256-gcm"))
    }
}

/// STREAM's encryptor (ℰ) for either cipher; chunks are sealed in place in a `Vec`, which grows by
/// the tag.
pub(crate) enum StreamEncryptor {
    ChaCha(EncryptorBE32<ChaCha20Poly1305>),
    /// Boxed: AES's key schedule makes it several times ChaCha's size.
    Aes(Box<EncryptorBE32<Aes256Gcm>>),
}

/// The error is the chunk counter's overflow (2^32 - 1 chunks).
pub(crate) struct CounterOverflow;

impl StreamEncryptor {
    pub(crate) fn next(&mut self, aad: &[u8], buf: &mut Vec<u8>) -> Result<(), CounterOverflow> {
        match self {
            StreamEncryptor::ChaCha(e) => e.encrypt_next_in_place(aad, buf),
            StreamEncryptor::Aes(e) => e.encrypt_next_in_place(aad, buf),
        }
        .map_err(|_| CounterOverflow)
    }

    pub(crate) fn last(self, aad: &[u8], buf: &mut Vec<u8>) -> Result<(), CounterOverflow> {
        match self {
            StreamEncryptor::ChaCha(e) => e.encrypt_last_in_place(aad, buf),
            StreamEncryptor::Aes(e) => e.encrypt_last_in_place(aad, buf),
        }
        .map_err(|_| CounterOverflow)
    }
}

/// STREAM's decryptor (𝒟); a chunk that fails authentication (or the counter's overflow) is `Err`.
pub(crate) enum StreamDecryptor {
    ChaCha(DecryptorBE32<ChaCha20Poly1305>),
    Aes(Box<DecryptorBE32<Aes256Gcm>>),
}

impl StreamDecryptor {
    pub(crate) fn next(&mut self, aad: &[u8], buf: &mut Vec<u8>) -> Result<(), ()> {
        match self {
            StreamDecryptor::ChaCha(d) => d.decrypt_next_in_place(aad, buf),
            StreamDecryptor::Aes(d) => d.decrypt_next_in_place(aad, buf),
        }
        .map_err(|_| ())
    }

    pub(crate) fn last(self, aad: &[u8], buf: &mut Vec<u8>) -> Result<(), ()> {
        match self {
            StreamDecryptor::ChaCha(d) => d.decrypt_last_in_place(aad, buf),
            StreamDecryptor::Aes(d) => d.decrypt_last_in_place(aad, buf),
        }
        .map_err(|_| ())
    }
}
