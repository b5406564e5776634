//! The registry: a directory holding `registry.db` (SQLite metadata), `trusted_keys`, `cache/`
//! (pulled versions for `registry:` references) and, for the local store, `blobs/`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, TransactionBehavior};

use crate::db::{self, ModelSummary, VersionRow};
use crate::digest::Digest;
use crate::error::{bail_input, Error, Result};
use crate::keys::{SigningKey, TrustedKeys};
use crate::manifest::{FileEntry, Lineage, Manifest, SignedManifest, SCHEMA};
use crate::names::{check_alias, check_name, Selector, VersionRef, LATEST};
use crate::store::{self, BlobStore, LocalStore};
use crate::tree;

/// What to push.
#[derive(Debug, Clone, Default)]
pub struct PushOptions {
    pub metadata: BTreeMap<String, String>,
    pub lineage: Lineage,
    /// Aliases to point at the new version, in the same transaction.
    pub aliases: Vec<String>,
}

/// A version whose manifest was read, hashed and its signature checked against the trusted keys.
#[derive(Debug, Clone)]
pub struct VerifiedVersion {
    pub row: VersionRow,
    pub manifest: Manifest,
    /// The trusted name of the key that signed it.
    pub signer: String,
}

/// A version with its aliases and tags, for `show`.
#[derive(Debug, Clone)]
pub struct VersionDetails {
    pub version: VerifiedVersion,
    pub aliases: Vec<String>,
    pub tags: Vec<(String, String)>,
}

/// An open registry.
pub struct Registry {
    root: PathBuf,
    db_path: PathBuf,
    pub(crate) conn: Connection,
    pub(crate) store: Box<dyn BlobStore>,
    trusted: TrustedKeys,
}

pub(crate) fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Registry {
    /// Opens (creating) a registry at `root` with its blobs in `root/blobs`.
    pub fn open(root: &Path) -> Result<Self> {
        std::fs::create_dir_all(root).map_err(|source| Error::Io { path: root.to_path_buf(), source })?;
        let store = LocalStore::open(root)?;
        Self::open_with_store(root, Box::new(store))
    }

    /// Opens a registry whose blobs live in `store`. The store a registry was created with is
    /// recorded; opening it with another is refused, since its rows would name absent blobs.
    pub fn open_with_store(root: &Path, store: Box<dyn BlobStore>) -> Result<Self> {
        std::fs::create_dir_all(root).map_err(|source| Error::Io { path: root.to_path_buf(), source })?;
        let db_path = root.join("registry.db");
        let conn = db::open(&db_path)?;
        let trusted = TrustedKeys::load(&root.join("trusted_keys"))?;
        let reg = Self { root: root.to_path_buf(), db_path, conn, store, trusted };
        let described = reg.store.describe();
        let recorded = if reg.store_is_local() { "local".to_string() } else { described };
        match reg.sql(db::get_meta(&reg.conn, "store"))? {
            None => reg.sql(db::set_meta(&reg.conn, "store", &recorded))?,
            Some(s) if s == recorded => {}
            Some(s) => bail_input!("registry {} keeps its blobs in {s}, not {recorded}", root.display()),
        }
        Ok(reg)
    }

    fn store_is_local(&self) -> bool {
        Path::new(&self.store.describe()) == self.root
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn store(&self) -> &dyn BlobStore {
        self.store.as_ref()
    }

    pub fn trusted_keys(&self) -> &TrustedKeys {
        &self.trusted
    }

    /// Adds a public key to `trusted_keys`.
    pub fn trust(&mut self, name: &str, public_hex: &str) -> Result<()> {
        let path = self.root.join("trusted_keys");
        self.trusted.add_and_save(&path, name, public_hex)
    }

    pub(crate) fn sql<T>(&self, r: rusqlite::Result<T>) -> Result<T> {
        r.map_err(|source| Error::Db { path: self.db_path.clone(), source })
    }

    fn model_id(&self, name: &str) -> Result<i64> {
        self.sql(db::model_id(&self.conn, name))?
            .ok_or_else(|| Error::UnknownModel { name: name.to_string() })
    }

    /// Pushes the files under `dir` as the model's next version, signed by `key`.
    ///
    /// Order: file blobs are hashed and written (each synced) first; then one immediate
    /// transaction takes the number, writes the signed manifest blob, checks every blob is
    /// present, and inserts the rows. A crash anywhere leaves at most unreferenced blobs.
    pub fn push(
        &mut self,
        model: &str,
        dir: &Path,
        key: &SigningKey,
        opts: &PushOptions,
    ) -> Result<VersionRow> {
        check_name("model", model)?;
        for alias in &opts.aliases {
            check_alias(alias)?;
        }
        if !self.trusted.contains(&key.public_bytes()) {
            bail_input!(
                "signer {} (key {}) is not in {}; add it with `truthgpt registry trust`, or versions it signs could not be loaded",
                key.name(),
                key.public_hex(),
                self.root.join("trusted_keys").display()
            );
        }
        let files = tree::hash_tree(dir)?;
        for (entry, path) in &files {
            self.store.put_file(&entry.cid, path)?;
        }
        let files: Vec<FileEntry> = files.into_iter().map(|(e, _)| e).collect();
        if let Some(parent) = &opts.lineage.parent {
            let parent_ref: VersionRef = parent.parse()?;
            self.resolve(&parent_ref)?;
        }
        self.commit_version(model, files, key, opts)
    }

    fn commit_version(
        &mut self,
        model: &str,
        files: Vec<FileEntry>,
        key: &SigningKey,
        opts: &PushOptions,
    ) -> Result<VersionRow> {
        let db_path = self.db_path.clone();
        let db_err = |source| Error::Db { path: db_path.clone(), source };
        let created_at = now();
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(db_err)?;
        let (model_id, number) = db::take_version_number(&tx, model, created_at).map_err(db_err)?;
        let manifest = Manifest {
            schema: SCHEMA,
            model: model.to_string(),
            version: number,
            created_at,
            files,
            metadata: opts.metadata.clone(),
            lineage: opts.lineage.clone(),
        };
        let blobs: BTreeSet<Digest> = manifest.files.iter().map(|f| f.cid).collect();
        let (files, size) = (manifest.files.len() as u64, manifest.files.iter().map(|f| f.size).sum());
        let lineage = manifest.lineage.clone();
        let bytes = manifest.sign(key).to_bytes();
        let row = VersionRow {
            model: model.to_string(),
            number,
            manifest: Digest::of(&bytes),
            signer: key.name().to_string(),
            files,
            size,
            created_at,
            lineage,
        };
        self.store.put_bytes(&row.manifest, &bytes)?;
        // A concurrent gc may have removed a blob written before this transaction began.
        for cid in blobs.iter().chain([&row.manifest]) {
            if !self.store.contains(cid)? {
                return Err(Error::BlobMissing { cid: cid.to_string(), store: self.store.describe() });
            }
        }
        db::insert_version(&tx, model_id, &row, &blobs).map_err(db_err)?;
        for alias in &opts.aliases {
            db::move_alias(&tx, model_id, alias, Some(number), created_at).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
        Ok(row)
    }

    /// The version a reference names (by number, alias, or `latest`), without loading it.
    pub fn resolve(&self, r: &VersionRef) -> Result<VersionRow> {
        let id = self.model_id(&r.model)?;
        let number = match &r.selector {
            Selector::Version(n) => *n,
            Selector::Alias(a) if a == LATEST => self
                .sql(db::latest(&self.conn, id))?
                .ok_or_else(|| Error::UnknownAlias { model: r.model.clone(), alias: a.clone() })?,
            Selector::Alias(a) => self
                .sql(db::alias(&self.conn, id, a))?
                .ok_or_else(|| Error::UnknownAlias { model: r.model.clone(), alias: a.clone() })?,
        };
        self.sql(db::version(&self.conn, &r.model, id, number))?
            .ok_or_else(|| Error::UnknownVersion { model: r.model.clone(), version: number })
    }

    /// Loads a version: reads its manifest blob, checks its digest, canonical form and signature
    /// against the trusted keys, and that it agrees with the row. Every load does all of it.
    pub fn load(&self, r: &VersionRef) -> Result<VerifiedVersion> {
        let row = self.resolve(r)?;
        self.load_row(row)
    }

    pub(crate) fn load_row(&self, row: VersionRow) -> Result<VerifiedVersion> {
        let cid = row.manifest;
        let bytes = store::read_verified(self.store.as_ref(), &cid)?;
        let doc = SignedManifest::parse(&cid, &bytes)?;
        let signer = doc.verify(&cid, &self.trusted)?;
        let m = &doc.manifest;
        let id = self.model_id(&row.model)?;
        let blobs = self.sql(db::version_blobs(&self.conn, id, row.number))?;
        let manifest_blobs: BTreeSet<String> = m.files.iter().map(|f| f.cid.to_string()).collect();
        if m.model != row.model
            || m.version != row.number
            || m.lineage != row.lineage
            || blobs != manifest_blobs
        {
            return Err(Error::Inconsistent {
                reason: format!(
                    "the rows of {}/{} disagree with its signed manifest {cid}",
                    row.model, row.number
                ),
            });
        }
        Ok(VerifiedVersion { manifest: doc.manifest, row, signer })
    }

    /// Points `alias` at a version of `model`, or removes it (`None`). Returns where it pointed.
    pub fn set_alias(&mut self, model: &str, alias: &str, version: Option<u64>) -> Result<Option<u64>> {
        check_alias(alias)?;
        let id = self.model_id(model)?;
        if let Some(n) = version {
            self.resolve(&VersionRef { model: model.to_string(), selector: Selector::Version(n) })?;
        }
        let db_path = self.db_path.clone();
        let db_err = |source| Error::Db { path: db_path.clone(), source };
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(db_err)?;
        let old = db::move_alias(&tx, id, alias, version, now()).map_err(db_err)?;
        if version.is_none() && old.is_none() {
            return Err(Error::UnknownAlias { model: model.to_string(), alias: alias.to_string() });
        }
        tx.commit().map_err(db_err)?;
        Ok(old)
    }

    /// Sets (`Some`) or removes (`None`) a tag on a version.
    pub fn set_tag(&mut self, r: &VersionRef, key: &str, value: Option<&str>) -> Result<()> {
        check_name("tag", key)?;
        let row = self.resolve(r)?;
        let id = self.model_id(&row.model)?;
        let db_path = self.db_path.clone();
        let db_err = |source| Error::Db { path: db_path.clone(), source };
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(db_err)?;
        db::set_tag(&tx, id, row.number, key, value).map_err(db_err)?;
        tx.commit().map_err(db_err)
    }

    /// Every model with its version count, latest version and aliases.
    pub fn models(&self) -> Result<Vec<ModelSummary>> {
        self.sql(db::models(&self.conn))
    }

    /// A model's versions, oldest first.
    pub fn versions(&self, model: &str) -> Result<Vec<VersionRow>> {
        let id = self.model_id(model)?;
        self.sql(db::versions(&self.conn, model, id))
    }

    /// A loaded (verified) version with its aliases and tags.
    pub fn show(&self, r: &VersionRef) -> Result<VersionDetails> {
        let version = self.load(r)?;
        let id = self.model_id(&version.row.model)?;
        let aliases = self.sql(db::aliases(&self.conn, id))?;
        let aliases = aliases.into_iter().filter(|(_, n)| *n == version.row.number).map(|(a, _)| a).collect();
        let tags = self.sql(db::tags(&self.conn, id, version.row.number))?;
        Ok(VersionDetails { version, aliases, tags })
    }
}
