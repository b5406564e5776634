//! Blocks as integers, for products that never dequantize: the portable reference of the
//! engine's integer kernels.
//!
//! Every quantized block decodes as `y[i] = a[g] * (u[i] - OFFSET) - m[g]`, with `u` an unsigned
//! byte, `g = i / GROUP` and `a`, `m` floats per group (`m = 0` for the types without minimums).
//! Against activations quantized to bytes, `x[i] = dx * q[i]` with one `dx` per block of the same
//! length ([`Q8Acts`]), the dot product of a block is then
//!
//! ```text
//!   dx * sum_g ( a[g] * (U[g] - OFFSET * S[g]) - m[g] * S[g] ),   U[g] = sum u q,  S[g] = sum q
//! ```
//!
//! where `U` and `S` are exact integer sums. This is ggml's scheme (`vec_dot_*_q8_*`): an 8-bit
//! product per element and a few float operations per group. `u` is unsigned because x86's
//! byte dot product (`vpdpbusd`, `vpmaddubsw`) multiplies an unsigned byte by a signed one.

use crate::blocks::*;
use crate::{GgmlType, QK_K};

/// A block whose values are small integers times a per-group scale, minus a per-group minimum.
pub trait IntBlock: Block {
    /// Elements sharing one `a` and one `m` (16 or 32).
    const GROUP: usize;
    /// Subtracted from `u` before the scale.
    const OFFSET: i32;
    /// Writes the unsigned values (`ELEMENTS` of them) and each group's scale and minimum
    /// (`ELEMENTS / GROUP` of each).
    fn unpack(&self, u: &mut [u8], a: &mut [f32], m: &mut [f32]);
}

/// Elements per activation sum: the smallest group of any type.
pub const SUM_GROUP: usize = 16;

/// Rows of activations quantized to 8 bits in blocks of `block` elements (32, or 256 for the
/// K-quants), as ggml's `Q8_0` and `Q8_K`: `x = d * q` with `d = max|x| / 127` per block. Kept
/// with `Σ q` per 16 elements so the minimums and offsets cost one multiply per group. Reused
/// across calls: [`Q8Acts::quantize`] allocates only when the rows outgrow it.
#[derive(Debug, Clone, Default)]
pub struct Q8Acts {
    pub rows: usize,
    pub cols: usize,
    pub block: usize,
    /// (rows, cols)
    pub qs: Vec<i8>,
    /// (rows, cols / block)
    pub d: Vec<f32>,
    /// (rows, cols / SUM_GROUP)
    pub sums: Vec<i32>,
}

impl Q8Acts {
    /// Quantizes `x (rows, cols)` in blocks of `block`, which must divide `cols`. A NaN or
    /// infinity in a block makes its scale NaN, so it reaches the product instead of vanishing.
    pub fn quantize(&mut self, x: &[f32], rows: usize, cols: usize, block: usize) {
        assert!(
            block.is_multiple_of(SUM_GROUP) && cols.is_multiple_of(block),
            "Q8Acts: {cols} columns in blocks of {block}"
        );
        let x = &x[..rows * cols];
        (self.rows, self.cols, self.block) = (rows, cols, block);
        self.qs.resize(rows * cols, 0);
        self.d.resize(rows * cols / block, 0.0);
        self.sums.resize(rows * cols / SUM_GROUP, 0);
        for ((x, q), d) in x.chunks_exact(block).zip(self.qs.chunks_exact_mut(block)).zip(&mut self.d) {
            *d = quantize_block(x, q);
        }
        for (q, s) in self.qs.chunks_exact(SUM_GROUP).zip(&mut self.sums) {
            *s = q.iter().map(|&q| q as i32).sum();
        }
    }

    /// Row `r`: its bytes, block scales and sums.
    pub fn row(&self, r: usize) -> (&[i8], &[f32], &[i32]) {
        let (c, b) = (self.cols, self.cols / self.block);
        let s = self.cols / SUM_GROUP;
        (&self.qs[r * c..][..c], &self.d[r * b..][..b], &self.sums[r * s..][..s])
    }
}

/// One block to bytes; returns its scale. The largest magnitude maps to ±127.
fn quantize_block(x: &[f32], q: &mut [i8]) -> f32 {
    if x.iter().any(|v| !v.is_finite()) {
        q.fill(0);
        return f32::NAN;
    }
    let amax = x.iter().fold(0.0f32, |amax, v| amax.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    for (q, v) in q.iter_mut().zip(x) {
        *q = (v * id).round() as i8;
    }
    d
}

/// The dot product of one row of blocks with one row of activations quantized in blocks of the
/// same length, computed as the module doc says. The portable path, and the reference the
/// engine's vector kernels are checked against.
pub fn dot_row<B: IntBlock>(w: &[B], qs: &[i8], d: &[f32], sums: &[i32]) -> f32 {
    let groups = B::ELEMENTS / B::GROUP;
    let sums_per_group = B::GROUP / SUM_GROUP;
    let (mut u, mut a, mut m) = ([0u8; QK_K], [0f32; QK_K / 16], [0f32; QK_K / 16]);
    let mut total = 0.0f32;
    for (bi, block) in w.iter().enumerate() {
        block.unpack(&mut u[..B::ELEMENTS], &mut a[..groups], &mut m[..groups]);
        let q = &qs[bi * B::ELEMENTS..][..B::ELEMENTS];
        let s = &sums[bi * B::ELEMENTS / SUM_GROUP..][..B::ELEMENTS / SUM_GROUP];
        let mut acc = 0.0f32;
        for g in 0..groups {
            let range = g * B::GROUP..(g + 1) * B::GROUP;
            let uq: i32 = u[range.clone()].iter().zip(&q[range]).map(|(&u, &q)| u as i32 * q as i32).sum();
            let sq: i32 = s[g * sums_per_group..][..sums_per_group].iter().sum();
            acc += a[g] * (uq - B::OFFSET * sq) as f32 - m[g] * sq as f32;
        }
        total += d[bi] * acc;
    }
    total
}

/// Activation block length for integer products with `ty`, or `None` for the float types.
pub fn act_block(ty: GgmlType) -> Option<usize> {
    match ty {
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => None,
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0 => Some(32),
        GgmlType::Q2_K | GgmlType::Q3_K | GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K => Some(QK_K),
    }
}

impl IntBlock for BlockQ8_0 {
    const GROUP: usize = 32;
    const OFFSET: i32 = 128;
    fn unpack(&self, u: &mut [u8], a: &mut [f32], m: &mut [f32]) {
        for (u, &q) in u.iter_mut().zip(&self.qs) {
            *u = (q as u8) ^ 0x80;
        }
        (a[0], m[0]) = (f16_of(self.d), 0.0);
    }
}

/// Q4_0/Q4_1's nibbles: byte `j` holds element `j` low and `j + 16` high.
fn nibbles(qs: &[u8; 16], u: &mut [u8]) {
    for (j, &b) in qs.iter().enumerate() {
        (u[j], u[j + 16]) = (b & 0xF, b >> 4);
    }
}

impl IntBlock for BlockQ4_0 {
    const GROUP: usize = 32;
    const OFFSET: i32 = 8;
    fn unpack(&self, u: &mut [u8], a: &mut [f32], m: &mut [f32]) {
        nibbles(&self.qs, u);
        (a[0], m[0]) = (f16_of(self.d), 0.0);
    }
}

impl IntBlock for BlockQ4_1 {
    const GROUP: usize = 32;
    const OFFSET: i32 = 0;
    fn unpack(&self, u: &mut [u8], a: &mut [f32], m: &mut [f32]) {
        nibbles(&self.qs, u);
        // `y = d * q + min`: a minimum of `-min`.
        (a[0], m[0]) = (f16_of(self.d), -f16_of(self.m));
    }
}

impl IntBlock for BlockQ5_0 {
    const GROUP: usize = 32;
    const OFFSET: i32 = 16;
    fn unpack(&self, u: &mut [u8], a: &mut [f32], m: &mut [f32]) {
        for (i, u) in u.iter_mut().enumerate() {
            *u = five_bit(self.qh, &self.qs, i);
        }
        (a[0], m[0]) = (f16_of(self.d), 0.0);
    }
}

impl IntBlock for BlockQ5_1 {
    const GROUP: usize = 32;
    const OFFSET: i32 = 0;
    fn unpack(&self, u: &mut [u8], a: &mut [f32], m: &mut [f32]) {
        for (i, u) in u.iter_mut().enumerate() {
            *u = five_bit(self.qh, &self.qs, i);
        }
        (a[0], m[0]) = (f16_of(self.d), -f16_of(self.m));
    }
}

impl IntBlock for BlockQ2_K {
    const GROUP: usize = 16;
    const OFFSET: i32 = 0;
    fn unpack(&self, u: &mut [u8], a: &mut [f32], m: &mut [f32]) {
        let (d, dmin) = (f16_of(self.d), f16_of(self.dmin));
        for (i, u) in u.iter_mut().enumerate() {
            *u = two_bit(&self.qs, i);
        }
        for (g, &s) in self.scales.iter().enumerate() {
            (a[g], m[g]) = (d * (s & 0xF) as f32, dmin * (s >> 4) as f32);
        }
    }
}

impl IntBlock for BlockQ3_K {
    const GROUP: usize = 16;
    const OFFSET: i32 = 4;
    fn unpack(&self, u: &mut [u8], a: &mut [f32], m: &mut [f32]) {
        let d = f16_of(self.d);
        // `q - 4 * (1 - h)` is `(q + 4h) - 4`.
        for (i, u) in u.iter_mut().enumerate() {
            *u = two_bit(&self.qs, i) + 4 * ((self.hmask[i % 32] >> (i / 32)) & 1);
        }
        for g in 0..16 {
            (a[g], m[g]) = (d * self.scale(g) as f32, 0.0);
        }
    }
}

/// Q4_K/Q5_K's eight scales and minimums.
fn k4_scales(d: [u8; 2], dmin: [u8; 2], scales: &[u8; 12], a: &mut [f32], m: &mut [f32]) {
    let (d, dmin) = (f16_of(d), f16_of(dmin));
    for j in 0..8 {
        let (sc, mn) = scale_min_k4(scales, j);
        (a[j], m[j]) = (d * sc as f32, dmin * mn as f32);
    }
}

impl IntBlock for BlockQ4_K {
    const GROUP: usize = 32;
    const OFFSET: i32 = 0;
    fn unpack(&self, u: &mut [u8], a: &mut [f32], m: &mut [f32]) {
        for (i, u) in u.iter_mut().enumerate() {
            *u = k_nibble(&self.qs, i);
        }
        k4_scales(self.d, self.dmin, &self.scales, a, m);
    }
}

impl IntBlock for BlockQ5_K {
    const GROUP: usize = 32;
    const OFFSET: i32 = 0;
    fn unpack(&self, u: &mut [u8], a: &mut [f32], m: &mut [f32]) {
        for (i, u) in u.iter_mut().enumerate() {
            *u = k_nibble(&self.qs, i) | (((self.qh[i % 32] >> (i / 32)) & 1) << 4);
        }
        k4_scales(self.d, self.dmin, &self.scales, a, m);
    }
}

impl IntBlock for BlockQ6_K {
    const GROUP: usize = 16;
    const OFFSET: i32 = 32;
    fn unpack(&self, u: &mut [u8], a: &mut [f32], m: &mut [f32]) {
        let d = f16_of(self.d);
        for (i, u) in u.iter_mut().enumerate() {
            *u = q6_k_value(self, i);
        }
        for (g, &s) in self.scales.iter().enumerate() {
            (a[g], m[g]) = (d * s as f32, 0.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unpacking and dequantizing agree: `a * (u - OFFSET) - m` is each block's value, up to
    /// the rounding of one multiply (dequantization computes `a * q - m` the same way).
    fn unpack_matches_dequantize<B: IntBlock>() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut bytes = vec![0u8; std::mem::size_of::<B>() * 4];
        for b in bytes.iter_mut() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            *b = seed as u8;
        }
        // Random bytes make some f16 scales infinite or NaN; those values are skipped below.
        let blocks: &[B] = bytemuck::cast_slice(&bytes);
        let (mut u, mut a, mut m) = ([0u8; QK_K], [0f32; 16], [0f32; 16]);
        let mut y = vec![0f32; B::ELEMENTS];
        for block in blocks {
            block.dequantize(&mut y);
            block.unpack(&mut u[..B::ELEMENTS], &mut a, &mut m);
            for (i, &want) in y.iter().enumerate() {
                let g = i / B::GROUP;
                let got = a[g] * (u[i] as i32 - B::OFFSET) as f32 - m[g];
                if want.is_finite() {
                    let tol = 1e-6 * (1.0 + want.abs());
                    assert!(
                        (got - want).abs() <= tol,
                        "{}: element {i}: {got} vs {want}",
                        std::any::type_name::<B>()
                    );
                }
            }
        }
    }

    #[test]
    fn every_int_block_unpacks_to_its_values() {
        unpack_matches_dequantize::<BlockQ8_0>();
        unpack_matches_dequantize::<BlockQ4_0>();
        unpack_matches_dequantize::<BlockQ4_1>();
        unpack_matches_dequantize::<BlockQ5_0>();
        unpack_matches_dequantize::<BlockQ5_1>();
        unpack_matches_dequantize::<BlockQ2_K>();
        unpack_matches_dequantize::<BlockQ3_K>();
        unpack_matches_dequantize::<BlockQ4_K>();
        unpack_matches_dequantize::<BlockQ5_K>();
        unpack_matches_dequantize::<BlockQ6_K>();
    }

    #[test]
    fn activations_keep_nan() {
        let mut acts = Q8Acts::default();
        let mut x = vec![0.5f32; 64];
        x[40] = f32::NAN;
        acts.quantize(&x, 1, 64, 32);
        assert_eq!(acts.d[0], 0.5 / 127.0);
        assert!(acts.d[1].is_nan());
        assert!(acts.qs[..32].iter().all(|&q| q == 127));
    }
}
