//! The engine's own GEMM for AVX-512 CPUs: packed panels and a 12 x 32 register tile, in the
//! BLIS loop order (Goto and van de Geijn, "Anatomy of High-Performance Matrix Multiplication").
//!
//! Why not the `gemm` crate here: built for the workspace's x86-64-v3 target it runs its AVX2
//! tile (16 x 6 in eight lanes), half the lanes and registers of this one. Both kernels take
//! their share of a product from `matmul::split_over_threads`, one block per thread.
//!
//! Loops, outermost first (the letters of the module's legend: rows M, columns N, depth K):
//! - `NC` columns of `b` at a time, and `KC` of the depth: that block of `b` is packed into
//!   `NR`-wide strips, each `KC x NR` and contiguous, zero-padded past `n`;
//! - `MC` rows of `a`: packed into `MR`-tall strips, each `KC x MR`, zero-padded past `m`;
//! - for each strip of `b` (it stays in L1), every strip of `a` (from L2) goes through the tile:
//!   24 accumulators, two loads of `b` and twelve broadcasts of `a` per step of the depth.
//!
//! Packing buffers are per thread and kept between calls, so only a thread's first product
//! allocates.

use std::arch::x86_64::*;
use std::cell::RefCell;

use crate::matmul::Product;

/// Rows of the register tile.
const MR: usize = 12;
/// Columns of the register tile: two 16-lane registers.
const NR: usize = 32;
/// Depth per packed block: a `KC x NR` strip of `b` (32 KiB) fits L1 beside the streamed `a`.
const KC: usize = 256;
/// Rows per packed block of `a` (`MC x KC`, 144 KiB, stays in L2).
const MC: usize = 12 * MR;
/// Columns per packed block of `b` (`KC x NC`, 1 MiB, stays in L2).
const NC: usize = 32 * NR;

/// Whether this CPU has AVX-512F (std caches the answer after the first call).
pub fn available() -> bool {
    is_x86_feature_detected!("avx512f")
}

/// Rows and columns of the register tile, the unit the threads split products by.
pub(crate) const TILE: (usize, usize) = (MR, NR);

thread_local! {
    /// This thread's packed `a` and `b` blocks, made at their full sizes (`MC x KC` and
    /// `KC x NC`) on the thread's first product. Borrowed only while a block runs, which calls
    /// nothing that could run another product on this thread.
    static PANELS: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// `v` with room for `len` values from a 64-byte boundary; returns that boundary.
pub(crate) fn aligned<T: Copy + Default>(v: &mut Vec<T>, len: usize) -> *mut T {
    let pad = 64 / size_of::<T>();
    if v.len() < len + pad {
        v.resize(len + pad, T::default());
    }
    let offset = v.as_ptr().align_offset(64);
    // SAFETY: `offset` < `pad`, and the vector holds `len + pad` values.
    unsafe { v.as_mut_ptr().add(offset) }
}

/// The rows `r0..r0 + rows` and columns `c0..c0 + cols` of `p`, on this thread.
///
/// # Safety
/// The CPU must have AVX-512F; as for [`crate::matmul::gemm_strided`], for this block of `dst`.
pub(crate) unsafe fn block(p: &Product, r0: usize, rows: usize, c0: usize, cols: usize) {
    PANELS.with_borrow_mut(|(pa, pb)| {
        let a = aligned(pa, MC * KC);
        let b = aligned(pb, KC * NC);
        for jc in (0..cols).step_by(NC) {
            let nc = NC.min(cols - jc);
            for pc in (0..p.k).step_by(KC) {
                let kc = KC.min(p.k - pc);
                // SAFETY: the packed blocks fit the buffers sized above; the operand
                // indices stay within the caller's bounds.
                unsafe { pack::<NR>(b, p.rhs.ptr, p.rhs.cs, p.rhs.rs, c0 + jc, nc, pc, kc) };
                let accumulate = p.accumulate || pc > 0;
                for ic in (0..rows).step_by(MC) {
                    let mc = MC.min(rows - ic);
                    unsafe {
                        pack::<MR>(a, p.lhs.ptr, p.lhs.rs, p.lhs.cs, r0 + ic, mc, pc, kc);
                        tiles(p, a, b, r0 + ic, mc, c0 + jc, nc, kc, accumulate);
                    }
                }
            }
        }
    });
}

/// Every register tile of one packed block pair.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
unsafe fn tiles(
    p: &Product,
    a: *const f32,
    b: *const f32,
    r0: usize,
    mc: usize,
    c0: usize,
    nc: usize,
    kc: usize,
    accumulate: bool,
) {
    for j in (0..nc).step_by(NR) {
        for i in (0..mc).step_by(MR) {
            // SAFETY: strip `j / NR` of `b` and `i / MR` of `a` are packed; the tile's
            // rows and columns are clipped to the block, which is within `dst`.
            unsafe {
                let c = p.dst.add((r0 + i) * p.dst_rs + c0 + j);
                let tile = Tile { c, rs: p.dst_rs, rows: MR.min(mc - i), cols: NR.min(nc - j) };
                tile.run(a.add(i * kc), b.add(j * kc), kc, p.scale, accumulate);
            }
        }
    }
}

/// Packs `len` lines (rows of `a`, or columns of `b`) from line `x0`, over depth `p0..p0 + kc`,
/// into `W`-wide strips: strip `s` holds `kc` groups of `W` values, line `x0 + s * W + x` at
/// depth `p` going to `s * W * kc + p * W + x`. Lines past `len` are zeros, so the tile needs no
/// mask inside its loop. Element (line `x`, depth `p`) of the operand is at
/// `ptr[x * x_stride + p * p_stride]`.
///
/// Both layouts the linear layer gives are vector moves: lines contiguous (`x_stride == 1`) is a
/// masked copy per depth; depths contiguous (`p_stride == 1`, which transposes) goes through
/// [`transpose16`], sixteen depths of sixteen lines at a time.
///
/// # Safety
/// The CPU must have AVX-512F; `dst` must hold `len.div_ceil(W) * W * kc` floats, 64-byte
/// aligned strips apart; every element of the block must be in bounds.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
unsafe fn pack<const W: usize>(
    dst: *mut f32,
    ptr: *const f32,
    x_stride: isize,
    p_stride: isize,
    x0: usize,
    len: usize,
    p0: usize,
    kc: usize,
) {
    for s in 0..len.div_ceil(W) {
        let lines = W.min(len - s * W);
        // SAFETY (every block below): the strip is within `dst`; lines below `lines` and depths
        // below `kc` are within the operand the caller vouched for, and nothing else is read.
        unsafe {
            let strip = dst.add(s * W * kc);
            let first = ptr.offset((x0 + s * W) as isize * x_stride + p0 as isize * p_stride);
            if x_stride == 1 {
                for p in 0..kc {
                    let (src, out) = (first.offset(p as isize * p_stride), strip.add(p * W));
                    for g in (0..W).step_by(16) {
                        let v = _mm512_maskz_loadu_ps(lanes(lines.saturating_sub(g)), src.add(g));
                        _mm512_mask_storeu_ps(out.add(g), lanes(W - g), v);
                    }
                }
            } else if p_stride == 1 {
                for p in (0..kc).step_by(16) {
                    let depths = lanes(kc - p);
                    for g in (0..W).step_by(16) {
                        let rows: [__m512; 16] = std::array::from_fn(|i| {
                            let x = g + i;
                            let mask = if x < lines { depths } else { 0 };
                            _mm512_maskz_loadu_ps(mask, first.offset(x as isize * x_stride).add(p))
                        });
                        let cols = transpose16(rows);
                        for (d, col) in cols.iter().enumerate().take(16.min(kc - p)) {
                            _mm512_mask_storeu_ps(strip.add((p + d) * W + g), lanes(W - g), *col);
                        }
                    }
                }
            } else {
                for p in 0..kc {
                    for x in 0..W {
                        let at = first.offset(x as isize * x_stride + p as isize * p_stride);
                        *strip.add(p * W + x) = if x < lines { *at } else { 0.0 };
                    }
                }
            }
        }
    }
}

/// The transpose of a 16 x 16 block held as sixteen rows: four rounds of in-lane and cross-lane
/// shuffles. After two, `u[4g + c]` holds in its 128-bit lane `l` column `4l + c` of rows
/// `4g..4g + 4`; the last two move those lanes into place.
#[inline]
#[target_feature(enable = "avx512f")]
pub(crate) fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
    let t: [__m512; 16] = std::array::from_fn(|i| {
        let (a, b) = (r[i & !1], r[i | 1]);
        if i % 2 == 0 {
            _mm512_unpacklo_ps(a, b)
        } else {
            _mm512_unpackhi_ps(a, b)
        }
    });
    let u: [__m512; 16] = std::array::from_fn(|i| {
        let (g, c) = (i / 4, i % 4);
        let (a, b) = (t[4 * g + c / 2], t[4 * g + 2 + c / 2]);
        if c % 2 == 0 {
            _mm512_shuffle_ps::<0x44>(a, b)
        } else {
            _mm512_shuffle_ps::<0xEE>(a, b)
        }
    });
    let mut out = [_mm512_setzero_ps(); 16];
    for c in 0..4 {
        let (x0, x1) =
            (_mm512_shuffle_f32x4::<0x44>(u[c], u[4 + c]), _mm512_shuffle_f32x4::<0xEE>(u[c], u[4 + c]));
        let (y0, y1) = (
            _mm512_shuffle_f32x4::<0x44>(u[8 + c], u[12 + c]),
            _mm512_shuffle_f32x4::<0xEE>(u[8 + c], u[12 + c]),
        );
        out[c] = _mm512_shuffle_f32x4::<0x88>(x0, y0);
        out[4 + c] = _mm512_shuffle_f32x4::<0xDD>(x0, y0);
        out[8 + c] = _mm512_shuffle_f32x4::<0x88>(x1, y1);
        out[12 + c] = _mm512_shuffle_f32x4::<0xDD>(x1, y1);
    }
    out
}

/// One `MR x NR` block of the output, clipped to `rows x cols` at the edges.
struct Tile {
    c: *mut f32,
    rs: usize,
    rows: usize,
    cols: usize,
}

impl Tile {
    /// `c = scale * a @ b (+ c)` over one packed strip of each.
    ///
    /// # Safety
    /// The CPU must have AVX-512F; `a` and `b` must hold `kc * MR` and `kc * NR` floats, and the
    /// tile's `rows x cols` must be within the output.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn run(&self, a: *const f32, b: *const f32, kc: usize, scale: f32, accumulate: bool) {
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        for p in 0..kc {
            // SAFETY: `p < kc`, within both strips.
            let (b0, b1) = unsafe { (_mm512_loadu_ps(b.add(p * NR)), _mm512_loadu_ps(b.add(p * NR + 16))) };
            for (i, row) in acc.iter_mut().enumerate() {
                let ai = _mm512_set1_ps(unsafe { *a.add(p * MR + i) });
                row[0] = _mm512_fmadd_ps(ai, b0, row[0]);
                row[1] = _mm512_fmadd_ps(ai, b1, row[1]);
            }
        }
        let scale = _mm512_set1_ps(scale);
        let masks = [lanes(self.cols), lanes(self.cols.saturating_sub(16))];
        for (i, row) in acc.iter().enumerate().take(self.rows) {
            for (half, (&sum, &mask)) in row.iter().zip(&masks).enumerate() {
                // SAFETY: masked lanes are the tile's columns within the output.
                unsafe {
                    let at = self.c.add(i * self.rs + 16 * half);
                    let mut v = _mm512_mul_ps(sum, scale);
                    if accumulate {
                        v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, at));
                    }
                    _mm512_mask_storeu_ps(at, mask, v);
                }
            }
        }
    }
}

/// A mask of the first `n` of 16 lanes.
pub(crate) fn lanes(n: usize) -> __mmask16 {
    if n >= 16 {
        u16::MAX
    } else {
        (1u16 << n) - 1
    }
}
