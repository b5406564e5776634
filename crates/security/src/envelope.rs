//! Envelope encryption of files: a fresh random data key per file, sealed ("wrapped") under the
//! keyring's active key-encryption key; the data in chunks under STREAM, so a file of any size is
//! encrypted and decrypted in one chunk of memory.
//!
//! Chunk `i` (from 0) is sealed with nonce `prefix || i as u32 BE || last`, where `last` is 1 for
//! the final chunk and 0 otherwise, and with the header's fixed part as associated data. Every
//! chunk but the last holds exactly `chunk_size` bytes; the last holds 0 to `chunk_size`. A
//! reordered, dropped, duplicated or cut-off chunk therefore fails authentication, and so does a
//! file cut at a chunk boundary (its new last chunk was not sealed as last).

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::cipher::{Cipher, Key, StreamDecryptor, StreamEncryptor, KEY_LEN, TAG_LEN};
use crate::error::{IoContext, Result, SecurityError};
use crate::fsutil;
use crate::header::{check_chunk_size, Fixed, Header, DEFAULT_CHUNK, FIXED_LEN, MAGIC};
use crate::keyring::Keyring;

/// How to encrypt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncryptOptions {
    pub cipher: Cipher,
    /// Plaintext bytes per chunk (16 B ..= 16 MiB).
    pub chunk_size: u32,
}

impl Default for EncryptOptions {
    fn default() -> Self {
        EncryptOptions { cipher: Cipher::ChaCha20Poly1305, chunk_size: DEFAULT_CHUNK }
    }
}

/// A `Write` that encrypts into `inner`. Call [`EncryptWriter::finish`]: without it the output
/// lacks its last chunk and will not decrypt.
pub struct EncryptWriter<W: Write> {
    inner: W,
    enc: Option<StreamEncryptor>,
    aad: [u8; FIXED_LEN],
    chunk: usize,
    /// Plaintext of the chunk being filled, with room for its tag.
    buf: Vec<u8>,
    path: PathBuf,
    written: u64,
}

impl<W: Write> EncryptWriter<W> {
    /// Writes the header to `inner` at once; `path` names the output in errors.
    pub fn new(keyring: &Keyring, opts: EncryptOptions, mut inner: W, path: &Path) -> Result<Self> {
        check_chunk_size(opts.chunk_size)?;
        let fixed =
            Fixed { cipher: opts.cipher, chunk_size: opts.chunk_size, nonce_prefix: fsutil::random()? };
        let data_key: Key = Zeroizing::new(fsutil::random::<KEY_LEN>()?);
        let slot = keyring.wrap(opts.cipher, &data_key, |id| Header::wrap_aad(&fixed, id))?;
        let header = Header { fixed, slot };
        inner.write_all(&header.to_bytes()).at(path)?;
        let chunk = opts.chunk_size as usize;
        Ok(EncryptWriter {
            inner,
            enc: Some(opts.cipher.stream_encryptor(&data_key, &header.fixed.nonce_prefix)),
            aad: header.fixed.to_bytes(),
            chunk,
            buf: Vec::with_capacity(chunk + TAG_LEN),
            path: path.to_path_buf(),
            written: 0,
        })
    }

    /// Seals the buffered full chunk as a middle chunk.
    fn flush_chunk(&mut self) -> Result<()> {
        let enc = self.enc.as_mut().ok_or_else(|| finished(&self.path))?;
        enc.next(&self.aad, &mut self.buf)
            .map_err(|_| SecurityError::TooManyChunks { path: self.path.clone() })?;
        self.inner.write_all(&self.buf).at(&self.path)?;
        self.buf.clear();
        Ok(())
    }

    /// Seals the last chunk and flushes; returns the inner writer and the plaintext length.
    pub fn finish(mut self) -> Result<(W, u64)> {
        let enc = self.enc.take().ok_or_else(|| finished(&self.path))?;
        enc.last(&self.aad, &mut self.buf)
            .map_err(|_| SecurityError::TooManyChunks { path: self.path.clone() })?;
        self.inner.write_all(&self.buf).at(&self.path)?;
        self.inner.flush().at(&self.path)?;
        Ok((self.inner, self.written))
    }
}

fn finished(path: &Path) -> SecurityError {
    SecurityError::Io {
        path: path.to_path_buf(),
        source: io::Error::other("the encryptor was already finished"),
    }
}

impl<W: Write> Write for EncryptWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        // A full buffer is sealed only once more data arrives: the last chunk may be full.
        if self.buf.len() == self.chunk {
            self.flush_chunk().map_err(io::Error::other)?;
        }
        let n = data.len().min(self.chunk - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A `Read` of the plaintext of an encrypted stream. Each chunk is authenticated before any of
/// its bytes are returned; the end of the stream is authenticated when the last chunk is read,
/// so a reader that stops early has not checked the file's length.
pub struct DecryptReader<R: Read> {
    inner: R,
    dec: Option<StreamDecryptor>,
    aad: [u8; FIXED_LEN],
    chunk: usize,
    /// Ciphertext read ahead: the next chunk (to know whether the current one is the last).
    next: Vec<u8>,
    /// Plaintext of the current chunk, from `pos`.
    out: Vec<u8>,
    pos: usize,
    index: u64,
    /// Set by the first error; every later read repeats it rather than seeing an end.
    failed: bool,
    header: Header,
    path: PathBuf,
}

impl<R: Read> DecryptReader<R> {
    /// Reads the header and unwraps the data key; `path` names the input in errors.
    pub fn new(keyring: &Keyring, mut inner: R, path: &Path) -> Result<Self> {
        let header = Header::read(&mut inner, path)?;
        let aad = Header::wrap_aad(&header.fixed, &header.slot.kek_id);
        let data_key = keyring.unwrap(header.fixed.cipher, &header.slot, &aad, path)?;
        let chunk = header.fixed.chunk_size as usize;
        let mut r = DecryptReader {
            dec: Some(header.fixed.cipher.stream_decryptor(&data_key, &header.fixed.nonce_prefix)),
            aad: header.fixed.to_bytes(),
            inner,
            chunk,
            next: Vec::with_capacity(chunk + TAG_LEN),
            out: Vec::with_capacity(chunk + TAG_LEN),
            pos: 0,
            index: 0,
            failed: false,
            header,
            path: path.to_path_buf(),
        };
        r.next = r.read_chunk()?;
        Ok(r)
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Up to one sealed chunk of ciphertext (less only at the end of the input).
    fn read_chunk(&mut self) -> Result<Vec<u8>> {
        let mut buf = std::mem::take(&mut self.out);
        buf.clear();
        buf.resize(self.chunk + TAG_LEN, 0);
        let mut filled = 0;
        while filled < buf.len() {
            match self.inner.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(SecurityError::Io { path: self.path.clone(), source: e }),
            }
        }
        buf.truncate(filled);
        Ok(buf)
    }

    /// Authenticates the next chunk into `out`; `false` at the end.
    fn advance(&mut self) -> Result<bool> {
        if self.failed {
            return Err(SecurityError::Tampered { path: self.path.clone(), chunk: self.index });
        }
        if self.dec.is_none() {
            return Ok(false);
        }
        let mut cur = std::mem::take(&mut self.next);
        if cur.len() < TAG_LEN {
            self.failed = true;
            return Err(SecurityError::Truncated { path: self.path.clone(), what: "the last chunk" });
        }
        // A full chunk may be the last one only if nothing follows it. (`read_chunk` reuses the
        // spent plaintext buffer.)
        let following = if cur.len() == self.chunk + TAG_LEN {
            self.read_chunk().inspect_err(|_| self.failed = true)?
        } else {
            Vec::new()
        };
        let opened = match self.dec.take() {
            Some(dec) if following.is_empty() => dec.last(&self.aad, &mut cur),
            Some(mut dec) => {
                let r = dec.next(&self.aad, &mut cur);
                self.dec = Some(dec);
                r
            }
            None => Err(()),
        };
        if opened.is_err() {
            self.failed = true;
            return Err(SecurityError::Tampered { path: self.path.clone(), chunk: self.index });
        }
        self.next = following;
        self.out = cur;
        self.pos = 0;
        self.index += 1;
        Ok(true)
    }
}

impl<R: Read> Read for DecryptReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.out.len() {
            if !self.advance().map_err(io::Error::other)? {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.out.len() - self.pos);
        buf[..n].copy_from_slice(&self.out[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Our error back out of an `io::Error` that a reader or writer of ours wrapped it in.
fn unwrap_io(e: io::Error, path: &Path) -> SecurityError {
    match e.downcast::<SecurityError>() {
        Ok(ours) => ours,
        Err(e) => SecurityError::Io { path: path.to_path_buf(), source: e },
    }
}

/// Encrypts all of `src` into `dst`; returns the plaintext length.
pub fn encrypt_stream(
    keyring: &Keyring,
    opts: EncryptOptions,
    src: &mut impl Read,
    dst: impl Write,
    path: &Path,
) -> Result<u64> {
    let mut w = EncryptWriter::new(keyring, opts, dst, path)?;
    io::copy(src, &mut w).map_err(|e| unwrap_io(e, path))?;
    Ok(w.finish()?.1)
}

/// Decrypts all of `src` into `dst`; returns the plaintext length. Plaintext reaches `dst` chunk
/// by chunk, each authenticated, before the end is checked: on an error, discard what `dst` got
/// (as [`decrypt_file`] does).
pub fn decrypt_stream(keyring: &Keyring, src: impl Read, dst: &mut impl Write, path: &Path) -> Result<u64> {
    let mut r = DecryptReader::new(keyring, src, path)?;
    io::copy(&mut r, dst).map_err(|e| unwrap_io(e, path))
}

/// Encrypts the file `src` to `dst`, atomically (temporary file, fsync, rename).
pub fn encrypt_file(keyring: &Keyring, opts: EncryptOptions, src: &Path, dst: &Path) -> Result<u64> {
    let mut input = BufReader::with_capacity(1 << 20, File::open(src).at(src)?);
    let mut n = 0;
    fsutil::atomic_write(dst, |w| {
        n = encrypt_stream(keyring, opts, &mut input, w, dst)?;
        Ok(())
    })?;
    Ok(n)
}

/// Decrypts the file `src` to `dst`, atomically: `dst` appears only if all of `src` authenticated.
pub fn decrypt_file(keyring: &Keyring, src: &Path, dst: &Path) -> Result<u64> {
    let input = BufReader::with_capacity(1 << 20, File::open(src).at(src)?);
    let mut n = 0;
    fsutil::atomic_write(dst, |w| {
        n = decrypt_stream(keyring, input, w, src)?;
        Ok(())
    })?;
    Ok(n)
}

/// A streaming reader of an encrypted file's plaintext (for loading without a decrypted copy).
pub fn open_decrypted(keyring: &Keyring, path: &Path) -> Result<DecryptReader<BufReader<File>>> {
    let f = File::open(path).at(path)?;
    DecryptReader::new(keyring, BufReader::with_capacity(1 << 20, f), path)
}

/// The header of an encrypted file, unauthenticated (for listing which key each file names).
pub fn read_header(path: &Path) -> Result<Header> {
    let mut f = BufReader::new(File::open(path).at(path)?);
    Header::read(&mut f, path)
}

/// Whether `path` starts with our magic (it may still be corrupt).
pub fn is_encrypted(path: &Path) -> bool {
    let mut magic = [0u8; 8];
    File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && &magic == MAGIC
}

/// What [`rewrap_file`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rewrap {
    /// Already under the active key.
    Unchanged {
        kek_id: String,
    },
    Rewrapped {
        from: String,
        to: String,
    },
}

/// Re-wraps the file's data key under the keyring's active key. The chunks are copied byte for
/// byte, never decrypted; the new file replaces the old atomically (temporary file, fsync,
/// rename), so a crash leaves either the old header or the new one, each complete.
pub fn rewrap_file(keyring: &Keyring, path: &Path) -> Result<Rewrap> {
    let mut f = File::open(path).at(path)?;
    let header = Header::read(&mut BufReader::new(&mut f), path)?;
    let active = keyring.active().id.clone();
    if header.slot.kek_id == active {
        return Ok(Rewrap::Unchanged { kek_id: active });
    }
    let fixed = &header.fixed;
    let data_key =
        keyring.unwrap(fixed.cipher, &header.slot, &Header::wrap_aad(fixed, &header.slot.kek_id), path)?;
    let slot = keyring.wrap(fixed.cipher, &data_key, |id| Header::wrap_aad(fixed, id))?;
    let new = Header { fixed: fixed.clone(), slot };
    io::Seek::seek(&mut f, io::SeekFrom::Start(header.encoded_len() as u64)).at(path)?;
    fsutil::atomic_write(path, |w| {
        w.write_all(&new.to_bytes()).at(path)?;
        io::copy(&mut f, w).at(path)?;
        Ok(())
    })?;
    Ok(Rewrap::Rewrapped { from: header.slot.kek_id, to: active })
}
