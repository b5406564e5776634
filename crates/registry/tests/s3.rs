//! The S3 store against a real S3-protocol server: `s3s-fs` (an S3 server over a directory),
//! run in-process on a loopback port with signature checking on, reached through
//! `object_store`'s S3 client exactly as AWS would be. Needs `--features s3`.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use common::{flip_byte, model_dir, r, read_tree, Fixture};
use truthgpt_registry::store::{S3Config, S3Store};
use truthgpt_registry::{BlobStore, Error, Registry};

const KEY_ID: &str = "AKIAREGISTRYTEST";
const SECRET: &str = "registry-test-secret";
const BUCKET: &str = "models";

/// An S3 server over `root` on 127.0.0.1, on a thread of its own; it stops with the process.
fn start_s3(root: &Path) -> SocketAddr {
    std::fs::create_dir_all(root.join(BUCKET)).unwrap();
    let fs = s3s_fs::FileSystem::new(root).unwrap();
    let mut builder = s3s::service::S3ServiceBuilder::new(fs);
    builder.set_auth(s3s::auth::SimpleAuth::from_single(KEY_ID, SECRET));
    let service = builder.build();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let http = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            loop {
                let Ok((socket, _)) = listener.accept().await else { continue };
                let conn =
                    http.serve_connection(hyper_util::rt::TokioIo::new(socket), service.clone()).into_owned();
                tokio::spawn(conn);
            }
        });
    });
    addr
}

fn config(addr: SocketAddr, prefix: &str) -> S3Config {
    S3Config {
        bucket: BUCKET.into(),
        prefix: prefix.into(),
        endpoint: Some(format!("http://{addr}")),
        region: Some("us-east-1".into()),
        access_key_id: Some(KEY_ID.into()),
        secret_access_key: Some(SECRET.into()),
    }
}

/// A registry whose blobs are on the server; returns the fixture and the server's data root.
fn s3_fixture(prefix: &str) -> (Fixture, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("s3-data");
    let addr = start_s3(&data);
    let store = S3Store::open(&config(addr, prefix)).unwrap();
    let registry = Registry::open_with_store(&dir.path().join("reg"), Box::new(store)).unwrap();
    (Fixture::with_registry(dir, registry), data)
}

#[test]
fn push_pull_verify_and_gc_through_s3() {
    let (mut f, data) = s3_fixture("team/a");
    // 20 MiB of weights: uploaded in 8 MiB multipart parts.
    let src = model_dir(f.dir.path(), "src", 5, 20 << 20);
    let row = f.push("m", &src);
    f.registry.set_alias("m", "prod", Some(1)).unwrap();
    let dest = f.path("pulled");
    f.registry.pull(&r("m@prod"), &dest).unwrap();
    assert_eq!(read_tree(&dest), read_tree(&src));
    // The objects sit under the prefix in the server's directory, named by CID.
    let cid = row.manifest.to_string();
    let n = cid.len();
    let object = data.join(BUCKET).join("team/a/blobs").join(&cid[n - 3..n - 1]).join(&cid);
    assert!(object.is_file(), "{} missing", object.display());
    let report = f.registry.verify().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.bytes, (20 << 20) + 46);
    // An orphan is collected, the rest kept.
    let orphan = truthgpt_registry::Digest::of(b"orphan");
    f.registry.store().put_bytes(&orphan, b"orphan").unwrap();
    let gc = f.registry.gc(std::time::Duration::ZERO, false).unwrap();
    assert_eq!((gc.removed, gc.kept), (1, 5));
    assert!(!f.registry.store().contains(&orphan).unwrap());
}

#[test]
fn a_flipped_byte_on_the_server_is_caught() {
    let (mut f, data) = s3_fixture("");
    let src = model_dir(f.dir.path(), "src", 6, 64 << 10);
    f.push("m", &src);
    let v = f.registry.load(&r("m/1")).unwrap();
    let weights = v.manifest.files.iter().find(|e| e.path == "model.safetensors").unwrap().cid.to_string();
    let n = weights.len();
    flip_byte(&data.join(BUCKET).join("blobs").join(&weights[n - 3..n - 1]).join(&weights), 1000);
    let report = f.registry.verify().unwrap();
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    let err = f.registry.pull(&r("m/1"), &f.path("out")).unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { ref expected, .. } if *expected == weights), "{err}");
}

#[test]
fn wrong_credentials_and_an_unreachable_server_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let addr = start_s3(&dir.path().join("data"));
    let mut bad = config(addr, "");
    bad.secret_access_key = Some("wrong".into());
    let store = S3Store::open(&bad).unwrap();
    let err = store.contains(&truthgpt_registry::Digest::of(b"x")).unwrap_err();
    assert!(matches!(err, Error::Store { .. }), "{err}");
    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let store = S3Store::open(&config(closed, "")).unwrap();
    let err = store.put_bytes(&truthgpt_registry::Digest::of(b"x"), b"x").unwrap_err();
    assert!(err.to_string().starts_with(&format!("blob store s3://{BUCKET}/")), "{err}");
}
