//! Model directories: walking one into manifest entries, and writing one from a manifest.

use std::path::{Path, PathBuf};

use crate::digest::Digest;
use crate::error::{bail_input, Error, IoContext, Result};
use crate::manifest::{check_path, FileEntry};
use crate::store::{self, sync_dir, BlobStore};

/// Every regular file under `dir` as a manifest entry (hashed) with its path on disk, sorted by
/// manifest path. Symbolic links and other special files are refused rather than followed.
pub fn hash_tree(dir: &Path) -> Result<Vec<(FileEntry, PathBuf)>> {
    if !dir.is_dir() {
        bail_input!("{} is not a directory", dir.display());
    }
    let mut files = Vec::new();
    walk(dir, "", &mut files)?;
    if files.is_empty() {
        bail_input!("{} holds no files", dir.display());
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    files
        .into_iter()
        .map(|(rel, path)| {
            let (cid, size) = Digest::of_file(&path)?;
            Ok((FileEntry { path: rel, cid, size }, path))
        })
        .collect()
}

fn walk(dir: &Path, prefix: &str, out: &mut Vec<(String, PathBuf)>) -> Result<()> {
    for entry in std::fs::read_dir(dir).at(dir)? {
        let entry = entry.at(dir)?;
        let path = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            bail_input!("{}: file names must be UTF-8", path.display());
        };
        let rel = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
        check_path(&rel).map_err(Error::Input)?;
        let kind = entry.file_type().at(&path)?;
        if kind.is_dir() {
            walk(&path, &rel, out)?;
        } else if kind.is_file() {
            out.push((rel, path));
        } else {
            bail_input!(
                "{} is a symbolic link or special file; only regular files are pushed",
                path.display()
            );
        }
    }
    Ok(())
}

/// Writes the files of a manifest into `dest`, which must not exist: into a temporary sibling
/// first, each file checked against its digest and fsynced, then renamed into place whole.
pub fn materialize(store: &dyn BlobStore, files: &[FileEntry], dest: &Path) -> Result<()> {
    if dest.exists() {
        bail_input!("{} already exists; pull into a new directory", dest.display());
    }
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).at(&parent)?;
    let tmp = tempfile::Builder::new().prefix(".pull-").tempdir_in(&parent).at(&parent)?;
    for file in files {
        let path = tmp.path().join(&file.path);
        let dir = path.parent().expect("a file path has a parent");
        std::fs::create_dir_all(dir).at(dir)?;
        let len = store::copy_verified(store, &file.cid, &path)?;
        if len != file.size {
            return Err(Error::SizeMismatch { cid: file.cid.to_string(), expected: file.size, actual: len });
        }
    }
    sync_tree(tmp.path())?;
    let tmp = tmp.keep();
    if let Err(source) = std::fs::rename(&tmp, dest) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(Error::Io { path: dest.to_path_buf(), source });
    }
    sync_dir(&parent)
}

/// Fsyncs every directory under `dir` (files were synced as they were written).
fn sync_tree(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).at(dir)? {
        let entry = entry.at(dir)?;
        if entry.file_type().at(&entry.path())?.is_dir() {
            sync_tree(&entry.path())?;
        }
    }
    sync_dir(dir)
}

/// Checks that `dir` holds exactly the manifest's files, each with its digest and size.
pub fn check_tree(dir: &Path, files: &[FileEntry]) -> Result<()> {
    let mut found = Vec::new();
    walk(dir, "", &mut found)?;
    found.sort();
    let expected: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
    let actual: Vec<&str> = found.iter().map(|(p, _)| p.as_str()).collect();
    if expected != actual {
        return Err(Error::Inconsistent {
            reason: format!("{} does not hold the manifest's files", dir.display()),
        });
    }
    for (file, (_, path)) in files.iter().zip(&found) {
        let (cid, size) = Digest::of_file(path)?;
        store::check_digest(&file.cid, &cid)?;
        if size != file.size {
            return Err(Error::SizeMismatch { cid: file.cid.to_string(), expected: file.size, actual: size });
        }
    }
    Ok(())
}
