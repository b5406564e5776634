//! The VNNI kernels over [`Packed`] weights (see `qmatmul/packed.rs` for the layout).
//!
//! Lane `r` of every vector is weight row `r` of the group. Per unit of 64 elements, eight
//! loads give the sixteen rows' unsigned values four elements at a time (`lo`, and `hi` 32
//! elements on), and each meets the matching four activation bytes broadcast to every lane:
//!
//! ```text
//!   dot_lo += vpdpbusd(lo_k, bcast(q[4k..4k + 4]))      dot_hi likewise with q[32 + 4k..]
//! ```
//!
//! Then the unit's two integer sums take their scales in float, as the portable dot does
//! (`a * (U - OFFSET * S) - m * S`, per 32 elements). The 4-bit types' `hi` nibbles are masked
//! in place (`v & 0xF0`, sixteen times the value), which saves a shift; the sixteen is folded
//! into the scale and the offset. No lane is ever summed across, and a group is one sequential
//! stream.

use std::arch::x86_64::*;
use std::ops::Range;

use truthgpt_quant::int::Q8Acts;
use truthgpt_quant::{GgmlType, QK_K};

use super::{ActRow, Out, ACT_ROWS};
use crate::qmatmul::packed::{Packed, GROUP};

/// Bytes ahead of the current period that a group prefetches: the layout is one stream per
/// group, but the hardware prefetcher stops at each 4 KiB page.
const PREFETCH: usize = 1024;

/// Output columns `cols` (whole groups of `w`) of every row of `out`.
///
/// # Safety
/// The CPU passes [`super::available`]; this task alone writes columns `cols` of `out`, which
/// holds `n` rows; `x` holds `n` rows of `w.cols()` in natural order, quantized in blocks of
/// [`truthgpt_quant::int::act_block`]`(w.ty())`.
pub(in crate::qmatmul) unsafe fn columns(out: Out, x: &Q8Acts, w: &Packed, n: usize, cols: Range<usize>) {
    debug_assert!(cols.start.is_multiple_of(GROUP) && cols.end.is_multiple_of(GROUP) && cols.end <= w.rows());
    // SAFETY: the caller's contract.
    unsafe {
        match w.ty() {
            GgmlType::Q8_0 => groups::<Q8_0>(out, x, w, n, cols),
            GgmlType::Q4_0 => groups::<Q4_0>(out, x, w, n, cols),
            GgmlType::Q4_1 => groups::<Q4_1>(out, x, w, n, cols),
            GgmlType::Q4_K => groups::<Q4K>(out, x, w, n, cols),
            GgmlType::Q6_K => groups::<Q6K>(out, x, w, n, cols),
            other => unreachable!("{other} does not pack"),
        }
    }
}

/// A packed type, as the tile loop reads it.
trait Kind {
    /// Elements per period, bytes of its header, and of one unit.
    const PERIOD: usize;
    const HEADER: usize;
    const UNIT: usize;
    /// Whether scales change every 16 elements (Q6_K), so that each half's dot is kept as two:
    /// `dots[half + 2 * (k / 4)]`.
    const BY_16: bool = false;
    /// Scales read once per period.
    type Header: Copy;
    /// # Safety
    /// `h` points at a period's header; the CPU passes [`super::available`].
    unsafe fn header(h: *const u8) -> Self::Header;
    /// The `lo` and `hi` values of load `k` (0..8) of the unit at `unit`.
    ///
    /// # Safety
    /// As [`Kind::header`], for the unit.
    unsafe fn load(unit: *const u8, k: usize) -> (__m512i, __m512i);
    /// Folds unit `u` of period `p` into `acc`: its dots against row `x`, `lo` and `hi`, and
    /// where [`Kind::BY_16`], then those of the second 16 elements of each.
    ///
    /// # Safety
    /// As [`Kind::header`]; `x` holds period `p`.
    unsafe fn fold(
        h: *const u8,
        head: &Self::Header,
        u: usize,
        dots: [__m512i; 4],
        x: ActRow,
        p: usize,
        acc: &mut Acc,
    );
    /// Closes period `p` for row `x`.
    ///
    /// # Safety
    /// As [`Kind::fold`].
    #[inline(always)]
    unsafe fn finish(_head: &Self::Header, _x: ActRow, _p: usize, _acc: &mut Acc) {}
}

/// One activation row's accumulators: the result, and Q4_K's per-super-block scaled and
/// minimum sums.
#[derive(Clone, Copy)]
struct Acc {
    total: __m512,
    scaled: __m512,
    mins: __m512,
}

/// `Σ q` over elements `32b..32b + 32` of a row: its two sums per 16.
#[inline(always)]
unsafe fn sum32(x: ActRow, b: usize) -> i32 {
    // SAFETY: the caller vouches for block `b` of the row.
    unsafe { *x.sums.add(2 * b) + *x.sums.add(2 * b + 1) }
}

/// `f16[16]` at `p` as sixteen f32 lanes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
unsafe fn f16x16(p: *const u8) -> __m512 {
    // SAFETY: the caller vouches for 32 bytes at `p`.
    _mm512_cvtph_ps(unsafe { _mm256_load_si256(p.cast()) })
}

/// A 32-element type's scales for one period: `d[2]` for blocks `2p` (lo) and `2p + 1` (hi),
/// minimums `m[2]` where it has them, `offset` in the values' units, and `hi` stored `scale_hi`
/// times its value.
struct Scales32 {
    d: [__m512; 2],
    m: Option<[__m512; 2]>,
    offset: i32,
    scale_hi: i32,
}

/// The 32-element types' fold of one unit.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
unsafe fn fold32(s: Scales32, dots: [__m512i; 4], x: ActRow, p: usize, acc: &mut Acc) {
    for (half, &dot) in dots[..2].iter().enumerate() {
        let b = 2 * p + half;
        // SAFETY: block `b` lies in the row (the caller's contract).
        let (dx, sum) = unsafe { (*x.d.add(b), sum32(x, b)) };
        let stored = if half == 0 { 1 } else { s.scale_hi };
        let centred = _mm512_sub_epi32(dot, _mm512_set1_epi32(s.offset * stored * sum));
        let scale = _mm512_mul_ps(s.d[half], _mm512_set1_ps(dx / stored as f32));
        acc.total = _mm512_fmadd_ps(_mm512_cvtepi32_ps(centred), scale, acc.total);
        if let Some(m) = s.m {
            acc.total = _mm512_fnmadd_ps(m[half], _mm512_set1_ps(dx * sum as f32), acc.total);
        }
    }
}

/// Q8_0: signed bytes made unsigned by flipping the sign bit (`OFFSET` 128).
struct Q8_0;

impl Kind for Q8_0 {
    const PERIOD: usize = 64;
    const HEADER: usize = 64;
    const UNIT: usize = 1024;
    type Header = [__m512; 2];
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
    unsafe fn header(h: *const u8) -> [__m512; 2] {
        unsafe { [f16x16(h), f16x16(h.add(32))] }
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
    unsafe fn load(unit: *const u8, k: usize) -> (__m512i, __m512i) {
        let flip = _mm512_set1_epi8(0x80u8 as i8);
        // SAFETY: both halves lie in the unit.
        unsafe {
            (
                _mm512_xor_si512(_mm512_load_si512(unit.add(64 * k).cast()), flip),
                _mm512_xor_si512(_mm512_load_si512(unit.add(512 + 64 * k).cast()), flip),
            )
        }
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
    unsafe fn fold(
        _h: *const u8,
        d: &[__m512; 2],
        _u: usize,
        dots: [__m512i; 4],
        x: ActRow,
        p: usize,
        acc: &mut Acc,
    ) {
        unsafe { fold32(Scales32 { d: *d, m: None, offset: 128, scale_hi: 1 }, dots, x, p, acc) }
    }
}

/// The 4-bit types' load: low nibbles as they are, high ones in place (sixteen times).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
unsafe fn nibbles(unit: *const u8, k: usize) -> (__m512i, __m512i) {
    // SAFETY: the load lies in the unit.
    let v = unsafe { _mm512_load_si512(unit.add(64 * k).cast()) };
    (_mm512_and_si512(v, _mm512_set1_epi8(0x0F)), _mm512_and_si512(v, _mm512_set1_epi8(0xF0u8 as i8)))
}

/// A unit stored a byte per value: load `k` of its two halves.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
unsafe fn byte_loads(unit: *const u8, k: usize) -> (__m512i, __m512i) {
    // SAFETY: both halves lie in the unit.
    unsafe { (_mm512_load_si512(unit.add(64 * k).cast()), _mm512_load_si512(unit.add(512 + 64 * k).cast())) }
}

/// The 4-bit 32-element types: values less `OFFSET`, with minimums where `MIN` (the header's
/// second half: `y = d * q + m`, a minimum of `-m`).
struct Nibbles32<const OFFSET: i32, const MIN: bool>;

type Q4_0 = Nibbles32<8, false>;
type Q4_1 = Nibbles32<0, true>;

impl<const OFFSET: i32, const MIN: bool> Kind for Nibbles32<OFFSET, MIN> {
    const PERIOD: usize = 64;
    const HEADER: usize = if MIN { 128 } else { 64 };
    const UNIT: usize = 512;
    type Header = [__m512; 4];
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
    unsafe fn header(h: *const u8) -> [__m512; 4] {
        // SAFETY: the header holds `d[2][16]`, then `m[2][16]` if `MIN`.
        unsafe {
            let d = [f16x16(h), f16x16(h.add(32))];
            // The minimums negated here, once per period.
            let neg = |v: __m512| _mm512_sub_ps(_mm512_setzero_ps(), v);
            let m = if MIN { [neg(f16x16(h.add(64))), neg(f16x16(h.add(96)))] } else { d };
            [d[0], d[1], m[0], m[1]]
        }
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
    unsafe fn load(unit: *const u8, k: usize) -> (__m512i, __m512i) {
        unsafe { nibbles(unit, k) }
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
    unsafe fn fold(
        _h: *const u8,
        s: &[__m512; 4],
        _u: usize,
        dots: [__m512i; 4],
        x: ActRow,
        p: usize,
        acc: &mut Acc,
    ) {
        let m = MIN.then_some([s[2], s[3]]);
        unsafe { fold32(Scales32 { d: [s[0], s[1]], m, offset: OFFSET, scale_hi: 16 }, dots, x, p, acc) }
    }
}

/// Bytes `[16]` at `p` as sixteen f32 lanes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
unsafe fn u8x16(p: *const u8) -> __m512 {
    // SAFETY: the caller vouches for 16 bytes at `p`.
    _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(unsafe { _mm_load_si128(p.cast()) }))
}

/// Q4_K: per sub-block `j` the scale `d * sc[j]` and minimum `dmin * mn[j]`; activations have
/// one scale per 256, so `d` and the activation scale wait for the period's end.
struct Q4K;

impl Kind for Q4K {
    const PERIOD: usize = QK_K;
    const HEADER: usize = 320;
    const UNIT: usize = 512;
    type Header = [__m512; 2];
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
    unsafe fn header(h: *const u8) -> [__m512; 2] {
        unsafe { [f16x16(h), f16x16(h.add(32))] }
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
    unsafe fn load(unit: *const u8, k: usize) -> (__m512i, __m512i) {
        unsafe { nibbles(unit, k) }
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
    unsafe fn fold(
        h: *const u8,
        _: &[__m512; 2],
        u: usize,
        dots: [__m512i; 4],
        x: ActRow,
        p: usize,
        acc: &mut Acc,
    ) {
        for (half, &dot) in dots[..2].iter().enumerate() {
            let j = 2 * u + half;
            // SAFETY: sub-block `j`'s scale and minimum lie in the header, its sums in the row.
            let (sc, mn, s) =
                unsafe { (u8x16(h.add(64 + 16 * j)), u8x16(h.add(192 + 16 * j)), sum32(x, 8 * p + j)) };
            let sc = if half == 0 { sc } else { _mm512_mul_ps(sc, _mm512_set1_ps(1.0 / 16.0)) };
            acc.scaled = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), sc, acc.scaled);
            acc.mins = _mm512_fmadd_ps(mn, _mm512_set1_ps(s as f32), acc.mins);
        }
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
    unsafe fn finish(d: &[__m512; 2], x: ActRow, p: usize, acc: &mut Acc) {
        // SAFETY: super-block `p` lies in the row.
        let dx = _mm512_set1_ps(unsafe { *x.d.add(p) });
        acc.total = _mm512_fmadd_ps(_mm512_mul_ps(d[0], dx), acc.scaled, acc.total);
        acc.total = _mm512_fnmadd_ps(_mm512_mul_ps(d[1], dx), acc.mins, acc.total);
        (acc.scaled, acc.mins) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    }
}

/// Q6_K: whole bytes as Q8_0's (`OFFSET` 32), a signed scale per 16 elements times `d`;
/// activations have one scale per 256.
struct Q6K;

impl Kind for Q6K {
    const PERIOD: usize = QK_K;
    const HEADER: usize = 320;
    const UNIT: usize = 1024;
    const BY_16: bool = true;
    type Header = __m512;
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
    unsafe fn header(h: *const u8) -> __m512 {
        unsafe { f16x16(h) }
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
    unsafe fn load(unit: *const u8, k: usize) -> (__m512i, __m512i) {
        unsafe { byte_loads(unit, k) }
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
    unsafe fn fold(
        h: *const u8,
        _: &__m512,
        u: usize,
        dots: [__m512i; 4],
        x: ActRow,
        p: usize,
        acc: &mut Acc,
    ) {
        // dots: [elements 0..16, 32..48, 16..32, 48..64] of the unit.
        for (i, group) in [0, 2, 1, 3].into_iter().enumerate() {
            let g = 4 * u + group;
            // SAFETY: group `g`'s scale lies in the header, its sum in the row.
            let (sc, s) = unsafe {
                let sc = _mm512_cvtepi8_epi32(_mm_load_si128(h.add(64 + 16 * g).cast()));
                (_mm512_cvtepi32_ps(sc), *x.sums.add(16 * p + g))
            };
            let centred = _mm512_sub_epi32(dots[i], _mm512_set1_epi32(32 * s));
            acc.scaled = _mm512_fmadd_ps(_mm512_cvtepi32_ps(centred), sc, acc.scaled);
        }
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
    unsafe fn finish(d: &__m512, x: ActRow, p: usize, acc: &mut Acc) {
        // SAFETY: super-block `p` lies in the row.
        let dx = _mm512_set1_ps(unsafe { *x.d.add(p) });
        acc.total = _mm512_fmadd_ps(_mm512_mul_ps(*d, dx), acc.scaled, acc.total);
        acc.scaled = _mm512_setzero_ps();
    }
}

/// # Safety
/// See [`columns`].
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
unsafe fn groups<T: Kind>(out: Out, x: &Q8Acts, w: &Packed, n: usize, cols: Range<usize>) {
    let act_row = |r: usize| {
        let (qs, d, sums) = x.row(r);
        ActRow { qs: qs.as_ptr(), d: d.as_ptr(), sums: sums.as_ptr() }
    };
    let periods = w.cols() / T::PERIOD;
    for g in cols.start / GROUP..cols.end / GROUP {
        let base = w.group(g).as_ptr();
        let mut r0 = 0;
        while r0 < n {
            let take = ACT_ROWS.min(n - r0);
            let xr: [ActRow; ACT_ROWS] = std::array::from_fn(|j| act_row(r0 + j.min(take - 1)));
            // SAFETY: the group holds `periods` periods, and each row as many (the contract).
            let sums = unsafe {
                match take {
                    1 => tile::<T, 1>(base, xr, periods),
                    2 => tile::<T, 2>(base, xr, periods),
                    3 => tile::<T, 3>(base, xr, periods),
                    _ => tile::<T, 4>(base, xr, periods),
                }
            };
            for (j, sums) in sums[..take].iter().enumerate() {
                // SAFETY: this task alone writes these columns (the contract).
                let row = unsafe { out.row(r0 + j, g * GROUP..(g + 1) * GROUP) };
                // SAFETY: `row` is 16 floats.
                unsafe { _mm512_storeu_ps(row.as_mut_ptr(), *sums) };
            }
            r0 += take;
        }
    }
}

/// The products of one group with the first `C` activation rows, one vector per row.
///
/// # Safety
/// `base` is a group of `periods` periods of `T`; the first `C` rows of `x` hold as many.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
unsafe fn tile<T: Kind, const C: usize>(
    base: *const u8,
    x: [ActRow; ACT_ROWS],
    periods: usize,
) -> [__m512; ACT_ROWS] {
    let zero = _mm512_setzero_ps();
    let mut acc = [Acc { total: zero, scaled: zero, mins: zero }; C];
    let period_bytes = T::HEADER + T::PERIOD / 64 * T::UNIT;
    for p in 0..periods {
        // SAFETY (every access below): period `p` lies in the group and in each row.
        let h = unsafe { base.add(p * period_bytes) };
        for line in (0..period_bytes).step_by(64) {
            _mm_prefetch::<_MM_HINT_T0>(h.wrapping_add(PREFETCH + line).cast());
        }
        let head = unsafe { T::header(h) };
        for u in 0..T::PERIOD / 64 {
            let unit = unsafe { h.add(T::HEADER + u * T::UNIT) };
            let mut dots = [[_mm512_setzero_si512(); 4]; C];
            for k in 0..8 {
                let (lo, hi) = unsafe { T::load(unit, k) };
                let second = if T::BY_16 && k >= 4 { 2 } else { 0 };
                for j in 0..C {
                    let q = unsafe { x[j].qs.add(p * T::PERIOD + 64 * u + 4 * k) };
                    let (ql, qh) = unsafe {
                        (q.cast::<i32>().read_unaligned(), q.add(32).cast::<i32>().read_unaligned())
                    };
                    let (l, h) = (second, second + 1);
                    dots[j][l] = _mm512_dpbusd_epi32(dots[j][l], lo, _mm512_set1_epi32(ql));
                    dots[j][h] = _mm512_dpbusd_epi32(dots[j][h], hi, _mm512_set1_epi32(qh));
                }
            }
            for j in 0..C {
                unsafe { T::fold(h, &head, u, dots[j], x[j], p, &mut acc[j]) };
            }
        }
        for j in 0..C {
            unsafe { T::finish(&head, x[j], p, &mut acc[j]) };
        }
    }
    std::array::from_fn(|j| acc[j.min(C - 1)].total)
}
