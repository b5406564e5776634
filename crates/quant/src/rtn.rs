//! Round-to-nearest quantizers of the 32-element types, each the algorithm of ggml's
//! `quantize_row_*_ref` with the same f32 operations in the same order, so the blocks are the
//! bytes ggml and gguf-py write (the K-quants are in [`crate::rtn_k`]). Callers have checked that
//! the input is finite and fills whole blocks.

use half::f16;

use crate::blocks::{Block, BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0};

/// Quantizes `x` block by block with `one`, appending the blocks' bytes to `out`.
pub(crate) fn quantize<B: Block>(x: &[f32], out: &mut Vec<u8>, one: fn(&[f32]) -> B) {
    out.reserve(x.len() / B::ELEMENTS * std::mem::size_of::<B>());
    for chunk in x.chunks_exact(B::ELEMENTS) {
        out.extend_from_slice(bytemuck::bytes_of(&one(chunk)));
    }
}

pub(crate) fn f16_bytes(x: f32) -> [u8; 2] {
    f16::from_f32(x).to_le_bytes()
}

/// `1 / d`, or 0 for a zero scale (an all-zero block).
pub(crate) fn inverse(d: f32) -> f32 {
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

/// Q8_0: `d = max|x| / 127`, `q = round(x / d)` with halves away from zero.
pub(crate) fn q8_0(x: &[f32]) -> BlockQ8_0 {
    let amax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = inverse(d);
    let mut qs = [0i8; 32];
    for (q, v) in qs.iter_mut().zip(x) {
        // |v * id| <= 127 up to rounding; the cast saturates either way.
        *q = (v * id).round() as i8;
    }
    BlockQ8_0 { d: f16_bytes(d), qs }
}

/// The value of largest magnitude (the first, on ties), signed.
fn signed_max(x: &[f32]) -> f32 {
    let mut max = 0.0f32;
    for &v in x {
        if v.abs() > max.abs() {
            max = v;
        }
    }
    max
}

/// The smallest and largest values (ggml starts from `FLT_MAX` and `-FLT_MAX`).
fn min_max(x: &[f32]) -> (f32, f32) {
    x.iter().fold((f32::MAX, -f32::MAX), |(lo, hi), &v| {
        (if v < lo { v } else { lo }, if v > hi { v } else { hi })
    })
}

/// Q4_0: `d = m / -8` for the value `m` of largest magnitude, so `m` maps to 0 and the other
/// end of the range to 15; `q = min(15, trunc(x / d + 8.5))`.
pub(crate) fn q4_0(x: &[f32]) -> BlockQ4_0 {
    let d = signed_max(x) / -8.0;
    let id = inverse(d);
    let q = |v: f32| ((v * id + 8.5) as u8).min(15);
    let mut qs = [0u8; 16];
    for (j, b) in qs.iter_mut().enumerate() {
        *b = q(x[j]) | (q(x[j + 16]) << 4);
    }
    BlockQ4_0 { d: f16_bytes(d), qs }
}

/// Q4_1: `d = (max - min) / 15`, `m = min`, `q = min(15, trunc((x - min) / d + 0.5))`.
pub(crate) fn q4_1(x: &[f32]) -> BlockQ4_1 {
    let (min, max) = min_max(x);
    let d = (max - min) / 15.0;
    let id = inverse(d);
    // `(x - min) * id >= 0`, so truncation is C's conversion to int8_t.
    let q = |v: f32| (((v - min) * id + 0.5) as u8).min(15);
    let mut qs = [0u8; 16];
    for (j, b) in qs.iter_mut().enumerate() {
        *b = q(x[j]) | (q(x[j + 16]) << 4);
    }
    BlockQ4_1 { d: f16_bytes(d), m: f16_bytes(min), qs }
}

/// The 32 five-bit values `q` as Q5_0/Q5_1 store them: low nibbles as Q4_0, bit 4 of `q[i]` at
/// bit `i` of `qh`.
fn pack_five_bit(q: impl Fn(usize) -> u8) -> ([u8; 4], [u8; 16]) {
    let (mut qh, mut qs) = (0u32, [0u8; 16]);
    for (j, b) in qs.iter_mut().enumerate() {
        let (q0, q1) = (q(j), q(j + 16));
        *b = (q0 & 0xF) | ((q1 & 0xF) << 4);
        qh |= (((q0 & 0x10) >> 4) as u32) << j;
        qh |= (((q1 & 0x10) >> 4) as u32) << (j + 16);
    }
    (qh.to_le_bytes(), qs)
}

/// Q5_0: Q4_0 with 32 levels: `d = m / -16`, `q = min(31, trunc(x / d + 16.5))`.
pub(crate) fn q5_0(x: &[f32]) -> BlockQ5_0 {
    let d = signed_max(x) / -16.0;
    let id = inverse(d);
    let (qh, qs) = pack_five_bit(|j| ((x[j] * id + 16.5) as u8).min(31));
    BlockQ5_0 { d: f16_bytes(d), qh, qs }
}

/// Q5_1: Q4_1 with 32 levels: `d = (max - min) / 31`, `q = trunc((x - min) / d + 0.5)`.
pub(crate) fn q5_1(x: &[f32]) -> BlockQ5_1 {
    let (min, max) = min_max(x);
    let d = (max - min) / 31.0;
    let id = inverse(d);
    // No clamp, as in ggml: `(x - min) * id` rounds to at most 31.
    let (qh, qs) = pack_five_bit(|j| ((x[j] - min) * id + 0.5) as u8);
    BlockQ5_1 { d: f16_bytes(d), m: f16_bytes(min), qh, qs }
}
