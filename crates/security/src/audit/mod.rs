//! A tamper-evident audit log: JSON lines, each carrying the SHA-256 of the line before it, with
//! Ed25519-signed checkpoints of the head every so many entries.
//!
//! ```text
//! {"seq":1,"ts_ms":1764650000000,"prev":"00…00","kind":"event","actor":"cli","action":"keys.init","detail":{…}}
//! {"seq":2,"ts_ms":1764650000100,"prev":"<sha256 of line 1>","kind":"event",…}
//! {"seq":3,"ts_ms":1764650000200,"prev":"<sha256 of line 2>","kind":"checkpoint","sig":"<ed25519, hex>"}
//! ```
//!
//! `prev` is the SHA-256 of the previous line's exact bytes (without its newline); the first
//! line's is 32 zero bytes. A checkpoint signs `"truthgpt-audit-checkpoint-v1\0" || seq || ts_ms ||
//! prev` (integers big-endian), so it vouches for every line before it. The newest checkpoint is
//! also kept in `<log>.head` (replaced atomically): cutting entries off the end of the log,
//! checkpoint included, then shows as a head the log does not contain.
//!
//! What this detects and what it cannot: [`verify`](verify::verify_log) finds any edited,
//! removed, inserted or reordered line before the newest checkpoint, and names it. Lines after
//! the newest checkpoint are reported as not yet sealed: someone who can write the file could
//! append or change those undetected until the next checkpoint. Replacing the log *and* its
//! head with an older, consistent pair is undetectable locally; ship checkpoints elsewhere
//! (a sink) for that.

pub mod verify;

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use ed25519_dalek::{Signer, SigningKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{IoContext, Result, SecurityError};
use crate::fsutil::{self, hex};

pub use verify::{verify_log, verify_reader, AuditReport, Problem, ProblemKind};

/// Longest line the writer writes and the verifier reads.
pub const MAX_LINE: usize = 16 << 10;
const CHECKPOINT_DOMAIN: &[u8] = b"truthgpt-audit-checkpoint-v1\0";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Kind {
    Event,
    Checkpoint,
}

/// One line of the log.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Line {
    pub seq: u64,
    pub ts_ms: u64,
    pub prev: String,
    pub kind: Kind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sig: Option<String>,
}

/// What a checkpoint signs.
pub(crate) fn checkpoint_message(seq: u64, ts_ms: u64, prev: &[u8; 32]) -> Vec<u8> {
    let mut m = Vec::with_capacity(CHECKPOINT_DOMAIN.len() + 48);
    m.extend_from_slice(CHECKPOINT_DOMAIN);
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(&ts_ms.to_be_bytes());
    m.extend_from_slice(prev);
    m
}

pub(crate) fn line_hash(line: &[u8]) -> [u8; 32] {
    Sha256::digest(line).into()
}

/// `<log>.head`, where the newest checkpoint is copied.
pub fn head_path(log: &Path) -> PathBuf {
    let mut p = log.as_os_str().to_owned();
    p.push(".head");
    PathBuf::from(p)
}

/// Appends to an audit log, holding an exclusive lock on it. Every append is fsynced.
pub struct AuditWriter {
    file: File,
    path: PathBuf,
    head: [u8; 32],
    next_seq: u64,
    since_checkpoint: u64,
    /// Whether the newest line is a checkpoint.
    sealed: bool,
    every: u64,
    key: SigningKey,
}

impl AuditWriter {
    /// Opens (or creates) the log at `path`, continuing its chain. A checkpoint is written after
    /// every `checkpoint_every` events (0: only when [`AuditWriter::checkpoint`] is called).
    pub fn open(path: &Path, key: SigningKey, checkpoint_every: u64) -> Result<AuditWriter> {
        let mut file = OpenOptions::new().create(true).append(true).read(true).open(path).at(path)?;
        file.lock().at(path)?;
        let (head, next_seq, sealed) = match last_line(&mut file, path)? {
            None => ([0u8; 32], 1, false),
            Some(bytes) => {
                let line: Line = serde_json::from_slice(&bytes)
                    .map_err(|e| audit_err(path, format!("the last entry: {e}")))?;
                (line_hash(&bytes), line.seq.saturating_add(1), line.kind == Kind::Checkpoint)
            }
        };
        let path = path.to_path_buf();
        Ok(AuditWriter {
            file,
            path,
            head,
            next_seq,
            since_checkpoint: 0,
            sealed,
            every: checkpoint_every,
            key,
        })
    }

    /// Appends an event; returns its sequence number.
    pub fn append(&mut self, actor: &str, action: &str, detail: serde_json::Value) -> Result<u64> {
        let seq = self.write(Kind::Event, Some(actor), Some(action), Some(detail))?;
        self.since_checkpoint += 1;
        if self.every > 0 && self.since_checkpoint >= self.every {
            self.checkpoint()?;
        }
        Ok(seq)
    }

    /// Signs the head now (a no-op if the newest line already is a checkpoint); returns the
    /// checkpoint's sequence number.
    pub fn checkpoint(&mut self) -> Result<u64> {
        if self.sealed {
            return Ok(self.next_seq - 1);
        }
        let seq = self.write(Kind::Checkpoint, None, None, None)?;
        self.since_checkpoint = 0;
        Ok(seq)
    }

    fn write(
        &mut self,
        kind: Kind,
        actor: Option<&str>,
        action: Option<&str>,
        detail: Option<serde_json::Value>,
    ) -> Result<u64> {
        let seq = self.next_seq;
        let ts_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let sig = (kind == Kind::Checkpoint)
            .then(|| hex(&self.key.sign(&checkpoint_message(seq, ts_ms, &self.head)).to_bytes()));
        let line = Line {
            seq,
            ts_ms,
            prev: hex(&self.head),
            kind,
            actor: actor.map(str::to_string),
            action: action.map(str::to_string),
            detail,
            sig,
        };
        let mut bytes = serde_json::to_vec(&line).map_err(|e| audit_err(&self.path, e.to_string()))?;
        if bytes.len() > MAX_LINE {
            return Err(audit_err(
                &self.path,
                format!("an entry of {} bytes is over the {MAX_LINE}-byte limit", bytes.len()),
            ));
        }
        let hash = line_hash(&bytes);
        bytes.push(b'\n');
        self.file.write_all(&bytes).at(&self.path)?;
        self.file.sync_data().at(&self.path)?;
        if kind == Kind::Checkpoint {
            let head = head_path(&self.path);
            fsutil::atomic_write(&head, |w| w.write_all(&bytes).at(&head))?;
        }
        self.head = hash;
        self.next_seq += 1;
        self.sealed = kind == Kind::Checkpoint;
        Ok(seq)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn audit_err(path: &Path, reason: String) -> SecurityError {
    SecurityError::Audit { path: path.to_path_buf(), reason }
}

/// The bytes of the file's last line (without its newline), reading only its end.
fn last_line(file: &mut File, path: &Path) -> Result<Option<Vec<u8>>> {
    let len = file.metadata().at(path)?.len();
    if len == 0 {
        return Ok(None);
    }
    let start = len.saturating_sub(MAX_LINE as u64 + 1);
    file.seek(SeekFrom::Start(start)).at(path)?;
    let mut tail = Vec::with_capacity((len - start) as usize);
    file.read_to_end(&mut tail).at(path)?;
    if tail.last() != Some(&b'\n') {
        return Err(audit_err(
            path,
            "the log ends in a partial entry (a torn write?); run `audit verify`".into(),
        ));
    }
    tail.pop();
    match tail.iter().rposition(|&b| b == b'\n') {
        Some(i) => Ok(Some(tail[i + 1..].to_vec())),
        None if start == 0 => Ok(Some(tail)),
        None => Err(audit_err(path, format!("the last entry is over the {MAX_LINE}-byte limit"))),
    }
}

/// The audit public key as 64 hex digits (what `keys init` prints).
pub fn public_key_hex(key: &ed25519_dalek::VerifyingKey) -> String {
    hex(key.as_bytes())
}

/// An audit public key from 64 hex digits (surrounding whitespace ignored).
pub fn parse_public_key(text: &str) -> Result<ed25519_dalek::VerifyingKey> {
    let bytes = crate::fsutil::unhex::<32>(text.trim())
        .ok_or_else(|| SecurityError::AuditKey("not 64 hex digits".into()))?;
    ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|e| SecurityError::AuditKey(e.to_string()))
}
