//! Push and pull of model directories: bytes come back equal, blobs are stored once, numbers
//! only grow, aliases, tags, lineage and diffs.

mod common;

use common::{model_dir, r, read_tree, Fixture};
use truthgpt_registry::{Error, Lineage, PushOptions, Selector, VersionRef};

#[test]
fn a_pushed_directory_pulls_back_byte_for_byte() {
    let mut f = Fixture::new();
    let src = model_dir(f.dir.path(), "m", 7, 3 << 20);
    let row = f.push("tiny", &src);
    assert_eq!((row.number, row.files, row.size), (1, 4, (3 << 20) + 46));
    let dest = f.path("pulled");
    let v = f.registry.pull(&r("tiny/1"), &dest).unwrap();
    assert_eq!(read_tree(&dest), read_tree(&src));
    assert_eq!(v.signer, "alice");
    assert_eq!(
        v.manifest.files.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(),
        ["EMPTY", "config.json", "model.safetensors", "tokenizer/vocab.json"]
    );
    // The manifest's digest is the CID of its stored bytes, and the store holds 4 files + 1 manifest.
    assert!(row.manifest.to_string().starts_with("bafkrei"));
    assert_eq!(f.registry.store().list().unwrap().len(), 5);
}

#[test]
fn identical_files_are_stored_once_across_versions() {
    let mut f = Fixture::new();
    let a = model_dir(f.dir.path(), "a", 1, 1000);
    let b = model_dir(f.dir.path(), "b", 2, 1000); // only the weights differ
    f.push("m", &a);
    f.push("m", &b);
    f.push("m", &a); // same content as version 1: only a new manifest
                     // 3 shared files + 2 distinct weights + 3 manifests.
    assert_eq!(f.registry.store().list().unwrap().len(), 3 + 2 + 3);
    let numbers: Vec<u64> = f.registry.versions("m").unwrap().iter().map(|v| v.number).collect();
    assert_eq!(numbers, [1, 2, 3]);
    let diff = f.registry.diff(&r("m/1"), &r("m/2")).unwrap();
    assert_eq!(diff.changed.len(), 1);
    assert_eq!(diff.changed[0].0.path, "model.safetensors");
    assert_eq!((diff.added.len(), diff.removed.len(), diff.unchanged), (0, 0, 3));
    assert!(f.registry.diff(&r("m/1"), &r("m/3")).unwrap().changed.is_empty());
}

#[test]
fn aliases_move_latest_follows_and_history_is_kept() {
    let mut f = Fixture::new();
    let a = model_dir(f.dir.path(), "a", 1, 100);
    f.push("m", &a);
    f.push("m", &a);
    assert_eq!(f.registry.set_alias("m", "prod", Some(1)).unwrap(), None);
    assert_eq!(f.registry.resolve(&r("m@prod")).unwrap().number, 1);
    assert_eq!(f.registry.set_alias("m", "prod", Some(2)).unwrap(), Some(1));
    assert_eq!(f.registry.resolve(&r("m@prod")).unwrap().number, 2);
    assert_eq!(f.registry.resolve(&r("m@latest")).unwrap().number, 2);
    assert_eq!(f.registry.resolve(&r("m")).unwrap().number, 2);
    assert_eq!(f.registry.set_alias("m", "prod", None).unwrap(), Some(2));
    assert!(matches!(f.registry.resolve(&r("m@prod")), Err(Error::UnknownAlias { .. })));
    let models = f.registry.models().unwrap();
    assert_eq!((models.len(), models[0].versions, models[0].latest), (1, 2, Some(2)));
}

#[test]
fn push_can_set_aliases_metadata_and_lineage_in_one_transaction() {
    let mut f = Fixture::new();
    let a = model_dir(f.dir.path(), "a", 1, 100);
    f.push("base", &a);
    let opts = PushOptions {
        metadata: [("loss".to_string(), "2.31".to_string())].into(),
        lineage: Lineage {
            run_id: Some("run-42".into()),
            data_hash: Some("sha256:abc".into()),
            config_hash: None,
            parent: Some("base/1".into()),
        },
        aliases: vec!["staging".into()],
    };
    let row = f.registry.push("tuned", &a, &f.key, &opts).unwrap();
    let shown = f.registry.show(&r("tuned@staging")).unwrap();
    assert_eq!(shown.version.row, row);
    assert_eq!(shown.aliases, ["staging"]);
    assert_eq!(shown.version.manifest.metadata["loss"], "2.31");
    assert_eq!(shown.version.manifest.lineage.parent.as_deref(), Some("base/1"));
    assert_eq!(row.lineage.run_id.as_deref(), Some("run-42"));
    // A parent that does not exist is refused, and nothing is committed.
    let bad = PushOptions {
        lineage: Lineage { parent: Some("base/9".into()), ..Default::default() },
        ..Default::default()
    };
    let err = f.registry.push("tuned", &a, &f.key, &bad).unwrap_err();
    assert!(matches!(err, Error::UnknownVersion { version: 9, .. }), "{err}");
    assert_eq!(f.registry.versions("tuned").unwrap().len(), 1);
}

#[test]
fn tags_are_set_and_removed() {
    let mut f = Fixture::new();
    let a = model_dir(f.dir.path(), "a", 1, 100);
    f.push("m", &a);
    f.registry.set_tag(&r("m/1"), "task", Some("chat")).unwrap();
    f.registry.set_tag(&r("m/1"), "eval.ppl", Some("28.8")).unwrap();
    f.registry.set_tag(&r("m/1"), "task", Some("code")).unwrap();
    let tags = f.registry.show(&r("m/1")).unwrap().tags;
    assert_eq!(tags, [("eval.ppl".into(), "28.8".into()), ("task".into(), "code".into())]);
    f.registry.set_tag(&r("m/1"), "task", None).unwrap();
    assert_eq!(f.registry.show(&r("m/1")).unwrap().tags.len(), 1);
}

#[test]
fn checkout_pulls_once_and_checks_the_cache_every_time() {
    let mut f = Fixture::new();
    let a = model_dir(f.dir.path(), "a", 1, 5000);
    f.push("m", &a);
    f.registry.set_alias("m", "prod", Some(1)).unwrap();
    let first = f.registry.checkout(&r("m@prod")).unwrap();
    assert_eq!(read_tree(&first), read_tree(&a));
    let again =
        f.registry.checkout(&VersionRef { model: "m".into(), selector: Selector::Version(1) }).unwrap();
    assert_eq!(first, again);
    common::flip_byte(&first.join("model.safetensors"), 10);
    let err = f.registry.checkout(&r("m@prod")).unwrap_err();
    assert!(err.to_string().contains("cached copy"), "{err}");
}

#[test]
fn verify_passes_on_a_healthy_registry() {
    let mut f = Fixture::new();
    let a = model_dir(f.dir.path(), "a", 1, 100_000);
    let b = model_dir(f.dir.path(), "b", 2, 100_000);
    f.push("m", &a);
    f.push("m", &b);
    f.push("n", &a);
    let report = f.registry.verify().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!((report.versions, report.blobs), (3, 15));
    assert_eq!(report.bytes, 3 * (100_000 + 46));
}
