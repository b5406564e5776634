//! Reading GGUF files (versions 2 and 3, little-endian), after the spec
//! (github.com/ggml-org/ggml, `docs/gguf.md`) and llama.cpp's own checks (`gguf.cpp`).
//!
//! [`Gguf::open`] memory-maps the file and parses the header: metadata of every value type
//! ([`Value`]), tensor infos and the data section's start (`general.alignment`, 32 by default).
//! Tensors stay bytes in the map ([`Gguf::tensor_bytes`]); [`Gguf::dequantize`] is the f32
//! reference path.
//!
//! Everything in the header is untrusted. Each count, length and offset is checked against the
//! bytes that are actually there before anything is allocated for it (an element claimed must be
//! present in the file, so what the parser allocates is bounded by a small multiple of the
//! file's size, whatever a count says), arithmetic is checked, arrays nest at most
//! [`MAX_NESTING`] deep, and every tensor must lie inside the file with whole blocks. A bad file
//! is an [`InteropError`] naming the file and the field, never a panic.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::{Mmap, UncheckedAdvice};
use truthgpt_engine::qmatmul::{QWeight, Storage};
use truthgpt_quant::GgmlType;

use super::value::{Array, Value, ValueType};
use crate::error::{InteropError, Result};

/// The spec's default for `general.alignment`.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's `GGML_MAX_DIMS`.
pub const MAX_DIMS: u32 = 4;
/// Arrays of arrays deeper than this are refused (llama.cpp reads none; the limit keeps a
/// crafted file from recursing the stack away).
pub const MAX_NESTING: usize = 4;

/// Whether `path` should be read as a GGUF file: a file named `*.gguf` (so that a damaged one
/// reports what is wrong with it) or starting with the GGUF magic.
pub fn is_gguf_file(path: &Path) -> bool {
    use std::io::Read;
    let named = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    let mut magic = [0u8; 4];
    path.is_file()
        && (named
            || std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok()
                && &magic == b"GGUF")
}

/// One tensor's entry in the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the row length (contiguous), the reverse of a row-major shape.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// From the start of the data section; a multiple of the alignment.
    pub offset: u64,
    /// Bytes of data, as `ty` and `dims` require.
    pub bytes: usize,
}

impl TensorInfo {
    pub fn elements(&self) -> u64 {
        // Checked at parse time not to overflow.
        self.dims.iter().product()
    }

    /// Row-major shape (outermost first), as the rest of the workspace writes shapes.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// A memory-mapped file, shared by the quantized matrices that view it.
#[derive(Clone)]
pub struct Mapped(Arc<Mmap>);

impl AsRef<[u8]> for Mapped {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// A parsed GGUF file over its bytes: a memory map ([`Gguf::open`]) or any buffer
/// ([`Gguf::from_bytes`]).
pub struct Gguf<B: AsRef<[u8]> = Mapped> {
    path: PathBuf,
    bytes: B,
    header: Header,
}

impl Gguf<Mapped> {
    /// Maps and parses the GGUF file at `path`.
    pub fn open(path: &Path) -> Result<Gguf<Mapped>> {
        let io = |source| InteropError::Io { path: path.into(), source };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: the map is read-only; a file changed underneath while loading is the hazard
        // every mmap-based loader (llama.cpp's included) accepts.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        Gguf::from_bytes(path, Mapped(Arc::new(map)))
    }

    /// Drops the file's pages under `bytes` (a byte range of the file) from this process's
    /// memory, for a matrix that was packed: the copy is what the kernels read, and the pages
    /// come back from the file if anything reads them again (an embedding lookup).
    pub fn release(&self, bytes: std::ops::Range<usize>) {
        // SAFETY: the map is read-only, so dropping its pages loses nothing; memmap2 widens
        // the range to whole pages, and the pages beside it come back from the file too.
        // A failure only leaves the pages resident.
        let _ = unsafe {
            self.bytes.0.unchecked_advise_range(UncheckedAdvice::DontNeed, bytes.start, bytes.len())
        };
    }
}

impl<B: AsRef<[u8]> + Clone + Send + Sync + 'static> Gguf<B> {
    /// Tensor `t`'s stacked matrix `index` of `rows x cols` (the whole tensor for index 0 of a
    /// 2-D one; one expert of a 3-D stack), viewed in place in the file's bytes.
    pub fn matrix(&self, t: &TensorInfo, index: usize, rows: usize, cols: usize) -> Result<QWeight> {
        let per = t.ty.bytes_for((rows * cols) as u64).map_err(|e| self.tensor_error(t, e.to_string()))?;
        if (index + 1) * per > t.bytes {
            return Err(self.tensor_error(t, format!("has no matrix {index} of {rows} x {cols}")));
        }
        let storage: Storage = Arc::new(self.bytes.clone());
        let offset = self.header.data_start + t.offset as usize + index * per;
        QWeight::new(t.ty, rows, cols, storage, offset).map_err(|e| self.tensor_error(t, e.to_string()))
    }

    fn tensor_error(&self, t: &TensorInfo, problem: String) -> InteropError {
        InteropError::Tensor { path: self.path.clone(), name: t.name.clone(), problem }
    }
}

impl<B: AsRef<[u8]>> Gguf<B> {
    /// Parses `bytes` as a GGUF file; `path` names it in errors.
    pub fn from_bytes(path: &Path, bytes: B) -> Result<Gguf<B>> {
        let header = Header::parse(bytes.as_ref())
            .map_err(|problem| InteropError::Invalid { path: path.into(), problem })?;
        Ok(Gguf { path: path.into(), bytes, header })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn version(&self) -> u32 {
        self.header.version
    }

    /// `general.alignment`, or the default.
    pub fn alignment(&self) -> u64 {
        self.header.alignment
    }

    /// The metadata in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.header.metadata
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.header.keys.get(key).map(|&i| &self.header.metadata[i].1)
    }

    /// The tensor infos in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.header.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.header.names.get(name).map(|&i| &self.header.tensors[i])
    }

    /// The bytes of a tensor of this file (checked at parse time to lie inside it).
    pub fn tensor_bytes(&self, t: &TensorInfo) -> &[u8] {
        let start = self.header.data_start + t.offset as usize;
        &self.bytes.as_ref()[start..start + t.bytes]
    }

    /// The tensor `name` as f32 values, in ggml order (the reference path).
    pub fn dequantize(&self, name: &str) -> Result<Vec<f32>> {
        let t = self.tensor(name).ok_or_else(|| InteropError::Missing {
            path: self.path.clone(),
            what: format!("tensor `{name}`"),
        })?;
        truthgpt_quant::dequantize(t.ty, self.tensor_bytes(t), t.elements() as usize).map_err(|e| {
            InteropError::Tensor { path: self.path.clone(), name: name.into(), problem: e.to_string() }
        })
    }
}

/// What parsing finds; problems are strings naming the field, to which the caller adds the file.
struct Header {
    version: u32,
    metadata: Vec<(String, Value)>,
    /// Index in `metadata` of each key, and in `tensors` of each name.
    keys: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    names: HashMap<String, usize>,
    alignment: u64,
    data_start: usize,
}

/// Fewest bytes a metadata entry and a tensor info can take: an empty key or name, then a
/// value type and a u8, or a dim count, type and offset.
const MIN_KV_BYTES: u64 = 8 + 4 + 1;
const MIN_TENSOR_BYTES: u64 = 8 + 4 + 4 + 8;

impl Header {
    fn parse(bytes: &[u8]) -> std::result::Result<Header, String> {
        let mut c = Cursor { bytes, at: 0 };
        let magic = c.take(4).map_err(|e| format!("magic: {e}"))?;
        if magic != b"GGUF" {
            return Err(format!("not a GGUF file: magic is {magic:02x?}, not \"GGUF\""));
        }
        let version = c.u32().map_err(|e| format!("version: {e}"))?;
        match version {
            2 | 3 => {}
            1 => return Err("GGUF version 1 (32-bit counts) is not supported; convert it to v3".into()),
            v if v.swap_bytes() == 2 || v.swap_bytes() == 3 => {
                return Err(format!("version {v:#x}: a big-endian GGUF file, which is not supported"))
            }
            v => return Err(format!("GGUF version {v} is not supported (we read 2 and 3)")),
        }
        let n_tensors = c.u64().map_err(|e| format!("tensor count: {e}"))?;
        let n_kv = c.u64().map_err(|e| format!("metadata count: {e}"))?;
        c.plausible(n_kv, MIN_KV_BYTES).map_err(|e| format!("metadata count {n_kv}: {e}"))?;
        let (metadata, keys) = read_metadata(&mut c, n_kv)?;
        let alignment = alignment(&metadata)?;
        c.plausible(n_tensors, MIN_TENSOR_BYTES).map_err(|e| format!("tensor count {n_tensors}: {e}"))?;
        let (tensors, names) = read_tensor_infos(&mut c, n_tensors)?;
        let data_start = c.at.div_ceil(alignment as usize).saturating_mul(alignment as usize);
        check_tensor_data(&tensors, alignment, data_start, bytes.len())?;
        Ok(Header { version, metadata, keys, tensors, names, alignment, data_start })
    }
}

/// The entries in file order and the index of each key.
type Entries = (Vec<(String, Value)>, HashMap<String, usize>);

fn read_metadata(c: &mut Cursor, n_kv: u64) -> std::result::Result<Entries, String> {
    let mut metadata: Vec<(String, Value)> = Vec::with_capacity(capacity(n_kv));
    let mut keys = HashMap::with_capacity(capacity(n_kv));
    for i in 0..n_kv {
        let key = c.string().map_err(|e| format!("metadata entry {i}: key: {e}"))?;
        let value = c.value(0).map_err(|e| format!("metadata entry {i} (`{key}`): {e}"))?;
        if keys.insert(key.clone(), metadata.len()).is_some() {
            return Err(format!("metadata entry {i}: key `{key}` appears twice"));
        }
        metadata.push((key, value));
    }
    Ok((metadata, keys))
}

/// `general.alignment`: a u32 power of two, as llama.cpp requires.
fn alignment(metadata: &[(String, Value)]) -> std::result::Result<u64, String> {
    match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => Ok(DEFAULT_ALIGNMENT),
        Some((_, Value::U32(a))) if a.is_power_of_two() => Ok(*a as u64),
        Some((_, Value::U32(a))) => Err(format!("general.alignment is {a}, not a power of two")),
        Some((_, v)) => Err(format!("general.alignment is {}, not a u32", v.type_name())),
    }
}

/// The tensor infos in file order and the index of each name.
type Infos = (Vec<TensorInfo>, HashMap<String, usize>);

fn read_tensor_infos(c: &mut Cursor, n: u64) -> std::result::Result<Infos, String> {
    let mut tensors: Vec<TensorInfo> = Vec::with_capacity(capacity(n));
    let mut names = HashMap::with_capacity(capacity(n));
    for i in 0..n {
        let name = c.string().map_err(|e| format!("tensor info {i}: name: {e}"))?;
        let t = tensor_info(c, name).map_err(|e| format!("tensor info {i}: {e}"))?;
        if names.insert(t.name.clone(), tensors.len()).is_some() {
            return Err(format!("tensor info {i}: tensor `{}` appears twice", t.name));
        }
        tensors.push(t);
    }
    Ok((tensors, names))
}

fn tensor_info(c: &mut Cursor, name: String) -> std::result::Result<TensorInfo, String> {
    let n_dims = c.u32().map_err(|e| format!("`{name}`: dimension count: {e}"))?;
    if n_dims > MAX_DIMS {
        return Err(format!("`{name}`: {n_dims} dimensions, more than ggml's {MAX_DIMS}"));
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    for d in 0..n_dims {
        dims.push(c.u64().map_err(|e| format!("`{name}`: dimension {d}: {e}"))?);
    }
    let id = c.u32().map_err(|e| format!("`{name}`: type: {e}"))?;
    let offset = c.u64().map_err(|e| format!("`{name}`: offset: {e}"))?;
    let ty = GgmlType::from_id(id).map_err(|e| format!("`{name}`: {e}"))?;
    // ggml's element counts are i64.
    let elements = dims
        .iter()
        .try_fold(1u64, |n, &d| n.checked_mul(d).filter(|&n| n <= i64::MAX as u64))
        .ok_or_else(|| format!("`{name}`: dimensions {dims:?} overflow the element count"))?;
    let row = dims.first().copied().unwrap_or(1);
    if !row.is_multiple_of(ty.block_elements() as u64) {
        return Err(format!(
            "`{name}`: rows of {row} elements are not whole {ty} blocks of {}",
            ty.block_elements()
        ));
    }
    let bytes = ty.bytes_for(elements).map_err(|e| format!("`{name}`: {e}"))?;
    Ok(TensorInfo { name, dims, ty, offset, bytes })
}

/// Every tensor must start at a multiple of the alignment, end inside the file and overlap no
/// other (llama.cpp checks the same).
fn check_tensor_data(
    tensors: &[TensorInfo],
    alignment: u64,
    data_start: usize,
    len: usize,
) -> std::result::Result<(), String> {
    let data_len = len.saturating_sub(data_start) as u64;
    for t in tensors {
        if !t.offset.is_multiple_of(alignment) {
            return Err(format!(
                "tensor `{}`: data offset {} is not a multiple of the alignment {alignment}",
                t.name, t.offset
            ));
        }
        let end =
            (data_start as u64).checked_add(t.offset).and_then(|start| start.checked_add(t.bytes as u64));
        if end.is_none_or(|end| end > len as u64) {
            return Err(format!(
                "tensor `{}`: {} bytes at data offset {} run past the end of the file ({data_len} bytes of data from byte {data_start})",
                t.name, t.bytes, t.offset
            ));
        }
    }
    let mut by_offset: Vec<&TensorInfo> = tensors.iter().filter(|t| t.bytes > 0).collect();
    by_offset.sort_by_key(|t| t.offset);
    for pair in by_offset.windows(2) {
        if pair[0].offset + pair[0].bytes as u64 > pair[1].offset {
            return Err(format!("tensors `{}` and `{}` overlap", pair[0].name, pair[1].name));
        }
    }
    Ok(())
}

/// Reads little-endian fields, every read checked against the bytes that remain.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

type Read<T> = std::result::Result<T, String>;

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.at) as u64
    }

    fn take(&mut self, n: u64) -> Read<&'a [u8]> {
        if n > self.remaining() {
            return Err(format!(
                "needs {n} bytes at byte {} but the file ends at byte {}",
                self.at,
                self.bytes.len()
            ));
        }
        let s = &self.bytes[self.at..self.at + n as usize];
        self.at += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Read<[u8; N]> {
        Ok(self.take(N as u64)?.try_into().expect("take returns N bytes"))
    }

    fn u32(&mut self) -> Read<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Read<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// Fails unless `count` items of at least `min_bytes` each can fit in what remains, so no
    /// count is trusted before the bytes it implies are known to exist.
    fn plausible(&self, count: u64, min_bytes: u64) -> Read<()> {
        match count.checked_mul(min_bytes) {
            Some(need) if need <= self.remaining() => Ok(()),
            _ => Err(format!(
                "{count} items of at least {min_bytes} bytes cannot fit in the {} bytes left after byte {}",
                self.remaining(),
                self.at
            )),
        }
    }

    fn string(&mut self) -> Read<String> {
        let len = self.u64().map_err(|e| format!("string length: {e}"))?;
        let bytes = self.take(len).map_err(|e| format!("string of {len} bytes: {e}"))?;
        String::from_utf8(bytes.to_vec()).map_err(|e| format!("string is not UTF-8: {e}"))
    }

    /// A type id and a value of that type; `depth` counts the arrays around it.
    fn value(&mut self, depth: usize) -> Read<Value> {
        let ty = self.value_type()?;
        self.value_of(ty, depth)
    }

    fn value_type(&mut self) -> Read<ValueType> {
        let id = self.u32().map_err(|e| format!("value type: {e}"))?;
        ValueType::from_id(id).ok_or_else(|| format!("value type {id} is not a GGUF type (0..=12)"))
    }

    fn value_of(&mut self, ty: ValueType, depth: usize) -> Read<Value> {
        Ok(match ty {
            ValueType::U8 => Value::U8(self.array::<1>()?[0]),
            ValueType::I8 => Value::I8(self.array::<1>()?[0] as i8),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array()?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array()?)),
            ValueType::U32 => Value::U32(self.u32()?),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array()?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array()?)),
            ValueType::Bool => Value::Bool(self.bool()?),
            ValueType::String => Value::String(self.string()?),
            ValueType::Array => Value::Array(self.array_value(depth + 1)?),
            ValueType::U64 => Value::U64(self.u64()?),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array()?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array()?)),
        })
    }

    fn bool(&mut self) -> Read<bool> {
        match self.array::<1>()?[0] {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(format!("bool byte is {b}, not 0 or 1")),
        }
    }

    fn array_value(&mut self, depth: usize) -> Read<Array> {
        if depth > MAX_NESTING {
            return Err(format!("arrays nested more than {MAX_NESTING} deep"));
        }
        let elem = self.value_type().map_err(|e| format!("array element {e}"))?;
        let n = self.u64().map_err(|e| format!("array length: {e}"))?;
        self.plausible(n, elem.min_bytes()).map_err(|e| format!("array of {n} {}: {e}", elem.name()))?;
        Ok(match elem {
            ValueType::U8 => Array::U8(self.many(n, |c| Ok(c.array::<1>()?[0]))?),
            ValueType::I8 => Array::I8(self.many(n, |c| Ok(c.array::<1>()?[0] as i8))?),
            ValueType::U16 => Array::U16(self.many(n, |c| Ok(u16::from_le_bytes(c.array()?)))?),
            ValueType::I16 => Array::I16(self.many(n, |c| Ok(i16::from_le_bytes(c.array()?)))?),
            ValueType::U32 => Array::U32(self.many(n, Cursor::u32)?),
            ValueType::I32 => Array::I32(self.many(n, |c| Ok(i32::from_le_bytes(c.array()?)))?),
            ValueType::F32 => Array::F32(self.many(n, |c| Ok(f32::from_le_bytes(c.array()?)))?),
            ValueType::Bool => Array::Bool(self.many(n, Cursor::bool)?),
            ValueType::String => Array::String(self.many(n, Cursor::string)?),
            ValueType::Array => Array::Array(self.many(n, |c| c.array_value(depth + 1))?),
            ValueType::U64 => Array::U64(self.many(n, Cursor::u64)?),
            ValueType::I64 => Array::I64(self.many(n, |c| Ok(i64::from_le_bytes(c.array()?)))?),
            ValueType::F64 => Array::F64(self.many(n, |c| Ok(f64::from_le_bytes(c.array()?)))?),
        })
    }

    /// `n` items read by `one`, naming the item that fails.
    fn many<T>(&mut self, n: u64, mut one: impl FnMut(&mut Self) -> Read<T>) -> Read<Vec<T>> {
        let mut items = Vec::with_capacity(capacity(n));
        for i in 0..n {
            items.push(one(self).map_err(|e| format!("array element {i}: {e}"))?);
        }
        Ok(items)
    }
}

/// What to reserve for `n` items: `n` has been checked against the bytes left, but an item in
/// memory can be a few times its size in the file, so a crafted count does not get all of it up
/// front; the vector grows as items are actually read.
fn capacity(n: u64) -> usize {
    n.min(1 << 16) as usize
}
