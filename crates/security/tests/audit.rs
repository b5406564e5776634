//! The audit log: edits, deletions, insertions and reorders at every position of a 1,000-line log
//! are detected, and the verifier names the line.

use ed25519_dalek::SigningKey;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use truthgpt_security::audit::{head_path, verify_reader, ProblemKind};
use truthgpt_security::{verify_log, AuditReport, AuditWriter};

const LINES: usize = 1000;

fn key() -> SigningKey {
    SigningKey::from_bytes(&[7u8; 32])
}

/// A 1,000-line log: 99 events then a checkpoint, ten times; and its head file.
fn log() -> (tempfile::TempDir, Vec<String>, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let mut w = AuditWriter::open(&path, key(), 99).unwrap();
    for i in 0..990 {
        w.append("admin", "keys.rotate", json!({"i": i, "file": format!("model-{i}.enc")})).unwrap();
    }
    drop(w);
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    assert_eq!(lines.len(), LINES);
    let head = std::fs::read(head_path(&path)).unwrap();
    (dir, lines, head)
}

fn verify(lines: &[String], head: &[u8]) -> AuditReport {
    let mut text = lines.join("\n");
    text.push('\n');
    verify_reader(text.as_bytes(), Some(head), &key().verifying_key()).unwrap()
}

fn hash(line: &str) -> String {
    Sha256::digest(line.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

fn set(line: &str, field: &str, value: Value) -> String {
    let mut v: Value = serde_json::from_str(line).unwrap();
    v[field] = value;
    serde_json::to_string(&v).unwrap()
}

fn is_checkpoint(line: &str) -> bool {
    line.contains("\"kind\":\"checkpoint\"")
}

/// Whether some problem is reported at one of these 1-based lines.
fn reported_at(r: &AuditReport, lines: &[usize]) -> bool {
    r.problems.iter().any(|p| lines.contains(&p.line))
}

#[test]
fn the_untouched_log_verifies_sealed() {
    let (dir, lines, head) = log();
    let r = verify(&lines, &head);
    assert!(r.is_sealed(), "{:?}", r.problems);
    assert_eq!((r.lines, r.checkpoints, r.unsealed), (LINES, 10, 0));
    let from_file = verify_log(&dir.path().join("audit.jsonl"), &key().verifying_key()).unwrap();
    assert_eq!(from_file, r);
}

#[test]
fn an_edit_at_every_position_is_detected_and_named() {
    let (_dir, lines, head) = log();
    for i in 0..LINES {
        let mut bad = lines.clone();
        let ts = serde_json::from_str::<Value>(&bad[i]).unwrap()["ts_ms"].as_u64().unwrap();
        bad[i] = set(&bad[i], "ts_ms", (ts + 1).into());
        let r = verify(&bad, &head);
        // A checkpoint's own signature fails; an event shows in its successor's prev hash (or, for
        // the last line, in the head file).
        assert!(reported_at(&r, &[i + 1, i + 2]), "edit at line {}: {:?}", i + 1, r.problems);
        if i == LINES - 1 {
            assert!(r.problems.iter().any(|p| matches!(p.kind, ProblemKind::HeadMissing { .. })));
        }
    }
}

#[test]
fn a_deletion_at_every_position_is_detected_and_named() {
    let (_dir, lines, head) = log();
    for i in 0..LINES {
        let mut bad = lines.clone();
        bad.remove(i);
        let r = verify(&bad, &head);
        assert!(!r.is_intact(), "deletion of line {}", i + 1);
        if i + 1 < LINES {
            let p = r
                .problems
                .iter()
                .find(|p| p.line == i + 1)
                .unwrap_or_else(|| panic!("{i}: {:?}", r.problems));
            let seq = i as u64 + 1;
            assert_eq!(p.kind, ProblemKind::Removed { first: seq, last: seq }, "deletion of line {}", i + 1);
        } else {
            assert!(r.problems.iter().any(|p| p.kind == ProblemKind::HeadMissing { seq: LINES as u64 }));
        }
    }
}

#[test]
fn an_insertion_at_every_position_is_detected_and_named() {
    let (_dir, lines, head) = log();
    for i in 0..=LINES {
        // The strongest forger without the signing key: a well-formed event with the right
        // sequence number and the true hash of the line before it.
        let prev = if i == 0 { "0".repeat(64) } else { hash(&lines[i - 1]) };
        let forged = json!({"seq": i + 1, "ts_ms": 1, "prev": prev, "kind": "event", "actor": "mallory", "action": "alias.move", "detail": {}});
        let mut bad = lines.clone();
        bad.insert(i, forged.to_string());
        let r = verify(&bad, &head);
        if i < LINES {
            assert!(reported_at(&r, &[i + 2]), "insertion before line {}: {:?}", i + 1, r.problems);
        } else {
            // After the newest checkpoint: not signed, which the report says.
            assert!(r.is_intact() && !r.is_sealed() && r.unsealed == 1, "{r:?}");
        }
    }
}

#[test]
fn a_reorder_at_every_position_is_detected_and_named() {
    let (_dir, lines, head) = log();
    for i in 0..LINES - 1 {
        let mut bad = lines.clone();
        bad.swap(i, i + 1);
        let r = verify(&bad, &head);
        assert!(reported_at(&r, &[i + 1]), "swap of lines {} and {}: {:?}", i + 1, i + 2, r.problems);
    }
}

#[test]
fn an_edit_with_the_chain_recomputed_is_caught_by_the_next_checkpoint() {
    let (_dir, lines, head) = log();
    for i in (0..LINES).filter(|&i| !is_checkpoint(&lines[i])) {
        let mut bad = lines.clone();
        bad[i] = set(&bad[i], "actor", "mallory".into());
        for j in i + 1..LINES {
            let prev = hash(&bad[j - 1]);
            bad[j] = set(&bad[j], "prev", prev.into());
        }
        let r = verify(&bad, &head);
        let next_checkpoint = (i..LINES).find(|&j| is_checkpoint(&lines[j])).unwrap() + 1;
        let p = r.problems.iter().find(|p| p.kind == ProblemKind::BadSignature);
        assert_eq!(p.map(|p| p.line), Some(next_checkpoint), "edit of line {}: {:?}", i + 1, r.problems);
    }
}

#[test]
fn another_public_key_trusts_no_checkpoint() {
    let (_dir, lines, head) = log();
    let mut text = lines.join("\n");
    text.push('\n');
    let other = SigningKey::from_bytes(&[8u8; 32]).verifying_key();
    let r = verify_reader(text.as_bytes(), Some(&head), &other).unwrap();
    assert_eq!(r.checkpoints, 0);
    assert!(r.problems.iter().filter(|p| p.kind == ProblemKind::BadSignature).count() == 10);
    assert!(r.problems.iter().any(|p| p.line == 0), "the head file's signature fails too");
}

#[test]
fn a_reopened_writer_continues_the_chain_and_a_torn_line_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    for round in 0..3 {
        let mut w = AuditWriter::open(&path, key(), 0).unwrap();
        w.append("cli", "keys.init", json!({"round": round})).unwrap();
        assert_eq!(w.checkpoint().unwrap(), round * 2 + 2);
        assert_eq!(w.checkpoint().unwrap(), round * 2 + 2, "no second checkpoint of the same head");
    }
    let r = verify_log(&path, &key().verifying_key()).unwrap();
    assert!(r.is_sealed(), "{:?}", r.problems);
    assert_eq!((r.lines, r.checkpoints), (6, 3));
    let mut text = std::fs::read(&path).unwrap();
    text.extend_from_slice(b"{\"seq\":7,");
    std::fs::write(&path, &text).unwrap();
    assert!(AuditWriter::open(&path, key(), 0).is_err(), "a torn last line is not written after");
    let r = verify_log(&path, &key().verifying_key()).unwrap();
    assert!(
        r.problems.iter().any(|p| p.line == 7 && matches!(p.kind, ProblemKind::Malformed(_))),
        "{:?}",
        r.problems
    );
    let shown = r.problems[0].to_string();
    assert!(shown.starts_with("line 7"), "{shown}");
}

#[test]
fn junk_lines_are_reported_not_panicked_on() {
    let (_dir, mut lines, head) = log();
    lines[10] = "not json".into();
    lines[20] = "{}".into();
    lines[30] = set(&lines[30], "kind", "checkpoint".into());
    lines[40] = "x".repeat(40_000);
    let r = verify(&lines, &head);
    for line in [11, 21, 31, 41] {
        assert!(
            r.problems.iter().any(|p| p.line == line && matches!(p.kind, ProblemKind::Malformed(_))),
            "{line}: {:?}",
            r.problems
        );
    }
    let r = verify_reader(&b"\n\n"[..], Some(b"garbage"), &key().verifying_key()).unwrap();
    assert!(!r.is_intact());
}
