//! `gc` removes only blobs that no committed row references, and only once they are older than
//! the grace period.

mod common;

use std::time::Duration;

use common::{model_dir, r, Fixture};
use truthgpt_registry::Digest;

#[test]
fn gc_removes_orphans_and_keeps_everything_a_row_references() {
    let mut f = Fixture::new();
    let a = model_dir(f.dir.path(), "a", 1, 1000);
    let b = model_dir(f.dir.path(), "b", 2, 2000);
    f.push("m", &a);
    f.push("m", &b);
    // What a push killed before its transaction leaves: blobs with no row.
    let orphans: Vec<Digest> = (0..3u8).map(|i| Digest::of(&[i; 100])).collect();
    for (i, d) in orphans.iter().enumerate() {
        f.registry.store().put_bytes(d, &[i as u8; 100]).unwrap();
    }
    let before = f.registry.store().list().unwrap().len();
    // Young orphans are left alone (a push may be about to reference them).
    let young = f.registry.gc(Duration::from_secs(3600), false).unwrap();
    assert_eq!((young.removed, young.young), (0, 3));
    let dry = f.registry.gc(Duration::ZERO, true).unwrap();
    assert_eq!((dry.removed, dry.bytes_removed), (3, 300));
    assert_eq!(f.registry.store().list().unwrap().len(), before);
    let done = f.registry.gc(Duration::ZERO, false).unwrap();
    assert_eq!((done.removed, done.kept), (3, before as u64 - 3));
    for d in &orphans {
        assert!(!f.registry.store().contains(d).unwrap());
    }
    assert!(f.registry.verify().unwrap().problems.is_empty());
    f.registry.pull(&r("m/1"), &f.path("p1")).unwrap();
    f.registry.pull(&r("m/2"), &f.path("p2")).unwrap();
}

#[test]
fn gc_sweeps_temporary_files_of_interrupted_writes() {
    let mut f = Fixture::new();
    let tmp = f.registry.root().join("blobs/.tmp/.tmpKILLED");
    std::fs::write(&tmp, b"half a blob").unwrap();
    let report = f.registry.gc(Duration::ZERO, false).unwrap();
    assert_eq!(report.temporaries, 1);
    assert!(!tmp.exists());
}

#[test]
fn a_blob_shared_with_a_live_version_survives() {
    let mut f = Fixture::new();
    let a = model_dir(f.dir.path(), "a", 1, 1000);
    f.push("m", &a);
    f.push("n", &a); // same files, other model
    let report = f.registry.gc(Duration::ZERO, false).unwrap();
    assert_eq!((report.removed, report.kept), (0, 4 + 2));
}
