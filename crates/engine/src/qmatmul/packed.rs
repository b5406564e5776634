//! Weights repacked once, at load, for the vector kernels: sixteen rows interleaved four bytes
//! at a time.
//!
//! In a file each row is its own run of blocks, so a kernel that keeps one output per vector
//! lane would have to gather. Here a group of [`GROUP`] rows is stored as one sequential stream
//! of *periods* (the elements that share one set of scales: 64, two 32-element blocks, or 256
//! for Q4_K), each a header of scales followed by *units* of 64 elements:
//!
//! ```text
//!   unit byte 64k + 4r + i  =  row r's values at elements 4k + i (lo) and 32 + 4k + i (hi)
//! ```
//!
//! so one 64-byte load holds four elements of all sixteen rows, and one `vpdpbusd` against four
//! activation bytes broadcast to every lane gives sixteen rows' partial dots, lane `r` row `r`.
//! The 4-bit types keep `lo` in a byte's low nibble and `hi` in its high one (Q4_K's own byte
//! layout already pairs sub-blocks so); Q8_0 stores the two halves as two 512-byte runs.
//!
//! Per period and type (f16 values as in the file, `[16]` one per row, lane order):
//! - Q8_0, Q4_0: `d[2][16]`, 64 bytes, then one unit (1024 or 512 bytes);
//! - Q4_1: `d[2][16]`, `m[2][16]`, 128 bytes, then one unit;
//! - Q4_K: `d[16]`, `dmin[16]`, the 6-bit scales `sc[8][16]` and minimums `mn[8][16]` as bytes,
//!   320 bytes, then four units, unit `u` sub-blocks `2u` (lo) and `2u + 1` (hi);
//! - Q6_K: `d[16]`, 32 bytes unused, the signed scales `sc[16][16]`, 320 bytes, then four units
//!   of whole bytes (the 6-bit values), laid out as Q8_0's.
//!
//! Every size is a multiple of 64 and the buffer is 64-byte aligned, so no load splits a cache
//! line. The packed bytes are as many as the file's (Q4_K: 148 per 256 against 144), but for the
//! type stored a byte per value, Q6_K: 276 per 256 against 210 (plain loads for the quarter of a
//! Q4_K_M file that is Q6_K).

use bytemuck::{Pod, Zeroable};
use truthgpt_quant::blocks::{scale_min_k4, BlockQ6_K};
use truthgpt_quant::int::IntBlock;
use truthgpt_quant::{GgmlType, QK_K};

use super::QWeight;

/// Rows interleaved in a group: one per lane of a 512-bit vector of i32.
pub const GROUP: usize = 16;

/// One cache line, the buffer's unit, so that the buffer is 64-byte aligned.
#[repr(C, align(64))]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Line([u8; 64]);

/// A weight's first `rows` rows (a multiple of [`GROUP`]) in the interleaved layout.
pub struct Packed {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    lines: Vec<Line>,
}

impl std::fmt::Debug for Packed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Packed({} {} x {})", self.ty, self.rows, self.cols)
    }
}

/// The layout of one packed type.
#[derive(Clone, Copy)]
pub struct Layout {
    /// Elements per period.
    pub period: usize,
    /// Bytes of a period's header, for the group.
    pub header: usize,
    /// Bytes of one unit of 64 elements, for the group.
    pub unit: usize,
}

impl Layout {
    /// The layout of `ty`, if it packs.
    pub fn of(ty: GgmlType) -> Option<Layout> {
        let (period, header, unit) = match ty {
            GgmlType::Q8_0 => (64, 64, 1024),
            GgmlType::Q4_0 => (64, 64, 512),
            GgmlType::Q4_1 => (64, 128, 512),
            GgmlType::Q4_K => (QK_K, 320, 512),
            GgmlType::Q6_K => (QK_K, 320, 1024),
            _ => return None,
        };
        Some(Layout { period, header, unit })
    }

    /// Bytes of one period, for the group.
    pub fn period_bytes(&self) -> usize {
        self.header + self.period / 64 * self.unit
    }
}

impl Packed {
    /// `w`'s rows but the last `rows % GROUP`, packed; `None` if `w`'s type does not pack or it
    /// has fewer than [`GROUP`] rows or a partial period per row.
    pub fn new(w: &QWeight) -> Option<Packed> {
        let layout = Layout::of(w.ty())?;
        let rows = w.rows() / GROUP * GROUP;
        if rows == 0 || !w.cols().is_multiple_of(layout.period) {
            return None;
        }
        let periods = w.cols() / layout.period;
        let group_bytes = periods * layout.period_bytes();
        let mut lines = vec![Line([0; 64]); rows / GROUP * group_bytes / 64];
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut lines);
        let block_bytes = w.ty().block_bytes();
        let per_period = layout.period / w.ty().block_elements();
        for (g, group) in bytes.chunks_exact_mut(group_bytes).enumerate() {
            let src: [&[u8]; GROUP] = std::array::from_fn(|r| w.row(g * GROUP + r));
            for (p, dst) in group.chunks_exact_mut(layout.period_bytes()).enumerate() {
                let blocks = src.map(|row| &row[p * per_period * block_bytes..][..per_period * block_bytes]);
                let (header, units) = dst.split_at_mut(layout.header);
                pack_period(w.ty(), &blocks, header, units);
            }
        }
        Some(Packed { ty: w.ty(), rows, cols: w.cols(), lines })
    }

    pub fn ty(&self) -> GgmlType {
        self.ty
    }

    /// Packed rows: a multiple of [`GROUP`].
    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn layout(&self) -> Layout {
        Layout::of(self.ty).expect("only packable types are packed")
    }

    /// Group `g`'s bytes: its periods in order.
    pub fn group(&self, g: usize) -> &[u8] {
        let bytes: &[u8] = bytemuck::cast_slice(&self.lines);
        let per = bytes.len() / (self.rows / GROUP);
        &bytes[g * per..][..per]
    }

    /// Bytes held.
    pub fn bytes_len(&self) -> usize {
        self.lines.len() * 64
    }
}

/// Writes one period of sixteen rows (`blocks[r]`: row `r`'s blocks of the period).
fn pack_period(ty: GgmlType, blocks: &[&[u8]; GROUP], header: &mut [u8], units: &mut [u8]) {
    match ty {
        GgmlType::Q8_0 => {
            // Block: d (2 bytes), 32 signed bytes.
            scales_by_row(header, blocks, &[0, 34]);
            for half in 0..2 {
                interleave(&mut units[512 * half..][..512], |r, e| blocks[r][34 * half + 2 + e]);
            }
        }
        GgmlType::Q4_0 | GgmlType::Q4_1 => {
            // Block: d, (m,) 16 bytes of nibbles, element `e` low for e < 16, else `e - 16` high.
            let qs = if ty == GgmlType::Q4_0 { 2 } else { 4 };
            let size = qs + 16;
            let offsets: &[usize] = if ty == GgmlType::Q4_0 { &[0, size] } else { &[0, size, 2, size + 2] };
            scales_by_row(header, blocks, offsets);
            let nibble = |r: usize, b: usize, e: usize| {
                let byte = blocks[r][size * b + qs + e % 16];
                if e < 16 {
                    byte & 0xF
                } else {
                    byte >> 4
                }
            };
            interleave(units, |r, e| nibble(r, 0, e) | (nibble(r, 1, e) << 4));
        }
        GgmlType::Q4_K => {
            // Block: d, dmin, 12 bytes of scales, 128 of nibbles already paired as units want.
            scales_by_row(header, blocks, &[0, 2]);
            for r in 0..GROUP {
                let scales: &[u8; 12] = blocks[r][4..16].try_into().expect("12 bytes");
                for j in 0..8 {
                    let (sc, mn) = scale_min_k4(scales, j);
                    header[64 + 16 * j + r] = sc;
                    header[192 + 16 * j + r] = mn;
                }
            }
            for (u, unit) in units.chunks_exact_mut(512).enumerate() {
                interleave(unit, |r, e| blocks[r][16 + 32 * u + e]);
            }
        }
        GgmlType::Q6_K => {
            // Block: 128 bytes ql, 64 qh, 16 signed scales, d.
            scales_by_row(header, blocks, &[208]);
            for (r, row) in blocks.iter().enumerate() {
                let block: &BlockQ6_K = bytemuck::from_bytes(row);
                for (g, &sc) in block.scales.iter().enumerate() {
                    header[64 + 16 * g + r] = sc as u8;
                }
            }
            byte_units::<BlockQ6_K>(units, blocks);
        }
        other => unreachable!("{other} does not pack"),
    }
}

/// The units of a type stored a byte per value: each row's unsigned values ([`IntBlock`]), a
/// unit's two halves as two runs of 512 bytes.
fn byte_units<B: IntBlock>(units: &mut [u8], blocks: &[&[u8]; GROUP]) {
    let values: [Vec<u8>; GROUP] = std::array::from_fn(|r| {
        let mut u = Vec::new();
        for block in bytemuck::cast_slice::<u8, B>(blocks[r]) {
            let (mut v, mut a, mut m) = ([0u8; QK_K], [0f32; 16], [0f32; 16]);
            block.unpack(&mut v[..B::ELEMENTS], &mut a, &mut m);
            u.extend_from_slice(&v[..B::ELEMENTS]);
        }
        u
    });
    for (u, unit) in units.chunks_exact_mut(1024).enumerate() {
        for half in 0..2 {
            interleave(&mut unit[512 * half..][..512], |r, e| values[r][64 * u + 32 * half + e]);
        }
    }
}

/// Each f16 at byte `offsets[i]` of the rows' blocks, as `header[i][r]`.
fn scales_by_row(header: &mut [u8], blocks: &[&[u8]; GROUP], offsets: &[usize]) {
    for (i, &at) in offsets.iter().enumerate() {
        for (r, row) in blocks.iter().enumerate() {
            header[32 * i + 2 * r..][..2].copy_from_slice(&row[at..at + 2]);
        }
    }
}

/// Fills 32 elements' worth of interleaved bytes: `dst[64k + 4r + i] = byte(r, 4k + i)`.
fn interleave(dst: &mut [u8], byte: impl Fn(usize, usize) -> u8) {
    for k in 0..8 {
        for r in 0..GROUP {
            for i in 0..4 {
                dst[64 * k + 4 * r + i] = byte(r, 4 * k + i);
            }
        }
    }
}
