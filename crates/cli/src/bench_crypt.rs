//! `truthgpt bench crypt`: encrypting and decrypting a large file with ours against `age` and
//! `openssl enc`, file to file, alternated round by round; one JSON line per tool, then the
//! ratios.
//!
//! Ours runs in this process through the same streams `encrypt_file`/`decrypt_file` use, less
//! their final fsync (the peers do not fsync either). `age` (X25519 recipient) is the like for
//! like: ChaCha20-Poly1305 under STREAM in 64 KiB chunks. `openssl enc` has no AEAD modes, so its
//! rows are ChaCha20 and AES-256-CTR without authentication: the cipher's cost alone.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, ensure, Context};
use serde_json::json;
use truthgpt_security::{decrypt_stream, encrypt_stream, Cipher, EncryptOptions, KdfParams, Keyring};

use crate::args::BenchCryptArgs;
use crate::bench::median;

enum Tool {
    Ours(Cipher),
    /// `age` with an X25519 identity in this file, and its recipient.
    Age {
        identity: PathBuf,
        recipient: String,
    },
    /// `openssl enc -<cipher>` with a raw key and IV.
    Openssl(&'static str),
}

impl Tool {
    fn name(&self) -> String {
        match self {
            Tool::Ours(c) => format!("truthgpt {c} (STREAM, 64 KiB chunks)"),
            Tool::Age { .. } => "age (chacha20-poly1305 STREAM, 64 KiB chunks)".into(),
            Tool::Openssl(c) => format!("openssl enc -{c} (unauthenticated)"),
        }
    }

    fn authenticated(&self) -> bool {
        !matches!(self, Tool::Openssl(_))
    }

    fn run(&self, ring: &Keyring, decrypt: bool, input: &Path, output: &Path) -> anyhow::Result<()> {
        match self {
            Tool::Ours(cipher) => {
                let src = BufReader::with_capacity(1 << 20, File::open(input)?);
                let mut dst = BufWriter::with_capacity(1 << 20, File::create(output)?);
                if decrypt {
                    decrypt_stream(ring, src, &mut dst, input)?;
                } else {
                    let opts = EncryptOptions { cipher: *cipher, ..EncryptOptions::default() };
                    encrypt_stream(ring, opts, &mut { src }, &mut dst, output)?;
                }
                dst.flush()?;
                Ok(())
            }
            Tool::Age { identity, recipient } => {
                let mut cmd = Command::new("age");
                match decrypt {
                    true => cmd.arg("-d").arg("-i").arg(identity),
                    false => cmd.arg("-r").arg(recipient),
                };
                spawn(cmd.arg("-o").arg(output).arg(input))
            }
            Tool::Openssl(cipher) => {
                let mut cmd = Command::new("openssl");
                cmd.args(["enc", &format!("-{cipher}"), "-K", &"11".repeat(32), "-iv", &"22".repeat(16)]);
                if decrypt {
                    cmd.arg("-d");
                }
                spawn(cmd.arg("-in").arg(input).arg("-out").arg(output))
            }
        }
    }
}

fn spawn(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    ensure!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    Ok(())
}

fn installed(tool: &str, arg: &str) -> bool {
    Command::new(tool).arg(arg).output().is_ok_and(|o| o.status.success())
}

/// The tools on this machine: ours always, the peers where installed.
fn tools(dir: &Path) -> anyhow::Result<Vec<Tool>> {
    let mut tools = vec![Tool::Ours(Cipher::ChaCha20Poly1305), Tool::Ours(Cipher::Aes256Gcm)];
    if installed("age", "--version") && installed("age-keygen", "--version") {
        let identity = dir.join("age.key");
        spawn(Command::new("age-keygen").arg("-o").arg(&identity))?;
        let text = std::fs::read_to_string(&identity)?;
        let recipient =
            text.lines().find_map(|l| l.strip_prefix("# public key: ")).context("age-keygen's output")?;
        tools.push(Tool::Age { recipient: recipient.to_string(), identity });
    } else {
        eprintln!("age is not installed: no age row");
    }
    if installed("openssl", "version") {
        tools.push(Tool::Openssl("chacha20"));
        tools.push(Tool::Openssl("aes-256-ctr"));
    } else {
        eprintln!("openssl is not installed: no openssl rows");
    }
    Ok(tools)
}

/// `size` bytes that do not compress (xorshift), in 1 MiB writes.
fn write_input(path: &Path, size: u64) -> anyhow::Result<()> {
    let mut w = BufWriter::new(File::create(path)?);
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut block = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for word in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(block.len() as u64) as usize;
        w.write_all(&block[..n])?;
        left -= n as u64;
    }
    w.flush()?;
    Ok(())
}

fn same_bytes(a: &Path, b: &Path) -> anyhow::Result<bool> {
    let (mut ra, mut rb) = (BufReader::new(File::open(a)?), BufReader::new(File::open(b)?));
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = ra.read(&mut ba)?;
        if n == 0 {
            return Ok(rb.read(&mut bb[..1])? == 0);
        }
        if rb.read_exact(&mut bb[..n]).is_err() || ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

pub fn run(args: &BenchCryptArgs) -> anyhow::Result<()> {
    ensure!(args.rounds > 0 && args.size_mib > 0, "--rounds and --size-mib must be at least 1");
    let tmp = tempfile::tempdir_in(args.dir.as_deref().unwrap_or(&std::env::temp_dir()))?;
    let dir = tmp.path();
    // A throwaway keyring: its Argon2 cost is not what is measured.
    let ring = Keyring::create(&dir.join("bench-keyring.json"), b"bench", KdfParams::INSECURE_FAST)?;
    let size = args.size_mib << 20;
    let (plain, sealed, back) = (dir.join("plain.bin"), dir.join("sealed.bin"), dir.join("back.bin"));
    write_input(&plain, size)?;
    let tools = tools(dir)?;
    let mut times = vec![(Vec::new(), Vec::new()); tools.len()];
    // Round 0 is untimed: page cache, and every tool's output checked against the input.
    for round in 0..=args.rounds {
        for (tool, (enc, dec)) in tools.iter().zip(&mut times) {
            let start = Instant::now();
            tool.run(&ring, false, &plain, &sealed)?;
            let e = start.elapsed().as_secs_f64();
            let start = Instant::now();
            tool.run(&ring, true, &sealed, &back)?;
            let d = start.elapsed().as_secs_f64();
            if round == 0 {
                if !same_bytes(&plain, &back)? {
                    bail!("{}: the decrypted file differs from the input", tool.name());
                }
            } else {
                enc.push(e);
                dec.push(d);
            }
        }
    }
    let mib = args.size_mib as f64;
    let mut rates = Vec::new();
    for (tool, (enc, dec)) in tools.iter().zip(&mut times) {
        let (e, d) = (median(enc), median(dec));
        rates.push((mib / e, mib / d));
        let line = json!({"tool": tool.name(), "authenticated": tool.authenticated(), "size_mib": args.size_mib,
            "rounds": args.rounds, "encrypt_s": e, "decrypt_s": d, "encrypt_mib_s": mib / e, "decrypt_mib_s": mib / d});
        println!("{line}");
    }
    let ratio = |ours: usize, peer: usize| json!({"encrypt": rates[ours].0 / rates[peer].0, "decrypt": rates[ours].1 / rates[peer].1});
    let mut summary = json!({"ratios": "ours / peer throughput (above 1: ours is faster)"});
    for (i, tool) in tools.iter().enumerate().skip(2) {
        let ours = match tool {
            Tool::Openssl("aes-256-ctr") => 1,
            _ => 0,
        };
        summary[format!("{} vs {}", tools[ours].name(), tool.name())] = ratio(ours, i);
    }
    println!("{summary}");
    in_memory(&ring, size.min(256 << 20), args.rounds)
}

/// Ours from memory to memory: the cipher's cost without the file system's, to tell which of
/// the two bounds the rows above.
fn in_memory(ring: &Keyring, size: u64, rounds: usize) -> anyhow::Result<()> {
    let plain: Vec<u8> = (0..size).map(|i| (i.wrapping_mul(0x9E37_79B9) >> 13) as u8).collect();
    let mib = size as f64 / (1 << 20) as f64;
    for cipher in Cipher::ALL {
        let opts = EncryptOptions { cipher, ..EncryptOptions::default() };
        let (mut enc, mut dec) = (Vec::new(), Vec::new());
        let mut sealed = Vec::with_capacity(plain.len() + plain.len() / 1000 + 4096);
        for _ in 0..rounds {
            sealed.clear();
            let start = Instant::now();
            encrypt_stream(ring, opts, &mut &plain[..], &mut sealed, Path::new("memory"))?;
            enc.push(start.elapsed().as_secs_f64());
            let start = Instant::now();
            let n = decrypt_stream(ring, &sealed[..], &mut std::io::sink(), Path::new("memory"))?;
            dec.push(start.elapsed().as_secs_f64());
            ensure!(n == size, "decrypted {n} bytes of {size}");
        }
        let (e, d) = (median(&mut enc), median(&mut dec));
        let line = json!({"tool": format!("truthgpt {cipher}, memory to memory"), "size_mib": mib, "rounds": rounds,
            "encrypt_mib_s": mib / e, "decrypt_mib_s": mib / d});
        println!("{line}");
    }
    Ok(())
}
