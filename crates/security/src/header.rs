//! The header of an encrypted file.
//!
//! ```text
//! offset size  field
//!      0    8  magic "TGPT-ENC"
//!      8    2  format version, big-endian (1)
//!     10    1  cipher id (1 = ChaCha20-Poly1305, 2 = AES-256-GCM)
//!     11    1  reserved, 0
//!     12    4  chunk size in plaintext bytes, big-endian (16 B ..= 16 MiB)
//!     16    7  STREAM nonce prefix (random per file)
//!     23    1  reserved, 0
//!   ---------  the fixed part above is the associated data of every chunk
//!     24    1  n = length of the key-encryption key's id (1..=64, [A-Za-z0-9._-])
//!     25    n  the KEK id
//!   25+n   12  wrap nonce (random per wrapping)
//!   37+n   48  the data key sealed under the KEK (32 bytes + 16-byte tag), with associated
//!              data "truthgpt-wrap-v1" || fixed part || n || id
//!   85+n       chunks
//! ```
//!
//! Every header byte is authenticated: the fixed part by every chunk's tag and by the wrap, the
//! key slot (id, nonce, sealed key) by the wrap. Only the key slot changes on rotation, which is why
//! it is not part of the chunks' associated data.

use std::io::Read;
use std::path::Path;

use crate::cipher::{Cipher, KEY_LEN, NONCE_LEN, STREAM_PREFIX_LEN, TAG_LEN};
use crate::error::{Result, SecurityError};

pub const MAGIC: &[u8; 8] = b"TGPT-ENC";
pub const VERSION: u16 = 1;
pub const FIXED_LEN: usize = 24;
pub const MAX_KEY_ID_LEN: usize = 64;
pub const MIN_CHUNK: u32 = 16;
pub const MAX_CHUNK: u32 = 16 << 20;
/// 64 KiB, as `age` uses.
pub const DEFAULT_CHUNK: u32 = 64 << 10;
pub const WRAPPED_LEN: usize = KEY_LEN + TAG_LEN;
const WRAP_DOMAIN: &[u8] = b"truthgpt-wrap-v1";

/// The part of the header fixed at encryption.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fixed {
    pub cipher: Cipher,
    pub chunk_size: u32,
    pub nonce_prefix: [u8; STREAM_PREFIX_LEN],
}

/// The data key, sealed under the key-encryption key `kek_id`. Rewritten by rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySlot {
    pub kek_id: String,
    pub nonce: [u8; NONCE_LEN],
    pub wrapped: [u8; WRAPPED_LEN],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub fixed: Fixed,
    pub slot: KeySlot,
}

impl Fixed {
    /// The 24 bytes that are every chunk's associated data.
    pub fn to_bytes(&self) -> [u8; FIXED_LEN] {
        let mut b = [0u8; FIXED_LEN];
        b[..8].copy_from_slice(MAGIC);
        b[8..10].copy_from_slice(&VERSION.to_be_bytes());
        b[10] = self.cipher.id();
        b[12..16].copy_from_slice(&self.chunk_size.to_be_bytes());
        b[16..23].copy_from_slice(&self.nonce_prefix);
        b
    }

    fn parse(b: &[u8; FIXED_LEN], path: &Path) -> Result<Fixed> {
        if &b[..8] != MAGIC {
            return Err(SecurityError::NotEncrypted { path: path.to_path_buf() });
        }
        let version = u16::from_be_bytes([b[8], b[9]]);
        if version != VERSION {
            return Err(SecurityError::UnsupportedVersion { path: path.to_path_buf(), version });
        }
        let cipher = Cipher::from_id(b[10])
            .ok_or(SecurityError::UnknownCipher { path: path.to_path_buf(), id: b[10] })?;
        let bad = |reason: String| SecurityError::BadHeader { path: path.to_path_buf(), reason };
        if b[11] != 0 || b[23] != 0 {
            return Err(bad("reserved bytes are not zero".into()));
        }
        let chunk_size = u32::from_be_bytes([b[12], b[13], b[14], b[15]]);
        check_chunk_size(chunk_size).map_err(|_| bad(format!("chunk size {chunk_size} is out of range")))?;
        let mut nonce_prefix = [0u8; STREAM_PREFIX_LEN];
        nonce_prefix.copy_from_slice(&b[16..23]);
        Ok(Fixed { cipher, chunk_size, nonce_prefix })
    }
}

pub fn check_chunk_size(size: u32) -> Result<()> {
    if (MIN_CHUNK..=MAX_CHUNK).contains(&size) {
        Ok(())
    } else {
        Err(SecurityError::ChunkSize(size))
    }
}

/// A KEK id we write and accept: 1 to 64 of `[A-Za-z0-9._-]`.
pub fn valid_key_id(id: &str) -> bool {
    (1..=MAX_KEY_ID_LEN).contains(&id.len())
        && id.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

impl Header {
    /// The associated data of the wrapped data key: it binds the key slot to this file's fixed
    /// part and to the KEK id.
    pub fn wrap_aad(fixed: &Fixed, kek_id: &str) -> Vec<u8> {
        let mut aad = Vec::with_capacity(WRAP_DOMAIN.len() + FIXED_LEN + 1 + kek_id.len());
        aad.extend_from_slice(WRAP_DOMAIN);
        aad.extend_from_slice(&fixed.to_bytes());
        aad.push(kek_id.len() as u8);
        aad.extend_from_slice(kek_id.as_bytes());
        aad
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let id = self.slot.kek_id.as_bytes();
        let mut b = Vec::with_capacity(self.encoded_len());
        b.extend_from_slice(&self.fixed.to_bytes());
        b.push(id.len() as u8);
        b.extend_from_slice(id);
        b.extend_from_slice(&self.slot.nonce);
        b.extend_from_slice(&self.slot.wrapped);
        b
    }

    /// Bytes of the header on disk (where the chunks start).
    pub fn encoded_len(&self) -> usize {
        FIXED_LEN + 1 + self.slot.kek_id.len() + NONCE_LEN + WRAPPED_LEN
    }

    /// Reads and checks the header at the reader's position; `path` names the file in errors.
    pub fn read(r: &mut impl Read, path: &Path) -> Result<Header> {
        let mut fixed = [0u8; FIXED_LEN];
        read_exact(r, &mut fixed, path, "the header")?;
        let fixed = Fixed::parse(&fixed, path)?;
        let mut n = [0u8; 1];
        read_exact(r, &mut n, path, "the header")?;
        let mut id = vec![0u8; n[0] as usize];
        read_exact(r, &mut id, path, "the header")?;
        let kek_id = String::from_utf8(id).ok().filter(|id| valid_key_id(id)).ok_or_else(|| {
            SecurityError::BadHeader { path: path.to_path_buf(), reason: "the key id is not valid".into() }
        })?;
        let mut nonce = [0u8; NONCE_LEN];
        read_exact(r, &mut nonce, path, "the header")?;
        let mut wrapped = [0u8; WRAPPED_LEN];
        read_exact(r, &mut wrapped, path, "the header")?;
        Ok(Header { fixed, slot: KeySlot { kek_id, nonce, wrapped } })
    }
}

/// `read_exact`, with end-of-file reported as truncation of `what`.
pub(crate) fn read_exact(r: &mut impl Read, buf: &mut [u8], path: &Path, what: &'static str) -> Result<()> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => SecurityError::Truncated { path: path.to_path_buf(), what },
        _ => SecurityError::Io { path: path.to_path_buf(), source: e },
    })
}
