//! Blobs in an S3 bucket (or any S3-protocol server) through `object_store`. An S3 PUT, and the
//! completion of a multipart upload, make an object appear whole or not at all, so no temporary
//! names are needed. The registry's API is synchronous (SQLite is), so this store runs the async
//! client on a runtime of its own: call it from a plain thread (`spawn_blocking` inside tokio).

use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::stream::{BoxStream, StreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};

use super::{blob_key, check_digest, BlobInfo, BlobStore};
use crate::digest::{Digest, Hasher};
use crate::error::{Error, IoContext, Result};

/// Files up to this size go up in one PUT; larger ones in multipart parts of this size.
const PART: usize = 8 << 20;

/// Where an S3 store is and how to reach it. Unset fields come from the usual `AWS_*`
/// environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
/// `AWS_ENDPOINT`, `AWS_ALLOW_HTTP`).
#[derive(Debug, Clone, Default)]
pub struct S3Config {
    pub bucket: String,
    /// A key prefix inside the bucket (no leading or trailing `/`), or empty.
    pub prefix: String,
    /// An endpoint such as `http://127.0.0.1:9000` for S3-protocol servers other than AWS.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
}

/// A blob store in an S3 bucket.
pub struct S3Store {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    description: String,
    runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.description)
    }
}

impl S3Store {
    /// Connects lazily: the first request reaches the server, and fails with [`Error::Store`]
    /// if it cannot.
    pub fn open(config: &S3Config) -> Result<Self> {
        let description = format!("s3://{}/{}", config.bucket, config.prefix);
        let store_err = |message: String| Error::Store { store: description.clone(), message };
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(&config.bucket);
        if let Some(endpoint) = &config.endpoint {
            builder = builder.with_endpoint(endpoint).with_allow_http(endpoint.starts_with("http://"));
        }
        if let Some(region) = &config.region {
            builder = builder.with_region(region);
        }
        if let Some(key) = &config.access_key_id {
            builder = builder.with_access_key_id(key);
        }
        if let Some(secret) = &config.secret_access_key {
            builder = builder.with_secret_access_key(secret);
        }
        let retry = object_store::RetryConfig {
            max_retries: 2,
            retry_timeout: Duration::from_secs(10),
            ..Default::default()
        };
        let store = builder.with_retry(retry).build().map_err(|e| store_err(e.to_string()))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| store_err(format!("starting its I/O runtime: {e}")))?;
        Ok(Self {
            store: Arc::new(store),
            prefix: config.prefix.trim_matches('/').to_string(),
            description,
            runtime,
        })
    }

    fn key(&self, digest: &Digest) -> ObjectPath {
        let key = blob_key(digest);
        if self.prefix.is_empty() {
            ObjectPath::from(key)
        } else {
            ObjectPath::from(format!("{}/{key}", self.prefix))
        }
    }

    fn err(&self, e: impl std::fmt::Display) -> Error {
        Error::Store { store: self.description.clone(), message: e.to_string() }
    }

    /// Uploads a file larger than one part, hashing it as it goes; a mismatch aborts the upload.
    fn put_multipart(&self, digest: &Digest, file: &mut std::fs::File, src: &Path) -> Result<()> {
        self.runtime.block_on(async {
            let upload = self.store.put_multipart(&self.key(digest)).await.map_err(|e| self.err(e))?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, PART);
            let mut hasher = Hasher::default();
            let mut buf = vec![0u8; PART];
            loop {
                let n = file.read(&mut buf).at(src)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                writer.wait_for_capacity(4).await.map_err(|e| self.err(e))?;
                writer.write(&buf[..n]);
            }
            let (actual, _) = hasher.finish();
            if let Err(e) = check_digest(digest, &actual) {
                let _ = writer.abort().await;
                return Err(e);
            }
            writer.finish().await.map_err(|e| self.err(e))?;
            Ok(())
        })
    }
}

impl BlobStore for S3Store {
    fn describe(&self) -> String {
        self.description.clone()
    }

    fn put_file(&self, digest: &Digest, src: &Path) -> Result<()> {
        if self.contains(digest)? {
            return Ok(());
        }
        let mut file = std::fs::File::open(src).at(src)?;
        let len = file.metadata().at(src)?.len();
        if len > PART as u64 {
            return self.put_multipart(digest, &mut file, src);
        }
        let mut bytes = Vec::with_capacity(len as usize);
        file.read_to_end(&mut bytes).at(src)?;
        self.put_bytes(digest, &bytes)
    }

    fn put_bytes(&self, digest: &Digest, bytes: &[u8]) -> Result<()> {
        check_digest(digest, &Digest::of(bytes))?;
        let payload = PutPayload::from(bytes.to_vec());
        self.runtime.block_on(self.store.put(&self.key(digest), payload)).map_err(|e| self.err(e))?;
        Ok(())
    }

    fn contains(&self, digest: &Digest) -> Result<bool> {
        match self.runtime.block_on(self.store.head(&self.key(digest))) {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.err(e)),
        }
    }

    fn open(&self, digest: &Digest) -> Result<Box<dyn Read + Send + '_>> {
        match self.runtime.block_on(self.store.get(&self.key(digest))) {
            Ok(got) => Ok(Box::new(StreamReader {
                store: self,
                stream: got.into_stream(),
                pending: Vec::new(),
                at: 0,
            })),
            Err(object_store::Error::NotFound { .. }) => {
                Err(Error::BlobMissing { cid: digest.to_string(), store: self.describe() })
            }
            Err(e) => Err(self.err(e)),
        }
    }

    fn list(&self) -> Result<Vec<BlobInfo>> {
        let prefix =
            if self.prefix.is_empty() { "blobs".to_string() } else { format!("{}/blobs", self.prefix) };
        let metas: Vec<_> = self.runtime.block_on(async {
            let prefix = ObjectPath::from(prefix);
            self.store.list(Some(&prefix)).collect::<Vec<_>>().await
        });
        let mut out = Vec::new();
        for meta in metas {
            let meta = meta.map_err(|e| self.err(e))?;
            let Some(digest) = meta.location.filename().and_then(|n| n.parse::<Digest>().ok()) else {
                continue;
            };
            if meta.location.as_ref() != self.key(&digest).as_ref() {
                continue;
            }
            let secs = u64::try_from(meta.last_modified.timestamp()).unwrap_or(0);
            let modified = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
            out.push(BlobInfo { digest, size: meta.size, modified });
        }
        out.sort_by_key(|b| b.digest);
        Ok(out)
    }

    fn delete(&self, digest: &Digest) -> Result<()> {
        match self.runtime.block_on(self.store.delete(&self.key(digest))) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err(e)),
        }
    }

    /// S3 keeps no partial objects (an unfinished multipart upload is invisible), so there is
    /// nothing to sweep; a bucket lifecycle rule should expire abandoned multipart uploads.
    fn sweep_temporaries(&self, _older_than: SystemTime) -> Result<usize> {
        Ok(0)
    }
}

/// A blocking `Read` over an object's byte stream.
struct StreamReader<'a> {
    store: &'a S3Store,
    stream: BoxStream<'static, object_store::Result<bytes::Bytes>>,
    pending: Vec<u8>,
    at: usize,
}

impl Read for StreamReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.pending.len() {
            match self.store.runtime.block_on(self.stream.next()) {
                None => return Ok(0),
                Some(Ok(chunk)) => {
                    self.pending = chunk.to_vec();
                    self.at = 0;
                }
                Some(Err(e)) => return Err(std::io::Error::other(e)),
            }
        }
        let n = buf.len().min(self.pending.len() - self.at);
        buf[..n].copy_from_slice(&self.pending[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}
