//! Block layouts of ggml's types (`ggml-common.h`), as structs of bytes.
//!
//! Every field is a byte array, so a block has alignment 1 and a tensor's bytes can be viewed as
//! `&[Block]` wherever they lie in a file. f16 scales are kept as their two little-endian bytes
//! and decoded on use.
//!
//! Each `dequantize` computes every value with the f32 operations of ggml's
//! `dequantize_row_*`, in the same order (`d * q - m`, never fused), which is what makes the
//! results bit-exact. Element order within a block is documented per type: it is the
//! part that is easy to get wrong.

use bytemuck::{Pod, Zeroable};
use half::{bf16, f16};

use crate::QK_K;

/// A block of a ggml type: `ELEMENTS` values in `size_of::<Self>()` bytes.
pub trait Block: Pod {
    const ELEMENTS: usize;
    /// Writes the block's values to `y`, which is `ELEMENTS` long.
    fn dequantize(&self, y: &mut [f32]);
}

pub(crate) fn f16_of(b: [u8; 2]) -> f32 {
    f16::from_le_bytes(b).to_f32()
}

/// F32: one little-endian f32.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct F32Le(pub [u8; 4]);

/// F16: one little-endian IEEE half.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct F16Le(pub [u8; 2]);

/// BF16: the high half of an f32.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct Bf16Le(pub [u8; 2]);

impl Block for F32Le {
    const ELEMENTS: usize = 1;
    fn dequantize(&self, y: &mut [f32]) {
        y[0] = f32::from_le_bytes(self.0);
    }
}

impl Block for F16Le {
    const ELEMENTS: usize = 1;
    fn dequantize(&self, y: &mut [f32]) {
        y[0] = f16_of(self.0);
    }
}

impl Block for Bf16Le {
    const ELEMENTS: usize = 1;
    fn dequantize(&self, y: &mut [f32]) {
        y[0] = bf16::from_le_bytes(self.0).to_f32();
    }
}

/// Q8_0: `y[i] = d * qs[i]`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ8_0 {
    pub d: [u8; 2],
    pub qs: [i8; 32],
}

impl Block for BlockQ8_0 {
    const ELEMENTS: usize = 32;
    fn dequantize(&self, y: &mut [f32]) {
        let d = f16_of(self.d);
        for (y, &q) in y.iter_mut().zip(&self.qs) {
            *y = q as f32 * d;
        }
    }
}

/// Q4_0: `y[i] = d * (q[i] - 8)`; byte `j` holds `q[j]` in its low nibble, `q[j + 16]` high.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ4_0 {
    pub d: [u8; 2],
    pub qs: [u8; 16],
}

impl Block for BlockQ4_0 {
    const ELEMENTS: usize = 32;
    fn dequantize(&self, y: &mut [f32]) {
        let d = f16_of(self.d);
        for (j, &b) in self.qs.iter().enumerate() {
            y[j] = d * ((b & 0xF) as i32 - 8) as f32;
            y[j + 16] = d * ((b >> 4) as i32 - 8) as f32;
        }
    }
}

/// Q4_1: `y[i] = d * q[i] + m`, nibbles as Q4_0.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ4_1 {
    pub d: [u8; 2],
    pub m: [u8; 2],
    pub qs: [u8; 16],
}

impl Block for BlockQ4_1 {
    const ELEMENTS: usize = 32;
    fn dequantize(&self, y: &mut [f32]) {
        let (d, m) = (f16_of(self.d), f16_of(self.m));
        for (j, &b) in self.qs.iter().enumerate() {
            y[j] = d * (b & 0xF) as f32 + m;
            y[j + 16] = d * (b >> 4) as f32 + m;
        }
    }
}

/// The 5-bit values of Q5_0/Q5_1: nibbles as Q4_0, and bit `i` of the little-endian `qh` is
/// bit 4 of `q[i]`.
pub(crate) fn five_bit(qh: [u8; 4], qs: &[u8; 16], i: usize) -> u8 {
    let nibble = if i < 16 { qs[i] & 0xF } else { qs[i - 16] >> 4 };
    let high = (u32::from_le_bytes(qh) >> i) as u8 & 1;
    nibble | (high << 4)
}

/// Q5_0: `y[i] = d * (q[i] - 16)`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ5_0 {
    pub d: [u8; 2],
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}

impl Block for BlockQ5_0 {
    const ELEMENTS: usize = 32;
    fn dequantize(&self, y: &mut [f32]) {
        let d = f16_of(self.d);
        for (i, y) in y.iter_mut().enumerate() {
            *y = d * (five_bit(self.qh, &self.qs, i) as i32 - 16) as f32;
        }
    }
}

/// Q5_1: `y[i] = d * q[i] + m`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ5_1 {
    pub d: [u8; 2],
    pub m: [u8; 2],
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}

impl Block for BlockQ5_1 {
    const ELEMENTS: usize = 32;
    fn dequantize(&self, y: &mut [f32]) {
        let (d, m) = (f16_of(self.d), f16_of(self.m));
        for (i, y) in y.iter_mut().enumerate() {
            *y = d * five_bit(self.qh, &self.qs, i) as f32 + m;
        }
    }
}

/// The 2-bit field of element `i` of a K-quant whose 256 values are packed four to a byte in two
/// halves of 32 bytes: element `i` is in byte `32 * (i / 128) + i % 32`, at bit
/// `2 * ((i % 128) / 32)`. Q2_K's and Q3_K's `qs` and Q6_K's `qh` use it.
pub(crate) fn two_bit(bytes: &[u8], i: usize) -> u8 {
    (bytes[32 * (i / 128) + i % 32] >> (2 * ((i % 128) / 32))) & 3
}

/// Q2_K: 16 groups of 16; group `g` has scale `d * (scales[g] & 0xF)` and offset
/// `dmin * (scales[g] >> 4)`, and `y[i] = scale * q[i] - offset` with 2-bit `q`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ2_K {
    pub scales: [u8; QK_K / 16],
    pub qs: [u8; QK_K / 4],
    pub d: [u8; 2],
    pub dmin: [u8; 2],
}

impl Block for BlockQ2_K {
    const ELEMENTS: usize = QK_K;
    fn dequantize(&self, y: &mut [f32]) {
        let (d, dmin) = (f16_of(self.d), f16_of(self.dmin));
        for (g, y) in y.chunks_exact_mut(16).enumerate() {
            let dl = d * (self.scales[g] & 0xF) as f32;
            let ml = dmin * (self.scales[g] >> 4) as f32;
            for (k, y) in y.iter_mut().enumerate() {
                *y = dl * two_bit(&self.qs, 16 * g + k) as f32 - ml;
            }
        }
    }
}

/// Q3_K: 16 groups of 16 with signed 6-bit scales (packed, see [`BlockQ3_K::scale`]);
/// `y[i] = d * scale * (q[i] - 4 * (1 - h[i]))` with 2-bit `q` and `h[i]` bit `i / 32` of
/// `hmask[i % 32]` (a set bit means no offset).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ3_K {
    pub hmask: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 4],
    pub scales: [u8; 12],
    pub d: [u8; 2],
}

impl BlockQ3_K {
    /// Scale `g` of 16: its low 4 bits are the low (g < 8) or high nibble of byte `g % 8`, its
    /// high 2 bits are bits `2 * (g / 4)` of byte `8 + g % 4`; stored with a bias of 32.
    pub fn scale(&self, g: usize) -> i8 {
        let s = &self.scales;
        let low = if g < 8 { s[g] & 0xF } else { s[g - 8] >> 4 };
        let high = (s[8 + g % 4] >> (2 * (g / 4))) & 3;
        (low | (high << 4)) as i8 - 32
    }
}

impl Block for BlockQ3_K {
    const ELEMENTS: usize = QK_K;
    fn dequantize(&self, y: &mut [f32]) {
        let d = f16_of(self.d);
        for (g, y) in y.chunks_exact_mut(16).enumerate() {
            let dl = d * self.scale(g) as f32;
            for (k, y) in y.iter_mut().enumerate() {
                let i = 16 * g + k;
                let offset = if (self.hmask[i % 32] >> (i / 32)) & 1 == 1 { 0 } else { 4 };
                *y = dl * (two_bit(&self.qs, i) as i32 - offset) as f32;
            }
        }
    }
}

/// Scale and min of sub-block `j` of 8 in Q4_K/Q5_K's 12 packed bytes (ggml's
/// `get_scale_min_k4`): 6 bits each; for `j < 4` the low 6 bits of bytes `j` and `j + 4`, else a
/// nibble of byte `j + 4` with the top 2 bits of bytes `j - 4` and `j`.
pub fn scale_min_k4(scales: &[u8; 12], j: usize) -> (u8, u8) {
    if j < 4 {
        (scales[j] & 63, scales[j + 4] & 63)
    } else {
        ((scales[j + 4] & 0xF) | ((scales[j - 4] >> 6) << 4), (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4))
    }
}

/// Q4_K: 8 sub-blocks of 32; sub-block `j` has scale `d * sc` and offset `dmin * m`
/// ([`scale_min_k4`]) and `y = scale * q - offset`. Byte `32 * (j / 2) + l` holds element
/// `32 * j + l` in its low nibble for even `j`, high for odd.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ4_K {
    pub d: [u8; 2],
    pub dmin: [u8; 2],
    pub scales: [u8; 12],
    pub qs: [u8; QK_K / 2],
}

/// The 4-bit field of element `i` of Q4_K/Q5_K's `qs`.
pub(crate) fn k_nibble(qs: &[u8; QK_K / 2], i: usize) -> u8 {
    let (j, l) = (i / 32, i % 32);
    (qs[32 * (j / 2) + l] >> (4 * (j % 2))) & 0xF
}

/// Writes `y = d * sc * q(i) - dmin * m` over Q4_K/Q5_K's 8 sub-blocks.
fn dequantize_k4(d: [u8; 2], dmin: [u8; 2], scales: &[u8; 12], y: &mut [f32], q: impl Fn(usize) -> u8) {
    let (d, dmin) = (f16_of(d), f16_of(dmin));
    for (j, y) in y.chunks_exact_mut(32).enumerate() {
        let (sc, m) = scale_min_k4(scales, j);
        let (d1, m1) = (d * sc as f32, dmin * m as f32);
        for (l, y) in y.iter_mut().enumerate() {
            *y = d1 * q(32 * j + l) as f32 - m1;
        }
    }
}

impl Block for BlockQ4_K {
    const ELEMENTS: usize = QK_K;
    fn dequantize(&self, y: &mut [f32]) {
        dequantize_k4(self.d, self.dmin, &self.scales, y, |i| k_nibble(&self.qs, i));
    }
}

/// Q5_K: Q4_K with a fifth bit: bit `i / 32` of `qh[i % 32]` is bit 4 of element `i`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ5_K {
    pub d: [u8; 2],
    pub dmin: [u8; 2],
    pub scales: [u8; 12],
    pub qh: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 2],
}

impl Block for BlockQ5_K {
    const ELEMENTS: usize = QK_K;
    fn dequantize(&self, y: &mut [f32]) {
        dequantize_k4(self.d, self.dmin, &self.scales, y, |i| {
            k_nibble(&self.qs, i) | (((self.qh[i % 32] >> (i / 32)) & 1) << 4)
        });
    }
}

/// Q6_K: 16 groups of 16 with signed 8-bit scales; `y[i] = d * scales[i / 16] * (q[i] - 32)`.
/// The low 4 bits of `q[i]` are in `ql`, per half of 128: byte `64 * (i / 128) + i % 64`, low
/// nibble if `i % 128 < 64`; the high 2 bits are in `qh`, packed as Q2_K's `qs`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ6_K {
    pub ql: [u8; QK_K / 2],
    pub qh: [u8; QK_K / 4],
    pub scales: [i8; QK_K / 16],
    pub d: [u8; 2],
}

impl Block for BlockQ6_K {
    const ELEMENTS: usize = QK_K;
    fn dequantize(&self, y: &mut [f32]) {
        let d = f16_of(self.d);
        for (g, y) in y.chunks_exact_mut(16).enumerate() {
            let dl = d * self.scales[g] as f32;
            for (k, y) in y.iter_mut().enumerate() {
                *y = dl * (q6_k_value(self, 16 * g + k) as i32 - 32) as f32;
            }
        }
    }
}

/// Element `i` of a Q6_K block, before its offset of 32: 0..=63.
pub(crate) fn q6_k_value(b: &BlockQ6_K, i: usize) -> u8 {
    let low = (b.ql[64 * (i / 128) + i % 64] >> (4 * ((i % 128) / 64))) & 0xF;
    low | (two_bit(&b.qh, i) << 4)
}
