//! `keys`, `encrypt`, `decrypt` and `audit verify`: the keyring, encryption at rest and the
//! audit log, from truthgpt-security.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context};
use serde_json::json;
use truthgpt_security::audit::{parse_public_key, public_key_hex};
use truthgpt_security::{
    decrypt_file, encrypt_file, is_encrypted, read_header, rewrap_file, verify_log, AuditWriter,
    EncryptOptions, KdfParams, Keyring, Rewrap,
};
use zeroize::Zeroizing;

use crate::args::{AuditCommand, DecryptArgs, EncryptArgs, KeyringArgs, KeysCommand};

const PASSPHRASE_ENV: &str = "TRUTHGPT_KEYRING_PASSPHRASE";
/// Events between the audit log's automatic checkpoints (each command also ends with one).
const CHECKPOINT_EVERY: u64 = 100;

/// The passphrase: the first line of --passphrase-file, else TRUTHGPT_KEYRING_PASSPHRASE.
fn passphrase(args: &KeyringArgs) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    let pass = match &args.passphrase_file {
        Some(file) => {
            let text = Zeroizing::new(std::fs::read(file).with_context(|| format!("{}", file.display()))?);
            let line = text.split(|&b| b == b'\n').next().unwrap_or_default();
            Zeroizing::new(line.strip_suffix(b"\r").unwrap_or(line).to_vec())
        }
        None => match std::env::var_os(PASSPHRASE_ENV) {
            Some(v) => Zeroizing::new(v.into_encoded_bytes()),
            None => bail!("no passphrase: set {PASSPHRASE_ENV} or pass --passphrase-file FILE"),
        },
    };
    ensure!(!pass.is_empty(), "the passphrase is empty");
    Ok(pass)
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

fn audit_path(args: &KeyringArgs) -> PathBuf {
    args.audit_log.clone().unwrap_or_else(|| with_suffix(&args.keyring, ".audit.jsonl"))
}

/// Appends one event to the audit log and seals it with a checkpoint.
fn audit(ring: &Keyring, args: &KeyringArgs, action: &str, detail: serde_json::Value) -> anyhow::Result<()> {
    let mut log = AuditWriter::open(&audit_path(args), ring.audit_signing_key(), CHECKPOINT_EVERY)?;
    log.append("cli", action, detail)?;
    log.checkpoint()?;
    Ok(())
}

pub fn keys(cmd: &KeysCommand) -> anyhow::Result<()> {
    match cmd {
        KeysCommand::Init { keyring, kdf_memory_mib } => init(keyring, *kdf_memory_mib),
        KeysCommand::Rotate { keyring, paths } => rotate(keyring, paths, true),
        KeysCommand::Rewrap { keyring, paths } => rotate(keyring, paths, false),
        KeysCommand::Retire { keyring, id, paths } => retire(keyring, id, paths),
        KeysCommand::List { keyring } => list(keyring),
    }
}

fn init(args: &KeyringArgs, memory_mib: u32) -> anyhow::Result<()> {
    let kdf = KdfParams { m_cost_kib: memory_mib.saturating_mul(1024), ..KdfParams::default() };
    let ring = Keyring::create(&args.keyring, &passphrase(args)?, kdf)?;
    let public = public_key_hex(&ring.audit_public_key());
    let pub_file = with_suffix(&args.keyring, ".audit.pub");
    std::fs::write(&pub_file, format!("{public}\n")).with_context(|| format!("{}", pub_file.display()))?;
    audit(&ring, args, "keys.init", json!({"keyring": args.keyring, "key": ring.active().id}))?;
    println!("created {} with key {}", args.keyring.display(), ring.active().id);
    println!("audit public key {public} (also in {}; keep a copy away from the log)", pub_file.display());
    Ok(())
}

/// Every encrypted file at or under `paths` (symbolic links are not followed).
fn encrypted_files(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack: Vec<PathBuf> = paths.to_vec();
    while let Some(p) = stack.pop() {
        let meta = std::fs::symlink_metadata(&p).with_context(|| format!("{}", p.display()))?;
        if meta.is_dir() {
            for entry in std::fs::read_dir(&p).with_context(|| format!("{}", p.display()))? {
                stack.push(entry.with_context(|| format!("{}", p.display()))?.path());
            }
        } else if meta.is_file() && is_encrypted(&p) {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

fn rotate(args: &KeyringArgs, paths: &[PathBuf], new_key: bool) -> anyhow::Result<()> {
    let mut ring = Keyring::open_for_update(&args.keyring, &passphrase(args)?)?;
    let files = encrypted_files(paths)?;
    if new_key {
        let old = ring.active().id.clone();
        let id = ring.rotate()?;
        // Saved before anything is wrapped under the new key, so a crash cannot lose it.
        ring.save()?;
        audit(&ring, args, "keys.rotate", json!({"from": old, "to": id}))?;
        println!("new active key {id}; {old} is now decrypt-only");
    }
    let (mut moved, mut kept) = (0, 0);
    for f in &files {
        match rewrap_file(&ring, f)? {
            Rewrap::Unchanged { .. } => kept += 1,
            Rewrap::Rewrapped { from, to } => {
                audit(&ring, args, "keys.rewrap", json!({"file": f, "from": from, "to": to}))?;
                moved += 1;
            }
        }
    }
    println!("re-wrapped {moved} file(s), {kept} already under {}", ring.active().id);
    Ok(())
}

fn retire(args: &KeyringArgs, id: &str, paths: &[PathBuf]) -> anyhow::Result<()> {
    let mut ring = Keyring::open_for_update(&args.keyring, &passphrase(args)?)?;
    let still: Vec<PathBuf> = encrypted_files(paths)?
        .into_iter()
        .filter(|f| read_header(f).is_ok_and(|h| h.slot.kek_id == id))
        .collect();
    if let Some(first) = still.first() {
        bail!(
            "{} file(s) still name key {id}, e.g. {}; run `keys rewrap` on them first",
            still.len(),
            first.display()
        );
    }
    ring.retire(id)?;
    ring.save()?;
    audit(&ring, args, "keys.retire", json!({"key": id}))?;
    println!("retired {id}: its material is erased");
    Ok(())
}

fn list(args: &KeyringArgs) -> anyhow::Result<()> {
    let ring = Keyring::open(&args.keyring, &passphrase(args)?)?;
    for k in ring.keys() {
        println!("{:<24} {:<13} created_ms {}", k.id, k.state.to_string(), k.created_ms);
    }
    println!("audit public key {}", public_key_hex(&ring.audit_public_key()));
    Ok(())
}

pub fn encrypt(args: &EncryptArgs) -> anyhow::Result<()> {
    let ring = Keyring::open(&args.keyring.keyring, &passphrase(&args.keyring)?)?;
    let out = args.out.clone().unwrap_or_else(|| with_suffix(&args.input, ".enc"));
    ensure!(out != args.input, "--out must differ from the input");
    let chunk_size = args.chunk_kib.checked_mul(1024).context("--chunk-kib is too large")?;
    let n = encrypt_file(&ring, EncryptOptions { cipher: args.cipher, chunk_size }, &args.input, &out)?;
    let detail = json!({"input": args.input, "out": out, "bytes": n, "key": ring.active().id, "cipher": args.cipher.name()});
    audit(&ring, &args.keyring, "artifact.encrypt", detail)?;
    println!(
        "encrypted {} ({n} bytes) to {} under {}",
        args.input.display(),
        out.display(),
        ring.active().id
    );
    Ok(())
}

pub fn decrypt(args: &DecryptArgs) -> anyhow::Result<()> {
    let ring = Keyring::open(&args.keyring.keyring, &passphrase(&args.keyring)?)?;
    ensure!(args.out != args.input, "--out must differ from the input");
    let n = decrypt_file(&ring, &args.input, &args.out)?;
    audit(
        &ring,
        &args.keyring,
        "artifact.decrypt",
        json!({"input": args.input, "out": args.out, "bytes": n}),
    )?;
    println!("decrypted {} ({n} bytes) to {}", args.input.display(), args.out.display());
    Ok(())
}

/// Exit status 1 when the log was changed; errors (unreadable files) exit 2 as elsewhere.
pub fn audit_cmd(cmd: &AuditCommand) -> anyhow::Result<bool> {
    let AuditCommand::Verify { log, public_key, keyring, strict } = cmd;
    let key = match public_key {
        Some(text) if Path::new(text).is_file() => {
            parse_public_key(&std::fs::read_to_string(text).with_context(|| text.clone())?)?
        }
        Some(text) => parse_public_key(text)?,
        None => Keyring::open(&keyring.keyring, &passphrase(keyring)?)?.audit_public_key(),
    };
    let log = log.clone().unwrap_or_else(|| audit_path(keyring));
    let report = verify_log(&log, &key)?;
    for p in &report.problems {
        println!("{}: {p}", log.display());
    }
    println!(
        "{}: {} lines, {} signed checkpoints, {} problem(s), {} line(s) after the newest checkpoint",
        log.display(),
        report.lines,
        report.checkpoints,
        report.problems.len(),
        report.unsealed
    );
    Ok(if *strict { report.is_sealed() } else { report.is_intact() })
}
