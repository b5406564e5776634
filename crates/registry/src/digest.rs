//! Content digests: sha2-256 multihashes written as CIDv1 with the raw codec, in base32 (the form
//! IPFS prints, `bafkrei…`), so a blob stored here can later be pinned to IPFS under the same name.

use std::fmt;
use std::io::Read;
use std::path::Path;
use std::str::FromStr;

use cid::Cid;
use multihash::Multihash;
use sha2::{Digest as _, Sha256};

use crate::error::{Error, IoContext, Result};

/// The multicodec code of sha2-256.
const SHA2_256: u64 = 0x12;
/// The multicodec code of raw bytes.
const RAW: u64 = 0x55;
/// Read size while hashing or copying.
pub(crate) const CHUNK: usize = 1 << 20;

/// The CIDv1 (raw, sha2-256) of a blob.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(Cid);

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self::from_sha256(Sha256::digest(bytes).into())
    }

    /// The digest and length of everything `reader` yields.
    pub fn of_reader(reader: &mut impl Read, what: &Path) -> Result<(Self, u64)> {
        let mut hasher = Hasher::default();
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = reader.read(&mut buf).at(what)?;
            if n == 0 {
                return Ok(hasher.finish());
            }
            hasher.update(&buf[..n]);
        }
    }

    /// The digest and length of a file's content.
    pub fn of_file(path: &Path) -> Result<(Self, u64)> {
        let mut file = std::fs::File::open(path).at(path)?;
        Self::of_reader(&mut file, path)
    }

    fn from_sha256(sha: [u8; 32]) -> Self {
        let hash = Multihash::<64>::wrap(SHA2_256, &sha).expect("a 32-byte digest fits a 64-byte multihash");
        Self(Cid::new_v1(RAW, hash))
    }

    /// The raw sha2-256 bytes.
    pub fn sha256(&self) -> &[u8] {
        self.0.hash().digest()
    }
}

impl fmt::Display for Digest {
    /// CIDv1's default text form: multibase base32, lower case.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

impl FromStr for Digest {
    type Err = Error;

    /// Accepts only what [`Digest`]'s `Display` writes: CIDv1, raw codec, sha2-256, base32.
    fn from_str(text: &str) -> Result<Self> {
        let bad = |reason: &str| Error::BadDigest { text: text.to_string(), reason: reason.to_string() };
        if !text.starts_with('b') {
            return Err(bad("not multibase base32 (it must start with 'b')"));
        }
        let cid = Cid::try_from(text).map_err(|e| bad(&e.to_string()))?;
        if cid.version() != cid::Version::V1 {
            return Err(bad("not CIDv1"));
        }
        if cid.codec() != RAW {
            return Err(bad(&format!("codec 0x{:x}, not raw (0x55)", cid.codec())));
        }
        if cid.hash().code() != SHA2_256 || cid.hash().size() != 32 {
            return Err(bad("not a sha2-256 multihash"));
        }
        let digest = Self(cid);
        if digest.to_string() != text {
            return Err(bad("not in canonical form (lower-case base32)"));
        }
        Ok(digest)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// An incremental digest, for hashing while copying.
#[derive(Default)]
pub struct Hasher {
    sha: Sha256,
    len: u64,
}

impl Hasher {
    pub fn update(&mut self, bytes: &[u8]) {
        self.sha.update(bytes);
        self.len += bytes.len() as u64;
    }

    /// The digest and the number of bytes hashed.
    pub fn finish(self) -> (Digest, u64) {
        (Digest::from_sha256(self.sha.finalize().into()), self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_ipfs_cid_of_known_bytes() {
        // `ipfs add --cid-version 1 --raw-leaves` of "beep boop" (the cid crate's README example).
        assert_eq!(
            Digest::of(b"beep boop").to_string(),
            "bafkreieq5jui4j25lacwomsqgjeswwl3y5zcdrresptwgmfylxo2depppq"
        );
    }

    #[test]
    fn parses_what_it_prints_and_refuses_other_forms() {
        let d = Digest::of(b"x");
        assert_eq!(d.to_string().parse::<Digest>().unwrap(), d);
        for bad in ["", "b", "zQm", "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG", "bafyfoo"] {
            assert!(bad.parse::<Digest>().is_err(), "{bad:?} parsed");
        }
        assert!(d.to_string().to_uppercase().parse::<Digest>().is_err());
    }

    #[test]
    fn streaming_equals_one_shot() {
        let data: Vec<u8> = (0..3 * CHUNK + 17).map(|i| (i % 251) as u8).collect();
        let (d, n) = Digest::of_reader(&mut &data[..], Path::new("mem")).unwrap();
        assert_eq!(d, Digest::of(&data));
        assert_eq!(n, data.len() as u64);
    }
}
