//! Pulling versions out, checking the whole registry, collecting garbage and comparing versions.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rusqlite::TransactionBehavior;

use crate::db;
use crate::error::{Error, Result};
use crate::manifest::{FileEntry, Manifest};
use crate::names::VersionRef;
use crate::registry::{Registry, VerifiedVersion};
use crate::store;
use crate::tree;

/// One thing `verify` found wrong.
#[derive(Debug, Clone)]
pub struct Problem {
    /// `NAME/VERSION`, or the blob for store-level problems.
    pub subject: String,
    pub error: String,
}

/// What `verify` checked and found.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    pub versions: u64,
    pub blobs: u64,
    pub bytes: u64,
    pub problems: Vec<Problem>,
}

/// What `gc` removed (or, dry, would remove).
#[derive(Debug, Clone, Default)]
pub struct GcReport {
    pub kept: u64,
    pub removed: u64,
    pub bytes_removed: u64,
    /// Unreferenced blobs left because they are younger than the grace period.
    pub young: u64,
    pub temporaries: u64,
}

/// How two versions differ.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diff {
    pub added: Vec<FileEntry>,
    pub removed: Vec<FileEntry>,
    /// (old, new) pairs with the same path and different content.
    pub changed: Vec<(FileEntry, FileEntry)>,
    pub unchanged: u64,
    /// Keys whose values differ: (key, old, new).
    pub metadata: Vec<(String, Option<String>, Option<String>)>,
}

impl Registry {
    /// Writes a version's files into `dest` (which must not exist), each checked as it streams.
    pub fn pull(&self, r: &VersionRef, dest: &Path) -> Result<VerifiedVersion> {
        let version = self.load(r)?;
        tree::materialize(self.store.as_ref(), &version.manifest.files, dest)?;
        Ok(version)
    }

    /// A local directory holding the version, for `--model registry:…`: pulled once into
    /// `cache/<manifest cid>` and, on every later call, its manifest re-verified and its files
    /// re-hashed before it is returned.
    pub fn checkout(&self, r: &VersionRef) -> Result<PathBuf> {
        let version = self.load(r)?;
        let dir = self.root().join("cache").join(version.row.manifest.to_string());
        if dir.exists() {
            tree::check_tree(&dir, &version.manifest.files).map_err(|e| Error::Inconsistent {
                reason: format!(
                    "the cached copy of {r} at {} fails its check ({e}); delete it to pull again",
                    dir.display()
                ),
            })?;
        } else {
            tree::materialize(self.store.as_ref(), &version.manifest.files, &dir)?;
        }
        Ok(dir)
    }

    /// Loads every version (digest, canonical form, signature, rows) and re-hashes every blob
    /// it references. Problems are collected, not stopped at.
    pub fn verify(&self) -> Result<VerifyReport> {
        let mut report = VerifyReport::default();
        for (name, id) in self.sql(db::model_ids(&self.conn))? {
            for row in self.sql(db::versions(&self.conn, &name, id))? {
                report.versions += 1;
                let subject = format!("{name}/{}", row.number);
                match self.load_row(row) {
                    Ok(v) => self.verify_files(&subject, &v.manifest, &mut report),
                    Err(e) => report.problems.push(Problem { subject, error: e.to_string() }),
                }
            }
        }
        Ok(report)
    }

    fn verify_files(&self, subject: &str, manifest: &Manifest, report: &mut VerifyReport) {
        report.blobs += 1;
        for file in &manifest.files {
            report.blobs += 1;
            let problem = match store::rehash(self.store.as_ref(), &file.cid) {
                Ok(len) if len == file.size => {
                    report.bytes += len;
                    continue;
                }
                Ok(len) => format!(
                    "{}: {}",
                    file.path,
                    Error::SizeMismatch { cid: file.cid.to_string(), expected: file.size, actual: len }
                ),
                Err(e) => format!("{}: {e}", file.path),
            };
            report.problems.push(Problem { subject: subject.to_string(), error: problem });
        }
    }

    /// Removes blobs that no committed row references and that are older than `grace`, and
    /// temporary files of interrupted writes. It holds the database's write lock throughout,
    /// so no version can commit in between; a push whose blobs were removed before its
    /// transaction began finds them missing and fails rather than commit (see `push`).
    pub fn gc(&mut self, grace: Duration, dry_run: bool) -> Result<GcReport> {
        let db_path = self.root().join("registry.db");
        let db_err = |source| Error::Db { path: db_path.clone(), source };
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(db_err)?;
        let referenced = db::referenced(&tx).map_err(db_err)?;
        let cutoff = SystemTime::now().checked_sub(grace).unwrap_or(SystemTime::UNIX_EPOCH);
        let mut report = GcReport::default();
        for blob in self.store.list()? {
            if referenced.contains(&blob.digest.to_string()) {
                report.kept += 1;
            } else if blob.modified > cutoff {
                report.young += 1;
            } else {
                if !dry_run {
                    self.store.delete(&blob.digest)?;
                }
                report.removed += 1;
                report.bytes_removed += blob.size;
            }
        }
        if !dry_run {
            report.temporaries = self.store.sweep_temporaries(cutoff)? as u64;
        }
        tx.commit().map_err(db_err)?;
        Ok(report)
    }

    /// Compares two versions' files and metadata (both loaded and verified).
    pub fn diff(&self, a: &VersionRef, b: &VersionRef) -> Result<Diff> {
        let (a, b) = (self.load(a)?.manifest, self.load(b)?.manifest);
        let old: BTreeMap<&str, &FileEntry> = a.files.iter().map(|f| (f.path.as_str(), f)).collect();
        let new: BTreeMap<&str, &FileEntry> = b.files.iter().map(|f| (f.path.as_str(), f)).collect();
        let mut diff = Diff::default();
        for (path, f) in &old {
            match new.get(path) {
                None => diff.removed.push((*f).clone()),
                Some(g) if g.cid != f.cid => diff.changed.push(((*f).clone(), (*g).clone())),
                Some(_) => diff.unchanged += 1,
            }
        }
        diff.added = new.iter().filter(|(p, _)| !old.contains_key(*p)).map(|(_, f)| (*f).clone()).collect();
        let keys: BTreeSet<&String> = a.metadata.keys().chain(b.metadata.keys()).collect();
        for key in keys {
            let (x, y) = (a.metadata.get(key), b.metadata.get(key));
            if x != y {
                diff.metadata.push((key.clone(), x.cloned(), y.cloned()));
            }
        }
        Ok(diff)
    }
}
