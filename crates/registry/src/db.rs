//! The metadata database: SQLite in WAL mode, `synchronous=FULL`, foreign keys on.
//!
//! Tables (docs/registry.md draws them):
//! - `models(id, name, next_version, created_at)`: `next_version` only grows, so a number is
//!   never given twice.
//! - `versions(model_id, number, manifest, signer, files, size, created_at, run_id, data_hash,
//!   config_hash, parent)`, and `version_blobs(model_id, number, cid)`: what each version
//!   references, for `gc` and `verify`.
//! - `aliases(model_id, alias, number, updated_at)`, with every move in `alias_events`.
//! - `tags(model_id, number, key, value)`.

use std::collections::BTreeSet;
use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::manifest::Lineage;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS models(
  id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE,
  next_version INTEGER NOT NULL DEFAULT 1, created_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS versions(
  model_id INTEGER NOT NULL REFERENCES models(id), number INTEGER NOT NULL,
  manifest TEXT NOT NULL, signer TEXT NOT NULL, files INTEGER NOT NULL, size INTEGER NOT NULL,
  created_at INTEGER NOT NULL, run_id TEXT, data_hash TEXT, config_hash TEXT, parent TEXT,
  PRIMARY KEY(model_id, number));
CREATE TABLE IF NOT EXISTS version_blobs(
  model_id INTEGER NOT NULL, number INTEGER NOT NULL, cid TEXT NOT NULL,
  PRIMARY KEY(model_id, number, cid),
  FOREIGN KEY(model_id, number) REFERENCES versions(model_id, number));
CREATE INDEX IF NOT EXISTS version_blobs_cid ON version_blobs(cid);
CREATE TABLE IF NOT EXISTS aliases(
  model_id INTEGER NOT NULL, alias TEXT NOT NULL, number INTEGER NOT NULL, updated_at INTEGER NOT NULL,
  PRIMARY KEY(model_id, alias),
  FOREIGN KEY(model_id, number) REFERENCES versions(model_id, number));
CREATE TABLE IF NOT EXISTS alias_events(
  id INTEGER PRIMARY KEY, model_id INTEGER NOT NULL, alias TEXT NOT NULL,
  old_number INTEGER, new_number INTEGER, at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS tags(
  model_id INTEGER NOT NULL, number INTEGER NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
  PRIMARY KEY(model_id, number, key),
  FOREIGN KEY(model_id, number) REFERENCES versions(model_id, number));
PRAGMA user_version = 1;
";

/// A version as its row records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRow {
    pub model: String,
    pub number: u64,
    pub manifest: Digest,
    pub signer: String,
    pub files: u64,
    pub size: u64,
    pub created_at: u64,
    pub lineage: Lineage,
}

/// A model with its version count and aliases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSummary {
    pub name: String,
    pub versions: u64,
    pub latest: Option<u64>,
    pub aliases: Vec<(String, u64)>,
}

/// Opens (creating) the database with its pragmas and schema.
pub(crate) fn open(path: &Path) -> Result<Connection> {
    let db_err = |source| Error::Db { path: path.to_path_buf(), source };
    let conn = Connection::open(path).map_err(db_err)?;
    conn.busy_timeout(std::time::Duration::from_secs(30)).map_err(db_err)?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)).map_err(db_err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::Inconsistent {
            reason: format!("{} refused WAL mode (got {mode})", path.display()),
        });
    }
    conn.execute_batch("PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;").map_err(db_err)?;
    conn.execute_batch(SCHEMA).map_err(db_err)?;
    Ok(conn)
}

pub(crate) fn get_meta(conn: &Connection, key: &str) -> rusqlite::Result<Option<String>> {
    conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0)).optional()
}

pub(crate) fn set_meta(conn: &Connection, key: &str, value: &str) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO meta(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = ?2",
        [key, value],
    )?;
    Ok(())
}

pub(crate) fn model_id(conn: &Connection, name: &str) -> rusqlite::Result<Option<i64>> {
    conn.query_row("SELECT id FROM models WHERE name = ?1", [name], |r| r.get(0)).optional()
}

/// Creates the model if needed and takes its next version number.
pub(crate) fn take_version_number(tx: &Transaction, name: &str, now: u64) -> rusqlite::Result<(i64, u64)> {
    tx.execute("INSERT OR IGNORE INTO models(name, created_at) VALUES (?1, ?2)", params![name, now as i64])?;
    let (id, next): (i64, i64) =
        tx.query_row("SELECT id, next_version FROM models WHERE name = ?1", [name], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    tx.execute("UPDATE models SET next_version = ?1 WHERE id = ?2", params![next + 1, id])?;
    Ok((id, next as u64))
}

pub(crate) fn insert_version(
    tx: &Transaction,
    model_id: i64,
    row: &VersionRow,
    blobs: &BTreeSet<Digest>,
) -> rusqlite::Result<()> {
    let l = &row.lineage;
    tx.execute(
        "INSERT INTO versions(model_id, number, manifest, signer, files, size, created_at, run_id, data_hash, config_hash, parent)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        params![
            model_id, row.number as i64, row.manifest.to_string(), row.signer, row.files as i64, row.size as i64,
            row.created_at as i64, l.run_id, l.data_hash, l.config_hash, l.parent
        ],
    )?;
    let mut insert = tx.prepare("INSERT INTO version_blobs(model_id, number, cid) VALUES (?1, ?2, ?3)")?;
    for cid in blobs {
        insert.execute(params![model_id, row.number as i64, cid.to_string()])?;
    }
    Ok(())
}

fn row_to_version(model: &str, r: &rusqlite::Row) -> rusqlite::Result<VersionRow> {
    let manifest: String = r.get(1)?;
    let manifest = manifest.parse().map_err(|e: Error| {
        rusqlite::Error::FromSqlConversionFailure(1, rusqlite::types::Type::Text, Box::new(e))
    })?;
    Ok(VersionRow {
        model: model.to_string(),
        number: r.get::<_, i64>(0)? as u64,
        manifest,
        signer: r.get(2)?,
        files: r.get::<_, i64>(3)? as u64,
        size: r.get::<_, i64>(4)? as u64,
        created_at: r.get::<_, i64>(5)? as u64,
        lineage: Lineage {
            run_id: r.get(6)?,
            data_hash: r.get(7)?,
            config_hash: r.get(8)?,
            parent: r.get(9)?,
        },
    })
}

const VERSION_COLUMNS: &str =
    "number, manifest, signer, files, size, created_at, run_id, data_hash, config_hash, parent";

pub(crate) fn version(
    conn: &Connection,
    model: &str,
    id: i64,
    number: u64,
) -> rusqlite::Result<Option<VersionRow>> {
    let sql = format!("SELECT {VERSION_COLUMNS} FROM versions WHERE model_id = ?1 AND number = ?2");
    conn.query_row(&sql, params![id, number as i64], |r| row_to_version(model, r)).optional()
}

pub(crate) fn versions(conn: &Connection, model: &str, id: i64) -> rusqlite::Result<Vec<VersionRow>> {
    let sql = format!("SELECT {VERSION_COLUMNS} FROM versions WHERE model_id = ?1 ORDER BY number");
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map([id], |r| row_to_version(model, r))?;
    rows.collect()
}

pub(crate) fn latest(conn: &Connection, id: i64) -> rusqlite::Result<Option<u64>> {
    let n: Option<i64> =
        conn.query_row("SELECT MAX(number) FROM versions WHERE model_id = ?1", [id], |r| r.get(0))?;
    Ok(n.map(|n| n as u64))
}

pub(crate) fn alias(conn: &Connection, id: i64, alias: &str) -> rusqlite::Result<Option<u64>> {
    conn.query_row("SELECT number FROM aliases WHERE model_id = ?1 AND alias = ?2", params![id, alias], |r| {
        r.get::<_, i64>(0)
    })
    .optional()
    .map(|n| n.map(|n| n as u64))
}

pub(crate) fn aliases(conn: &Connection, id: i64) -> rusqlite::Result<Vec<(String, u64)>> {
    let mut stmt = conn.prepare("SELECT alias, number FROM aliases WHERE model_id = ?1 ORDER BY alias")?;
    let rows = stmt.query_map([id], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
    rows.collect()
}

/// Points `alias` at `number` (or removes it, for `None`), and records the move.
pub(crate) fn move_alias(
    tx: &Transaction,
    id: i64,
    name: &str,
    number: Option<u64>,
    now: u64,
) -> rusqlite::Result<Option<u64>> {
    let old = alias(tx, id, name)?;
    match number {
        Some(n) => tx.execute(
            "INSERT INTO aliases(model_id, alias, number, updated_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(model_id, alias) DO UPDATE SET number = ?3, updated_at = ?4",
            params![id, name, n as i64, now as i64],
        )?,
        None => tx.execute("DELETE FROM aliases WHERE model_id = ?1 AND alias = ?2", params![id, name])?,
    };
    tx.execute(
        "INSERT INTO alias_events(model_id, alias, old_number, new_number, at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![id, name, old.map(|n| n as i64), number.map(|n| n as i64), now as i64],
    )?;
    Ok(old)
}

pub(crate) fn tags(conn: &Connection, id: i64, number: u64) -> rusqlite::Result<Vec<(String, String)>> {
    let mut stmt =
        conn.prepare("SELECT key, value FROM tags WHERE model_id = ?1 AND number = ?2 ORDER BY key")?;
    let rows = stmt.query_map(params![id, number as i64], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}

pub(crate) fn set_tag(
    tx: &Transaction,
    id: i64,
    number: u64,
    key: &str,
    value: Option<&str>,
) -> rusqlite::Result<()> {
    match value {
        Some(v) => tx.execute(
            "INSERT INTO tags(model_id, number, key, value) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(model_id, number, key) DO UPDATE SET value = ?4",
            params![id, number as i64, key, v],
        )?,
        None => tx.execute(
            "DELETE FROM tags WHERE model_id = ?1 AND number = ?2 AND key = ?3",
            params![id, number as i64, key],
        )?,
    };
    Ok(())
}

pub(crate) fn models(conn: &Connection) -> rusqlite::Result<Vec<ModelSummary>> {
    let mut stmt = conn.prepare(
        "SELECT m.id, m.name, COUNT(v.number), MAX(v.number) FROM models m
         LEFT JOIN versions v ON v.model_id = m.id GROUP BY m.id ORDER BY m.name",
    )?;
    let rows: Vec<(i64, String, i64, Option<i64>)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<rusqlite::Result<_>>()?;
    rows.into_iter()
        .map(|(id, name, count, latest)| {
            Ok(ModelSummary {
                name,
                versions: count as u64,
                latest: latest.map(|n| n as u64),
                aliases: aliases(conn, id)?,
            })
        })
        .collect()
}

/// The blobs a version's rows reference.
pub(crate) fn version_blobs(conn: &Connection, id: i64, number: u64) -> rusqlite::Result<BTreeSet<String>> {
    let mut stmt = conn.prepare("SELECT cid FROM version_blobs WHERE model_id = ?1 AND number = ?2")?;
    let rows = stmt.query_map(params![id, number as i64], |r| r.get(0))?;
    rows.collect()
}

/// Every blob a committed row references: manifests and files.
pub(crate) fn referenced(conn: &Connection) -> rusqlite::Result<BTreeSet<String>> {
    let mut stmt = conn.prepare("SELECT manifest FROM versions UNION SELECT cid FROM version_blobs")?;
    let rows = stmt.query_map([], |r| r.get(0))?;
    rows.collect()
}

/// Every (model name, model id) with versions, by name.
pub(crate) fn model_ids(conn: &Connection) -> rusqlite::Result<Vec<(String, i64)>> {
    let mut stmt = conn.prepare("SELECT name, id FROM models ORDER BY name")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}
