//! Documents from disk. A `.jsonl`/`.ndjson` file holds one document per line (a JSON object whose
//! configured field is the text); any other file is one document; a directory is every text,
//! Markdown and JSONL file under it, in sorted path order so runs are reproducible.

use std::fs;
use std::path::{Path, PathBuf};

use crate::DataError;

const TEXT_EXTENSIONS: &[&str] = &["txt", "text", "md"];
const JSONL_EXTENSIONS: &[&str] = &["jsonl", "ndjson"];

/// What a corpus held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CorpusStats {
    pub files: usize,
    pub documents: usize,
    pub bytes: u64,
}

/// Calls `f` on every non-blank document under `path`.
pub fn for_each_document(
    path: &Path,
    jsonl_field: &str,
    mut f: impl FnMut(&str) -> Result<(), DataError>,
) -> Result<CorpusStats, DataError> {
    if !path.exists() {
        return Err(DataError::Missing { path: path.to_path_buf() });
    }
    let files = if path.is_dir() { files_under(path)? } else { vec![path.to_path_buf()] };
    let mut stats = CorpusStats::default();
    for file in &files {
        stats.files += 1;
        let bytes = fs::read(file).map_err(DataError::io(file))?;
        let mut document = |doc: &str| -> Result<(), DataError> {
            if !doc.trim().is_empty() {
                stats.documents += 1;
                stats.bytes += doc.len() as u64;
                f(doc)?;
            }
            Ok(())
        };
        if has_extension(file, JSONL_EXTENSIONS) {
            // Line by line, so that bad UTF-8 is reported with its line like any other bad line.
            for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
                let text = std::str::from_utf8(line)
                    .map_err(|_| "not UTF-8 text".to_string())
                    .and_then(|line| {
                        if line.trim().is_empty() {
                            Ok(None)
                        } else {
                            jsonl_text(line, jsonl_field).map(Some)
                        }
                    })
                    .map_err(|problem| DataError::Jsonl { path: file.clone(), line: i + 1, problem })?;
                if let Some(text) = text {
                    document(&text)?;
                }
            }
        } else {
            let text = std::str::from_utf8(&bytes)
                .map_err(|e| DataError::NotUtf8 { path: file.clone(), offset: e.valid_up_to() })?;
            document(text)?;
        }
    }
    if stats.bytes == 0 {
        return Err(DataError::EmptyCorpus { path: path.to_path_buf() });
    }
    Ok(stats)
}

fn jsonl_text(line: &str, field: &str) -> Result<String, String> {
    let value: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"))?;
    match value.get(field) {
        Some(serde_json::Value::String(text)) => Ok(text.clone()),
        Some(other) => Err(format!("field \"{field}\" is not a string but {other}")),
        None if value.is_object() => Err(format!("no field \"{field}\" (set data.jsonl_field)")),
        None => Err("not a JSON object".into()),
    }
}

fn has_extension(path: &Path, extensions: &[&str]) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| extensions.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// Text and JSONL files under `dir`, recursively, skipping hidden entries, sorted.
fn files_under(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    // Directories are followed through symlinks, so a link back up the tree must not loop.
    let mut visited = std::collections::HashSet::new();
    while let Some(dir) = pending.pop() {
        if !visited.insert(fs::canonicalize(&dir).map_err(DataError::io(&dir))?) {
            continue;
        }
        for entry in fs::read_dir(&dir).map_err(DataError::io(&dir))? {
            let path = entry.map_err(DataError::io(&dir))?.path();
            if path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')) {
                continue;
            }
            if path.is_dir() {
                pending.push(path);
            } else if has_extension(&path, TEXT_EXTENSIONS) || has_extension(&path, JSONL_EXTENSIONS) {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}
