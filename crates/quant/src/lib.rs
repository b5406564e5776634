//! The tensor formats of GGUF files (ggml's block quantizations), for reading the models people
//! already have and for writing quantized ones.
//!
//! - [`GgmlType`]: the types we read, with ggml's ids and block sizes;
//! - [`blocks`]: each block layout as a `#[repr(C)]` struct of bytes, so a tensor's bytes (in a
//!   memory map, at any alignment) are viewed as `&[Block]` without copying;
//! - [`dequantize_row`]: blocks to f32. This is the reference path: it computes each value with
//!   the same f32 operations, in the same order, as ggml's `dequantize_row_*` and gguf-py's
//!   `gguf.quants.dequantize`, so the results agree bit for bit (tests/exact.rs checks this
//!   against fixtures made by gguf-py);
//! - [`quantize_row`]: f32 to blocks by round-to-nearest, as ggml's `quantize_row_*_ref` does,
//!   for Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K and Q6_K ([`GgmlType::QUANTIZABLE`]).
//!
//! Layouts and arithmetic follow ggml's `ggml-common.h` and `ggml-quants.c`
//! (github.com/ggml-org/ggml); the code is written from them, not copied.

pub mod blocks;
mod error;
pub mod int;
mod rtn;
mod rtn_k;

pub use blocks::Block;
pub use error::{QuantError, Result};

use blocks::*;

/// Elements in a K-quant super-block (ggml's `QK_K`).
pub const QK_K: usize = 256;

/// One table makes the enum, its ids, names and sizes, and the dequantization dispatch, so they
/// cannot disagree. Ids are ggml's `enum ggml_type`.
macro_rules! ggml_types {
    ($($name:ident = $id:literal => $block:ty,)*) => {
        /// A tensor type of a GGUF file that we can decode.
        #[allow(non_camel_case_types)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum GgmlType {
            $($name,)*
        }

        impl GgmlType {
            /// Every type, in id order.
            pub const ALL: &[GgmlType] = &[$(GgmlType::$name,)*];

            /// ggml's id of the type, as written in GGUF tensor infos.
            pub fn id(self) -> u32 {
                match self {
                    $(GgmlType::$name => $id,)*
                }
            }

            /// The type with ggml id `id`, if we read it.
            pub fn from_id(id: u32) -> Result<GgmlType> {
                match id {
                    $($id => Ok(GgmlType::$name),)*
                    other => Err(QuantError::UnknownType(other)),
                }
            }

            /// ggml's name of the type (`Q4_K`, `BF16`, ...).
            pub fn name(self) -> &'static str {
                match self {
                    $(GgmlType::$name => stringify!($name),)*
                }
            }

            /// Elements per block (1 for the float types).
            pub fn block_elements(self) -> usize {
                match self {
                    $(GgmlType::$name => <$block as Block>::ELEMENTS,)*
                }
            }

            /// Bytes per block.
            pub fn block_bytes(self) -> usize {
                match self {
                    $(GgmlType::$name => std::mem::size_of::<$block>(),)*
                }
            }
        }

        fn dequantize_dispatch(ty: GgmlType, bytes: &[u8], out: &mut [f32]) {
            match ty {
                $(GgmlType::$name => dequantize_blocks::<$block>(bytes, out),)*
            }
        }
    };
}

ggml_types! {
    F32 = 0 => F32Le,
    F16 = 1 => F16Le,
    Q4_0 = 2 => BlockQ4_0,
    Q4_1 = 3 => BlockQ4_1,
    Q5_0 = 6 => BlockQ5_0,
    Q5_1 = 7 => BlockQ5_1,
    Q8_0 = 8 => BlockQ8_0,
    Q2_K = 10 => BlockQ2_K,
    Q3_K = 11 => BlockQ3_K,
    Q4_K = 12 => BlockQ4_K,
    Q5_K = 13 => BlockQ5_K,
    Q6_K = 14 => BlockQ6_K,
    BF16 = 30 => Bf16Le,
}

impl GgmlType {
    /// The bytes `elements` values of this type take, checking that they fill whole blocks and
    /// that the size fits in memory (a file's dims are untrusted).
    pub fn bytes_for(self, elements: u64) -> Result<usize> {
        let block = self.block_elements() as u64;
        if !elements.is_multiple_of(block) {
            return Err(QuantError::PartialBlock {
                ty: self,
                elements: elements as usize,
                block: block as usize,
            });
        }
        (elements / block)
            .checked_mul(self.block_bytes() as u64)
            .and_then(|b| usize::try_from(b).ok())
            .ok_or(QuantError::Overflow { ty: self, elements })
    }

    /// The block types [`quantize_row`] writes.
    pub const QUANTIZABLE: &[GgmlType] = &[
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
    ];

    /// The names of every type, for error messages.
    fn names() -> String {
        list(GgmlType::ALL)
    }

    /// The names of [`GgmlType::QUANTIZABLE`], for error messages.
    fn quantizable_names() -> String {
        list(GgmlType::QUANTIZABLE)
    }
}

fn list(types: &[GgmlType]) -> String {
    types.iter().map(|t| t.name()).collect::<Vec<_>>().join(", ")
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Decodes `bytes`, whole blocks of `ty`, into `out` (one f32 per element). Fails, writing
/// nothing, unless `bytes` is exactly the size of `out.len()` elements.
pub fn dequantize_row(ty: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<()> {
    check_size(ty, out.len(), bytes.len())?;
    dequantize_dispatch(ty, bytes, out);
    Ok(())
}

/// [`dequantize_row`] into a new vector of `elements` values.
pub fn dequantize(ty: GgmlType, bytes: &[u8], elements: usize) -> Result<Vec<f32>> {
    check_size(ty, elements, bytes.len())?;
    let mut out = vec![0.0; elements];
    dequantize_dispatch(ty, bytes, &mut out);
    Ok(out)
}

/// Encodes `x` as blocks of `ty` by round-to-nearest (ggml's `quantize_row_*_ref`), appending
/// them to `out`. `x` must fill whole blocks and be finite.
pub fn quantize_row(ty: GgmlType, x: &[f32], out: &mut Vec<u8>) -> Result<()> {
    ty.bytes_for(x.len() as u64)?;
    if let Some(index) = x.iter().position(|v| !v.is_finite()) {
        return Err(QuantError::NonFinite { index, value: x[index] });
    }
    match ty {
        GgmlType::Q8_0 => rtn::quantize::<BlockQ8_0>(x, out, rtn::q8_0),
        GgmlType::Q4_0 => rtn::quantize::<BlockQ4_0>(x, out, rtn::q4_0),
        GgmlType::Q4_1 => rtn::quantize::<BlockQ4_1>(x, out, rtn::q4_1),
        GgmlType::Q5_0 => rtn::quantize::<BlockQ5_0>(x, out, rtn::q5_0),
        GgmlType::Q5_1 => rtn::quantize::<BlockQ5_1>(x, out, rtn::q5_1),
        GgmlType::Q4_K => rtn::quantize::<BlockQ4_K>(x, out, rtn_k::q4_k),
        GgmlType::Q5_K => rtn::quantize::<BlockQ5_K>(x, out, rtn_k::q5_k),
        GgmlType::Q6_K => rtn::quantize::<BlockQ6_K>(x, out, rtn_k::q6_k),
        other => return Err(QuantError::NoQuantizer(other)),
    }
    Ok(())
}

fn check_size(ty: GgmlType, elements: usize, got: usize) -> Result<()> {
    let want = ty.bytes_for(elements as u64)?;
    if want != got {
        return Err(QuantError::Size { ty, elements, want, got });
    }
    Ok(())
}

/// Sizes were checked by the caller, so the cast cannot fail and the zip covers every block.
fn dequantize_blocks<B: Block>(bytes: &[u8], out: &mut [f32]) {
    let blocks: &[B] = bytemuck::cast_slice(bytes);
    for (block, y) in blocks.iter().zip(out.chunks_exact_mut(B::ELEMENTS)) {
        block.dequantize(y);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_sizes_are_ggmls() {
        // (type, elements, bytes) from ggml's type traits.
        let want = [
            (GgmlType::F32, 1, 4),
            (GgmlType::F16, 1, 2),
            (GgmlType::BF16, 1, 2),
            (GgmlType::Q4_0, 32, 18),
            (GgmlType::Q4_1, 32, 20),
            (GgmlType::Q5_0, 32, 22),
            (GgmlType::Q5_1, 32, 24),
            (GgmlType::Q8_0, 32, 34),
            (GgmlType::Q2_K, 256, 84),
            (GgmlType::Q3_K, 256, 110),
            (GgmlType::Q4_K, 256, 144),
            (GgmlType::Q5_K, 256, 176),
            (GgmlType::Q6_K, 256, 210),
        ];
        assert_eq!(want.len(), GgmlType::ALL.len());
        for (ty, elements, bytes) in want {
            assert_eq!((ty.block_elements(), ty.block_bytes()), (elements, bytes), "{ty}");
            assert_eq!(GgmlType::from_id(ty.id()), Ok(ty));
        }
    }

    #[test]
    fn sizes_are_checked_not_assumed() {
        assert_eq!(GgmlType::from_id(16), Err(QuantError::UnknownType(16)));
        assert!(matches!(GgmlType::Q4_K.bytes_for(100), Err(QuantError::PartialBlock { .. })));
        assert!(matches!(GgmlType::F32.bytes_for(u64::MAX), Err(QuantError::Overflow { .. })));
        let mut out = [0.0f32; 32];
        let err = dequantize_row(GgmlType::Q8_0, &[0u8; 33], &mut out).unwrap_err();
        assert_eq!(err, QuantError::Size { ty: GgmlType::Q8_0, elements: 32, want: 34, got: 33 });
        let mut bytes = Vec::new();
        let err = quantize_row(GgmlType::Q4_0, &[f32::NAN; 32], &mut bytes).unwrap_err();
        assert!(matches!(err, QuantError::NonFinite { index: 0, .. }), "{err}");
        assert_eq!(
            quantize_row(GgmlType::Q3_K, &[0.0; 256], &mut bytes),
            Err(QuantError::NoQuantizer(GgmlType::Q3_K))
        );
        assert!(bytes.is_empty());
    }
}
