//! Matrix products through the `gemm` crate, and the linear layer built on them.

use std::ops::Range;

use gemm::Parallelism;
use rayon::prelude::*;

use crate::lanes::F8;
use crate::par::DisjointPtr;

/// A row-major operand, optionally used transposed.
#[derive(Clone, Copy)]
pub enum Op<'a> {
    /// `data` holds the (rows, cols) matrix itself.
    N(&'a [f32]),
    /// `data` holds the (cols, rows) matrix; the product uses its transpose.
    T(&'a [f32]),
}

impl Op<'_> {
    /// (row stride, column stride) of the logical (rows, cols) matrix.
    fn strides(&self, rows: usize, cols: usize) -> (isize, isize) {
        match self {
            Op::N(_) => (cols as isize, 1),
            Op::T(_) => (1, rows as isize),
        }
    }

    fn data(&self) -> &[f32] {
        match self {
            Op::N(d) | Op::T(d) => d,
        }
    }
}

/// Whether this thread is inside a call to the `gemm` crate, which takes packing scratch inside
/// each call: the allocation test tells those allocations apart from the engine's own (of which a
/// training step after the first has none, our packed kernel's included). Compiled only with the
/// `gemm-scope` feature, which that test enables, so the products users run keep no count.
#[cfg(feature = "gemm-scope")]
pub fn inside_gemm_crate() -> bool {
    GEMM_CRATE_DEPTH.get() > 0
}

#[cfg(feature = "gemm-scope")]
thread_local! {
    static GEMM_CRATE_DEPTH: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Products below this many multiply-adds run on the calling thread.
const PARALLEL_THRESHOLD: usize = 1 << 16;

/// A read-only strided matrix operand (strides in elements).
#[derive(Clone, Copy)]
pub struct Strided {
    pub ptr: *const f32,
    pub rs: isize,
    pub cs: isize,
}

// SAFETY: operands are only read, and their memory outlives the call that shares them.
unsafe impl Send for Strided {}
unsafe impl Sync for Strided {}

/// Which kernel runs the products that are neither few-row nor matrix-vector: [`Gemm::best`],
/// unless a benchmark or test asks for another of [`Gemm::available`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Gemm {
    /// The `gemm` crate (its AVX2 tile on the workspace's x86-64-v3 target).
    Crate,
    /// [`crate::packed`]: packed panels and a 12 x 32 AVX-512 tile, one block per thread.
    #[cfg(target_arch = "x86_64")]
    Packed,
    /// [`crate::bf16`]: operands rounded to bf16, multiplied in Intel AMX's tiles, summed in f32.
    #[cfg(target_arch = "x86_64")]
    Amx,
    /// [`crate::bf16`] on AVX512_BF16's `vdpbf16ps` (CPUs without AMX, such as AMD Zen 4).
    #[cfg(target_arch = "x86_64")]
    Bf16Dot,
}

/// What a product's operands are rounded to before they are multiplied; the sums, and every
/// result, are f32 either way.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum Precision {
    #[default]
    F32,
    /// Mixed precision: bf16 operands (8 bits of mantissa) where the CPU multiplies bf16, f32
    /// products elsewhere.
    Bf16,
}

impl Gemm {
    /// The fastest f32 kernel this CPU runs.
    pub fn best() -> Gemm {
        #[cfg(target_arch = "x86_64")]
        if crate::packed::available() {
            return Gemm::Packed;
        }
        Gemm::Crate
    }

    /// The kernel for products at `precision`: for bf16 [`Gemm::Amx`], else [`Gemm::Bf16Dot`],
    /// where the CPU has them; otherwise [`Gemm::best`].
    pub fn for_precision(precision: Precision) -> Gemm {
        #[cfg(target_arch = "x86_64")]
        if precision == Precision::Bf16 {
            if crate::bf16::amx_available() {
                return Gemm::Amx;
            }
            if crate::bf16::dot_available() {
                return Gemm::Bf16Dot;
            }
        }
        Gemm::best()
    }

    /// Every kernel this CPU runs: the `gemm` crate first, then the f32 one, then the bf16 ones.
    pub fn available() -> Vec<Gemm> {
        #[allow(unused_mut)]
        let mut kernels = portable_then(Gemm::Crate, Gemm::best());
        #[cfg(target_arch = "x86_64")]
        {
            if crate::bf16::dot_available() {
                kernels.push(Gemm::Bf16Dot);
            }
            if crate::bf16::amx_available() {
                kernels.push(Gemm::Amx);
            }
        }
        kernels
    }

    /// The precision this kernel multiplies at.
    pub fn precision(self) -> Precision {
        match self {
            #[cfg(target_arch = "x86_64")]
            Gemm::Amx | Gemm::Bf16Dot => Precision::Bf16,
            _ => Precision::F32,
        }
    }
}

/// `portable`, then `best` where it differs: every variant of a kernel this CPU runs, for the
/// tests and benchmarks that compare them.
fn portable_then<T: Copy + PartialEq>(portable: T, best: T) -> Vec<T> {
    if best == portable {
        vec![portable]
    } else {
        vec![portable, best]
    }
}

/// `dst (m, n; row stride dst_rs, unit column stride) [+]= scale * lhs (m, k) @ rhs (k, n)`.
///
/// # Safety
/// Every element the strides reach must be in bounds, and `dst` must neither overlap the operands
/// nor be accessed by another thread during the call.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_strided(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    lhs: Strided,
    rhs: Strided,
    scale: f32,
    parallel: bool,
) {
    unsafe { gemm_strided_with(Gemm::best(), m, n, k, dst, dst_rs, accumulate, lhs, rhs, scale, parallel) }
}

/// [`gemm_strided`] with a given kernel, one of [`Gemm::available`].
///
/// # Safety
/// As for [`gemm_strided`].
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_strided_with(
    kernel: Gemm,
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    lhs: Strided,
    rhs: Strided,
    scale: f32,
    parallel: bool,
) {
    let threads = if parallel && m * n * k >= PARALLEL_THRESHOLD { rayon::current_num_threads() } else { 1 };
    let product = Product { dst, dst_rs, accumulate, lhs, rhs, scale, k };
    // Matrix-vector products stay with `gemm`, which runs them without packing.
    #[cfg(target_arch = "x86_64")]
    if m > 1 && n > 1 {
        use crate::bf16::{self, Unit};
        let (available, tile) = match kernel {
            Gemm::Crate => (false, (0, 0)),
            Gemm::Packed => (crate::packed::available(), crate::packed::TILE),
            Gemm::Amx => (bf16::amx_available(), bf16::TILE),
            Gemm::Bf16Dot => (bf16::dot_available(), bf16::TILE),
        };
        if kernel != Gemm::Crate {
            assert!(available, "gemm: this CPU cannot run {kernel:?}");
            // SAFETY: the caller vouches for the product's bounds; the CPU has the kernel's
            // instructions (asserted); blocks are disjoint.
            let run = |r0, rows, c0, cols| unsafe {
                match kernel {
                    Gemm::Packed => crate::packed::block(&product, r0, rows, c0, cols),
                    Gemm::Amx => bf16::block(Unit::Amx, &product, r0, rows, c0, cols),
                    _ => bf16::block(Unit::Dot, &product, r0, rows, c0, cols),
                }
            };
            split_over_threads(m, n, threads, tile, run);
            return;
        }
    }
    // SAFETY: as above.
    split_over_threads(m, n, threads, (16, 16), |r0, rows, c0, cols| unsafe {
        product.crate_block(r0, rows, c0, cols)
    });
}

/// One product `dst [+]= scale * lhs (m, k) @ rhs (k, n)`, as every kernel takes it; a block of
/// it runs on one thread.
#[derive(Clone, Copy)]
pub(crate) struct Product {
    pub dst: *mut f32,
    pub dst_rs: usize,
    pub accumulate: bool,
    pub lhs: Strided,
    pub rhs: Strided,
    pub scale: f32,
    pub k: usize,
}

// SAFETY: the operands are only read; each thread writes only its own block of `dst`.
unsafe impl Send for Product {}
unsafe impl Sync for Product {}

impl Product {
    /// Rows `r0..r0 + rows`, columns `c0..c0 + cols` through the `gemm` crate, on this thread.
    ///
    /// # Safety
    /// As for [`gemm_strided`], for this block of `dst`.
    unsafe fn crate_block(&self, r0: usize, rows: usize, c0: usize, cols: usize) {
        // The count the allocation test reads: this call's packing scratch is the crate's.
        #[cfg(feature = "gemm-scope")]
        GEMM_CRATE_DEPTH.set(GEMM_CRATE_DEPTH.get() + 1);
        // SAFETY: the block is within the product the caller vouched for.
        unsafe {
            gemm::gemm(
                rows,
                cols,
                self.k,
                self.dst.add(r0 * self.dst_rs + c0),
                1,
                self.dst_rs as isize,
                self.accumulate,
                self.lhs.ptr.offset(r0 as isize * self.lhs.rs),
                self.lhs.cs,
                self.lhs.rs,
                self.rhs.ptr.offset(c0 as isize * self.rhs.cs),
                self.rhs.cs,
                self.rhs.rs,
                1.0,
                self.scale,
                false,
                false,
                false,
                Parallelism::None,
            )
        };
        #[cfg(feature = "gemm-scope")]
        GEMM_CRATE_DEPTH.set(GEMM_CRATE_DEPTH.get() - 1);
    }
}

/// Runs `block(r0, rows, c0, cols)` over one block of the (m, n) output per thread, decided up
/// front: rows of whole `(tile_rows, tile_cols)` tiles, or columns when there are too few rows
/// to give each thread two tiles. Finer tasks cost wake-ups and leave one thread waiting for
/// the other's last task, which at a training step's shapes cost a third of two cores' time.
fn split_over_threads(
    m: usize,
    n: usize,
    threads: usize,
    (tile_rows, tile_cols): (usize, usize),
    block: impl Fn(usize, usize, usize, usize) + Sync,
) {
    let by_rows = m >= 2 * tile_rows * threads || m >= n;
    let (len, unit) = if by_rows { (m, tile_rows) } else { (n, tile_cols) };
    let per = len.div_ceil(threads).div_ceil(unit).max(1) * unit;
    let run = |b: usize| {
        let span = b * per..len.min((b + 1) * per);
        if by_rows {
            block(span.start, span.len(), 0, n);
        } else {
            block(0, m, span.start, span.len());
        }
    };
    match len.div_ceil(per) {
        0 | 1 => run(0),
        blocks => (0..blocks).into_par_iter().for_each(run),
    }
}

/// `out (M, N) = a (M, K) @ b (K, N)`, or `+=` when `accumulate`.
pub fn matmul(out: &mut [f32], a: Op, b: Op, m: usize, k: usize, n: usize, accumulate: bool) {
    matmul_with(Gemm::best(), out, a, b, m, k, n, accumulate);
}

/// [`matmul`] with a given kernel for its general products, one of [`Gemm::available`].
#[allow(clippy::too_many_arguments)]
pub fn matmul_with(
    kernel: Gemm,
    out: &mut [f32],
    a: Op,
    b: Op,
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
) {
    assert!(out.len() >= m * n, "matmul: out has {} elements, needs {m}x{n}", out.len());
    assert!(a.data().len() >= m * k, "matmul: lhs has {} elements, needs {m}x{k}", a.data().len());
    assert!(b.data().len() >= k * n, "matmul: rhs has {} elements, needs {k}x{n}", b.data().len());
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            out[..m * n].fill(0.0);
        }
        return;
    }
    if let (Op::N(a), Op::T(b), true) = (a, b, (2..=SKINNY_ROWS).contains(&m)) {
        skinny_nt(out, a, b, m, k, n, accumulate);
        return;
    }
    let (a_rs, a_cs) = a.strides(m, k);
    let (b_rs, b_cs) = b.strides(k, n);
    let lhs = Strided { ptr: a.data().as_ptr(), rs: a_rs, cs: a_cs };
    let rhs = Strided { ptr: b.data().as_ptr(), rs: b_rs, cs: b_cs };
    // SAFETY: the asserts above bound every index the strides can reach; `out` does not alias the
    // inputs because it is borrowed mutably.
    unsafe { gemm_strided_with(kernel, m, n, k, out.as_mut_ptr(), n, accumulate, lhs, rhs, 1.0, true) };
}

/// Rows up to which `a (M, K) @ b (N, K)^T` (the linear layer's forward) takes [`skinny_nt`]
/// (from 2: one row is a matrix-vector product, which `gemm` does without packing, and faster).
pub const SKINNY_ROWS: usize = 32;

/// Weight rows and input rows per register tile of [`skinny_nt`]'s 8-lane kernel: 8 eight-lane
/// accumulators. `TILE_OC` is also the column span the threads split by, which the AVX-512
/// kernel reads as its own tile.
const TILE_OC: usize = 4;
const TILE_M: usize = 2;
const _: () = assert!(TILE_M * TILE_OC <= 8);
#[cfg(target_arch = "x86_64")]
const _: () = assert!(crate::avx512::TILE == TILE_OC);

/// A register tile of [`skinny_nt`]: it runs [`Tile::best`]; [`skinny_nt_with`] takes any of
/// [`Tile::available`] (benchmarks and tests compare them).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Tile {
    /// [`dot_tile`]: `TILE_M x TILE_OC` in eight lanes.
    Lanes8,
    /// [`crate::avx512::skinny_columns`]: 4 x 4 in sixteen lanes.
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Tile {
    /// The fastest tile this CPU runs.
    pub fn best() -> Tile {
        #[cfg(target_arch = "x86_64")]
        if crate::avx512::available() {
            return Tile::Avx512;
        }
        Tile::Lanes8
    }

    /// Every tile this CPU runs, the portable one first.
    pub fn available() -> Vec<Tile> {
        portable_then(Tile::Lanes8, Tile::best())
    }
}

/// `out (M, N) [+]= a (M, K) @ b (N, K)^T` for few rows M, as in a decode step's linear layers.
///
/// Why it exists: for M > 1 the `gemm` crate copies all of `b` into its packed panel layout on
/// every call (it skips packing only for matrix-vector products), and with a handful of rows that
/// copy costs as much as the product itself. Here each row of `b` is read once, in place: a tile
/// of `TILE_OC` rows of `b` stays in L1 while every group of rows of `a` is dotted with it, a
/// register tile of dot products at a time (4 x 4 with AVX-512, else 2 x 4). Tiles of `b` are
/// split over threads when the product is large enough.
pub fn skinny_nt(out: &mut [f32], a: &[f32], b: &[f32], m: usize, k: usize, n: usize, accumulate: bool) {
    skinny_nt_with(Tile::best(), out, a, b, m, k, n, accumulate);
}

/// [`skinny_nt`] with a given tile, one of [`Tile::available`].
#[allow(clippy::too_many_arguments)]
pub fn skinny_nt_with(
    tile: Tile,
    out: &mut [f32],
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
) {
    assert!(out.len() >= m * n && a.len() >= m * k && b.len() >= n * k, "skinny_nt: operands too short");
    #[cfg(target_arch = "x86_64")]
    assert!(tile != Tile::Avx512 || crate::avx512::available(), "skinny_nt: this CPU has no AVX-512F");
    if m == 0 || n == 0 {
        return;
    }
    let out = DisjointPtr::new(&mut out[..m * n]);
    let columns = |tiles: Range<usize>| match tile {
        // SAFETY: the operands hold m*k, n*k and m*n elements and the CPU has AVX-512F (both
        // asserted above), and this task alone writes the columns of `tiles`.
        #[cfg(target_arch = "x86_64")]
        Tile::Avx512 => unsafe {
            crate::avx512::skinny_columns(out.ptr(0), a.as_ptr(), b.as_ptr(), m, k, n, tiles, accumulate)
        },
        Tile::Lanes8 => skinny_columns_lanes8(&out, a, b, m, k, n, tiles, accumulate),
    };
    let tiles = n.div_ceil(TILE_OC);
    let threads = rayon::current_num_threads();
    if m * n * k >= PARALLEL_THRESHOLD && threads > 1 {
        // A few tasks per thread, each a contiguous span of weight rows (streamed in order) of at
        // least PARALLEL_THRESHOLD / 4 multiply-adds.
        let per_task = tiles.div_ceil(4 * threads).max((PARALLEL_THRESHOLD / 4).div_ceil(m * k * TILE_OC));
        let tasks = tiles.div_ceil(per_task);
        (0..tasks).into_par_iter().for_each(|t| columns(t * per_task..tiles.min((t + 1) * per_task)));
    } else {
        columns(0..tiles);
    }
}

/// [`skinny_nt`] over the output columns of `tiles` with the 8-lane tile.
#[allow(clippy::too_many_arguments)]
fn skinny_columns_lanes8(
    out: &DisjointPtr,
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    tiles: Range<usize>,
    accumulate: bool,
) {
    for o0 in tiles.map(|t| t * TILE_OC) {
        let width = TILE_OC.min(n - o0);
        // A ragged last tile repeats its last row of `b` and drops the repeated results.
        let w: [&[f32]; TILE_OC] = std::array::from_fn(|o| &b[(o0 + o.min(width - 1)) * k..][..k]);
        // The next tile's weights stream in (from L3 or memory) while this one is used.
        F8::prefetch(&b[(o0 + width) * k..((o0 + width + TILE_OC) * k).min(n * k)]);
        let write = |r0: usize, sums: &[[f32; TILE_OC]]| {
            for (r, sums) in sums.iter().enumerate() {
                // SAFETY: this tile of columns belongs to this task alone.
                let row = unsafe { out.slice((r0 + r) * n + o0, width) };
                for (o, s) in row.iter_mut().zip(sums) {
                    *o = if accumulate { *o + s } else { *s };
                }
            }
        };
        let mut r0 = 0;
        while r0 + TILE_M <= m {
            let x: [&[f32]; TILE_M] = std::array::from_fn(|r| &a[(r0 + r) * k..][..k]);
            write(r0, &dot_tile(x, w));
            r0 += TILE_M;
        }
        for r in r0..m {
            write(r, &dot_tile([&a[r * k..][..k]], w));
        }
    }
}

/// The `R x TILE_OC` dot products of rows `x` with rows `w`, all of one length.
#[inline(always)]
fn dot_tile<const R: usize>(x: [&[f32]; R], w: [&[f32]; TILE_OC]) -> [[f32; TILE_OC]; R] {
    let k = x[0].len();
    let k8 = k / 8 * 8;
    assert!(x.iter().chain(&w).all(|row| row.len() == k), "dot_tile: rows of unequal length");
    let (xp, wp) = (x.map(<[f32]>::as_ptr), w.map(<[f32]>::as_ptr));
    let mut acc = [[F8::zero(); TILE_OC]; R];
    for p in (0..k8).step_by(8) {
        // SAFETY: p + 8 <= k, the length of every row (asserted).
        let xs: [F8; R] = std::array::from_fn(|r| unsafe { F8::load(xp[r].add(p)) });
        let ws: [F8; TILE_OC] = std::array::from_fn(|o| unsafe { F8::load(wp[o].add(p)) });
        for r in 0..R {
            for o in 0..TILE_OC {
                acc[r][o] = acc[r][o].mul_add(xs[r], ws[o]);
            }
        }
    }
    // All the tile's lane sums at once (a tile has at most 8 accumulators).
    let mut lanes = [0.0; 8];
    // SAFETY: `lanes` holds eight elements.
    unsafe {
        F8::sums(std::array::from_fn(|i| {
            if i < R * TILE_OC {
                acc[i / TILE_OC][i % TILE_OC]
            } else {
                F8::zero()
            }
        }))
        .store(lanes.as_mut_ptr())
    };
    let mut sums = [[0.0; TILE_OC]; R];
    for r in 0..R {
        for o in 0..TILE_OC {
            sums[r][o] = lanes[r * TILE_OC + o] + (k8..k).map(|p| x[r][p] * w[o][p]).sum::<f32>();
        }
    }
    sums
}

/// `out (N, OC) = inp (N, C) @ weight (OC, C)^T + bias (OC)`, torch's `nn.Linear` layout, its
/// product at `precision`.
#[allow(clippy::too_many_arguments)]
pub fn linear_forward(
    precision: Precision,
    out: &mut [f32],
    inp: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    n: usize,
    c: usize,
    oc: usize,
) {
    let accumulate = match bias {
        Some(bias) => {
            for row in out[..n * oc].chunks_exact_mut(oc) {
                row.copy_from_slice(bias);
            }
            true
        }
        None => false,
    };
    matmul_with(Gemm::for_precision(precision), out, Op::N(inp), Op::T(weight), n, c, oc, accumulate);
}

/// Backward of [`linear_forward`]: `dinp = dout @ weight` (written, or added when `accumulate_dinp`),
/// `dweight += dout^T @ inp`, `dbias += sum_rows(dout)` (each skipped when `None`: a frozen
/// layer); both products at `precision`.
#[allow(clippy::too_many_arguments)]
pub fn linear_backward(
    precision: Precision,
    dinp: Option<&mut [f32]>,
    dweight: Option<&mut [f32]>,
    dbias: Option<&mut [f32]>,
    dout: &[f32],
    inp: &[f32],
    weight: &[f32],
    n: usize,
    c: usize,
    oc: usize,
    accumulate_dinp: bool,
) {
    let kernel = Gemm::for_precision(precision);
    if let Some(dinp) = dinp {
        matmul_with(kernel, dinp, Op::N(dout), Op::N(weight), n, oc, c, accumulate_dinp);
    }
    if let Some(dweight) = dweight {
        matmul_with(kernel, dweight, Op::T(dout), Op::N(inp), oc, n, c, true);
    }
    if let Some(dbias) = dbias {
        crate::par::add_column_sums(&mut dbias[..oc], &dout[..n * oc]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        out
    }

    fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
        let mut t = vec![0.0; x.len()];
        for r in 0..rows {
            for c in 0..cols {
                t[c * rows + r] = x[r * cols + c];
            }
        }
        t
    }

    /// Every kernel, every transpose combination, written and accumulated, on shapes that cross
    /// each blocking boundary of the packed kernel (its depth, row and column blocks, partial
    /// tiles), split over threads by rows and by columns, and the matrix-vector cases. Inputs
    /// are small integers, so every sum is exact and the comparison is equality.
    #[test]
    fn every_kernel_and_transpose_combination_matches_naive() {
        let shapes =
            [(37, 53, 29), (300, 600, 1100), (20, 300, 1100), (145, 257, 33), (1, 70, 90), (90, 70, 1)];
        for kernel in Gemm::available() {
            for (m, k, n) in shapes {
                let a: Vec<f32> = (0..m * k).map(|i| ((i * 7) % 13) as f32 - 6.0).collect();
                let b: Vec<f32> = (0..k * n).map(|i| ((i * 5) % 11) as f32 - 5.0).collect();
                let want = naive(&a, &b, m, k, n);
                let (at, bt) = (transpose(&a, m, k), transpose(&b, k, n));
                for (lhs, rhs) in [
                    (Op::N(&a), Op::N(&b)),
                    (Op::T(&at), Op::N(&b)),
                    (Op::N(&a), Op::T(&bt)),
                    (Op::T(&at), Op::T(&bt)),
                ] {
                    let mut out = vec![f32::NAN; m * n];
                    matmul_with(kernel, &mut out, lhs, rhs, m, k, n, false);
                    assert!(out == want, "{kernel:?} m {m} k {k} n {n}");
                    matmul_with(kernel, &mut out, lhs, rhs, m, k, n, true);
                    assert!(
                        out.iter().zip(&want).all(|(o, w)| *o == 2.0 * w),
                        "{kernel:?} += m {m} k {k} n {n}"
                    );
                }
            }
        }
    }

    /// The bf16 kernel against the f64 product of its operands rounded to bf16 (to nearest,
    /// ties to even, as it rounds): only the order of the f32 sums may differ. Normal inputs in
    /// every layout the packing reads, one strided both ways among them, at shapes that cross
    /// its depth, row and column blocks and leave partial tiles.
    #[test]
    fn bf16_products_equal_the_product_of_rounded_operands() {
        let kernels: Vec<Gemm> =
            Gemm::available().into_iter().filter(|k| k.precision() == Precision::Bf16).collect();
        if kernels.is_empty() {
            eprintln!("not checked: this CPU has no bf16 kernel");
        }
        for kernel in kernels {
            bf16_kernel_matches_rounded_operands(kernel);
        }
    }

    fn bf16_kernel_matches_rounded_operands(kernel: Gemm) {
        let round = |x: f32| half::bf16::from_f32(x).to_f32();
        let mut rng = crate::rng::Rng::new(3);
        for (m, k, n) in [(33, 17, 47), (300, 600, 1100), (145, 257, 33), (64, 1024, 256)] {
            let (mut a, mut b) = (vec![0.0; m * k], vec![0.0; k * n]);
            rng.fill_normal(&mut a, 1.0);
            rng.fill_normal(&mut b, 1.0);
            let (ar, br): (Vec<f32>, Vec<f32>) =
                (a.iter().map(|&x| round(x)).collect(), b.iter().map(|&x| round(x)).collect());
            let (at, bt) = (transpose(&a, m, k), transpose(&b, k, n));
            // `a` strided both ways: each row `2k` apart, each element 2 apart.
            let spread: Vec<f32> = a.iter().flat_map(|&x| [x, f32::NAN]).collect();
            let operands = [
                (
                    Strided { ptr: a.as_ptr(), rs: k as isize, cs: 1 },
                    Strided { ptr: b.as_ptr(), rs: n as isize, cs: 1 },
                ),
                (
                    Strided { ptr: at.as_ptr(), rs: 1, cs: m as isize },
                    Strided { ptr: bt.as_ptr(), rs: 1, cs: k as isize },
                ),
                (
                    Strided { ptr: spread.as_ptr(), rs: 2 * k as isize, cs: 2 },
                    Strided { ptr: b.as_ptr(), rs: n as isize, cs: 1 },
                ),
            ];
            for (layout, (lhs, rhs)) in operands.into_iter().enumerate() {
                let mut out = vec![f32::NAN; m * n];
                // SAFETY: every operand holds its (m, k) or (k, n) elements at these strides.
                unsafe {
                    gemm_strided_with(kernel, m, n, k, out.as_mut_ptr(), n, false, lhs, rhs, 1.0, true)
                };
                for i in 0..m {
                    for j in 0..n {
                        let terms = (0..k).map(|p| ar[i * k + p] as f64 * br[p * n + j] as f64);
                        let (want, size) = terms.fold((0.0, 0.0), |(s, z), t| (s + t, z + t.abs()));
                        let diff = (out[i * n + j] as f64 - want).abs();
                        assert!(
                            diff <= 1e-5 * size,
                            "layout {layout}, m {m} k {k} n {n} at ({i}, {j}): {diff}"
                        );
                    }
                }
            }
        }
        // The rounding is real: 1 + 2^-10 is 1 in bf16.
        let (a, b) = (vec![1.0 + 1.0 / 1024.0; 4 * 4], vec![1.0; 4 * 4]);
        let mut out = vec![0.0; 16];
        matmul_with(kernel, &mut out, Op::N(&a), Op::N(&b), 4, 4, 4, false);
        assert!(out.iter().all(|&x| x == 4.0), "{kernel:?}: {out:?}");
    }

    /// A scale and an output row stride wider than the product (attention's score tiles), on
    /// one thread and split: the columns past `n` are never touched.
    #[test]
    fn scaled_products_into_strided_rows() {
        let (m, k, n, stride) = (50, 40, 70, 75);
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 3) % 7) as f32 - 3.0).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 5) % 9) as f32 - 4.0).collect();
        let want = naive(&a, &b, m, k, n);
        let lhs = Strided { ptr: a.as_ptr(), rs: k as isize, cs: 1 };
        let rhs = Strided { ptr: b.as_ptr(), rs: n as isize, cs: 1 };
        for kernel in Gemm::available() {
            for parallel in [false, true] {
                let mut out = vec![f32::NAN; m * stride];
                // SAFETY: `out` holds `m` rows of `stride`; the operands are dense.
                unsafe {
                    gemm_strided_with(
                        kernel,
                        m,
                        n,
                        k,
                        out.as_mut_ptr(),
                        stride,
                        false,
                        lhs,
                        rhs,
                        0.5,
                        parallel,
                    )
                };
                for (i, row) in out.chunks_exact(stride).enumerate() {
                    assert!(
                        row[..n].iter().zip(&want[i * n..]).all(|(o, w)| *o == 0.5 * w),
                        "{kernel:?} row {i}"
                    );
                    assert!(row[n..].iter().all(|x| x.is_nan()), "{kernel:?} wrote past the row");
                }
            }
        }
    }

    /// The few-rows kernel against the naive product, with each register tile this CPU has: every
    /// row count up to past the limit (full and partial row tiles), widths that are not a
    /// multiple of the lane count, output widths that leave a ragged weight tile, written and
    /// accumulated, serial and split over threads.
    #[test]
    fn skinny_nt_matches_naive() {
        let tiles = Tile::available();
        if tiles.len() == 1 {
            eprintln!("only the 8-lane tile is checked: this CPU has no AVX-512F");
        }
        for (k, n) in [(1, 1), (7, 5), (13, 3), (16, 4), (131, 17), (128, 256), (40, 2051)] {
            for m in 1..=SKINNY_ROWS + 1 {
                let a: Vec<f32> = (0..m * k).map(|i| ((i * 7) % 13) as f32 * 0.25 - 1.5).collect();
                let bt: Vec<f32> = (0..n * k).map(|i| ((i * 5) % 11) as f32 * 0.25 - 1.25).collect();
                let want = naive(&a, &transpose(&bt, n, k), m, k, n);
                let close = |got: &[f32], scale: f32| {
                    got.iter().zip(&want).all(|(g, w)| (g - scale * w).abs() <= 1e-5 * (1.0 + w.abs()))
                };
                for &tile in &tiles {
                    let mut out = vec![f32::NAN; m * n];
                    skinny_nt_with(tile, &mut out, &a, &bt, m, k, n, false);
                    assert!(close(&out, 1.0), "{tile:?}: m {m} k {k} n {n}");
                    skinny_nt_with(tile, &mut out, &a, &bt, m, k, n, true);
                    assert!(close(&out, 2.0), "{tile:?} accumulating: m {m} k {k} n {n}");
                }
                // Through `matmul` (which takes this kernel for 2..=SKINNY_ROWS rows).
                let mut out = vec![f32::NAN; m * n];
                matmul(&mut out, Op::N(&a), Op::T(&bt), m, k, n, false);
                assert!(close(&out, 1.0), "matmul: m {m} k {k} n {n}");
            }
        }
    }
}
