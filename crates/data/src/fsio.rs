//! Durable writes: a file is written beside its destination, fsynced, renamed over it, and the
//! directory fsynced, so a crash leaves either the old file or the new one, never a torn one.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Replaces `path` with `bytes` atomically, creating parent directories as needed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    fs::create_dir_all(parent)?;
    let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    sync_dir(parent)
}

/// An I/O error and the path it struck.
#[derive(Debug)]
pub struct PathError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

trait At<T> {
    fn at(self, path: &Path) -> Result<T, PathError>;
}

impl<T> At<T> for std::io::Result<T> {
    fn at(self, path: &Path) -> Result<T, PathError> {
        self.map_err(|source| PathError { path: path.to_path_buf(), source })
    }
}

/// What [`write_dir_atomic`] does with a directory already at its destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Move it aside and replace it; a crash between the two renames leaves it under `.NAME.old-PID`.
    Replace,
    /// Fail with `AlreadyExists`, also when it appeared while the files were being written.
    Refuse,
}

/// Writes directory `dir` holding `files` (name, bytes) atomically, as [`build_dir_atomic`] does.
pub fn write_dir_atomic<B: AsRef<[u8]>>(
    dir: &Path,
    files: &[(&str, B)],
    existing: Existing,
) -> Result<(), PathError> {
    build_dir_atomic(dir, existing, |tmp| {
        for (file, bytes) in files {
            let path = tmp.join(file);
            write_synced(&path, bytes.as_ref()).at(&path)?;
        }
        Ok(())
    })
}

/// Builds directory `dir` atomically: `build` fills a hidden sibling (it must fsync the files it
/// writes), which is fsynced and renamed into place, so `dir` is either absent, the old one, or
/// complete. On failure the temporary directory is removed.
pub fn build_dir_atomic<T, E: From<PathError>>(
    dir: &Path,
    existing: Existing,
    build: impl FnOnce(&Path) -> Result<T, E>,
) -> Result<T, E> {
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    fs::create_dir_all(parent).at(parent)?;
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("dir");
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).at(&tmp)?;
    }
    fs::create_dir(&tmp).at(&tmp)?;
    let result: Result<T, E> = (|| {
        let value = build(&tmp)?;
        sync_dir(&tmp).at(&tmp)?;
        match (dir.exists(), existing) {
            (true, Existing::Refuse) => {
                Err(std::io::Error::from(std::io::ErrorKind::AlreadyExists)).at(dir)?
            }
            (true, Existing::Replace) => {
                let old = parent.join(format!(".{name}.old-{}", std::process::id()));
                fs::rename(dir, &old).at(dir)?;
                fs::rename(&tmp, dir).at(dir)?;
                fs::remove_dir_all(&old).at(&old)?;
            }
            (false, _) => fs::rename(&tmp, dir).at(dir)?,
        }
        Ok(value)
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    let value = result?;
    sync_dir(parent).at(parent)?;
    Ok(value)
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = fs::File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Makes a directory's entries (a rename, a new file) durable.
pub fn sync_dir(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    fs::File::open(path)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// SHA-256 of a file, streamed in 1 MiB reads.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = fs::File::open(path)?;
    let (mut hasher, mut buf) = (Sha256::new(), vec![0u8; 1 << 20]);
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(hex(&hasher.finalize()));
        }
        hasher.update(&buf[..n]);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_replace_or_refuse_and_leave_no_temporary() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("model");
        write_dir_atomic(&dir, &[("a", b"1")], Existing::Refuse).unwrap();
        write_dir_atomic(&dir, &[("b", b"2")], Existing::Replace).unwrap();
        assert!(!dir.join("a").exists() && fs::read(dir.join("b")).unwrap() == b"2");
        let err = write_dir_atomic(&dir, &[("c", b"3")], Existing::Refuse).unwrap_err();
        assert_eq!(err.source.kind(), std::io::ErrorKind::AlreadyExists);
        assert!(!dir.join("c").exists(), "a refused write leaves the directory as it was");
        // A file name that cannot be created fails mid-way; nothing is left behind.
        assert!(write_dir_atomic(
            &root.path().join("other"),
            &[("x", b""), ("no/such/dir", b"")],
            Existing::Refuse
        )
        .is_err());
        let names: Vec<_> = fs::read_dir(root.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["model"]);
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/file.txt");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let names: Vec<_> =
            fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["file.txt"]);
        assert_eq!(sha256_file(&path).unwrap(), sha256_hex(b"two"));
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
