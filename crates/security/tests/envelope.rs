//! Encryption at rest: round trips around chunk boundaries, and every corruption caught.

mod common;

use common::{data, decrypt, encrypt, keyring, label, names_file};
use proptest::prelude::*;
use truthgpt_security::header::{Header, FIXED_LEN};
use truthgpt_security::{decrypt_file, encrypt_file, open_decrypted, Cipher, EncryptOptions, SecurityError};

const TAG: usize = 16;

/// Bytes of the header for the keyring's first key id.
fn header_len(sealed: &[u8]) -> usize {
    Header::read(&mut &sealed[..], &label()).unwrap().encoded_len()
}

#[test]
fn round_trips_empty_and_exact_multiples_for_both_ciphers() {
    let (_dir, ring) = keyring();
    for cipher in Cipher::ALL {
        for len in [0, 1, 63, 64, 65, 128, 1000] {
            let plain = data(len, len as u64);
            let sealed = encrypt(&ring, cipher, 64, &plain);
            let chunks = len.div_ceil(64).max(1);
            assert_eq!(sealed.len(), header_len(&sealed) + len + chunks * TAG, "{cipher} len {len}");
            assert_eq!(decrypt(&ring, &sealed).unwrap(), plain, "{cipher} len {len}");
        }
    }
}

#[test]
fn two_encryptions_of_one_file_differ() {
    let (_dir, ring) = keyring();
    let plain = data(500, 1);
    let a = encrypt(&ring, Cipher::ChaCha20Poly1305, 64, &plain);
    let b = encrypt(&ring, Cipher::ChaCha20Poly1305, 64, &plain);
    assert_eq!(a.len(), b.len());
    assert_ne!(a, b, "a fresh data key and nonce prefix per file");
    let body = header_len(&a);
    assert_ne!(a[body..], plain[..plain.len().min(a.len() - body)]);
}

#[test]
fn every_flipped_bit_is_caught_and_names_the_file() {
    let (_dir, ring) = keyring();
    for cipher in Cipher::ALL {
        let sealed = encrypt(&ring, cipher, 64, &data(200, 7));
        let mut caught = 0;
        for byte in 0..sealed.len() {
            for bit in 0..8 {
                let mut bad = sealed.clone();
                bad[byte] ^= 1 << bit;
                let err = decrypt(&ring, &bad)
                    .expect_err(&format!("{cipher}: bit {bit} of byte {byte} not caught"));
                assert!(names_file(&err, &label()), "{err}");
                caught += 1;
            }
        }
        assert_eq!(caught, sealed.len() * 8);
    }
}

#[test]
fn every_truncation_is_caught() {
    let (_dir, ring) = keyring();
    for cipher in Cipher::ALL {
        // 4 chunks: 3 full, 1 partial; cuts at chunk boundaries included.
        let sealed = encrypt(&ring, cipher, 64, &data(230, 3));
        for len in 0..sealed.len() {
            let err =
                decrypt(&ring, &sealed[..len]).expect_err(&format!("{cipher}: cut at {len} not caught"));
            assert!(names_file(&err, &label()), "{err}");
        }
        // A multiple of the chunk size: cutting the last full chunk off leaves a valid-looking stream.
        let sealed = encrypt(&ring, cipher, 64, &data(256, 4));
        let h = header_len(&sealed);
        let cut = h + 3 * (64 + TAG);
        assert!(matches!(decrypt(&ring, &sealed[..cut]), Err(SecurityError::Tampered { chunk: 2, .. })));
    }
}

#[test]
fn appended_bytes_are_caught() {
    let (_dir, ring) = keyring();
    let mut sealed = encrypt(&ring, Cipher::ChaCha20Poly1305, 64, &data(100, 5));
    sealed.push(0);
    assert!(matches!(decrypt(&ring, &sealed), Err(SecurityError::Tampered { .. })));
}

#[test]
fn reordered_dropped_and_duplicated_chunks_are_caught() {
    let (_dir, ring) = keyring();
    let plain = data(64 * 4 + 10, 9);
    let sealed = encrypt(&ring, Cipher::Aes256Gcm, 64, &plain);
    let h = header_len(&sealed);
    let c = 64 + TAG;
    let chunk = |i: usize| &sealed[h + i * c..(h + (i + 1) * c).min(sealed.len())];
    let assemble = |order: &[usize]| {
        let mut v = sealed[..h].to_vec();
        for &i in order {
            v.extend_from_slice(chunk(i));
        }
        v
    };
    assert_eq!(decrypt(&ring, &assemble(&[0, 1, 2, 3, 4])).unwrap(), plain);
    for order in [
        &[1, 0, 2, 3, 4][..],
        &[0, 2, 1, 3, 4],
        &[0, 1, 3, 4],
        &[0, 1, 2, 4],
        &[0, 0, 1, 2, 3, 4],
        &[0, 1, 2, 3],
    ] {
        let err = decrypt(&ring, &assemble(order)).expect_err(&format!("order {order:?} not caught"));
        assert!(matches!(err, SecurityError::Tampered { .. } | SecurityError::Truncated { .. }), "{err}");
    }
}

#[test]
fn a_chunk_from_another_file_is_caught() {
    let (_dir, ring) = keyring();
    let a = encrypt(&ring, Cipher::ChaCha20Poly1305, 64, &data(300, 1));
    let b = encrypt(&ring, Cipher::ChaCha20Poly1305, 64, &data(300, 2));
    let h = header_len(&a);
    let mut spliced = a.clone();
    spliced[h..h + 80].copy_from_slice(&b[h..h + 80]);
    assert!(matches!(decrypt(&ring, &spliced), Err(SecurityError::Tampered { chunk: 0, .. })));
}

#[test]
fn a_wrong_key_is_caught() {
    let (_dir, ring) = keyring();
    let (_other_dir, other) = keyring();
    let sealed = encrypt(&ring, Cipher::ChaCha20Poly1305, 64, &data(100, 1));
    // Another keyring has a different key of the same id shape but not this id.
    let err = decrypt(&other, &sealed).unwrap_err();
    assert!(matches!(err, SecurityError::UnknownKey { .. }), "{err}");
    // The same id with different material: rename the other keyring's key into the header.
    let mut forged = sealed.clone();
    let other_id = other.active().id.clone();
    assert_eq!(other_id.len(), ring.active().id.len());
    forged[FIXED_LEN + 1..FIXED_LEN + 1 + other_id.len()].copy_from_slice(other_id.as_bytes());
    let err = decrypt(&other, &forged).unwrap_err();
    assert!(matches!(err, SecurityError::WrongKey { .. }), "{err}");
    assert!(names_file(&err, &label()));
}

#[test]
fn a_failed_reader_keeps_failing() {
    let (dir, ring) = keyring();
    let src = dir.path().join("plain.bin");
    let enc = dir.path().join("plain.bin.enc");
    std::fs::write(&src, data(1000, 1)).unwrap();
    encrypt_file(&ring, EncryptOptions { cipher: Cipher::ChaCha20Poly1305, chunk_size: 64 }, &src, &enc)
        .unwrap();
    let mut bytes = std::fs::read(&enc).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&enc, &bytes).unwrap();
    let mut r = open_decrypted(&ring, &enc).unwrap();
    let mut sink = Vec::new();
    assert!(std::io::Read::read_to_end(&mut r, &mut sink).is_err());
    let mut buf = [0u8; 16];
    assert!(std::io::Read::read(&mut r, &mut buf).is_err(), "an error, not an end, after a failure");
}

#[test]
fn files_round_trip_and_a_failed_decryption_leaves_no_output() {
    let (dir, ring) = keyring();
    let src = dir.path().join("plain.bin");
    let enc = dir.path().join("plain.bin.enc");
    let out = dir.path().join("plain.out");
    let plain = data(300_000, 2);
    std::fs::write(&src, &plain).unwrap();
    assert_eq!(encrypt_file(&ring, EncryptOptions::default(), &src, &enc).unwrap(), 300_000);
    assert_eq!(decrypt_file(&ring, &enc, &out).unwrap(), 300_000);
    assert_eq!(std::fs::read(&out).unwrap(), plain);
    std::fs::remove_file(&out).unwrap();
    let mut bytes = std::fs::read(&enc).unwrap();
    bytes[200_000] ^= 0x10;
    std::fs::write(&enc, &bytes).unwrap();
    let err = decrypt_file(&ring, &enc, &out).unwrap_err();
    assert!(names_file(&err, &enc), "{err}");
    assert!(!out.exists(), "no partial plaintext left behind");
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.starts_with(".truthgpt-tmp")), "no temporary files: {names:?}");
    assert_eq!(names.len(), 4, "keyring, its lock, plaintext, ciphertext: {names:?}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn round_trips_around_chunk_boundaries(
        chunk in prop::sample::select(vec![16u32, 64, 1000, 4096]),
        chunks in 0usize..5,
        delta in -2i64..=2,
        cipher in prop::sample::select(Cipher::ALL.to_vec()),
        seed in any::<u64>(),
    ) {
        let len = (chunks as i64 * chunk as i64 + delta).max(0) as usize;
        let (_dir, ring) = keyring();
        let plain = data(len, seed);
        let sealed = encrypt(&ring, cipher, chunk, &plain);
        prop_assert_eq!(sealed.len(), header_len(&sealed) + len + len.div_ceil(chunk as usize).max(1) * TAG);
        prop_assert_eq!(decrypt(&ring, &sealed).unwrap(), plain);
    }

    #[test]
    fn reading_in_odd_sized_pieces_gives_the_same_bytes(len in 0usize..3000, piece in 1usize..200) {
        let (_dir, ring) = keyring();
        let plain = data(len, len as u64);
        let sealed = encrypt(&ring, Cipher::Aes256Gcm, 64, &plain);
        let mut r = truthgpt_security::DecryptReader::new(&ring, &sealed[..], &label()).unwrap();
        let mut got = Vec::new();
        let mut buf = vec![0u8; piece];
        loop {
            let n = std::io::Read::read(&mut r, &mut buf).unwrap();
            if n == 0 { break; }
            got.extend_from_slice(&buf[..n]);
        }
        prop_assert_eq!(got, plain);
    }
}
