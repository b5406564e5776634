//! Round-to-nearest quantizers, each the algorithm of ggml's `quantize_row_*_ref` with the same
//! f32 operations in the same order, so the blocks are the bytes ggml (and gguf-py, where it
//! quantizes) would write. Callers have checked that the input is finite and fills whole blocks.

use half::f16;

use crate::blocks::{scale_min_k4, Block, BlockQ4_0, BlockQ4_K, BlockQ8_0};
use crate::QK_K;

/// Quantizes `x` block by block with `one`, appending the blocks' bytes to `out`.
pub(crate) fn quantize<B: Block>(x: &[f32], out: &mut Vec<u8>, one: fn(&[f32]) -> B) {
    out.reserve(x.len() / B::ELEMENTS * std::mem::size_of::<B>());
    for chunk in x.chunks_exact(B::ELEMENTS) {
        out.extend_from_slice(bytemuck::bytes_of(&one(chunk)));
    }
}

fn f16_bytes(x: f32) -> [u8; 2] {
    f16::from_f32(x).to_le_bytes()
}

/// `1 / d`, or 0 for a zero scale (an all-zero block).
fn inverse(d: f32) -> f32 {
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

/// Q4_0: `d = m / -8` for the value `m` of largest magnitude (the first, on ties), so `m` maps to
/// 0 and the other end of the range to 15; `q = min(15, trunc(x / d + 8.5))`.
pub(crate) fn q4_0(x: &[f32]) -> BlockQ4_0 {
    let mut max = 0.0f32;
    for &v in x {
        if v.abs() > max.abs() {
            max = v;
        }
    }
    let d = max / -8.0;
    let id = inverse(d);
    let q = |v: f32| ((v * id + 8.5) as u8).min(15);
    let mut qs = [0u8; 16];
    for (j, b) in qs.iter_mut().enumerate() {
        *b = q(x[j]) | (q(x[j + 16]) << 4);
    }
    BlockQ4_0 { d: f16_bytes(d), qs }
}

/// ggml's `nearest_int`: rounds half to even by adding 1.5 * 2^23, valid for |v| < 2^22 (wrong,
/// but harmless, beyond; every caller clamps the result).
fn nearest_int(v: f32) -> i32 {
    ((v + 12_582_912.0).to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// Q4_K: each sub-block of 32 gets a scale and min by ggml's weighted search
/// (`make_qkx2_quants`), the 8 scales and 8 mins are quantized to 6 bits against the super-block's
/// `d` and `dmin`, and the values are then requantized against the rounded scales.
pub(crate) fn q4_k(x: &[f32]) -> BlockQ4_K {
    let mut levels = [0u8; QK_K];
    let (mut scales, mut mins) = ([0.0f32; 8], [0.0f32; 8]);
    for (j, (x, levels)) in x.chunks_exact(32).zip(levels.chunks_exact_mut(32)).enumerate() {
        let sum_x2 = x.iter().fold(0.0f32, |s, v| s + v * v);
        let av_x = (sum_x2 / 32.0).sqrt();
        let weights: [f32; 32] = std::array::from_fn(|l| av_x + x[l].abs());
        (scales[j], mins[j]) = search_scale_min(x, &weights, levels);
    }
    let max_scale = scales.iter().fold(0.0f32, |a, &s| if s > a { s } else { a });
    let max_min = mins.iter().fold(0.0f32, |a, &m| if m > a { m } else { a });
    let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut packed = [0u8; 12];
    for j in 0..8 {
        // `as u8` wraps a negative result as C's conversion to uint8_t does, before the clamp.
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
            packed[j - 4] |= (ls >> 4) << 6;
            packed[j] |= (lm >> 4) << 6;
        }
    }
    let (d, dmin) = (f16_bytes(max_scale / 63.0), f16_bytes(max_min / 63.0));
    for j in 0..8 {
        let (sc, m) = scale_min_k4(&packed, j);
        let d = f16::from_le_bytes(d).to_f32() * sc as f32;
        if d == 0.0 {
            continue; // keeps the search's levels, as ggml does
        }
        let dm = f16::from_le_bytes(dmin).to_f32() * m as f32;
        for l in 0..32 {
            levels[32 * j + l] = nearest_int((x[32 * j + l] + dm) / d).clamp(0, 15) as u8;
        }
    }
    let mut qs = [0u8; QK_K / 2];
    for (half, q) in qs.chunks_exact_mut(32).enumerate() {
        for (l, q) in q.iter_mut().enumerate() {
            *q = levels[64 * half + l] | (levels[64 * half + l + 32] << 4);
        }
    }
    BlockQ4_K { d, dmin, scales: packed, qs }
}

/// ggml's `make_qkx2_quants(32, 15, x, weights, L, &min, Laux, -1, 0.1, 20, false)`: levels
/// 0..=15 with `x ~ scale * level - min`, choosing among 21 trial scales the weighted
/// least-squares fit of smallest weighted squared error. Writes the levels and returns
/// `(scale, min)`, the min as a non-negative offset.
fn search_scale_min(x: &[f32], weights: &[f32; 32], levels: &mut [u8]) -> (f32, f32) {
    const NMAX: i32 = 15;
    let (mut min, mut max) = (x[0], x[0]);
    let (mut sum_w, mut sum_x) = (weights[0], weights[0] * x[0]);
    for (&v, &w) in x.iter().zip(weights).skip(1) {
        min = if v < min { v } else { min };
        max = if v > max { v } else { max };
        sum_w += w;
        sum_x += w * v;
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        levels.fill(0);
        return (0.0, -min);
    }
    let quantize = |iscale: f32, min: f32, l: &mut [u8]| {
        for (l, &v) in l.iter_mut().zip(x) {
            *l = nearest_int(iscale * (v - min)).clamp(0, NMAX) as u8;
        }
    };
    let error = |scale: f32, min: f32, l: &[u8]| {
        l.iter().zip(x).zip(weights).fold(0.0f32, |e, ((&l, &v), &w)| {
            let diff = scale * l as f32 + min - v;
            e + w * (diff * diff)
        })
    };
    let iscale = NMAX as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    quantize(iscale, min, levels);
    let mut best_error = error(scale, min, levels);
    let mut trial = [0u8; 32];
    for step in 0..=20 {
        let iscale = (-1.0 + 0.1 * step as f32 + NMAX as f32) / (max - min);
        quantize(iscale, min, &mut trial);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for ((&l, &v), &w) in trial.iter().zip(x).zip(weights) {
            let l = l as f32;
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * v;
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let cur_error = error(this_scale, this_min, &trial);
            if cur_error < best_error {
                levels.copy_from_slice(&trial);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}
