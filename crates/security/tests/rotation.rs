//! Key rotation: a new KEK, every file re-wrapped without touching its chunks, the old key retired.

mod common;

use common::{data, keyring, names_file, PASS};
use truthgpt_security::header::Header;
use truthgpt_security::{
    decrypt_file, encrypt_file, read_header, rewrap_file, Cipher, EncryptOptions, KeyState, Keyring, Rewrap,
    SecurityError,
};

#[test]
fn after_rotate_and_retire_every_artifact_decrypts_and_the_old_key_alone_decrypts_nothing() {
    let (dir, mut ring) = keyring();
    let ring_path = ring.path().to_path_buf();
    let old_id = ring.active().id.clone();
    // Five artifacts, both ciphers, various sizes and chunkings.
    let mut files = Vec::new();
    for i in 0..5 {
        let plain = data(1000 * i + 17, i as u64);
        let src = dir.path().join(format!("artifact-{i}.bin"));
        let enc = dir.path().join(format!("artifact-{i}.bin.enc"));
        std::fs::write(&src, &plain).unwrap();
        let opts = EncryptOptions { cipher: Cipher::ALL[i % 2], chunk_size: 64 << (i % 3) };
        encrypt_file(&ring, opts, &src, &enc).unwrap();
        files.push((enc, plain));
    }
    // The old keyring, as an attacker who kept a copy of it (and its passphrase) would have it.
    let old_copy = dir.path().join("old-keyring.json");
    std::fs::copy(&ring_path, &old_copy).unwrap();
    let before: Vec<Vec<u8>> = files.iter().map(|(f, _)| std::fs::read(f).unwrap()).collect();

    let new_id = ring.rotate().unwrap();
    ring.save().unwrap();
    assert_ne!(new_id, old_id);
    for (f, _) in &files {
        assert_eq!(
            rewrap_file(&ring, f).unwrap(),
            Rewrap::Rewrapped { from: old_id.clone(), to: new_id.clone() }
        );
        assert_eq!(rewrap_file(&ring, f).unwrap(), Rewrap::Unchanged { kek_id: new_id.clone() });
    }
    // Only the header changed: the chunks are byte for byte the same.
    for ((f, _), old) in files.iter().zip(&before) {
        let new = std::fs::read(f).unwrap();
        let (h_old, h_new) = (header_of(old).encoded_len(), header_of(&new).encoded_len());
        assert_eq!(old[h_old..], new[h_new..], "{}", f.display());
        assert_eq!(header_of(old).fixed, header_of(&new).fixed);
        assert_eq!(read_header(f).unwrap().slot.kek_id, new_id);
    }
    ring.retire(&old_id).unwrap();
    ring.save().unwrap();
    drop(ring);

    // Every artifact still decrypts with the rotated keyring, reopened from disk.
    let ring = Keyring::open(&ring_path, PASS).unwrap();
    let states: Vec<_> = ring.keys().iter().map(|k| (k.id.clone(), k.state)).collect();
    assert_eq!(states, vec![(old_id.clone(), KeyState::Retired), (new_id.clone(), KeyState::Active)]);
    for (i, (f, plain)) in files.iter().enumerate() {
        let out = dir.path().join(format!("out-{i}"));
        decrypt_file(&ring, f, &out).unwrap();
        assert_eq!(&std::fs::read(&out).unwrap(), plain);
    }
    // The old key alone decrypts nothing.
    let old = Keyring::open(&old_copy, PASS).unwrap();
    for (f, _) in &files {
        let err = decrypt_file(&old, f, &dir.path().join("nope")).unwrap_err();
        assert!(matches!(&err, SecurityError::UnknownKey { id, .. } if *id == new_id), "{err}");
        assert!(names_file(&err, f));
    }
    // And an old copy of a file, still naming the retired key, no longer decrypts.
    let stale = dir.path().join("stale.enc");
    std::fs::write(&stale, &before[0]).unwrap();
    let err = decrypt_file(&ring, &stale, &dir.path().join("nope")).unwrap_err();
    assert!(matches!(&err, SecurityError::RetiredKey { id, .. } if *id == old_id), "{err}");
}

fn header_of(bytes: &[u8]) -> Header {
    Header::read(&mut &bytes[..], std::path::Path::new("mem")).unwrap()
}

#[test]
fn old_keys_decrypt_until_retired() {
    let (dir, mut ring) = keyring();
    let src = dir.path().join("a");
    let enc = dir.path().join("a.enc");
    std::fs::write(&src, b"weights").unwrap();
    encrypt_file(&ring, EncryptOptions::default(), &src, &enc).unwrap();
    let first = ring.active().id.clone();
    ring.rotate().unwrap();
    ring.rotate().unwrap();
    let states: Vec<KeyState> = ring.keys().iter().map(|k| k.state).collect();
    assert_eq!(states, [KeyState::DecryptOnly, KeyState::DecryptOnly, KeyState::Active]);
    // Not re-wrapped: still decrypts under the decrypt-only key.
    decrypt_file(&ring, &enc, &dir.path().join("out")).unwrap();
    assert_eq!(std::fs::read(dir.path().join("out")).unwrap(), b"weights");
    ring.retire(&first).unwrap();
    let err = decrypt_file(&ring, &enc, &dir.path().join("out2")).unwrap_err();
    assert!(matches!(err, SecurityError::RetiredKey { .. }), "{err}");
    // A rewrap cannot rescue it either.
    assert!(matches!(rewrap_file(&ring, &enc), Err(SecurityError::RetiredKey { .. })));
}

#[test]
fn key_state_rules_are_enforced() {
    let (dir, mut ring) = keyring();
    let active = ring.active().id.clone();
    assert!(matches!(ring.retire(&active), Err(SecurityError::KeyState { .. })));
    assert!(matches!(ring.retire("kek-9-00000000"), Err(SecurityError::NoSuchKey { .. })));
    ring.rotate().unwrap();
    ring.retire(&active).unwrap();
    assert!(matches!(ring.retire(&active), Err(SecurityError::KeyState { .. })));
    ring.save().unwrap();
    drop(ring);
    // Opened read-only, it cannot be changed.
    let mut ro = Keyring::open(&dir.path().join("keyring.json"), PASS).unwrap();
    assert!(matches!(ro.rotate(), Err(SecurityError::ReadOnly { .. })));
    assert!(matches!(ro.save(), Err(SecurityError::ReadOnly { .. })));
    // Init never overwrites.
    let again =
        Keyring::create(&dir.path().join("keyring.json"), PASS, truthgpt_security::KdfParams::INSECURE_FAST);
    assert!(matches!(again, Err(SecurityError::KeyringExists { .. })));
}

#[test]
fn a_tampered_key_slot_is_caught() {
    let (dir, ring) = keyring();
    let src = dir.path().join("a");
    let enc = dir.path().join("a.enc");
    std::fs::write(&src, data(100, 1)).unwrap();
    encrypt_file(&ring, EncryptOptions::default(), &src, &enc).unwrap();
    let bytes = std::fs::read(&enc).unwrap();
    let h = header_of(&bytes).encoded_len();
    for i in 0..h {
        let mut bad = bytes.clone();
        bad[i] ^= 0x80;
        std::fs::write(&enc, &bad).unwrap();
        assert!(
            rewrap_file(&ring, &enc).is_err() || decrypt_file(&ring, &enc, &dir.path().join("o")).is_err(),
            "byte {i}"
        );
    }
}
