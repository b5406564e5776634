//! Bad input gets clear errors, never a panic, and leaves nothing half-written.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{model_dir, r, Fixture};
use truthgpt_registry::{Error, Registry, SigningKey, TrustedKeys, VersionRef};

#[test]
fn unknown_models_aliases_and_versions_are_named_in_the_error() {
    let mut f = Fixture::new();
    let src = model_dir(f.dir.path(), "src", 1, 10);
    f.push("m", &src);
    let cases = [
        ("nope/1", "no model named \"nope\""),
        ("m/7", "model \"m\" has no version 7"),
        ("m@prod", "model \"m\" has no alias \"prod\""),
    ];
    for (text, message) in cases {
        let err = f.registry.load(&r(text)).unwrap_err();
        assert!(err.to_string().contains(message), "{text}: {err}");
    }
    assert!(matches!(f.registry.set_alias("m", "prod", Some(5)), Err(Error::UnknownVersion { .. })));
    assert!(matches!(f.registry.set_alias("m", "prod", None), Err(Error::UnknownAlias { .. })));
    assert!(matches!(f.registry.set_alias("zz", "prod", Some(1)), Err(Error::UnknownModel { .. })));
    assert!(matches!(f.registry.set_tag(&r("m/2"), "k", Some("v")), Err(Error::UnknownVersion { .. })));
    assert!(matches!(f.registry.versions("zz"), Err(Error::UnknownModel { .. })));
}

#[test]
fn bad_names_and_references_are_refused() {
    let mut f = Fixture::new();
    let src = model_dir(f.dir.path(), "src", 1, 10);
    for name in ["", "a b", "../up", ".hidden", "x/y", "é"] {
        let err = f.registry.push(name, &src, &f.key, &Default::default()).unwrap_err();
        assert!(matches!(err, Error::InvalidName { kind: "model", .. }), "{name:?}: {err}");
    }
    f.push("m", &src);
    for alias in ["latest", "3", "a@b", ""] {
        assert!(
            matches!(f.registry.set_alias("m", alias, Some(1)), Err(Error::InvalidName { .. })),
            "{alias:?}"
        );
    }
    for text in ["registry:m/0", "registry:m/-1", "registry:m/1.5", "registry:", "registry:m@"] {
        let parsed = VersionRef::parse_model_arg(text).unwrap();
        assert!(parsed.is_err(), "{text}");
    }
    assert!(f.registry.models().unwrap().len() == 1);
}

#[test]
fn bad_directories_are_refused_and_nothing_is_committed() {
    let mut f = Fixture::new();
    let empty = f.path("empty");
    std::fs::create_dir(&empty).unwrap();
    let with_link = model_dir(f.dir.path(), "linked", 1, 10);
    std::os::unix::fs::symlink("/etc/passwd", with_link.join("passwd")).unwrap();
    for (dir, message) in
        [(f.path("absent"), "not a directory"), (empty, "holds no files"), (with_link, "symbolic link")]
    {
        let err = f.registry.push("m", &dir, &f.key, &Default::default()).unwrap_err();
        assert!(err.to_string().contains(message), "{}: {err}", dir.display());
    }
    assert!(f.registry.models().unwrap().is_empty());
}

#[test]
fn pull_refuses_an_existing_destination() {
    let mut f = Fixture::new();
    let src = model_dir(f.dir.path(), "src", 1, 10);
    f.push("m", &src);
    let err = f.registry.pull(&r("m/1"), &src).unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
}

#[test]
fn key_files_are_private_and_well_formed() {
    let f = Fixture::new();
    let path = f.path("alice.key");
    f.key.save(&path).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(SigningKey::load(&path).unwrap().public_hex(), f.key.public_hex());
    assert!(f.key.save(&path).is_err(), "a key file was overwritten");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = SigningKey::load(&path).err().unwrap();
    assert!(err.to_string().contains("chmod 600"), "{err}");
    let junk = f.path("junk.key");
    std::fs::write(&junk, "not a key").unwrap();
    std::fs::set_permissions(&junk, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(matches!(SigningKey::load(&junk), Err(Error::Key { .. })));
}

#[test]
fn a_malformed_trusted_keys_file_is_refused_with_its_line() {
    let f = Fixture::new();
    let path = f.path("trusted");
    std::fs::write(&path, "# ok\nalice 00\n").unwrap();
    let err = TrustedKeys::load(&path).unwrap_err();
    assert!(err.to_string().contains("line 2"), "{err}");
    std::fs::write(&path, format!("alice {} extra\n", f.key.public_hex())).unwrap();
    assert!(TrustedKeys::load(&path).is_err());
    std::fs::write(&path, format!("alice {}  # comment\n", f.key.public_hex())).unwrap();
    assert!(!TrustedKeys::load(&path).unwrap().is_empty());
}

#[test]
fn a_registry_is_not_opened_with_another_store() {
    let f = Fixture::new();
    let root = f.registry.root().to_path_buf();
    let other = f.path("other");
    drop(f.registry);
    let elsewhere = truthgpt_registry::LocalStore::open(&other).unwrap();
    let err = Registry::open_with_store(&root, Box::new(elsewhere)).err().unwrap();
    assert!(err.to_string().contains("keeps its blobs in local"), "{err}");
}
