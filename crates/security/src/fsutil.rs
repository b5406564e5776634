//! Small shared helpers: random bytes from the OS, hex, and atomic file replacement.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{IoContext, Result, SecurityError};

/// `N` bytes from the operating system's CSPRNG (getrandom).
pub(crate) fn random<const N: usize>() -> Result<[u8; N]> {
    let mut out = [0u8; N];
    getrandom::getrandom(&mut out).map_err(|e| SecurityError::Random(e.to_string()))?;
    Ok(out)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Lower- or upper-case hex of exactly `N` bytes; `None` for anything else.
pub(crate) fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let v = unhex_vec(s)?;
    v.try_into().ok()
}

pub(crate) fn unhex_vec(s: &str) -> Option<Vec<u8>> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let s = s.as_bytes();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    s.chunks_exact(2).map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?)).collect()
}

/// Replaces `path` atomically with what `fill` writes: a temporary file in the same directory,
/// written, fsynced, renamed over `path`, then the directory fsynced. A failure at any point
/// leaves `path` as it was (and no temporary file behind).
pub(crate) fn atomic_write(
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<&File>) -> Result<()>,
) -> Result<()> {
    let dir = parent_dir(path);
    let tmp = tempfile::Builder::new().prefix(".truthgpt-tmp-").tempfile_in(&dir).at(&dir)?;
    {
        let mut w = BufWriter::with_capacity(1 << 20, tmp.as_file());
        fill(&mut w)?;
        w.flush().at(tmp.path())?;
    }
    tmp.as_file().sync_all().at(tmp.path())?;
    tmp.persist(path).map_err(|e| SecurityError::Io { path: path.to_path_buf(), source: e.error })?;
    sync_dir(&dir)
}

/// The directory holding `path` (`.` for a bare file name).
pub(crate) fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// fsync of a directory, so a rename in it survives a crash (a no-op where directories cannot be
/// opened, as on Windows).
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    File::open(dir).and_then(|d| d.sync_all()).at(dir)?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Restricts a file to its owner (0600) where permissions exist.
pub(crate) fn owner_only(file: &File, path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600)).at(path)?;
    }
    #[cfg(not(unix))]
    let _ = (file, path);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_refuses_junk() {
        let bytes = [0u8, 1, 0xab, 0xff];
        assert_eq!(hex(&bytes), "0001abff");
        assert_eq!(unhex::<4>("0001ABff"), Some(bytes));
        assert_eq!(unhex::<4>("0001abf"), None);
        assert_eq!(unhex::<4>("0001abfg"), None);
        assert_eq!(unhex::<3>("0001abff"), None);
    }
}
