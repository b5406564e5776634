//! Bad input gets a clear error, never a panic.

mod common;

use common::{data, decrypt, encrypt, keyring, label, names_file, PASS};
use proptest::prelude::*;
use truthgpt_security::{Cipher, KdfParams, Keyring, SecurityError};

#[test]
fn garbage_and_plain_files_are_not_encrypted_files() {
    let (_dir, ring) = keyring();
    for input in [&b""[..], b"TGPT", b"{\"not\": \"ours\"}", &[0u8; 200]] {
        let err = decrypt(&ring, input).unwrap_err();
        assert!(matches!(err, SecurityError::NotEncrypted { .. } | SecurityError::Truncated { .. }), "{err}");
        assert!(names_file(&err, &label()), "{err}");
    }
}

#[test]
fn an_unknown_version_cipher_or_reserved_byte_is_named() {
    let (_dir, ring) = keyring();
    let sealed = encrypt(&ring, Cipher::ChaCha20Poly1305, 64, &data(10, 1));
    let mut v2 = sealed.clone();
    v2[9] = 2;
    let err = decrypt(&ring, &v2).unwrap_err();
    assert!(matches!(err, SecurityError::UnsupportedVersion { version: 2, .. }), "{err}");
    assert!(err.to_string().contains("version 2"), "{err}");
    let mut c9 = sealed.clone();
    c9[10] = 9;
    assert!(matches!(decrypt(&ring, &c9), Err(SecurityError::UnknownCipher { id: 9, .. })));
    let mut r = sealed.clone();
    r[11] = 1;
    assert!(matches!(decrypt(&ring, &r), Err(SecurityError::BadHeader { .. })));
    let mut chunk = sealed.clone();
    chunk[12..16].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(decrypt(&ring, &chunk), Err(SecurityError::BadHeader { .. })));
    let mut id = sealed.clone();
    id[24] = 0;
    assert!(matches!(decrypt(&ring, &id), Err(SecurityError::BadHeader { .. })));
}

#[test]
fn an_unknown_key_id_is_named() {
    let (_dir, ring) = keyring();
    let mut sealed = encrypt(&ring, Cipher::ChaCha20Poly1305, 64, &data(10, 1));
    let n = sealed[24] as usize;
    sealed[25..25 + n].fill(b'z');
    let err = decrypt(&ring, &sealed).unwrap_err();
    assert!(matches!(&err, SecurityError::UnknownKey { id, .. } if id.bytes().all(|b| b == b'z')), "{err}");
    assert!(err.to_string().contains("zzzz"), "{err}");
}

#[test]
fn a_wrong_passphrase_is_refused() {
    let (dir, _ring) = keyring();
    let err = Keyring::open(&dir.path().join("keyring.json"), b"wrong").unwrap_err();
    assert!(matches!(err, SecurityError::WrongPassphrase { .. }), "{err}");
    assert!(err.to_string().contains("keyring.json"), "{err}");
    assert!(Keyring::open(&dir.path().join("keyring.json"), PASS).is_ok());
}

#[test]
fn a_tampered_keyring_file_is_refused() {
    let (dir, _ring) = keyring();
    let path = dir.path().join("keyring.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    // Lowering the KDF cost (to brute-force faster) changes the derived key: refused.
    let mut cheaper = json.clone();
    cheaper["kdf"]["t_cost"] = 2.into();
    std::fs::write(&path, cheaper.to_string()).unwrap();
    assert!(matches!(Keyring::open(&path, PASS), Err(SecurityError::WrongPassphrase { .. })));
    let cases: Vec<(serde_json::Value, &str)> = vec![
        (serde_json::json!({"format": "other"}), "missing field"),
        (
            {
                let mut j = json.clone();
                j["version"] = 7.into();
                j
            },
            "version 7",
        ),
        (
            {
                let mut j = json.clone();
                j["kdf"]["algorithm"] = "scrypt".into();
                j
            },
            "scrypt",
        ),
        (
            {
                let mut j = json.clone();
                j["nonce"] = "00".into();
                j
            },
            "nonce",
        ),
        (
            {
                let mut j = json.clone();
                j["kdf"]["m_cost_kib"] = (u32::MAX).into();
                j
            },
            "bounds",
        ),
        (
            {
                let mut j = json.clone();
                j["extra"] = 1.into();
                j
            },
            "unknown field",
        ),
    ];
    for (bad, what) in cases {
        std::fs::write(&path, bad.to_string()).unwrap();
        let err = Keyring::open(&path, PASS).unwrap_err();
        assert!(matches!(err, SecurityError::BadKeyring { .. } | SecurityError::Kdf(_)), "{what}: {err}");
        assert!(err.to_string().contains(what) || matches!(err, SecurityError::Kdf(_)), "{what}: {err}");
    }
    std::fs::write(&path, "not json").unwrap();
    assert!(matches!(Keyring::open(&path, PASS), Err(SecurityError::BadKeyring { .. })));
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(Keyring::open(&path, PASS), Err(SecurityError::Io { .. })));
}

#[test]
fn bad_kdf_parameters_are_refused_at_create() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("k.json");
    for kdf in [
        KdfParams { m_cost_kib: 1, t_cost: 1, p_cost: 1 },
        KdfParams { m_cost_kib: 64, t_cost: 0, p_cost: 1 },
    ] {
        assert!(matches!(Keyring::create(&p, PASS, kdf), Err(SecurityError::Kdf(_))), "{kdf:?}");
    }
    assert!(!p.exists());
}

#[test]
fn a_chunk_size_out_of_range_is_refused() {
    let (_dir, ring) = keyring();
    for size in [0u32, 15, (16 << 20) + 1] {
        let opts = truthgpt_security::EncryptOptions { cipher: Cipher::Aes256Gcm, chunk_size: size };
        let r = truthgpt_security::encrypt_stream(&ring, opts, &mut &b"x"[..], Vec::new(), &label());
        assert!(matches!(r, Err(SecurityError::ChunkSize(s)) if s == size));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400), magic in any::<bool>()) {
        let (_dir, ring) = keyring();
        let mut input = bytes;
        if magic && input.len() >= 10 {
            input[..8].copy_from_slice(b"TGPT-ENC");
            input[8..10].copy_from_slice(&1u16.to_be_bytes());
        }
        prop_assert!(decrypt(&ring, &input).is_err());
    }
}

#[test]
fn debug_output_shows_no_key_material() {
    let (_dir, ring) = keyring();
    let shown = format!("{ring:?}");
    assert!(shown.contains(&ring.active().id), "{shown}");
    let secret = format!("{:?}", ring.audit_signing_key().to_bytes());
    assert!(!shown.contains(&secret[1..20]), "{shown}");
    assert!(!shown.contains("material") && !shown.contains("master"), "{shown}");
}
