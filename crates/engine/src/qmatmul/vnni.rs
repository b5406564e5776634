//! AVX-512 VNNI kernels for the quantized products: `vpdpbusd` multiplies 64 unsigned weight
//! bytes by 64 signed activation bytes and sums each four into sixteen i32 lanes, one
//! instruction per 64 elements.
//!
//! Every type is walked in super-blocks of 256 elements (a K-quant block, or eight 32-element
//! blocks), four chunks of 64 each. Per super-block a weight row gives its per-16-element group
//! scales `a16` and corrections `c16` (`a * OFFSET + m`, see [`truthgpt_quant::int`]), and an
//! activation row its group scales `dx16` and sums `S16`; per chunk the weight row gives its 64
//! unsigned bytes in element order. A pair of rows then accumulates, lane by lane,
//!
//! ```text
//!   acc += f32(vpdpbusd(u, q)) * a16[g] * dx16[g]      (per chunk; lane l is group 4c + l / 4)
//!   acc -= c16 * dx16 * S16                            (per super-block; lane g is group g)
//! ```
//!
//! and the product is the sum of `acc`'s lanes. A tile of four weight rows by up to four
//! activation rows shares each decoded chunk: decode costs once per weight row, not per pair.

pub(super) mod packed;

use std::arch::x86_64::*;
use std::ops::Range;

use truthgpt_quant::int::{Q8Acts, SUM_GROUP};
use truthgpt_quant::{GgmlType, QK_K};

use super::{Acts, Out, QWeight};

/// Weight rows per tile.
const ROWS: usize = 4;
/// Activation rows per tile, at most.
const ACT_ROWS: usize = 4;
/// Bytes ahead of the current super-block that each weight row prefetches.
const PREFETCH: usize = 768;

pub(super) fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni")
        && is_x86_feature_detected!("f16c")
}

/// Output columns `cols` of every row of `out`, if this kernel covers `w`'s type and shape;
/// returns false (writing nothing) if not, for the portable kernel to do it.
///
/// # Safety
/// The CPU must pass [`available`]; `out` holds `n * w.rows()` values of which this task alone
/// writes columns `cols`; `acts` holds `n` rows of `w.cols()`.
pub(super) unsafe fn columns(out: Out, acts: &Acts, w: &QWeight, n: usize, cols: Range<usize>) -> bool {
    let k = w.cols();
    match (acts, w.ty()) {
        (&Acts::Int { acts: x, permuted: p }, ty) if k.is_multiple_of(QK_K) => {
            // SAFETY: the caller's contract, and `k` is whole super-blocks of every type.
            unsafe {
                match ty {
                    GgmlType::Q8_0 => int_columns::<Q8_0>(out, x, p, w, n, cols),
                    GgmlType::Q4_0 => int_columns::<Q4_0>(out, x, p, w, n, cols),
                    GgmlType::Q4_K => int_columns::<Q4K>(out, x, p, w, n, cols),
                    GgmlType::Q5_K => int_columns::<Q5K>(out, x, p, w, n, cols),
                    GgmlType::Q6_K => int_columns::<Q6K>(out, x, p, w, n, cols),
                    _ => return false,
                }
            }
        }
        (&Acts::Float(x), GgmlType::F16 | GgmlType::BF16 | GgmlType::F32) if k.is_multiple_of(16) => {
            // SAFETY: as above; `k` is whole 16-lane chunks.
            unsafe { float_columns(out, x, w, n, cols) }
        }
        _ => return false,
    }
    true
}

/// A weight type's super-block, as the tile loop reads it.
trait Kind {
    /// Bytes per 256 elements.
    const SUPER_BYTES: usize;
    /// The super-block's 16 pieces of 16 elements in the order the chunks hold them: chunk `c`
    /// is natural pieces `ORDER[4c..4c + 4]`. Activations are laid out the same way
    /// ([`permute_pieces`]) so that each chunk is one plain load of its weights.
    const ORDER: [u8; 16] = NATURAL;
    /// Whether activations have one scale per 256 (the K-quants) or per 32.
    const ACT_BLOCK: usize;
    /// `(a16, c16)` of the super-block at `p`.
    ///
    /// # Safety
    /// `p` points at `SUPER_BYTES` readable bytes; the CPU passes [`available`].
    unsafe fn scales(p: *const u8) -> (__m512, __m512);
    /// The unsigned bytes of chunk `c` (0..4) of the super-block at `p`, in element order.
    ///
    /// # Safety
    /// As [`Kind::scales`].
    unsafe fn chunk(p: *const u8, c: usize) -> __m512i;
}

const NATURAL: [u8; 16] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];

/// Q4_K/Q5_K's nibbles: 64 bytes hold sub-blocks `4h..4h + 4`, the low nibbles of the first 32
/// bytes sub-block `4h`, their high nibbles `4h + 1`, the next 32 bytes `4h + 2` and `4h + 3`.
/// Chunk `2h` takes the low nibbles of all 64 bytes, chunk `2h + 1` the high ones.
const K4_ORDER: [u8; 16] = [0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15];

/// The piece order the kernel for `ty` wants its activations in, where it is not the natural
/// one.
pub(super) fn piece_order(ty: GgmlType) -> Option<&'static [u8; 16]> {
    matches!(ty, GgmlType::Q4_K | GgmlType::Q5_K).then_some(&K4_ORDER)
}

/// Copies `src` (rows of whole super-blocks) to `dst` with each super-block's 16-element pieces
/// in `order`.
pub(super) fn permute_pieces(src: &[i8], dst: &mut Vec<i8>, order: &[u8; 16]) {
    dst.resize(src.len(), 0);
    for (s, d) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(QK_K)) {
        for (p, &from) in order.iter().enumerate() {
            let from = from as usize * 16;
            d[p * 16..p * 16 + 16].copy_from_slice(&s[from..from + 16]);
        }
    }
}

/// Eight f16 values `stride` bytes apart, starting at `p`, as 16 f32 lanes, each twice
/// (lane `g` holds value `g / 2`): the per-16 scales of eight 32-element blocks.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
unsafe fn f16_scales_by_block(p: *const u8, stride: usize) -> __m512 {
    let mut h = [0u16; 8];
    for (b, h) in h.iter_mut().enumerate() {
        // SAFETY: the caller vouches for eight blocks at `p`.
        *h = unsafe { p.add(b * stride).cast::<u16>().read_unaligned() };
    }
    // SAFETY: `h` is 16 bytes.
    let d = _mm256_cvtph_ps(unsafe { _mm_loadu_si128(h.as_ptr().cast()) });
    twice(d)
}

/// `(a16, c16)` of eight 32-element blocks `stride` bytes apart, each starting with its f16
/// scale, for a type without minimums: `c = a * offset`.
///
/// # Safety
/// As [`f16_scales_by_block`].
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
unsafe fn block_scales(p: *const u8, stride: usize, offset: f32) -> (__m512, __m512) {
    let a = unsafe { f16_scales_by_block(p, stride) };
    (a, _mm512_mul_ps(a, _mm512_set1_ps(offset)))
}

/// 8 lanes to 16, each twice.
#[inline]
#[target_feature(enable = "avx512f")]
fn twice(v: __m256) -> __m512 {
    let idx = _mm512_set_epi32(7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0);
    _mm512_permutexvar_ps(idx, _mm512_castps256_ps512(v))
}

/// Q8_0: 34-byte blocks, `d` then 32 signed bytes; unsigned by flipping the sign bit
/// (`OFFSET` 128).
struct Q8_0;

impl Kind for Q8_0 {
    const SUPER_BYTES: usize = 8 * 34;
    const ACT_BLOCK: usize = 32;
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
    unsafe fn scales(p: *const u8) -> (__m512, __m512) {
        unsafe { block_scales(p, 34, 128.0) }
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
    unsafe fn chunk(p: *const u8, c: usize) -> __m512i {
        // SAFETY: blocks 2c and 2c + 1 lie in the super-block.
        let (lo, hi) = unsafe {
            (_mm256_loadu_si256(p.add(68 * c + 2).cast()), _mm256_loadu_si256(p.add(68 * c + 36).cast()))
        };
        let v = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
        _mm512_xor_si512(v, _mm512_set1_epi8(0x80u8 as i8))
    }
}

/// Q4_0: 18-byte blocks, `d` then 16 bytes of nibbles (element `j` low, `j + 16` high);
/// `OFFSET` 8.
struct Q4_0;

impl Kind for Q4_0 {
    const SUPER_BYTES: usize = 8 * 18;
    const ACT_BLOCK: usize = 32;
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
    unsafe fn scales(p: *const u8) -> (__m512, __m512) {
        unsafe { block_scales(p, 18, 8.0) }
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
    unsafe fn chunk(p: *const u8, c: usize) -> __m512i {
        // SAFETY: blocks 2c and 2c + 1 lie in the super-block.
        let (q0, q1) = unsafe {
            (_mm_loadu_si128(p.add(36 * c + 2).cast()), _mm_loadu_si128(p.add(36 * c + 20).cast()))
        };
        let v = _mm256_set_m128i(q1, q0);
        let mask = _mm256_set1_epi8(0xF);
        let (lo, hi) = (_mm256_and_si256(v, mask), _mm256_and_si256(_mm256_srli_epi16::<4>(v), mask));
        // [lo q0, lo q1, hi q0, hi q1] in 16-byte lanes, to [lo q0, hi q0, lo q1, hi q1].
        let z = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
        _mm512_shuffle_i64x2::<0b11_01_10_00>(z, z)
    }
}

/// Q4_K/Q5_K's eight 6-bit scales and minimums as `(d * sc, dmin * m)` per 16 elements. With
/// the 12 bytes as words `a`, `b`, `c`: scales 0-3 are the low 6 bits of `a`'s bytes, minimums
/// 0-3 of `b`'s; scales 4-7 are `c`'s low nibbles under `a`'s top 2 bits, minimums 4-7 `c`'s high
/// nibbles under `b`'s (see `truthgpt_quant::blocks::scale_min_k4`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
unsafe fn k4_scales(p: *const u8) -> (__m512, __m512) {
    // SAFETY: the caller vouches for the block's first 16 bytes.
    let (dd, [a, b, c]) = unsafe {
        let dd = _mm_cvtph_ps(_mm_cvtsi32_si128(p.cast::<i32>().read_unaligned()));
        (dd, p.add(4).cast::<[u32; 3]>().read_unaligned())
    };
    let (d, dmin) = (_mm_cvtss_f32(dd), _mm_cvtss_f32(_mm_shuffle_ps::<1>(dd, dd)));
    let low6 = 0x3F3F_3F3F;
    let top2 = |w: u32| ((w >> 6) & 0x0303_0303) << 4;
    let sc = (a & low6) as u64 | ((((c & 0x0F0F_0F0F) | top2(a)) as u64) << 32);
    let m = (b & low6) as u64 | (((((c >> 4) & 0x0F0F_0F0F) | top2(b)) as u64) << 32);
    let to_f32 = |v: u64| _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(v as i64)));
    (
        twice(_mm256_mul_ps(to_f32(sc), _mm256_set1_ps(d))),
        twice(_mm256_mul_ps(to_f32(m), _mm256_set1_ps(dmin))),
    )
}

/// Q4_K/Q5_K's nibbles of chunk `c` in [`K4_ORDER`].
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
unsafe fn k4_nibbles(qs: *const u8, c: usize) -> __m512i {
    // SAFETY: the caller vouches for 128 bytes at `qs`.
    let v = unsafe { _mm512_loadu_si512(qs.add(64 * (c / 2)).cast()) };
    let v = if c.is_multiple_of(2) { v } else { _mm512_srli_epi16::<4>(v) };
    _mm512_and_si512(v, _mm512_set1_epi8(0xF))
}

/// Q4_K: `d`, `dmin`, 12 bytes of scales, 128 of nibbles; `OFFSET` 0, minimums per 32.
struct Q4K;

impl Kind for Q4K {
    const SUPER_BYTES: usize = 144;
    const ORDER: [u8; 16] = K4_ORDER;
    const ACT_BLOCK: usize = QK_K;
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
    unsafe fn scales(p: *const u8) -> (__m512, __m512) {
        unsafe { k4_scales(p) }
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
    unsafe fn chunk(p: *const u8, c: usize) -> __m512i {
        unsafe { k4_nibbles(p.add(16), c) }
    }
}

/// Q5_K: Q4_K plus 32 bytes `qh` (before the nibbles) whose bit `j` of byte `l` is bit 4 of
/// element `32j + l`.
struct Q5K;

impl Kind for Q5K {
    const SUPER_BYTES: usize = 176;
    const ORDER: [u8; 16] = K4_ORDER;
    const ACT_BLOCK: usize = QK_K;
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
    unsafe fn scales(p: *const u8) -> (__m512, __m512) {
        unsafe { k4_scales(p) }
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
    unsafe fn chunk(p: *const u8, c: usize) -> __m512i {
        // SAFETY: `qh` is bytes 16..48 and the nibbles 48..176 of the block.
        let (low, qh) = unsafe { (k4_nibbles(p.add(48), c), _mm256_loadu_si256(p.add(16).cast())) };
        let qh = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(qh), qh);
        // The chunk's first 32 lanes are sub-block `j`, the next 32 `j + 2` (K4_ORDER).
        let j = 4 * (c / 2) + c % 2;
        let bits = _mm512_inserti64x4::<1>(
            _mm512_castsi256_si512(_mm256_set1_epi8((1u8 << j) as i8)),
            _mm256_set1_epi8((1u8 << (j + 2)) as i8),
        );
        let high = _mm512_test_epi8_mask(qh, bits);
        _mm512_or_si512(low, _mm512_maskz_mov_epi8(high, _mm512_set1_epi8(16)))
    }
}

/// Q6_K: 128 bytes `ql`, 64 bytes `qh`, 16 signed scales, `d`; `OFFSET` 32, groups of 16.
struct Q6K;

impl Kind for Q6K {
    const SUPER_BYTES: usize = 210;
    const ACT_BLOCK: usize = QK_K;
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
    unsafe fn scales(p: *const u8) -> (__m512, __m512) {
        // SAFETY: scales are bytes 192..208 and `d` 208..210 of the block.
        let (sc, d) = unsafe {
            let d = _mm_cvtph_ps(_mm_cvtsi32_si128(p.add(208).cast::<u16>().read_unaligned() as i32));
            (_mm_loadu_si128(p.add(192).cast()), _mm_cvtss_f32(d))
        };
        let a = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(sc)), _mm512_set1_ps(d));
        (a, _mm512_mul_ps(a, _mm512_set1_ps(32.0)))
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
    unsafe fn chunk(p: *const u8, c: usize) -> __m512i {
        // Half `c / 2` of 128 elements: `ql` bytes 64h.. (low nibbles its first 64 elements,
        // high the last), `qh` bytes 128 + 32h.. (bits 2j of byte l: element 32j + l).
        let (h, part) = (c / 2, c % 2);
        // SAFETY: both loads lie in the block.
        let (ql, qh) = unsafe {
            (_mm512_loadu_si512(p.add(64 * h).cast()), _mm256_loadu_si256(p.add(128 + 32 * h).cast()))
        };
        let mask = _mm512_set1_epi8(0xF);
        let low = if part == 0 {
            _mm512_and_si512(ql, mask)
        } else {
            _mm512_and_si512(_mm512_srli_epi16::<4>(ql), mask)
        };
        // Elements 64p + l take bits 4p of byte l for l < 32, bits 4p + 2 of byte l - 32 after.
        let qh = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(qh), qh);
        let shift = (4 * part) as i16;
        let counts = _mm512_inserti64x4::<1>(_mm512_set1_epi16(shift), _mm256_set1_epi16(shift + 2));
        let high = _mm512_and_si512(_mm512_srlv_epi16(qh, counts), _mm512_set1_epi8(3));
        _mm512_or_si512(low, _mm512_slli_epi16::<4>(high))
    }
}

/// The per-16 group of each lane of chunk `c` under `order`: lane `l` covers natural piece
/// `order[4c + l / 4]`.
const fn lane_groups(order: [u8; 16]) -> [[i32; 16]; 4] {
    let mut out = [[0; 16]; 4];
    let mut i = 0;
    while i < 64 {
        out[i / 16][i % 16] = order[i / 4] as i32;
        i += 1;
    }
    out
}

/// `v`'s per-group values spread to the lanes of chunk `c` of a `T` super-block.
#[inline]
#[target_feature(enable = "avx512f")]
fn chunk_lanes<T: Kind>(v: __m512, c: usize) -> __m512 {
    let groups = const { lane_groups(T::ORDER) };
    // SAFETY: each row of `groups` is 16 i32.
    let idx = unsafe { _mm512_loadu_si512(groups[c].as_ptr().cast()) };
    _mm512_permutexvar_ps(idx, v)
}

/// An activation row: its bytes, block scales and sums per 16.
#[derive(Clone, Copy)]
struct ActRow {
    qs: *const i8,
    d: *const f32,
    sums: *const i32,
}

/// # Safety
/// See [`columns`].
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
unsafe fn int_columns<T: Kind>(
    out: Out,
    x: &Q8Acts,
    permuted: Option<&[i8]>,
    w: &QWeight,
    n: usize,
    cols: Range<usize>,
) {
    assert!(T::ORDER == NATURAL || permuted.is_some(), "activations not in the kernel's piece order");
    let act_row = |r: usize| {
        let (qs, d, sums) = x.row(r);
        let qs = permuted.map_or(qs, |p| &p[r * x.cols..][..x.cols]);
        ActRow { qs: qs.as_ptr(), d: d.as_ptr(), sums: sums.as_ptr() }
    };
    let supers = w.cols() / QK_K;
    for c0 in cols.clone().step_by(ROWS) {
        let width = ROWS.min(cols.end - c0);
        // A ragged last tile repeats its last weight row and drops the repeated results.
        let wr: [*const u8; ROWS] = std::array::from_fn(|i| w.row(c0 + i.min(width - 1)).as_ptr());
        let mut r0 = 0;
        while r0 < n {
            let take = ACT_ROWS.min(n - r0);
            let xr: [ActRow; ACT_ROWS] = std::array::from_fn(|j| act_row(r0 + j.min(take - 1)));
            // SAFETY: the rows hold `supers` super-blocks each (the caller's contract).
            let sums = unsafe {
                match take {
                    1 => int_tile::<T, 1>(wr, xr, supers),
                    2 => int_tile::<T, 2>(wr, xr, supers),
                    3 => int_tile::<T, 3>(wr, xr, supers),
                    _ => int_tile::<T, 4>(wr, xr, supers),
                }
            };
            store(out, r0, c0, width, take, &sums);
            r0 += take;
        }
    }
}

/// Writes `sums[j][i]` (activation row `r0 + j`, weight row `c0 + i`) for the tile's real rows.
fn store(out: Out, r0: usize, c0: usize, width: usize, take: usize, sums: &[[f32; ROWS]; ACT_ROWS]) {
    for (j, sums) in sums[..take].iter().enumerate() {
        // SAFETY: the caller's task alone writes these columns.
        let row = unsafe { out.row(r0 + j, c0..c0 + width) };
        row.copy_from_slice(&sums[..width]);
    }
}

/// The `ROWS x C` products of one tile, as `[activation row][weight row]`.
///
/// # Safety
/// Each weight row holds `supers` super-blocks of `T`, and so do the first `C` rows of `x`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
unsafe fn int_tile<T: Kind, const C: usize>(
    w: [*const u8; ROWS],
    x: [ActRow; ACT_ROWS],
    supers: usize,
) -> [[f32; ROWS]; ACT_ROWS] {
    let mut acc = [[_mm512_setzero_ps(); C]; ROWS];
    for s in 0..supers {
        // SAFETY (every load below): super-block `s` lies within each row (the caller's contract).
        let ws: [*const u8; ROWS] = std::array::from_fn(|i| unsafe { w[i].add(s * T::SUPER_BYTES) });
        // Four rows stream at once, and a memory-mapped file's 4 KiB pages stop the hardware
        // prefetcher at each page's end: ask for the bytes a little ahead. (A prefetch past the
        // end of the weights is harmless: it never faults.)
        for &p in &ws {
            for line in (0..T::SUPER_BYTES).step_by(64) {
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH + line).cast());
            }
        }
        let scales: [(__m512, __m512); ROWS] = std::array::from_fn(|i| unsafe { T::scales(ws[i]) });
        let mut dx16 = [_mm512_setzero_ps(); C];
        for j in 0..C {
            let row = x[j];
            dx16[j] = if T::ACT_BLOCK == QK_K {
                _mm512_set1_ps(unsafe { *row.d.add(s) })
            } else {
                twice(unsafe { _mm256_loadu_ps(row.d.add(8 * s)) })
            };
            let s16 =
                _mm512_cvtepi32_ps(unsafe { _mm512_loadu_si512(row.sums.add(s * QK_K / SUM_GROUP).cast()) });
            let t16 = _mm512_mul_ps(dx16[j], s16);
            for i in 0..ROWS {
                acc[i][j] = _mm512_fnmadd_ps(scales[i].1, t16, acc[i][j]);
            }
        }
        for c in 0..4 {
            let u: [__m512i; ROWS] = std::array::from_fn(|i| unsafe { T::chunk(ws[i], c) });
            let a: [__m512; ROWS] = std::array::from_fn(|i| chunk_lanes::<T>(scales[i].0, c));
            for j in 0..C {
                let q = unsafe { _mm512_loadu_si512(x[j].qs.add(s * QK_K + 64 * c).cast()) };
                let dx = if T::ACT_BLOCK == QK_K { dx16[j] } else { chunk_lanes::<T>(dx16[j], c) };
                for i in 0..ROWS {
                    let dot = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), u[i], q));
                    acc[i][j] = _mm512_fmadd_ps(dot, _mm512_mul_ps(a[i], dx), acc[i][j]);
                }
            }
        }
    }
    reduce(&acc)
}

/// Each accumulator's lanes summed, as `[activation row][weight row]`.
#[inline]
#[target_feature(enable = "avx512f")]
fn reduce<const C: usize>(acc: &[[__m512; C]; ROWS]) -> [[f32; ROWS]; ACT_ROWS] {
    let mut sums = [[0f32; ROWS]; ACT_ROWS];
    for (i, acc) in acc.iter().enumerate() {
        for (j, &acc) in acc.iter().enumerate() {
            sums[j][i] = _mm512_reduce_add_ps(acc);
        }
    }
    sums
}

/// Float weights (F32, F16, BF16) against f32 activations, 16 lanes at a time.
///
/// # Safety
/// See [`columns`]; `w.cols()` is a multiple of 16.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
unsafe fn float_columns(out: Out, x: &[f32], w: &QWeight, n: usize, cols: Range<usize>) {
    let k = w.cols();
    let ty = w.ty();
    for c0 in cols.clone().step_by(ROWS) {
        let width = ROWS.min(cols.end - c0);
        let wr: [*const u8; ROWS] = std::array::from_fn(|i| w.row(c0 + i.min(width - 1)).as_ptr());
        let mut r0 = 0;
        while r0 < n {
            let take = ACT_ROWS.min(n - r0);
            let xs: [*const f32; ACT_ROWS] =
                std::array::from_fn(|j| x[(r0 + j.min(take - 1)) * k..].as_ptr());
            macro_rules! tile {
                ($kind:literal) => {
                    match take {
                        1 => float_tile::<$kind, 1>(wr, xs, k),
                        2 => float_tile::<$kind, 2>(wr, xs, k),
                        3 => float_tile::<$kind, 3>(wr, xs, k),
                        _ => float_tile::<$kind, 4>(wr, xs, k),
                    }
                };
            }
            // SAFETY: every row holds `k` elements (the caller's contract).
            let sums = unsafe {
                match ty {
                    GgmlType::F16 => tile!(0),
                    GgmlType::BF16 => tile!(1),
                    _ => tile!(2),
                }
            };
            store(out, r0, c0, width, take, &sums);
            r0 += take;
        }
    }
}

/// A tile of float products over the first `C` activation rows; `KIND` 0 is F16, 1 BF16, 2 F32.
///
/// # Safety
/// Every row holds `k` elements.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
unsafe fn float_tile<const KIND: u8, const C: usize>(
    w: [*const u8; ROWS],
    x: [*const f32; ACT_ROWS],
    k: usize,
) -> [[f32; ROWS]; ACT_ROWS] {
    let mut acc = [[_mm512_setzero_ps(); C]; ROWS];
    for p in (0..k).step_by(16) {
        // SAFETY: `p + 16 <= k`, within every row.
        let ws: [__m512; ROWS] = std::array::from_fn(|i| unsafe {
            match KIND {
                0 => _mm512_cvtph_ps(_mm256_loadu_si256(w[i].add(2 * p).cast())),
                1 => _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(_mm256_loadu_si256(
                    w[i].add(2 * p).cast(),
                )))),
                _ => _mm512_loadu_ps(w[i].add(4 * p).cast()),
            }
        });
        for j in 0..C {
            let xv = unsafe { _mm512_loadu_ps(x[j].add(p)) };
            for i in 0..ROWS {
                acc[i][j] = _mm512_fmadd_ps(ws[i], xv, acc[i][j]);
            }
        }
    }
    reduce(&acc)
}
