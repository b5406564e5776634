//! Blobs in a local directory. A blob is written to `.tmp/` beside the shards, fsynced, renamed
//! into its shard and the shard directory fsynced, so after a crash a blob is either whole under
//! its name or absent (a leftover temporary file is swept by `gc`).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::{blob_key, check_digest, copy_hashing, sync_dir, BlobInfo, BlobStore};
use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};

/// A blob store in a directory (`<root>/blobs/...`).
#[derive(Debug)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    /// Opens (creating if needed) a store rooted at `root`.
    pub fn open(root: &Path) -> Result<Self> {
        let tmp = root.join("blobs").join(".tmp");
        std::fs::create_dir_all(&tmp).at(&tmp)?;
        Ok(Self { root: root.to_path_buf() })
    }

    fn path(&self, digest: &Digest) -> PathBuf {
        self.root.join(blob_key(digest))
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("blobs").join(".tmp")
    }

    /// Writes a blob through a temporary file: `fill` writes the content and returns its digest.
    fn write_atomically(
        &self,
        digest: &Digest,
        fill: impl FnOnce(&mut std::fs::File, &Path) -> Result<Digest>,
    ) -> Result<()> {
        let dest = self.path(digest);
        if dest.exists() {
            return Ok(());
        }
        let tmp_dir = self.tmp_dir();
        let mut tmp = tempfile::NamedTempFile::new_in(&tmp_dir).at(&tmp_dir)?;
        let tmp_path = tmp.path().to_path_buf();
        let actual = fill(tmp.as_file_mut(), &tmp_path)?;
        check_digest(digest, &actual)?;
        tmp.as_file().sync_all().at(&tmp_path)?;
        let shard = dest.parent().expect("a blob path has a shard directory");
        if !shard.exists() {
            std::fs::create_dir_all(shard).at(shard)?;
            sync_dir(&self.root.join("blobs"))?;
        }
        tmp.persist(&dest).map_err(|e| Error::Io { path: dest.clone(), source: e.error })?;
        sync_dir(shard)
    }
}

impl BlobStore for LocalStore {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn put_file(&self, digest: &Digest, src: &Path) -> Result<()> {
        self.write_atomically(digest, |out, tmp| {
            let mut input = std::fs::File::open(src).at(src)?;
            Ok(copy_hashing(&mut input, out, src, tmp)?.0)
        })
    }

    fn put_bytes(&self, digest: &Digest, bytes: &[u8]) -> Result<()> {
        self.write_atomically(digest, |out, tmp| {
            std::io::Write::write_all(out, bytes).at(tmp)?;
            Ok(Digest::of(bytes))
        })
    }

    fn contains(&self, digest: &Digest) -> Result<bool> {
        let path = self.path(digest);
        path.try_exists().at(&path)
    }

    fn open(&self, digest: &Digest) -> Result<Box<dyn Read + Send + '_>> {
        let path = self.path(digest);
        match std::fs::File::open(&path) {
            Ok(file) => Ok(Box::new(file)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(Error::BlobMissing { cid: digest.to_string(), store: self.describe() })
            }
            Err(source) => Err(Error::Io { path, source }),
        }
    }

    fn list(&self) -> Result<Vec<BlobInfo>> {
        let blobs = self.root.join("blobs");
        let mut out = Vec::new();
        for shard in std::fs::read_dir(&blobs).at(&blobs)? {
            let shard = shard.at(&blobs)?;
            if shard.file_name() == ".tmp" || !shard.file_type().at(&shard.path())?.is_dir() {
                continue;
            }
            for entry in std::fs::read_dir(shard.path()).at(&shard.path())? {
                let entry = entry.at(&shard.path())?;
                let Some(digest) = entry.file_name().to_str().and_then(|n| n.parse::<Digest>().ok()) else {
                    continue;
                };
                let meta = entry.metadata().at(&entry.path())?;
                let modified = meta.modified().at(&entry.path())?;
                out.push(BlobInfo { digest, size: meta.len(), modified });
            }
        }
        out.sort_by_key(|b| b.digest);
        Ok(out)
    }

    fn delete(&self, digest: &Digest) -> Result<()> {
        let path = self.path(digest);
        match std::fs::remove_file(&path) {
            Ok(()) => sync_dir(path.parent().expect("a blob path has a shard directory")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(Error::Io { path, source }),
        }
    }

    fn sweep_temporaries(&self, older_than: SystemTime) -> Result<usize> {
        let tmp = self.tmp_dir();
        let mut removed = 0;
        for entry in std::fs::read_dir(&tmp).at(&tmp)? {
            let entry = entry.at(&tmp)?;
            let modified = entry.metadata().and_then(|m| m.modified()).at(&entry.path())?;
            if modified <= older_than {
                std::fs::remove_file(entry.path()).at(&entry.path())?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}
