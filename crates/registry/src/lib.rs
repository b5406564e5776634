//! The model registry: versions of model directories, stored by content and signed.
//!
//! - **Blobs** are stored once by digest: sha2-256 multihashes written as CIDv1 (raw codec,
//!   base32), the names IPFS gives the same bytes ([`Digest`]). They live in a [`BlobStore`]: a
//!   local directory ([`LocalStore`], atomic: temporary file, fsync, rename, fsync of the
//!   directory) or, with the `s3` feature, an S3 bucket through `object_store` (`S3Store`).
//! - **A version** is a [`Manifest`]: its files with their digests and sizes, metadata and
//!   [`Lineage`], serialized canonically and signed with Ed25519. The manifest is a blob too;
//!   every [`Registry::load`] re-hashes it and checks the signature against `trusted_keys`, and an
//!   unsigned, tampered or untrusted one is refused with the reason.
//! - **Metadata** is in SQLite (WAL): models, versions numbered 1, 2, … per model, aliases (any
//!   name, as MLflow's), tags and lineage. Each write is one transaction, and the blobs a row
//!   names are written and synced before it commits.
//! - [`Registry::verify`] re-hashes everything; [`Registry::gc`] removes blobs no row references.
//!
//! `docs/registry.md` has the data model and on-disk layout.

mod db;
mod digest;
mod error;
mod keys;
mod maintenance;
mod manifest;
mod names;
mod registry;
pub mod store;
mod tree;

pub use db::{ModelSummary, VersionRow};
pub use digest::{Digest, Hasher};
pub use error::{Error, Result};
pub use keys::{SigningKey, TrustedKeys};
pub use maintenance::{Diff, GcReport, Problem, VerifyReport};
pub use manifest::{FileEntry, Lineage, Manifest, Signature, SignedManifest, SCHEMA};
pub use names::{check_alias, check_name, Selector, VersionRef, LATEST, REF_PREFIX};
pub use registry::{PushOptions, Registry, VerifiedVersion, VersionDetails};
pub use store::{BlobStore, LocalStore};
