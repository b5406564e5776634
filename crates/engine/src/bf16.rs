//! bf16 products, the GEMMs of the mixed-precision mode ([`crate::matmul::Precision`]): f32
//! operands are rounded to bf16 (to nearest, ties to even, as PyTorch rounds) while they are
//! packed, multiplied in pairs of depths, and summed in f32. Two kernels share the packing and
//! the loops: [`Unit::Amx`], Intel's tile unit, and [`Unit::Dot`], AVX512_BF16's `vdpbf16ps` in
//! 16-lane registers (AMD Zen 4 has it, and no AMX).
//!
//! AMX has eight tile registers of up to 16 rows x 64 bytes. `tdpbf16ps c, a, b` adds to the
//! 16 x 16 f32 tile `c` the product of `a`, 16 rows x 32 depths of bf16, and `b`, 16 depth pairs x
//! 16 columns, each 32-bit lane a pair of consecutive depths of one column (the "VNNI" layout).
//! The kernel keeps a 32 x 32 block of the output in `tmm0..tmm3` while the depth streams
//! through two tiles of `a` (`tmm4`, `tmm5`) and two of `b` (`tmm6`, `tmm7`): four tile products
//! per four loads, 32 Ki multiply-adds.
//!
//! Rust's AMX intrinsics are unstable, so the five tile instructions are inline assembly. The
//! compiler never allocates tile registers, so nothing of its own lives in them.
//!
//! The dot kernel holds an 8 x 32 block in sixteen registers: per depth pair, two loads of `b`
//! and eight broadcasts of `a`'s pairs, sixteen `vdpbf16ps` (two multiply-adds per lane each).
//!
//! Packing follows [`crate::packed`] (the same BLIS loops, per-thread panels kept between calls),
//! with tiles as the unit: a strip of `a` is 16 rows, a strip of `b` 16 columns, and each holds
//! its depth as consecutive 1 KiB tiles, zero-padded in rows, columns and depth (to 32), and to an
//! even number of strips, so the kernel never masks.

use std::arch::asm;
use std::arch::x86_64::*;
use std::cell::RefCell;
use std::sync::OnceLock;

use crate::matmul::{Product, Strided};
use crate::packed::{aligned, lanes, transpose16};

/// Depth per tile: 32 bf16 in a 64-byte row.
const TK: usize = 32;
/// bf16 values per tile (16 rows of 64 bytes).
const TILE_LEN: usize = 16 * TK;
/// Depth per packed block: a 32-column pair of `b` strips (16 KiB) stays in L1 beside `a`'s.
const KC: usize = 256;
/// Rows per packed block of `a` (64 KiB of bf16, in L2).
const MC: usize = 128;
/// Columns per packed block of `b` (512 KiB of bf16, in L2).
const NC: usize = 1024;

/// Rows and columns of the output blocks the threads split a product by.
pub(crate) const TILE: (usize, usize) = (32, 32);
/// Rows of the dot kernel's register block (by 32 columns).
const DOT_ROWS: usize = 8;

/// Which unit multiplies.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unit {
    Amx,
    Dot,
}

/// Whether this CPU has the AVX-512 bf16 instructions: the packing's conversions, and the dot
/// kernel's products.
pub fn dot_available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512bf16")
}

/// Whether this CPU and OS run AMX bf16 products: the CPU reports AMX-TILE and AMX-BF16 (and the
/// AVX-512 conversions the packing uses), and Linux grants this process the tile state, which it
/// keeps off until asked. Asked once; the answer is cached.
pub fn amx_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        // CPUID leaf 7: EDX bit 22 is AMX-BF16, bit 24 AMX-TILE.
        let leaf7 = __cpuid_count(7, 0);
        let amx = leaf7.edx & (1 << 22) != 0 && leaf7.edx & (1 << 24) != 0;
        amx && dot_available() && tile_state_granted()
    })
}

#[cfg(target_os = "linux")]
fn tile_state_granted() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a plain system call with integer arguments.
    unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
}

#[cfg(not(target_os = "linux"))]
fn tile_state_granted() -> bool {
    false
}

/// The tile configuration `ldtilecfg` reads: palette 1, every tile 16 rows x 64 bytes.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    bytes_per_row: [u16; 16],
    rows: [u8; 16],
}

const CONFIG: TileConfig = TileConfig {
    palette: 1,
    start_row: 0,
    reserved: [0; 14],
    bytes_per_row: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
    rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
};

/// This thread's packed blocks of `a` and `b` and the f32 block the tiles are stored to.
struct Panels {
    a: Vec<u16>,
    b: Vec<u16>,
    out: Vec<f32>,
}

thread_local! {
    /// Borrowed only while a block runs, which runs no other product on this thread.
    static PANELS: RefCell<Panels> =
        const { RefCell::new(Panels { a: Vec::new(), b: Vec::new(), out: Vec::new() }) };
}

/// Strips of 16 lines for `len` lines, rounded up to the pair the kernel takes.
fn strips(len: usize) -> usize {
    len.div_ceil(32) * 2
}

/// The rows `r0..r0 + rows` and columns `c0..c0 + cols` of `p`, on this thread, by `unit`.
///
/// # Safety
/// The unit must be available ([`amx_available`], [`dot_available`]); as for
/// [`crate::matmul::gemm_strided`], for this block of `dst`.
pub(crate) unsafe fn block(unit: Unit, p: &Product, r0: usize, rows: usize, c0: usize, cols: usize) {
    PANELS.with_borrow_mut(|panels| {
        let a = aligned(&mut panels.a, strips(MC) * KC * 16);
        let b = aligned(&mut panels.b, strips(NC) * KC * 16);
        let out = aligned(&mut panels.out, 32 * 32);
        if unit == Unit::Amx {
            // SAFETY: the CPU has AMX (the caller's promise); the configuration is valid.
            unsafe { asm!("ldtilecfg [{}]", in(reg) &CONFIG, options(nostack, readonly)) };
        }
        // `b` as lines (its columns) by depth, the way `pack` reads both operands.
        let rhs = Strided { ptr: p.rhs.ptr, rs: p.rhs.cs, cs: p.rhs.rs };
        for jc in (0..cols).step_by(NC) {
            let nc = NC.min(cols - jc);
            for pc in (0..p.k).step_by(KC) {
                let kc = KC.min(p.k - pc);
                // SAFETY: the packed blocks fit the buffers sized above; the operand indices
                // stay within the caller's bounds.
                unsafe { pack::<false>(b, rhs, c0 + jc, nc, pc, kc) };
                let accumulate = p.accumulate || pc > 0;
                for ic in (0..rows).step_by(MC) {
                    let mc = MC.min(rows - ic);
                    // SAFETY: as above; the unit is available.
                    unsafe {
                        let dst = p.dst.add((r0 + ic) * p.dst_rs + c0 + jc);
                        let pair =
                            Pair { dst, dst_rs: p.dst_rs, out, a, b, mc, nc, kc, scale: p.scale, accumulate };
                        if unit == Unit::Amx {
                            pack::<true>(a, p.lhs, r0 + ic, mc, pc, kc);
                            tiles(&pair);
                        } else {
                            pack::<false>(a, p.lhs, r0 + ic, mc, pc, kc);
                            dot_tiles(&pair);
                        }
                    }
                }
            }
        }
        if unit == Unit::Amx {
            // SAFETY: AMX is present; releasing keeps the tile state out of context switches.
            unsafe { asm!("tilerelease", options(nostack, nomem)) };
        }
    });
}

/// One packed block pair (`mc x kc` of `a`, `kc x nc` of `b`), where its `mc x nc` products go
/// (`dst`, rows `dst_rs` apart: written, or added to when `accumulate`, times `scale`), and the
/// f32 block the kernels stage them in (`out`, 32 x 32).
#[derive(Clone, Copy)]
struct Pair {
    dst: *mut f32,
    dst_rs: usize,
    out: *mut f32,
    a: *const u16,
    b: *const u16,
    mc: usize,
    nc: usize,
    kc: usize,
    scale: f32,
    accumulate: bool,
}

/// Every 32 x 32 block of one packed block pair: the tile products over the depth, then the f32
/// sums scaled and written (or added) to `dst`, clipped to `mc x nc`.
#[target_feature(enable = "avx512f")]
unsafe fn tiles(pair: &Pair) {
    let Pair { dst, dst_rs, out, a, b, mc, nc, kc, scale, accumulate } = *pair;
    let chunks = kc.div_ceil(TK);
    let strip_len = chunks * TILE_LEN;
    for j in (0..nc).step_by(32) {
        for i in (0..mc).step_by(32) {
            // SAFETY: strips `i / 16`, `i / 16 + 1` of `a` and `j / 16`, `j / 16 + 1` of `b` are
            // packed (strip counts are even); `out` holds 32 x 32 floats.
            unsafe {
                let (a0, b0) = (a.add(i / 16 * strip_len), b.add(j / 16 * strip_len));
                product32(a0, a0.add(strip_len), b0, b0.add(strip_len), chunks, out);
                let block = dst.add(i * dst_rs + j);
                store(block, dst_rs, out, 32.min(mc - i), 32.min(nc - j), scale, accumulate);
            }
        }
    }
}

/// The 32 x 32 f32 product of two 16-row strips of `a` and two 16-column strips of `b`, each
/// `chunks` tiles deep, stored row-major to `out`.
///
/// # Safety
/// AMX must be configured by [`CONFIG`]; every strip must hold `chunks` tiles; `out` 1024 floats.
unsafe fn product32(
    a0: *const u16,
    a1: *const u16,
    b0: *const u16,
    b1: *const u16,
    chunks: usize,
    out: *mut f32,
) {
    const ROW: usize = 64;
    // SAFETY: every address is within a strip or `out`, as the caller vouched.
    unsafe {
        asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
        for q in 0..chunks {
            let at = q * TILE_LEN;
            asm!(
                "tileloadd tmm4, [{a0} + {row}*1]",
                "tileloadd tmm5, [{a1} + {row}*1]",
                "tileloadd tmm6, [{b0} + {row}*1]",
                "tileloadd tmm7, [{b1} + {row}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                a0 = in(reg) a0.add(at),
                a1 = in(reg) a1.add(at),
                b0 = in(reg) b0.add(at),
                b1 = in(reg) b1.add(at),
                row = in(reg) ROW,
                options(nostack, readonly),
            );
        }
        asm!(
            "tilestored [{o} + {row}*1], tmm0",
            "tilestored [{o} + {row}*1 + 64], tmm1",
            "tilestored [{o2} + {row}*1], tmm2",
            "tilestored [{o2} + {row}*1 + 64], tmm3",
            o = in(reg) out,
            o2 = in(reg) out.add(16 * 32),
            row = in(reg) 32usize * 4,
            options(nostack),
        );
    }
}

/// Every 8 x 32 register block of one packed block pair on the dot kernel; both operands are
/// packed depth-pair major (`pack::<false>`), so line `x` of a strip's pair `r` is lane `x % 16`
/// of that tile row.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn dot_tiles(pair: &Pair) {
    let Pair { dst, dst_rs, out, a, b, mc, nc, kc, scale, accumulate } = *pair;
    let chunks = kc.div_ceil(TK);
    let strip_len = chunks * TILE_LEN;
    let bh = |v: __m512i| unsafe { std::mem::transmute::<__m512i, __m512bh>(v) };
    for j in (0..nc).step_by(32) {
        // SAFETY (every block below): strips `j / 16` and `j / 16 + 1` of `b`, and the strip of
        // `a` holding rows `i..i + 8`, are packed `chunks` tiles deep; `out` holds 32 x 32 floats.
        let (b0, b1) = unsafe { (b.add(j / 16 * strip_len), b.add((j / 16 + 1) * strip_len)) };
        for i in (0..mc).step_by(DOT_ROWS) {
            let lines = unsafe { a.add(i / 16 * strip_len + (i % 16) * 2) };
            let mut acc = [[_mm512_setzero_ps(); 2]; DOT_ROWS];
            for row in (0..chunks * 16).map(|r| r / 16 * TILE_LEN + r % 16 * TK) {
                let (v0, v1) =
                    unsafe { (_mm512_load_si512(b0.add(row).cast()), _mm512_load_si512(b1.add(row).cast())) };
                for (x, acc) in acc.iter_mut().enumerate() {
                    let pair = unsafe { lines.add(row + 2 * x).cast::<i32>().read_unaligned() };
                    let ax = bh(_mm512_set1_epi32(pair));
                    acc[0] = _mm512_dpbf16_ps(acc[0], ax, bh(v0));
                    acc[1] = _mm512_dpbf16_ps(acc[1], ax, bh(v1));
                }
            }
            for (x, acc) in acc.iter().enumerate() {
                unsafe {
                    _mm512_storeu_ps(out.add(x * 32), acc[0]);
                    _mm512_storeu_ps(out.add(x * 32 + 16), acc[1]);
                }
            }
            let rows = DOT_ROWS.min(mc - i);
            unsafe { store(dst.add(i * dst_rs + j), dst_rs, out, rows, 32.min(nc - j), scale, accumulate) };
        }
    }
}

/// `dst[r][c] = scale * out[r][c] (+ dst[r][c])` for the block's `rows x cols`.
#[target_feature(enable = "avx512f")]
unsafe fn store(dst: *mut f32, rs: usize, out: *const f32, rows: usize, cols: usize, scale: f32, acc: bool) {
    let scale = _mm512_set1_ps(scale);
    let masks = [lanes(cols), lanes(cols.saturating_sub(16))];
    for r in 0..rows {
        for (half, &mask) in masks.iter().enumerate() {
            // SAFETY: masked lanes are the block's columns within `dst`; `out` is 32 x 32.
            unsafe {
                let at = dst.add(r * rs + 16 * half);
                let mut v = _mm512_mul_ps(_mm512_loadu_ps(out.add(r * 32 + 16 * half)), scale);
                if acc {
                    v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, at));
                }
                _mm512_mask_storeu_ps(at, mask, v);
            }
        }
    }
}

/// Packs `len` lines (rows of `a` when `ROWS`, else columns of `b`) from line `x0`, over depths
/// `p0..p0 + kc`, into strips of tiles (see the module doc). Element (line `x`, depth `p`) is at
/// `op.ptr[x * op.rs + p * op.cs]`.
///
/// A tile of `a` is sixteen lines, each sixteen 32-bit lanes of depth pairs; a tile of `b` is
/// sixteen depth pairs, each sixteen lanes of lines. Contiguous depths give a line's pairs as one
/// vector ([`line_pairs`]), contiguous lines a depth pair's lines ([`pair_lines`]); a tile that
/// wants the other orientation goes through [`transpose16`].
///
/// # Safety
/// As [`block`]'s; `dst` must hold `strips(len) * kc.div_ceil(32)` tiles.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn pack<const ROWS: bool>(dst: *mut u16, op: Strided, x0: usize, len: usize, p0: usize, kc: usize) {
    let chunks = kc.div_ceil(TK);
    for s in 0..strips(len) {
        let lines = 16.min(len.saturating_sub(s * 16));
        for q in 0..chunks {
            let depths = TK.min(kc - q * TK);
            // SAFETY: lines below `lines` and depths below `depths` are within the operand the
            // caller vouched for; the tile is within `dst`.
            unsafe {
                let first = op.ptr.offset((x0 + s * 16) as isize * op.rs + (p0 + q * TK) as isize * op.cs);
                let tile: [__m512i; 16] = if lines == 0 {
                    [_mm512_setzero_si512(); 16]
                } else if op.cs == 1 {
                    let by_line = std::array::from_fn(|x| line_pairs(first, op.rs, x, lines, depths));
                    if ROWS {
                        by_line
                    } else {
                        transpose_u32(by_line)
                    }
                } else if op.rs == 1 {
                    let by_pair = std::array::from_fn(|d| pair_lines(first, op.cs, d, lines, depths));
                    if ROWS {
                        transpose_u32(by_pair)
                    } else {
                        by_pair
                    }
                } else {
                    let by_line = std::array::from_fn(|x| gathered_pairs(first, op, x, lines, depths));
                    if ROWS {
                        by_line
                    } else {
                        transpose_u32(by_line)
                    }
                };
                let at = dst.add((s * chunks + q) * TILE_LEN);
                for (row, v) in tile.iter().enumerate() {
                    _mm512_store_si512(at.add(row * TK).cast(), *v);
                }
            }
        }
    }
}

/// Line `x`'s 32 depths from `first` (contiguous), as sixteen bf16 pairs; zeros past the block.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn line_pairs(
    first: *const f32,
    line_stride: isize,
    x: usize,
    lines: usize,
    depths: usize,
) -> __m512i {
    if x >= lines {
        return _mm512_setzero_si512();
    }
    // SAFETY: depths below `depths` of line `x` are in bounds (the caller's promise).
    unsafe {
        let line = first.offset(x as isize * line_stride);
        let lo = _mm512_maskz_loadu_ps(lanes(depths), line);
        let hi = _mm512_maskz_loadu_ps(lanes(depths.saturating_sub(16)), line.add(16));
        bf16_in_order(lo, hi)
    }
}

/// Depth pair `d`'s sixteen lines from `first` (lines contiguous, depths `depth_stride` apart),
/// each lane the pair `(2d, 2d + 1)`; zeros past the block.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn pair_lines(
    first: *const f32,
    depth_stride: isize,
    d: usize,
    lines: usize,
    depths: usize,
) -> __m512i {
    let row = |p: usize| {
        if p < depths {
            // SAFETY: lines below `lines` at depth `p` are in bounds (the caller's promise).
            unsafe { _mm512_maskz_loadu_ps(lanes(lines), first.offset(p as isize * depth_stride)) }
        } else {
            _mm512_setzero_ps()
        }
    };
    let halves = bf16_in_order(row(2 * d), row(2 * d + 1));
    // Lane i of the result takes bf16 i (depth 2d) and bf16 16 + i (depth 2d + 1).
    let interleave = _mm512_set_epi16(
        31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18,
        2, 17, 1, 16, 0,
    );
    _mm512_permutexvar_epi16(interleave, halves)
}

/// Line `x`'s depths read one at a time, for operands strided both ways.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn gathered_pairs(first: *const f32, op: Strided, x: usize, lines: usize, depths: usize) -> __m512i {
    let mut line = [0.0f32; TK];
    if x < lines {
        for (p, v) in line.iter_mut().enumerate().take(depths) {
            // SAFETY: within the block (the caller's promise).
            *v = unsafe { *first.offset(x as isize * op.rs + p as isize * op.cs) };
        }
    }
    // SAFETY: `line` holds 32 floats.
    unsafe { line_pairs(line.as_ptr(), 0, 0, 1, TK) }
}

/// Thirty-two floats as bf16 in order: `lo`'s sixteen, then `hi`'s.
#[inline]
#[target_feature(enable = "avx512f,avx512bf16")]
fn bf16_in_order(lo: __m512, hi: __m512) -> __m512i {
    // The first argument's values land in the upper half.
    // SAFETY: both are 512 bits of plain data.
    unsafe { std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo)) }
}

#[inline]
#[target_feature(enable = "avx512f")]
fn transpose_u32(v: [__m512i; 16]) -> [__m512i; 16] {
    transpose16(v.map(|x| _mm512_castsi512_ps(x))).map(|x| _mm512_castps_si512(x))
}
