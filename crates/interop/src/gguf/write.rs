//! Writing a GGUF v3 file: header, metadata, tensor infos, then each tensor's data encoded in
//! its type and aligned, into a temporary file beside the target that is fsynced and renamed.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use half::f16;
use truthgpt_data::fsio;
use truthgpt_model::Model;
use truthgpt_quant::GgmlType;

use super::value::{Array, Value};
use super::{Plan, ALIGNMENT, VERSION};
use crate::error::{InteropError, Result};

/// Bytes in the order GGUF wants them (little-endian), counting what was written.
struct Out<W: Write> {
    w: W,
    written: u64,
}

impl<W: Write> Out<W> {
    fn bytes(&mut self, b: &[u8]) -> io::Result<()> {
        self.w.write_all(b)?;
        self.written += b.len() as u64;
        Ok(())
    }

    fn u32(&mut self, x: u32) -> io::Result<()> {
        self.bytes(&x.to_le_bytes())
    }

    fn u64(&mut self, x: u64) -> io::Result<()> {
        self.bytes(&x.to_le_bytes())
    }

    fn str(&mut self, s: &str) -> io::Result<()> {
        self.u64(s.len() as u64)?;
        self.bytes(s.as_bytes())
    }

    fn pad_to(&mut self, alignment: u64) -> io::Result<()> {
        let pad = (alignment - self.written % alignment) % alignment;
        self.bytes(&vec![0u8; pad as usize])
    }

    fn meta(&mut self, key: &str, value: &Value) -> io::Result<()> {
        self.str(key)?;
        self.u32(value.value_type().id())?;
        self.payload(value)
    }

    fn payload(&mut self, value: &Value) -> io::Result<()> {
        match value {
            Value::U8(x) => self.bytes(&[*x]),
            Value::I8(x) => self.bytes(&x.to_le_bytes()),
            Value::U16(x) => self.bytes(&x.to_le_bytes()),
            Value::I16(x) => self.bytes(&x.to_le_bytes()),
            Value::U32(x) => self.bytes(&x.to_le_bytes()),
            Value::I32(x) => self.bytes(&x.to_le_bytes()),
            Value::F32(x) => self.bytes(&x.to_le_bytes()),
            Value::Bool(x) => self.bytes(&[*x as u8]),
            Value::String(s) => self.str(s),
            Value::Array(a) => self.array(a),
            Value::U64(x) => self.bytes(&x.to_le_bytes()),
            Value::I64(x) => self.bytes(&x.to_le_bytes()),
            Value::F64(x) => self.bytes(&x.to_le_bytes()),
        }
    }

    /// An array: its element type, its length, then the elements without their type.
    fn array(&mut self, a: &Array) -> io::Result<()> {
        self.u32(a.element_type().id())?;
        self.u64(a.len() as u64)?;
        match a {
            Array::U8(v) => self.bytes(v),
            Array::I8(v) => v.iter().try_for_each(|x| self.bytes(&x.to_le_bytes())),
            Array::U16(v) => v.iter().try_for_each(|x| self.bytes(&x.to_le_bytes())),
            Array::I16(v) => v.iter().try_for_each(|x| self.bytes(&x.to_le_bytes())),
            Array::U32(v) => v.iter().try_for_each(|x| self.bytes(&x.to_le_bytes())),
            Array::I32(v) => v.iter().try_for_each(|x| self.bytes(&x.to_le_bytes())),
            Array::F32(v) => v.iter().try_for_each(|x| self.bytes(&x.to_le_bytes())),
            Array::Bool(v) => v.iter().try_for_each(|x| self.bytes(&[*x as u8])),
            Array::String(v) => v.iter().try_for_each(|s| self.str(s)),
            Array::Array(v) => v.iter().try_for_each(|a| self.array(a)),
            Array::U64(v) => v.iter().try_for_each(|x| self.bytes(&x.to_le_bytes())),
            Array::I64(v) => v.iter().try_for_each(|x| self.bytes(&x.to_le_bytes())),
            Array::F64(v) => v.iter().try_for_each(|x| self.bytes(&x.to_le_bytes())),
        }
    }
}

/// `values` as `ty`, appended to `buf`. Only the block types can fail, on a non-finite value,
/// which `check_expressible` has already refused.
fn encode(values: &[f32], ty: GgmlType, buf: &mut Vec<u8>) -> io::Result<()> {
    match ty {
        GgmlType::F32 => values.iter().for_each(|x| buf.extend_from_slice(&x.to_le_bytes())),
        GgmlType::F16 => values.iter().for_each(|x| buf.extend_from_slice(&f16::from_f32(*x).to_le_bytes())),
        ty => truthgpt_quant::quantize_row(ty, values, buf).map_err(io::Error::other)?,
    }
    Ok(())
}

pub(super) fn write_file(
    out: &Path,
    metadata: &[(String, Value)],
    plans: &[Plan],
    model: &Model,
) -> Result<u64> {
    let io = |path: &Path| {
        let path: PathBuf = path.into();
        move |source: io::Error| InteropError::Io { path: path.clone(), source }
    };
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    fs::create_dir_all(parent).map_err(io(parent))?;
    let file_name =
        out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model.gguf".into());
    let tmp = parent.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let result = (|| -> Result<u64> {
        let file = File::create(&tmp).map_err(io(&tmp))?;
        let mut w = Out { w: BufWriter::with_capacity(1 << 20, file), written: 0 };
        write_contents(&mut w, metadata, plans, model).map_err(io(&tmp))?;
        let file = w.w.into_inner().map_err(|e| io(&tmp)(e.into_error()))?;
        file.sync_all().map_err(io(&tmp))?;
        drop(file);
        if out.exists() {
            return Err(InteropError::Exists { path: out.into() });
        }
        fs::rename(&tmp, out).map_err(io(out))?;
        Ok(w.written)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    let written = result?;
    fsio::sync_dir(parent).map_err(io(parent))?;
    Ok(written)
}

fn write_contents<W: Write>(
    w: &mut Out<W>,
    metadata: &[(String, Value)],
    plans: &[Plan],
    model: &Model,
) -> io::Result<()> {
    let align = ALIGNMENT as u64;
    w.bytes(b"GGUF")?;
    w.u32(VERSION)?;
    w.u64(plans.len() as u64)?;
    w.u64(metadata.len() as u64)?;
    for (key, value) in metadata {
        w.meta(key, value)?;
    }
    let mut offset = 0u64;
    for plan in plans {
        w.str(&plan.name)?;
        w.u32(plan.shape.len() as u32)?;
        for &d in plan.shape.iter().rev() {
            w.u64(d as u64)?;
        }
        w.u32(plan.ty.id())?;
        w.u64(offset)?;
        offset += plan.bytes() as u64;
        offset = offset.div_ceil(align) * align;
    }
    w.pad_to(align)?;
    let mut buf = Vec::new();
    for plan in plans {
        buf.clear();
        encode(&plan.values(model), plan.ty, &mut buf)?;
        debug_assert_eq!(buf.len(), plan.bytes());
        w.bytes(&buf)?;
        w.pad_to(align)?;
    }
    Ok(())
}
