//! Tampering is caught: a flipped byte in any blob or manifest (by `verify` and by every load), a
//! bad signature, an untrusted signer, an unsigned or malformed manifest, and a signed manifest
//! whose paths would escape the pull directory.

mod common;

use std::path::Path;

use common::{blob_path, flip_byte, model_dir, r, Fixture};
use truthgpt_registry::{Digest, Error, Registry, SignedManifest, SigningKey};

/// Stores `bytes` as a blob and points `model/1`'s row at it, as an attacker with write access
/// to the store and the database could.
fn replace_manifest(f: &Fixture, bytes: &[u8]) -> Digest {
    let cid = Digest::of(bytes);
    f.registry.store().put_bytes(&cid, bytes).unwrap();
    let db = rusqlite::Connection::open(f.registry.root().join("registry.db")).unwrap();
    let n = db.execute("UPDATE versions SET manifest = ?1 WHERE number = 1", [cid.to_string()]).unwrap();
    assert_eq!(n, 1);
    cid
}

fn stored_manifest(f: &Fixture) -> SignedManifest {
    let row = f.registry.resolve(&r("m/1")).unwrap();
    let bytes = truthgpt_registry::store::read_verified(f.registry.store(), &row.manifest).unwrap();
    SignedManifest::parse(&row.manifest, &bytes).unwrap()
}

fn pushed() -> Fixture {
    let mut f = Fixture::new();
    let src = model_dir(f.dir.path(), "src", 3, 4096);
    f.push("m", &src);
    f
}

#[test]
fn a_flipped_byte_in_any_blob_is_caught_by_verify_and_by_load() {
    let f = pushed();
    let root = f.registry.root().to_path_buf();
    let v = f.registry.load(&r("m/1")).unwrap();
    let mut blobs: Vec<(String, u64)> =
        v.manifest.files.iter().filter(|f| f.size > 0).map(|f| (f.cid.to_string(), f.size)).collect();
    blobs.push((v.row.manifest.to_string(), 1));
    for (i, (cid, size)) in blobs.iter().enumerate() {
        let path = blob_path(&root, cid);
        let original = std::fs::read(&path).unwrap();
        for offset in [0, (*size as usize).saturating_sub(1) / 2, *size as usize - 1] {
            flip_byte(&path, offset);
            let report = f.registry.verify().unwrap();
            assert_eq!(report.problems.len(), 1, "blob {i} byte {offset}: {:?}", report.problems);
            assert!(report.problems[0].error.contains(cid.as_str()), "{:?}", report.problems);
            let dest = f.path(&format!("pull-{i}-{offset}"));
            let err = f.registry.pull(&r("m/1"), &dest).unwrap_err();
            assert!(matches!(err, Error::DigestMismatch { ref expected, .. } if expected == cid), "{err}");
            assert!(!dest.exists(), "a failed pull left {}", dest.display());
            std::fs::write(&path, &original).unwrap();
        }
    }
    assert!(f.registry.verify().unwrap().problems.is_empty());
}

#[test]
fn a_missing_blob_is_reported() {
    let f = pushed();
    let v = f.registry.load(&r("m/1")).unwrap();
    let cid = v.manifest.files[1].cid.to_string();
    std::fs::remove_file(blob_path(f.registry.root(), &cid)).unwrap();
    let report = f.registry.verify().unwrap();
    assert_eq!(report.problems.len(), 1);
    assert!(report.problems[0].error.contains("missing"), "{:?}", report.problems);
    let err = f.registry.pull(&r("m/1"), &f.path("out")).unwrap_err();
    assert!(matches!(err, Error::BlobMissing { .. }), "{err}");
}

#[test]
fn a_changed_manifest_without_a_new_signature_is_refused() {
    let f = pushed();
    let mut doc = stored_manifest(&f);
    doc.manifest.files[2].size += 1;
    replace_manifest(&f, &doc.to_bytes());
    let err = f.registry.load(&r("m/1")).unwrap_err();
    assert!(matches!(err, Error::BadSignature { ref signer, .. } if signer == "alice"), "{err}");
    assert!(err.to_string().contains("does not verify"));
}

#[test]
fn a_corrupted_signature_is_refused() {
    let f = pushed();
    let mut doc = stored_manifest(&f);
    let sig = doc.signature.as_mut().unwrap();
    let last = if sig.signature.ends_with('0') { '1' } else { '0' };
    sig.signature.pop();
    sig.signature.push(last);
    replace_manifest(&f, &doc.to_bytes());
    assert!(matches!(f.registry.load(&r("m/1")), Err(Error::BadSignature { .. })));
    let report = f.registry.verify().unwrap();
    assert!(report.problems[0].error.contains("does not verify"), "{:?}", report.problems);
}

#[test]
fn an_unsigned_manifest_is_refused() {
    let f = pushed();
    let mut doc = stored_manifest(&f);
    doc.signature = None;
    let cid = replace_manifest(&f, &doc.to_bytes());
    let err = f.registry.load(&r("m/1")).unwrap_err();
    assert!(matches!(err, Error::Unsigned { cid: ref c } if *c == cid.to_string()), "{err}");
    assert!(err.to_string().contains("unsigned"));
}

#[test]
fn a_manifest_signed_by_an_untrusted_key_is_refused() {
    let f = pushed();
    // Mallory re-signs a changed manifest with a key of her own.
    let mallory = SigningKey::generate("mallory").unwrap();
    let mut doc = stored_manifest(&f);
    doc.manifest.metadata.insert("note".into(), "trust me".into());
    replace_manifest(&f, &doc.manifest.sign(&mallory).to_bytes());
    let err = f.registry.load(&r("m/1")).unwrap_err();
    assert!(matches!(err, Error::UntrustedSigner { ref signer, .. } if signer == "mallory"), "{err}");
    assert!(err.to_string().contains(&mallory.public_hex()));
}

#[test]
fn a_key_removed_from_the_trusted_list_is_no_longer_accepted() {
    let f = pushed();
    let root = f.registry.root().to_path_buf();
    drop(f.registry);
    std::fs::write(root.join("trusted_keys"), "# nobody\n").unwrap();
    let reopened = Registry::open(&root).unwrap();
    assert!(matches!(reopened.load(&r("m/1")), Err(Error::UntrustedSigner { .. })));
}

#[test]
fn pushing_with_an_untrusted_key_is_refused_before_anything_is_written() {
    let mut f = Fixture::new();
    let src = model_dir(f.dir.path(), "src", 3, 100);
    let stranger = SigningKey::generate("bob").unwrap();
    let err = f.registry.push("m", &src, &stranger, &Default::default()).unwrap_err();
    assert!(err.to_string().contains("not in"), "{err}");
    assert!(f.registry.store().list().unwrap().is_empty());
    assert!(f.registry.models().unwrap().is_empty());
}

#[test]
fn malformed_and_non_canonical_manifests_are_refused() {
    let f = pushed();
    let doc = stored_manifest(&f);
    let canonical = doc.to_bytes();
    let pretty = serde_json::to_vec_pretty(&doc).unwrap();
    let mut extra: serde_json::Value = serde_json::from_slice(&canonical).unwrap();
    extra["manifest"]["surprise"] = serde_json::json!(1);
    let cases: [(&str, Vec<u8>); 5] = [
        ("truncated", canonical[..canonical.len() / 2].to_vec()),
        ("garbage", b"\x00\xffnot json".to_vec()),
        ("pretty-printed", pretty),
        ("unknown field", serde_json::to_vec(&extra).unwrap()),
        ("empty", Vec::new()),
    ];
    for (what, bytes) in cases {
        replace_manifest(&f, &bytes);
        let err = f.registry.load(&r("m/1")).unwrap_err();
        assert!(matches!(err, Error::BadManifest { .. }), "{what}: {err}");
    }
}

#[test]
fn a_signed_manifest_with_an_escaping_path_is_refused() {
    let f = pushed();
    let mut doc = stored_manifest(&f);
    doc.manifest.files[0].path = "../../etc/evil".into();
    doc.manifest.files.sort_by(|a, b| a.path.cmp(&b.path));
    replace_manifest(&f, &doc.manifest.sign(&f.key).to_bytes());
    let dest = f.path("out");
    let err = f.registry.pull(&r("m/1"), &dest).unwrap_err();
    assert!(matches!(err, Error::BadManifest { ref reason, .. } if reason.contains("..")), "{err}");
    assert!(!f.dir.path().join("etc").exists() && !Path::new(&dest).exists());
}

#[test]
fn a_row_that_disagrees_with_its_signed_manifest_is_refused() {
    let mut f = pushed();
    let src = model_dir(f.dir.path(), "src2", 4, 100);
    f.push("m", &src);
    // Point version 1's row at version 2's (validly signed) manifest: a replayed signature.
    let v2 = f.registry.resolve(&r("m/2")).unwrap();
    let db = rusqlite::Connection::open(f.registry.root().join("registry.db")).unwrap();
    db.execute("UPDATE versions SET manifest = ?1 WHERE number = 1", [v2.manifest.to_string()]).unwrap();
    let err = f.registry.load(&r("m/1")).unwrap_err();
    assert!(matches!(err, Error::Inconsistent { .. }), "{err}");
}
