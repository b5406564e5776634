//! `audit verify`: walks the chain, checks every checkpoint's signature and the head file, and
//! names each line where the log was changed.

use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use ed25519_dalek::{Signature, VerifyingKey};

use super::{checkpoint_message, head_path, line_hash, Kind, Line, MAX_LINE};
use crate::error::{IoContext, Result, SecurityError};
use crate::fsutil::{hex, unhex};

/// What is wrong at a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProblemKind {
    /// Not an entry we read (bad JSON, a missing field, no final newline, too long).
    Malformed(String),
    /// `prev` is not the hash of the line before: that line was edited, or this one was (or an
    /// entry was put between them).
    ChainBroken,
    /// The sequence jumps: entries `first..=last` are missing.
    Removed { first: u64, last: u64 },
    /// The sequence goes back or repeats: an inserted, duplicated or moved entry.
    OutOfOrder { expected: u64 },
    /// A checkpoint whose signature does not verify under the trusted key: it, or a line before
    /// it since the previous checkpoint, was rewritten.
    BadSignature,
    /// The head file names a checkpoint the log does not have at that sequence number: the log
    /// was cut short or rewritten.
    HeadMissing { seq: u64 },
    /// The head file is unreadable or its signature does not verify.
    BadHead(String),
}

/// One finding: the 1-based line (0 for the head file) and the entry's sequence number if read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub seq: Option<u64>,
    pub kind: ProblemKind,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            0 => write!(f, "head file: ")?,
            n => match self.seq {
                Some(s) => write!(f, "line {n} (seq {s}): ")?,
                None => write!(f, "line {n}: ")?,
            },
        }
        match &self.kind {
            ProblemKind::Malformed(why) => write!(f, "malformed entry: {why}"),
            ProblemKind::ChainBroken => write!(
                f,
                "its prev hash is not the hash of line {}: that line or this one was edited, or an entry was put between them",
                self.line - 1
            ),
            ProblemKind::Removed { first, last } if first == last => write!(f, "entry seq {first} is missing (removed)"),
            ProblemKind::Removed { first, last } => write!(f, "entries seq {first} to {last} are missing (removed)"),
            ProblemKind::OutOfOrder { expected } => {
                write!(f, "out of order (expected seq {expected}): an inserted, duplicated or moved entry")
            }
            ProblemKind::BadSignature => {
                write!(f, "checkpoint signature does not verify: it or an entry since the previous checkpoint was rewritten")
            }
            ProblemKind::HeadMissing { seq } => {
                write!(f, "the signed head is checkpoint seq {seq}, which the log does not contain: the log was cut short or rewritten")
            }
            ProblemKind::BadHead(why) => write!(f, "{why}"),
        }
    }
}

/// The verifier's findings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditReport {
    /// Lines read.
    pub lines: usize,
    /// Checkpoints whose signature verified.
    pub checkpoints: usize,
    /// Lines after the newest valid checkpoint: intact as far as the chain shows, but not yet
    /// signed.
    pub unsealed: usize,
    pub problems: Vec<Problem>,
}

impl AuditReport {
    /// No line was found changed.
    pub fn is_intact(&self) -> bool {
        self.problems.is_empty()
    }

    /// Intact, and every line is covered by a signed checkpoint.
    pub fn is_sealed(&self) -> bool {
        self.is_intact() && self.unsealed == 0
    }
}

/// Verifies the log at `path` (and `<path>.head`, if present) against the trusted public key.
pub fn verify_log(path: &Path, key: &VerifyingKey) -> Result<AuditReport> {
    let file = File::open(path).at(path)?;
    let head_file = head_path(path);
    let head = match std::fs::read(&head_file) {
        Ok(bytes) => Some(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(SecurityError::Io { path: head_file, source: e }),
    };
    verify_reader(BufReader::new(file), head.as_deref(), key).at(path)
}

/// A parsed head file: the checkpoint's sequence number and line bytes.
struct Head {
    seq: u64,
    line: Vec<u8>,
    found: bool,
}

fn parse_head(bytes: &[u8], key: &VerifyingKey) -> std::result::Result<Head, String> {
    let line = bytes.strip_suffix(b"\n").ok_or("the head file does not end in a newline")?;
    let parsed: Line = serde_json::from_slice(line).map_err(|e| format!("the head file: {e}"))?;
    check_checkpoint(&parsed, key).map_err(|why| format!("the head file: {why}"))?;
    Ok(Head { seq: parsed.seq, line: line.to_vec(), found: false })
}

/// Checks a checkpoint's fields and signature.
fn check_checkpoint(line: &Line, key: &VerifyingKey) -> std::result::Result<(), String> {
    if line.kind != Kind::Checkpoint {
        return Err("not a checkpoint".into());
    }
    let prev = unhex::<32>(&line.prev).ok_or("prev is not 32 hex bytes")?;
    let sig = line.sig.as_deref().and_then(unhex::<64>).ok_or("sig is not 64 hex bytes")?;
    key.verify_strict(&checkpoint_message(line.seq, line.ts_ms, &prev), &Signature::from_bytes(&sig))
        .map_err(|_| "signature does not verify".to_string())
}

/// Checks an entry's fields for its kind.
fn check_shape(line: &Line) -> std::result::Result<(), String> {
    match line.kind {
        Kind::Event if line.actor.is_none() || line.action.is_none() => {
            Err("an event needs actor and action".into())
        }
        Kind::Event if line.sig.is_some() => Err("an event has no sig".into()),
        Kind::Checkpoint if line.actor.is_some() || line.action.is_some() || line.detail.is_some() => {
            Err("a checkpoint has only seq, ts_ms, prev and sig".into())
        }
        _ => Ok(()),
    }
}

/// The walk's state between lines.
struct Walk {
    report: AuditReport,
    prev_hash: [u8; 32],
    /// The highest sequence number read so far.
    prev_seq: Option<u64>,
    head: Option<Head>,
}

impl Walk {
    fn problem(&mut self, seq: Option<u64>, kind: ProblemKind) {
        self.report.problems.push(Problem { line: self.report.lines, seq, kind });
    }

    /// One line (without its newline).
    fn line(&mut self, bytes: &[u8], key: &VerifyingKey) {
        self.report.lines += 1;
        self.report.unsealed += 1;
        let hash = line_hash(bytes);
        let parsed = if bytes.len() > MAX_LINE {
            Err(format!("{} bytes, over the {MAX_LINE}-byte limit", bytes.len()))
        } else {
            serde_json::from_slice::<Line>(bytes)
                .map_err(|e| e.to_string())
                .and_then(|l| check_shape(&l).map(|()| l))
        };
        let line = match parsed {
            Ok(line) => line,
            Err(why) => {
                self.problem(None, ProblemKind::Malformed(why));
                self.prev_hash = hash;
                self.prev_seq = self.prev_seq.map(|s| s + 1);
                return;
            }
        };
        let seq = Some(line.seq);
        let expected = self.prev_seq.map_or(1, |s| s.saturating_add(1));
        if line.seq > expected {
            self.problem(seq, ProblemKind::Removed { first: expected, last: line.seq - 1 });
        } else if line.seq < expected {
            self.problem(seq, ProblemKind::OutOfOrder { expected });
        } else if line.prev != hex(&self.prev_hash) {
            self.problem(seq, ProblemKind::ChainBroken);
        }
        if line.kind == Kind::Checkpoint {
            match check_checkpoint(&line, key) {
                Ok(()) => {
                    self.report.checkpoints += 1;
                    self.report.unsealed = 0;
                }
                Err(_) => self.problem(seq, ProblemKind::BadSignature),
            }
        }
        if let Some(head) = self.head.as_mut().filter(|h| h.seq == line.seq) {
            head.found |= head.line == bytes;
        }
        self.prev_hash = hash;
        self.prev_seq = Some(self.prev_seq.map_or(line.seq, |s| s.max(line.seq)));
    }
}

/// Verifies a log read from `log`, with the head file's bytes if there is one.
pub fn verify_reader(
    mut log: impl BufRead,
    head: Option<&[u8]>,
    key: &VerifyingKey,
) -> std::io::Result<AuditReport> {
    let mut walk = Walk { report: AuditReport::default(), prev_hash: [0u8; 32], prev_seq: None, head: None };
    match head.map(|h| parse_head(h, key)) {
        Some(Ok(h)) => walk.head = Some(h),
        Some(Err(why)) => {
            walk.report.problems.push(Problem { line: 0, seq: None, kind: ProblemKind::BadHead(why) })
        }
        None => {}
    }
    let mut buf = Vec::with_capacity(1024);
    loop {
        buf.clear();
        // Bounded: a line longer than the limit is read only up to it (plus one byte to tell).
        let n = std::io::Read::take(&mut log, MAX_LINE as u64 + 2).read_until(b'\n', &mut buf)?;
        if n == 0 {
            break;
        }
        let complete = buf.last() == Some(&b'\n');
        if complete {
            buf.pop();
        } else if buf.len() > MAX_LINE {
            // Skip the rest of the over-long line.
            skip_line(&mut log)?;
        }
        walk.line(&buf, key);
        if !complete && buf.len() <= MAX_LINE {
            let seq = walk.prev_seq;
            walk.problem(
                seq,
                ProblemKind::Malformed("the last line has no newline (a torn write, or an edit)".into()),
            );
        }
    }
    if let Some(head) = walk.head.as_ref().filter(|h| !h.found) {
        let seq = head.seq;
        walk.report.problems.push(Problem {
            line: 0,
            seq: Some(seq),
            kind: ProblemKind::HeadMissing { seq },
        });
    }
    Ok(walk.report)
}

fn skip_line(log: &mut impl BufRead) -> std::io::Result<()> {
    loop {
        let buf = log.fill_buf()?;
        if buf.is_empty() {
            return Ok(());
        }
        match buf.iter().position(|&b| b == b'\n') {
            Some(i) => {
                log.consume(i + 1);
                return Ok(());
            }
            None => {
                let n = buf.len();
                log.consume(n);
            }
        }
    }
}
