//! The few-row product's register tile in 16-lane AVX-512, chosen at run time: the workspace is
//! built for x86-64-v3 (AVX2), and AVX-512 doubles both the lanes and the registers. Thirty-two
//! registers hold a 4 x 4 tile of accumulators with its eight operands, where AVX2's sixteen fit
//! only 2 x 4: two multiply-adds per load instead of 1.33, on twice the lanes. The tile's sixteen
//! horizontal sums come out of one transpose of adds ([`sums`]), already in row order, so each
//! row's four results leave in one 128-bit store.

use std::arch::x86_64::*;
use std::ops::Range;

/// Rows of `a` and of `b` per register tile; also the columns per tile `skinny_nt` splits by.
pub(crate) const TILE: usize = 4;

/// Whether this CPU has AVX-512F (std caches the answer after the first call).
pub fn available() -> bool {
    is_x86_feature_detected!("avx512f")
}

/// `out (M, N) [+]= a (M, K) @ b (N, K)^T` over the output columns of `tiles` (tile `t` is
/// columns `4t..4t + 4`), for [`crate::matmul::skinny_nt`].
///
/// The column loop mirrors the 8-lane one in `matmul.rs` on purpose: it must sit inside this
/// `target_feature` function for the tile to inline. Called through a loop shared with the 8-lane
/// tile, the tile returned its sums through memory and half the time went to that glue.
///
/// # Safety
/// The CPU must have AVX-512F; `a`, `b` and `out` must hold `m * k`, `n * k` and `m * n`
/// elements, and no other thread may access `out`'s columns of `tiles` during the call.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
pub unsafe fn skinny_columns(
    out: *mut f32,
    a: *const f32,
    b: *const f32,
    m: usize,
    k: usize,
    n: usize,
    tiles: Range<usize>,
    accumulate: bool,
) {
    // SAFETY (every block below): tile columns are below `n` and rows below `m`, so each pointer
    // stays within the operands the caller vouched for.
    for c0 in tiles.map(|t| t * TILE) {
        let width = TILE.min(n - c0);
        // A ragged last tile repeats its last row of `b` and drops the repeated results.
        let w: [*const f32; TILE] = std::array::from_fn(|c| unsafe { b.add((c0 + c.min(width - 1)) * k) });
        // The next tile's weights stream in (from L3 or memory) while this one is used.
        let next = (c0 + width) * k..(n * k).min((c0 + width + TILE) * k);
        for p in next.step_by(16) {
            unsafe { _mm_prefetch::<_MM_HINT_T0>(b.add(p).cast()) };
        }
        let tile = Tile { out: unsafe { out.add(c0) }, n, a, k, w, width, accumulate };
        let mut r0 = 0;
        while r0 + TILE <= m {
            unsafe { tile.rows::<TILE>(r0) };
            r0 += TILE;
        }
        match m - r0 {
            1 => unsafe { tile.rows::<1>(r0) },
            2 => unsafe { tile.rows::<2>(r0) },
            3 => unsafe { tile.rows::<3>(r0) },
            _ => {}
        }
    }
}

/// One tile of output columns: where they start in `out`, and the rows of `b` they dot with.
struct Tile {
    out: *mut f32,
    n: usize,
    a: *const f32,
    k: usize,
    w: [*const f32; TILE],
    width: usize,
    accumulate: bool,
}

impl Tile {
    /// Rows `r0..r0 + R` of the tile's columns, `R <= TILE`.
    ///
    /// # Safety
    /// As [`skinny_columns`], with rows `r0..r0 + R` within `a`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn rows<const R: usize>(&self, r0: usize) {
        let x: [*const f32; R] = std::array::from_fn(|r| unsafe { self.a.add((r0 + r) * self.k) });
        let sums = unsafe { dot_tile(x, self.w, self.k) };
        for r in 0..R {
            // Row r's dot products are quad r of `sums`.
            let quad = match r {
                0 => _mm512_extractf32x4_ps::<0>(sums),
                1 => _mm512_extractf32x4_ps::<1>(sums),
                2 => _mm512_extractf32x4_ps::<2>(sums),
                _ => _mm512_extractf32x4_ps::<3>(sums),
            };
            let dst = unsafe { self.out.add((r0 + r) * self.n) };
            if self.width == TILE {
                let old = if self.accumulate { unsafe { _mm_loadu_ps(dst) } } else { _mm_setzero_ps() };
                unsafe { _mm_storeu_ps(dst, _mm_add_ps(old, quad)) };
            } else {
                let mut lanes = [0.0f32; TILE];
                unsafe { _mm_storeu_ps(lanes.as_mut_ptr(), quad) };
                for (c, s) in lanes[..self.width].iter().enumerate() {
                    let dst = unsafe { &mut *dst.add(c) };
                    *dst = if self.accumulate { *dst + s } else { *s };
                }
            }
        }
    }
}

/// The `R x TILE` dot products of the `k`-long rows at `x` with those at `w`, `R <= TILE`: the
/// product of `x[r]` and `w[c]` in lane `TILE * r + c` (so each row's products are one quad).
///
/// # Safety
/// The CPU must have AVX-512F, and every row must hold `k` readable elements.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn dot_tile<const R: usize>(x: [*const f32; R], w: [*const f32; TILE], k: usize) -> __m512 {
    const { assert!(R >= 1 && R <= TILE) };
    let mut acc = [[_mm512_setzero_ps(); TILE]; R];
    let mut step = |p: usize, mask: __mmask16| {
        // SAFETY: the lanes `mask` selects are within the rows (the caller's contract); masked
        // lanes are not read.
        let xs: [__m512; R] = std::array::from_fn(|r| unsafe { _mm512_maskz_loadu_ps(mask, x[r].add(p)) });
        let ws: [__m512; TILE] = std::array::from_fn(|c| unsafe { _mm512_maskz_loadu_ps(mask, w[c].add(p)) });
        for r in 0..R {
            for c in 0..TILE {
                acc[r][c] = _mm512_fmadd_ps(xs[r], ws[c], acc[r][c]);
            }
        }
    };
    let whole = k / 16 * 16;
    for p in (0..whole).step_by(16) {
        step(p, !0);
    }
    if whole < k {
        // The ragged end in one masked step instead of a scalar loop.
        step(whole, (1u16 << (k - whole)) - 1);
    }
    // `sums` puts the sum of its input 4i + j in lane 4j + i: input 4c + r lands in lane 4r + c.
    sums(std::array::from_fn(|i| if i % TILE < R { acc[i % TILE][i / TILE] } else { _mm512_setzero_ps() }))
}

/// The lane sums of sixteen vectors in one vector: the sum of `a[4i + j]` lands in lane `4j + i`.
/// A transpose of adds, 45 instructions where sixteen separate reductions take about 130.
#[target_feature(enable = "avx512f")]
fn sums(a: [__m512; 16]) -> __m512 {
    // Halve each vector and pair them up: quads [a.q0 + a.q2, a.q1 + a.q3, b.q0 + b.q2, b.q1 + b.q3].
    let halves: [__m512; 8] = std::array::from_fn(|j| {
        let (a, b) = (a[2 * j], a[2 * j + 1]);
        _mm512_add_ps(_mm512_shuffle_f32x4::<0x44>(a, b), _mm512_shuffle_f32x4::<0xEE>(a, b))
    });
    // Quad m of quarters[j] holds four lanes that sum to a[4j + m].
    let quarters: [__m512; 4] = std::array::from_fn(|j| {
        let (a, b) = (halves[2 * j], halves[2 * j + 1]);
        _mm512_add_ps(_mm512_shuffle_f32x4::<0x88>(a, b), _mm512_shuffle_f32x4::<0xDD>(a, b))
    });
    // Within quad m: two lanes for each of a[m], a[4 + m] (from quarters 0, 1), then a[8 + m],
    // a[12 + m] (from quarters 2, 3).
    let pairs: [__m512; 2] = std::array::from_fn(|j| {
        let (a, b) = (quarters[2 * j], quarters[2 * j + 1]);
        _mm512_add_ps(_mm512_shuffle_ps::<0x44>(a, b), _mm512_shuffle_ps::<0xEE>(a, b))
    });
    // Within quad m: a[m], a[4 + m], a[8 + m], a[12 + m].
    let (a, b) = (pairs[0], pairs[1]);
    _mm512_add_ps(_mm512_shuffle_ps::<0x88>(a, b), _mm512_shuffle_ps::<0xDD>(a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_transposes_as_documented() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX-512F");
            return;
        }
        // Vector v holds lanes v * 100 + l: lane sums differ for every vector.
        let vectors: [[f32; 16]; 16] = std::array::from_fn(|v| std::array::from_fn(|l| (v * 100 + l) as f32));
        let mut got = [0.0f32; 16];
        // SAFETY: AVX-512F is available (checked); the arrays hold sixteen elements each.
        unsafe {
            let a = vectors.map(|v| _mm512_loadu_ps(v.as_ptr()));
            _mm512_storeu_ps(got.as_mut_ptr(), sums(a));
        }
        for i in 0..4 {
            for j in 0..4 {
                assert_eq!(got[4 * j + i], vectors[4 * i + j].iter().sum::<f32>(), "vector {}", 4 * i + j);
            }
        }
    }
}
