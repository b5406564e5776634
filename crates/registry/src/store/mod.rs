//! Where blobs live. A blob is stored once, under its digest, and is never changed: a store only
//! adds whole blobs, reads them and deletes them. Every read is checked against the digest.
//!
//! Both stores use one layout, `blobs/<shard>/<cid>`, where the shard is the two characters
//! before the CID's last one (IPFS flatfs's `next-to-last/2`): CIDs share their first characters
//! (`bafkrei…`), so the prefix would put everything in one folder.

mod local;
#[cfg(feature = "s3")]
mod s3;

use std::io::{Read, Write};
use std::path::Path;
use std::time::SystemTime;

pub use local::LocalStore;
#[cfg(feature = "s3")]
pub use s3::{S3Config, S3Store};

use crate::digest::{Digest, Hasher, CHUNK};
use crate::error::{Error, IoContext, Result};

/// A blob as a store lists it.
#[derive(Debug, Clone)]
pub struct BlobInfo {
    pub digest: Digest,
    pub size: u64,
    /// When the blob was written; `gc` leaves blobs younger than its grace period alone.
    pub modified: SystemTime,
}

/// A content-addressed blob store. Implementations write each blob whole or not at all: a reader
/// never sees a partial blob under its final name, whatever happens to the writer.
pub trait BlobStore: Send + Sync {
    /// A short description for messages (`/var/reg/blobs`, `s3://bucket/prefix`).
    fn describe(&self) -> String;

    /// Stores the file at `src` as `digest`, hashing it while it is copied; refuses it (and stores
    /// nothing) if the content hashes to another digest. A blob already present is kept.
    fn put_file(&self, digest: &Digest, src: &Path) -> Result<()>;

    /// Stores `bytes` as `digest`; refuses bytes that hash to another digest.
    fn put_bytes(&self, digest: &Digest, bytes: &[u8]) -> Result<()>;

    /// Whether a blob is present (its content is not checked).
    fn contains(&self, digest: &Digest) -> Result<bool>;

    /// A reader of the blob's stored bytes, not yet checked; [`read_verified`] and
    /// [`copy_verified`] check them. [`Error::BlobMissing`] when absent.
    fn open(&self, digest: &Digest) -> Result<Box<dyn Read + Send + '_>>;

    /// Every blob in the store. Entries whose names are not digests are skipped, never listed.
    fn list(&self) -> Result<Vec<BlobInfo>>;

    /// Deletes a blob; deleting an absent blob is not an error.
    fn delete(&self, digest: &Digest) -> Result<()>;

    /// Removes what interrupted writes left behind (temporary files older than `older_than`).
    /// Returns how many were removed.
    fn sweep_temporaries(&self, older_than: SystemTime) -> Result<usize>;
}

/// The path of a blob relative to the store's root: `blobs/<shard>/<cid>`.
pub(crate) fn blob_key(digest: &Digest) -> String {
    let cid = digest.to_string();
    let n = cid.len();
    format!("blobs/{}/{cid}", &cid[n - 3..n - 1])
}

/// Copies `reader` into `out`, hashing it; returns the digest and length of what was copied.
pub(crate) fn copy_hashing(
    reader: &mut dyn Read,
    out: &mut dyn Write,
    src: &Path,
    dst: &Path,
) -> Result<(Digest, u64)> {
    let mut hasher = Hasher::default();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = reader.read(&mut buf).at(src)?;
        if n == 0 {
            return Ok(hasher.finish());
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).at(dst)?;
    }
}

/// Refuses content whose digest is not the expected one.
pub(crate) fn check_digest(expected: &Digest, actual: &Digest) -> Result<()> {
    if expected == actual {
        Ok(())
    } else {
        Err(Error::DigestMismatch { expected: expected.to_string(), actual: actual.to_string() })
    }
}

/// A blob's bytes, checked against its digest.
pub fn read_verified(store: &dyn BlobStore, digest: &Digest) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    let what = Path::new(&store.describe()).join(blob_key(digest));
    store.open(digest)?.read_to_end(&mut bytes).at(&what)?;
    check_digest(digest, &Digest::of(&bytes))?;
    Ok(bytes)
}

/// Re-hashes a stored blob; returns its length if it matches its digest.
pub fn rehash(store: &dyn BlobStore, digest: &Digest) -> Result<u64> {
    let what = Path::new(&store.describe()).join(blob_key(digest));
    let (actual, len) = Digest::of_reader(&mut store.open(digest)?, &what)?;
    check_digest(digest, &actual)?;
    Ok(len)
}

/// Writes a blob to `dest` (created, fsynced), checking it against its digest as it streams; a
/// mismatch removes `dest` and fails. Returns the length.
pub fn copy_verified(store: &dyn BlobStore, digest: &Digest, dest: &Path) -> Result<u64> {
    let what = Path::new(&store.describe()).join(blob_key(digest));
    let mut reader = store.open(digest)?;
    let mut file = std::fs::File::create_new(dest).at(dest)?;
    let result = copy_hashing(&mut reader, &mut file, &what, dest)
        .and_then(|(actual, len)| check_digest(digest, &actual).map(|()| len))
        .and_then(|len| file.sync_all().at(dest).map(|()| len));
    if result.is_err() {
        let _ = std::fs::remove_file(dest);
    }
    result
}

/// Fsyncs a directory, so a rename or a new entry in it survives a crash.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).at(dir)
}
