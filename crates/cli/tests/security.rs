//! `keys`, `encrypt`, `decrypt` and `audit verify` as a user runs them.

mod common;

use std::path::Path;
use std::process::Command;

use common::{assert_fails_cleanly, run, stderr, stdout, truthgpt};

const PASS: &str = "a passphrase for tests";

fn with_ring(args: &[&str], ring: &Path) -> Command {
    let mut c = truthgpt(args);
    c.arg("--keyring").arg(ring).env("TRUTHGPT_KEYRING_PASSPHRASE", PASS);
    c
}

fn ok(mut c: impl std::borrow::BorrowMut<Command>) -> String {
    let c = c.borrow_mut();
    let out = run(c);
    assert!(out.status.success(), "{c:?} failed:\n{}", stderr(&out));
    stdout(&out)
}

#[test]
fn init_encrypt_rotate_retire_decrypt_and_verify_the_audit_log() {
    let dir = tempfile::tempdir().unwrap();
    let ring = dir.path().join("keys.json");
    let art = dir.path().join("artifacts");
    std::fs::create_dir(&art).unwrap();
    let plain = art.join("model.safetensors");
    let weights: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&plain, &weights).unwrap();

    let init = ok(with_ring(&["keys", "init", "--kdf-memory-mib", "1"], &ring));
    assert!(init.contains("audit public key"), "{init}");
    let first = ok(with_ring(&["keys", "list"], &ring));
    let old_id = first.split_whitespace().next().unwrap().to_string();
    ok(with_ring(&["encrypt", "--cipher", "aes-256-gcm"], &ring).arg(&plain));
    let sealed = art.join("model.safetensors.enc");
    assert!(std::fs::read(&sealed).unwrap().starts_with(b"TGPT-ENC"));

    let rotated = ok(with_ring(&["keys", "rotate"], &ring).arg(&art));
    assert!(rotated.contains("re-wrapped 1 file(s)"), "{rotated}");
    ok(with_ring(&["keys", "retire", &old_id], &ring).arg(&art));
    let list = ok(with_ring(&["keys", "list"], &ring));
    assert!(
        list.contains(&format!("{old_id} ")) && list.contains("retired") && list.contains("active"),
        "{list}"
    );

    let back = dir.path().join("back.bin");
    ok(with_ring(&["decrypt"], &ring).arg("--out").arg(&back).arg(&sealed));
    assert_eq!(std::fs::read(&back).unwrap(), weights);

    let public = ring.with_file_name("keys.json.audit.pub");
    let verified = ok(with_ring(&["audit", "verify"], &ring).arg("--public-key").arg(&public));
    assert!(verified.contains("0 problem(s)"), "{verified}");

    // Edit one entry: exit status 1, the line named.
    let log = ring.with_file_name("keys.json.audit.jsonl");
    let text = std::fs::read_to_string(&log).unwrap();
    std::fs::write(&log, text.replacen("keys.rotate", "keys.rotatE", 1)).unwrap();
    let out = run(with_ring(&["audit", "verify"], &ring).arg("--public-key").arg(&public));
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stdout(&out).contains("prev hash is not the hash of line"), "{}", stdout(&out));
}

#[test]
fn missing_or_wrong_passphrases_and_tampered_files_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let ring = dir.path().join("keys.json");
    let out = run(truthgpt(&["keys", "init", "--keyring"]).arg(&ring));
    assert!(assert_fails_cleanly(&out).contains("TRUTHGPT_KEYRING_PASSPHRASE"));
    ok(with_ring(&["keys", "init", "--kdf-memory-mib", "1"], &ring));
    let out = run(&mut with_ring(&["keys", "init", "--kdf-memory-mib", "1"], &ring));
    assert!(assert_fails_cleanly(&out).contains("already exists"));

    let pass_file = dir.path().join("pass");
    std::fs::write(&pass_file, "not it\n").unwrap();
    let out =
        run(truthgpt(&["keys", "list", "--keyring"]).arg(&ring).arg("--passphrase-file").arg(&pass_file));
    assert!(assert_fails_cleanly(&out).contains("wrong passphrase"));
    std::fs::write(&pass_file, format!("{PASS}\n")).unwrap();
    let listed =
        run(truthgpt(&["keys", "list", "--keyring"]).arg(&ring).arg("--passphrase-file").arg(&pass_file));
    assert!(listed.status.success(), "{}", stderr(&listed));

    let plain = dir.path().join("a.bin");
    std::fs::write(&plain, vec![5u8; 10_000]).unwrap();
    ok(with_ring(&["encrypt"], &ring).arg(&plain));
    let sealed = dir.path().join("a.bin.enc");
    let mut bytes = std::fs::read(&sealed).unwrap();
    bytes[5000] ^= 4;
    std::fs::write(&sealed, &bytes).unwrap();
    let back = dir.path().join("back");
    let out = run(with_ring(&["decrypt"], &ring).arg("--out").arg(&back).arg(&sealed));
    let err = assert_fails_cleanly(&out);
    assert!(err.contains("a.bin.enc") && err.contains("chunk 0"), "{err}");
    assert!(!back.exists());
}
