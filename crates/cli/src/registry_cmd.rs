//! `registry …`: push, pull, list, show, alias, tag, diff, verify, gc, keygen, trust; and the
//! resolution of `--model registry:NAME@ALIAS` / `registry:NAME/VERSION` into a local directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::json;
use truthgpt_registry::{Lineage, PushOptions, Registry, SigningKey, VersionRef};

use crate::args::{RegistryArgs, RegistryCommand, RegistryPushArgs};

pub fn run(args: &RegistryArgs) -> anyhow::Result<()> {
    if let RegistryCommand::Keygen { signer, out, trust: false } = &args.command {
        return keygen(signer, out).map(drop);
    }
    let mut registry = open(args.registry.as_deref(), args.store.as_deref())?;
    match &args.command {
        RegistryCommand::Push(push_args) => push(&mut registry, push_args),
        RegistryCommand::Pull { reference, out } => {
            let v = registry.pull(&parse_ref(reference)?, out)?;
            println!(
                "pulled {}/{} into {} ({} files, signed by {})",
                v.row.model,
                v.row.number,
                out.display(),
                v.row.files,
                v.signer
            );
            Ok(())
        }
        RegistryCommand::List { model } => list(&registry, model.as_deref()),
        RegistryCommand::Show { reference } => show(&registry, reference),
        RegistryCommand::Alias { model, alias, version, delete } => {
            let old = registry.set_alias(model, alias, if *delete { None } else { *version })?;
            let was = old.map_or("unset".to_string(), |n| format!("was {n}"));
            match version.filter(|_| !delete) {
                Some(n) => println!("{model}@{alias} -> {n} ({was})"),
                None => println!("{model}@{alias} removed ({was})"),
            }
            Ok(())
        }
        RegistryCommand::Tag { reference, tags, delete } => tag(&mut registry, reference, tags, delete),
        RegistryCommand::Diff { a, b } => diff(&registry, a, b),
        RegistryCommand::Verify => verify(&registry),
        RegistryCommand::Gc { grace_secs, dry_run } => {
            let r = registry.gc(Duration::from_secs(*grace_secs), *dry_run)?;
            let verb = if *dry_run { "would remove" } else { "removed" };
            println!(
                "{verb} {} blobs ({} bytes) and {} temporary files; kept {} referenced and {} younger than {grace_secs} s",
                r.removed, r.bytes_removed, r.temporaries, r.kept, r.young
            );
            Ok(())
        }
        RegistryCommand::Keygen { signer, out, .. } => {
            let public = keygen(signer, out)?;
            registry.trust(signer, &public)?;
            println!("trusted {signer} in {}", registry.root().join("trusted_keys").display());
            Ok(())
        }
        RegistryCommand::Trust { signer, public_key } => {
            registry.trust(signer, public_key)?;
            println!("trusted {signer} {public_key}");
            Ok(())
        }
    }
}

/// Opens the registry at `dir` with its blobs where `store` says.
fn open(dir: Option<&Path>, store: Option<&str>) -> anyhow::Result<Registry> {
    let Some(dir) = dir else {
        bail!("no registry: give --registry DIR or set TRUTHGPT_REGISTRY");
    };
    match store {
        None | Some("local") => Ok(Registry::open(dir)?),
        Some(url) if url.starts_with("s3://") => open_s3(dir, url),
        Some(other) => bail!("--store {other:?}: expected `local` or s3://BUCKET/PREFIX"),
    }
}

#[cfg(feature = "s3")]
fn open_s3(dir: &Path, url: &str) -> anyhow::Result<Registry> {
    use truthgpt_registry::store::{S3Config, S3Store};
    let rest = &url["s3://".len()..];
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    anyhow::ensure!(!bucket.is_empty(), "--store {url:?}: no bucket");
    let config = S3Config {
        bucket: bucket.into(),
        prefix: prefix.into(),
        endpoint: std::env::var("AWS_ENDPOINT").ok(),
        ..Default::default()
    };
    Ok(Registry::open_with_store(dir, Box::new(S3Store::open(&config)?))?)
}

#[cfg(not(feature = "s3"))]
fn open_s3(_dir: &Path, url: &str) -> anyhow::Result<Registry> {
    bail!("--store {url}: this truthgpt was built without S3 support (build with --features s3)")
}

fn parse_ref(text: &str) -> anyhow::Result<VersionRef> {
    let text = text.strip_prefix(truthgpt_registry::REF_PREFIX).unwrap_or(text);
    Ok(text.parse()?)
}

/// `KEY=VALUE` pairs.
fn pairs(items: &[String], what: &str) -> anyhow::Result<BTreeMap<String, String>> {
    items
        .iter()
        .map(|item| match item.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => bail!("{what} {item:?}: expected KEY=VALUE"),
        })
        .collect()
}

fn push(registry: &mut Registry, args: &RegistryPushArgs) -> anyhow::Result<()> {
    let key = SigningKey::load(&args.key)?;
    let opts = PushOptions {
        metadata: pairs(&args.meta, "--meta")?,
        lineage: Lineage {
            run_id: args.run_id.clone(),
            data_hash: args.data_hash.clone(),
            config_hash: args.config_hash.clone(),
            parent: args.parent.clone(),
        },
        aliases: args.alias.clone(),
    };
    let row = registry.push(&args.model, &args.dir, &key, &opts)?;
    println!(
        "pushed {}/{} (manifest {}, {} files, {} bytes, signed by {})",
        row.model, row.number, row.manifest, row.files, row.size, row.signer
    );
    Ok(())
}

fn list(registry: &Registry, model: Option<&str>) -> anyhow::Result<()> {
    let Some(model) = model else {
        for m in registry.models()? {
            let aliases: Vec<String> = m.aliases.iter().map(|(a, n)| format!("{a}={n}")).collect();
            let latest = m.latest.map_or("-".to_string(), |n| n.to_string());
            println!("{}\tversions {}\tlatest {latest}\taliases {}", m.name, m.versions, aliases.join(","));
        }
        return Ok(());
    };
    for v in registry.versions(model)? {
        println!(
            "{}/{}\t{}\t{} files\t{} bytes\tsigned by {}",
            v.model, v.number, v.manifest, v.files, v.size, v.signer
        );
    }
    Ok(())
}

fn show(registry: &Registry, reference: &str) -> anyhow::Result<()> {
    let d = registry.show(&parse_ref(reference)?)?;
    let tags: BTreeMap<_, _> = d.tags.into_iter().collect();
    let out = json!({
        "model": d.version.row.model,
        "version": d.version.row.number,
        "manifest_cid": d.version.row.manifest.to_string(),
        "signer": d.version.signer,
        "aliases": d.aliases,
        "tags": tags,
        "manifest": d.version.manifest,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

fn tag(registry: &mut Registry, reference: &str, tags: &[String], delete: &[String]) -> anyhow::Result<()> {
    let r = parse_ref(reference)?;
    for (k, v) in pairs(tags, "tag")? {
        registry.set_tag(&r, &k, Some(&v))?;
    }
    for k in delete {
        registry.set_tag(&r, k, None)?;
    }
    println!("{} tags: {} set, {} removed", r, tags.len(), delete.len());
    Ok(())
}

fn diff(registry: &Registry, a: &str, b: &str) -> anyhow::Result<()> {
    let d = registry.diff(&parse_ref(a)?, &parse_ref(b)?)?;
    for f in &d.added {
        println!("+ {}\t{}\t{} bytes", f.path, f.cid, f.size);
    }
    for f in &d.removed {
        println!("- {}\t{}\t{} bytes", f.path, f.cid, f.size);
    }
    for (old, new) in &d.changed {
        println!("~ {}\t{} -> {}\t{} -> {} bytes", old.path, old.cid, new.cid, old.size, new.size);
    }
    for (k, old, new) in &d.metadata {
        println!(
            "meta {k}: {} -> {}",
            old.as_deref().unwrap_or("(none)"),
            new.as_deref().unwrap_or("(none)")
        );
    }
    println!("{} unchanged", d.unchanged);
    Ok(())
}

fn verify(registry: &Registry) -> anyhow::Result<()> {
    let report = registry.verify()?;
    for p in &report.problems {
        println!("FAIL {}: {}", p.subject, p.error);
    }
    println!(
        "checked {} versions, {} blobs, {} bytes: {} problems",
        report.versions,
        report.blobs,
        report.bytes,
        report.problems.len()
    );
    if !report.problems.is_empty() {
        bail!("verify found {} problems", report.problems.len());
    }
    Ok(())
}

/// Writes a new key file and prints its public key; returns it.
fn keygen(signer: &str, out: &Path) -> anyhow::Result<String> {
    let key = SigningKey::generate(signer)?;
    key.save(out)?;
    println!("{signer} {}", key.public_hex());
    Ok(key.public_hex())
}

/// A `--model` argument: a path as it is, or `registry:NAME@ALIAS` / `registry:NAME/VERSION`
/// checked out (pulled once, verified every time) from the registry in $TRUTHGPT_REGISTRY.
pub fn resolve_model(model: &Path) -> anyhow::Result<PathBuf> {
    let Some(parsed) = model.to_str().and_then(VersionRef::parse_model_arg) else {
        return Ok(model.to_path_buf());
    };
    let r = parsed?;
    let dir = std::env::var_os("TRUTHGPT_REGISTRY").map(PathBuf::from);
    let store = std::env::var("TRUTHGPT_REGISTRY_STORE").ok();
    let registry = open(dir.as_deref(), store.as_deref())
        .with_context(|| format!("--model {}: set TRUTHGPT_REGISTRY to the registry", model.display()))?;
    let path = registry.checkout(&r)?;
    eprintln!("{} -> {}", model.display(), path.display());
    Ok(path)
}
