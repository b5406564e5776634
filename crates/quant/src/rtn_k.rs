//! Round-to-nearest quantizers of the K-quants (256-element super-blocks), each the algorithm of
//! ggml's `quantize_row_q{4,5,6}_K_ref` with the same f32 operations in the same order, so the
//! blocks are the bytes ggml writes. Callers have checked that the input is finite and fills
//! whole blocks.

use half::f16;

use crate::blocks::{scale_min_k4, BlockQ4_K, BlockQ5_K, BlockQ6_K};
use crate::rtn::f16_bytes;
use crate::QK_K;

/// ggml's `GROUP_MAX_EPS`: a group whose largest magnitude is below it is all zero.
const GROUP_MAX_EPS: f32 = 1e-15;

/// ggml's `nearest_int`: rounds half to even by adding 1.5 * 2^23, valid for |v| < 2^22 (wrong,
/// but harmless, beyond; every caller clamps the result).
fn nearest_int(v: f32) -> i32 {
    ((v + 12_582_912.0).to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

fn f16_value(b: [u8; 2]) -> f32 {
    f16::from_le_bytes(b).to_f32()
}

/// The search `make_qkx2_quants` runs for one sub-block of 32: levels `0..=nmax`, trial inverse
/// scales `(rmin + 0.1 * step + nmax) / (max - min)` for `step` in `0..=steps`.
#[derive(Debug, Clone, Copy)]
struct Search {
    nmax: i32,
    rmin: f32,
    steps: i32,
}

/// Q4_K's (`make_qkx2_quants(32, 15, .., -1, 0.1, 20)`) and Q5_K's (`(32, 31, .., -0.5, 0.1, 15)`).
const Q4_K_SEARCH: Search = Search { nmax: 15, rmin: -1.0, steps: 20 };
const Q5_K_SEARCH: Search = Search { nmax: 31, rmin: -0.5, steps: 15 };

/// What Q4_K and Q5_K share: the super-block scales `d`, `dmin`, the 6-bit packed sub-block
/// scales and mins, and every element's level (`0..=nmax`).
struct K4 {
    d: [u8; 2],
    dmin: [u8; 2],
    scales: [u8; 12],
    levels: [u8; QK_K],
}

/// Each sub-block of 32 gets a scale and min by ggml's weighted search (`make_qkx2_quants`), the
/// 8 scales and 8 mins are quantized to 6 bits against the super-block's `d` and `dmin`, and the
/// values are then requantized against the rounded scales.
fn k4(x: &[f32], search: Search) -> K4 {
    let mut levels = [0u8; QK_K];
    let (mut scales, mut mins) = ([0.0f32; 8], [0.0f32; 8]);
    for (j, (x, levels)) in x.chunks_exact(32).zip(levels.chunks_exact_mut(32)).enumerate() {
        let sum_x2 = x.iter().fold(0.0f32, |s, v| s + v * v);
        let av_x = (sum_x2 / 32.0).sqrt();
        let weights: [f32; 32] = std::array::from_fn(|l| av_x + x[l].abs());
        (scales[j], mins[j]) = search_scale_min(x, &weights, levels, search);
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
        let d = f16_value(d) * sc as f32;
        if d == 0.0 {
            continue; // keeps the search's levels, as ggml does
        }
        let dm = f16_value(dmin) * m as f32;
        for l in 0..32 {
            levels[32 * j + l] = nearest_int((x[32 * j + l] + dm) / d).clamp(0, search.nmax) as u8;
        }
    }
    K4 { d, dmin, scales: packed, levels }
}

/// The low nibbles of Q4_K/Q5_K: byte `32 * (j / 2) + l` holds element `32 * j + l`, low nibble
/// for even `j`, high for odd.
fn pack_nibbles(levels: &[u8; QK_K]) -> [u8; QK_K / 2] {
    let mut qs = [0u8; QK_K / 2];
    for (half, q) in qs.chunks_exact_mut(32).enumerate() {
        for (l, q) in q.iter_mut().enumerate() {
            *q = (levels[64 * half + l] & 0xF) | ((levels[64 * half + l + 32] & 0xF) << 4);
        }
    }
    qs
}

/// Q4_K: 8 sub-blocks of 32 with 4-bit levels, `y = d * sc * q - dmin * m`.
pub(crate) fn q4_k(x: &[f32]) -> BlockQ4_K {
    let K4 { d, dmin, scales, levels } = k4(x, Q4_K_SEARCH);
    BlockQ4_K { d, dmin, scales, qs: pack_nibbles(&levels) }
}

/// Q5_K: Q4_K with 5-bit levels; bit 4 of element `i` is bit `i / 32` of `qh[i % 32]`.
pub(crate) fn q5_k(x: &[f32]) -> BlockQ5_K {
    let K4 { d, dmin, scales, levels } = k4(x, Q5_K_SEARCH);
    let mut qh = [0u8; QK_K / 8];
    for (i, &l) in levels.iter().enumerate() {
        qh[i % 32] |= ((l >> 4) & 1) << (i / 32);
    }
    BlockQ5_K { d, dmin, scales, qh, qs: pack_nibbles(&levels) }
}

/// Q6_K: 16 groups of 16, each with a scale from `make_qx_quants(16, 32, .., rmse_type 1)`
/// quantized to a signed byte against the super-block's `d = max_scale / -128`; levels
/// `0..=63` (value + 32) against the rounded scales.
pub(crate) fn q6_k(x: &[f32]) -> BlockQ6_K {
    let mut levels = [0u8; QK_K];
    let mut scales = [0.0f32; QK_K / 16];
    let (mut max_scale, mut max_abs_scale) = (0.0f32, 0.0f32);
    for (g, (x, levels)) in x.chunks_exact(16).zip(levels.chunks_exact_mut(16)).enumerate() {
        scales[g] = symmetric_scale(x, levels);
        if scales[g].abs() > max_abs_scale {
            max_abs_scale = scales[g].abs();
            max_scale = scales[g];
        }
    }
    if max_abs_scale < GROUP_MAX_EPS {
        return BlockQ6_K { ql: [0; QK_K / 2], qh: [0; QK_K / 4], scales: [0; QK_K / 16], d: f16_bytes(0.0) };
    }
    let iscale = -128.0 / max_scale;
    let d = f16_bytes(1.0 / iscale);
    // |iscale * scale| <= 128; only +128 needs the clamp, and the cast cannot wrap below -128.
    let group_scales: [i8; QK_K / 16] =
        std::array::from_fn(|g| nearest_int(iscale * scales[g]).min(127) as i8);
    for (g, &sc) in group_scales.iter().enumerate() {
        let dg = f16_value(d) * sc as f32;
        if dg == 0.0 {
            continue;
        }
        for l in 16 * g..16 * g + 16 {
            levels[l] = (nearest_int(x[l] / dg).clamp(-32, 31) + 32) as u8;
        }
    }
    let (mut ql, mut qh) = ([0u8; QK_K / 2], [0u8; QK_K / 4]);
    for half in 0..2 {
        let (ql, qh, levels) = (&mut ql[64 * half..], &mut qh[32 * half..], &levels[128 * half..]);
        for l in 0..32 {
            let q = |k: usize| levels[l + 32 * k];
            ql[l] = (q(0) & 0xF) | ((q(2) & 0xF) << 4);
            ql[l + 32] = (q(1) & 0xF) | ((q(3) & 0xF) << 4);
            qh[l] = (q(0) >> 4) | ((q(1) >> 4) << 2) | ((q(2) >> 4) << 4) | ((q(3) >> 4) << 6);
        }
    }
    BlockQ6_K { ql, qh, scales: group_scales, d }
}

/// ggml's `make_qx_quants(16, 32, x, L, rmse_type = 1, NULL)`: symmetric levels `-32..=31`
/// (written + 32) around the value of largest magnitude, refining the scale by the `x²`-weighted
/// least-squares fit over 18 trial inverse scales. Returns the scale.
fn symmetric_scale(x: &[f32], levels: &mut [u8]) -> f32 {
    const NMAX: i32 = 32;
    let (mut max, mut amax) = (0.0f32, 0.0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        levels.fill(0);
        return 0.0;
    }
    let level = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-NMAX, NMAX - 1);
    // The weighted sums with the f32 operations of ggml's loop: (w * x) * l and (w * l) * l.
    let sums = |iscale: f32| {
        x.iter().fold((0.0f32, 0.0f32), |(sumlx, suml2), &v| {
            let (l, w) = (level(iscale, v) as f32, v * v);
            (sumlx + w * v * l, suml2 + w * l * l)
        })
    };
    let write = |iscale: f32, levels: &mut [u8]| {
        for (q, &v) in levels.iter_mut().zip(x) {
            *q = (level(iscale, v) + NMAX) as u8;
        }
    };
    let iscale = -(NMAX as f32) / max;
    write(iscale, levels);
    let (sumlx, suml2) = sums(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for step in (-9..=9).filter(|&s| s != 0) {
        let iscale = -(NMAX as f32 + 0.1 * step as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            write(iscale, levels);
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// ggml's `make_qkx2_quants(32, nmax, x, weights, L, &min, Laux, rmin, 0.1, steps, false)`:
/// levels `0..=nmax` with `x ~ scale * level - min`, choosing among the trial scales the
/// weighted least-squares fit of smallest weighted squared error. Writes the levels and returns
/// `(scale, min)`, the min as a non-negative offset.
fn search_scale_min(x: &[f32], weights: &[f32; 32], levels: &mut [u8], search: Search) -> (f32, f32) {
    let Search { nmax, rmin, steps } = search;
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
            *l = nearest_int(iscale * (v - min)).clamp(0, nmax) as u8;
        }
    };
    let error = |scale: f32, min: f32, l: &[u8]| {
        l.iter().zip(x).zip(weights).fold(0.0f32, |e, ((&l, &v), &w)| {
            let diff = scale * l as f32 + min - v;
            e + w * (diff * diff)
        })
    };
    let iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    quantize(iscale, min, levels);
    let mut best_error = error(scale, min, levels);
    let mut trial = [0u8; 32];
    for step in 0..=steps {
        let iscale = (rmin + 0.1 * step as f32 + nmax as f32) / (max - min);
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
