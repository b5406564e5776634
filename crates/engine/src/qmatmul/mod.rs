//! Products with weights in ggml's quantized blocks, never dequantized whole: `y (N, OUT) =
//! x (N, IN) @ W (OUT, IN)^T` where each row of `W` is a run of blocks straight from a GGUF file.
//!
//! The activations are quantized to 8 bits per block ([`Q8Acts`], as llama.cpp does), then each
//! (weight row, activation row) pair is an integer dot product with a few float operations per
//! group of 16 or 32 ([`truthgpt_quant::int`] has the algebra). The float types (F32, F16, BF16)
//! are converted on the fly and multiplied in f32.
//!
//! Kernels ([`QKernel`]), chosen at run time:
//! - [`QKernel::Portable`]: plain Rust over [`truthgpt_quant::int::dot_row`], every type;
//! - [`QKernel::Avx512Vnni`]: `vpdpbusd` on 64 bytes at once, for Q8_0, Q4_0, Q4_K, Q5_K,
//!   Q6_K and F16/BF16, the types of llama.cpp's usual files (Q4_K_M mixes Q4_K and Q6_K); the
//!   others fall back to the portable kernel row by row.
//!
//! Every kernel is checked against the portable one, and the portable one against the reference
//! path [`reference_forward`] (dequantize a row to f32, multiply in f32), in tests/qmatmul.rs.
//! Output rows are split over threads; the activations' buffer is per thread and reused, so a
//! decoding step allocates nothing once warm.

mod packed;
#[cfg(target_arch = "x86_64")]
mod vnni;

use std::cell::RefCell;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use rayon::prelude::*;
use truthgpt_quant::blocks::*;
use truthgpt_quant::int::{act_block, dot_row, IntBlock, Q8Acts};
use truthgpt_quant::{dequantize_row, GgmlType, QuantError};

use crate::par::DisjointPtr;
pub use packed::{Packed, GROUP};

/// The bytes a [`QWeight`] views: a memory-mapped file, or an owned buffer.
pub type Storage = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// A (rows, cols) matrix of one ggml type, each row `cols / block` whole blocks, viewed in place
/// in its storage.
#[derive(Clone)]
pub struct QWeight {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    storage: Storage,
    offset: usize,
    /// Row `r` of the matrix is stored row `order[r]` (llama.cpp's files permute q and k rows
    /// for their RoPE pairing); `None` is the identity.
    order: Option<Arc<[u32]>>,
    /// The rows but the last `rows % GROUP` in the vector kernel's layout, if packed.
    packed: Option<Arc<Packed>>,
}

impl fmt::Debug for QWeight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "QWeight({} {} x {} at byte {}", self.ty, self.rows, self.cols, self.offset)?;
        match &self.packed {
            Some(p) => write!(f, ", {} rows packed)", p.rows()),
            None => write!(f, ")"),
        }
    }
}

impl QWeight {
    /// The matrix whose bytes start at `offset` in `storage`. Fails unless each row is whole
    /// blocks and the bytes lie inside the storage.
    pub fn new(
        ty: GgmlType,
        rows: usize,
        cols: usize,
        storage: Storage,
        offset: usize,
    ) -> Result<Self, QuantError> {
        ty.bytes_for(cols as u64)?;
        let len = ty.bytes_for((rows as u64).saturating_mul(cols as u64))?;
        let have = (*storage).as_ref().len();
        if offset.checked_add(len).is_none_or(|end| end > have) {
            return Err(QuantError::Size {
                ty,
                elements: rows * cols,
                want: len,
                got: have.saturating_sub(offset),
            });
        }
        Ok(QWeight { ty, rows, cols, storage, offset, order: None, packed: None })
    }

    /// The same storage with row `r` read from stored row `order[r]`; `order` must be a
    /// permutation of the rows.
    pub fn with_row_order(mut self, order: Vec<u32>) -> Result<Self, String> {
        let mut seen = vec![false; self.rows];
        for &r in &order {
            match seen.get_mut(r as usize) {
                Some(s) if !*s => *s = true,
                _ => return Err(format!("row order is not a permutation of {} rows", self.rows)),
            }
        }
        if order.len() != self.rows {
            return Err(format!("row order has {} rows, the matrix {}", order.len(), self.rows));
        }
        self.order = Some(order.into());
        self.packed = None;
        Ok(self)
    }

    /// The same weight with a copy of its rows in the layout of [`QKernel::best`]'s packed
    /// kernel ([`Packed`]), where that kernel has one for the type and shape; else unchanged.
    /// Made once at load: the packed kernel streams one sequential run per sixteen rows and
    /// spends a fifth of the instructions. The original bytes stay the source of [`row`]
    /// (embedding lookups, the reference path), so a memory-mapped file's pages may be dropped
    /// after packing (`madvise`) and come back from the file only if read.
    ///
    /// [`row`]: QWeight::row
    pub fn pack(mut self) -> Self {
        if kernel_packs(QKernel::best()) && self.packed.is_none() {
            self.packed = Packed::new(&self).map(Arc::new);
        }
        self
    }

    /// The packed rows, if any.
    pub fn packed(&self) -> Option<&Packed> {
        self.packed.as_deref()
    }

    /// Rows the packed kernel covers: `0..packed rows`, empty if not packed.
    fn packed_rows(&self) -> usize {
        self.packed.as_ref().map_or(0, |p| p.rows())
    }

    /// Quantizes `w (rows, cols)` to `ty` by round-to-nearest into an owned buffer.
    pub fn quantize(ty: GgmlType, w: &[f32], rows: usize, cols: usize) -> Result<Self, QuantError> {
        let mut bytes = Vec::new();
        for row in w[..rows * cols].chunks_exact(cols) {
            truthgpt_quant::quantize_row(ty, row, &mut bytes)?;
        }
        QWeight::new(ty, rows, cols, Arc::new(bytes), 0)
    }

    pub fn ty(&self) -> GgmlType {
        self.ty
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Where the matrix's bytes lie in its storage.
    pub fn storage_range(&self) -> Range<usize> {
        self.offset..self.offset + self.rows * self.row_bytes()
    }

    /// The matrix's bytes, in stored row order.
    pub fn bytes(&self) -> &[u8] {
        let len = self.rows * self.row_bytes();
        &(*self.storage).as_ref()[self.offset..][..len]
    }

    fn row_bytes(&self) -> usize {
        self.cols / self.ty.block_elements() * self.ty.block_bytes()
    }

    /// Row `r`'s bytes.
    pub fn row(&self, r: usize) -> &[u8] {
        let stored = self.order.as_ref().map_or(r, |o| o[r] as usize);
        let b = self.row_bytes();
        &self.bytes()[stored * b..][..b]
    }

    /// Row `r` as f32 (the reference path's decode).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        dequantize_row(self.ty, self.row(r), &mut out[..self.cols]).expect("sizes checked in QWeight::new");
    }
}

/// A quantized product's kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QKernel {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx512Vnni,
}

impl QKernel {
    /// The fastest kernel this CPU runs.
    pub fn best() -> QKernel {
        *QKernel::available().last().expect("the portable kernel always runs")
    }

    /// Every kernel this CPU runs, slowest first.
    pub fn available() -> Vec<QKernel> {
        let mut kernels = vec![QKernel::Portable];
        #[cfg(target_arch = "x86_64")]
        if vnni::available() {
            kernels.push(QKernel::Avx512Vnni);
        }
        kernels
    }
}

thread_local! {
    /// The calling thread's quantized activations, and a copy in a vector kernel's piece order,
    /// reused across products.
    static ACTS: RefCell<(Q8Acts, Vec<i8>)> = RefCell::default();
}

/// Whether `kernel` has packed kernels ([`QWeight::pack`]).
fn kernel_packs(kernel: QKernel) -> bool {
    #[cfg(target_arch = "x86_64")]
    if kernel == QKernel::Avx512Vnni {
        return true;
    }
    let _ = kernel;
    false
}

/// Multiply-adds per task below which a product is not split over threads.
const TASK_WORK: usize = 1 << 18;

/// A matrix stacked by rows from parts that may differ in type: our fused q/k/v or gate/up
/// projections over a file's separate tensors, whose types llama.cpp's mixes choose one by one
/// (Q4_K_M keeps some `attn_v` in Q6_K beside a Q4_K `attn_q`).
#[derive(Debug, Clone)]
pub struct QMatrix {
    parts: Vec<QWeight>,
    rows: usize,
}

impl QMatrix {
    /// The rows of `parts`, in order; they must share their column count.
    pub fn new(parts: Vec<QWeight>) -> Result<Self, String> {
        let Some(first) = parts.first() else { return Err("a matrix needs at least one part".into()) };
        if let Some(p) = parts.iter().find(|p| p.cols != first.cols) {
            return Err(format!("parts of {} and {} columns cannot be stacked", first.cols, p.cols));
        }
        let rows = parts.iter().map(|p| p.rows).sum();
        Ok(QMatrix { parts, rows })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.parts[0].cols
    }

    pub fn parts(&self) -> &[QWeight] {
        &self.parts
    }

    /// Bytes of all parts.
    pub fn bytes_len(&self) -> usize {
        self.parts.iter().map(|p| p.bytes().len()).sum()
    }

    /// Every part [`QWeight::pack`]ed.
    pub fn pack(self) -> Self {
        QMatrix { parts: self.parts.into_iter().map(QWeight::pack).collect(), rows: self.rows }
    }

    /// Row `r` as f32 (embedding lookups, the reference path).
    pub fn dequantize_row(&self, mut r: usize, out: &mut [f32]) {
        for p in &self.parts {
            if r < p.rows {
                return p.dequantize_row(r, out);
            }
            r -= p.rows;
        }
        panic!("row {r} past the matrix's {} rows", self.rows);
    }
}

impl From<QWeight> for QMatrix {
    fn from(w: QWeight) -> Self {
        QMatrix { rows: w.rows, parts: vec![w] }
    }
}

/// `out (N, OUT) = x (N, IN) @ w^T + bias`, with the fastest kernel.
pub fn qlinear_forward(out: &mut [f32], x: &[f32], w: &QMatrix, bias: Option<&[f32]>, n: usize) {
    qlinear_forward_with(QKernel::best(), out, x, w, bias, n);
}

/// [`qlinear_forward`] with a given kernel, one of [`QKernel::available`].
pub fn qlinear_forward_with(
    kernel: QKernel,
    out: &mut [f32],
    x: &[f32],
    w: &QMatrix,
    bias: Option<&[f32]>,
    n: usize,
) {
    let (k, oc) = (w.cols(), w.rows);
    assert!(x.len() >= n * k && out.len() >= n * oc, "qlinear_forward: operands too short");
    assert!(bias.is_none_or(|b| b.len() == oc), "qlinear_forward: bias of the wrong length");
    assert!(QKernel::available().contains(&kernel), "qlinear_forward: this CPU cannot run {kernel:?}");
    let out = &mut out[..n * oc];
    let (ptr, x) = (DisjointPtr::new(out), &x[..n * k]);
    ACTS.with_borrow_mut(|(acts, permuted)| {
        // Quantized once per block length, permuted once per piece order: parts share them.
        let mut quantized = None;
        let mut order = None;
        let mut offset = 0;
        for part in &w.parts {
            let out = Out { ptr: &ptr, ld: oc, offset };
            offset += part.rows;
            let Some(block) = act_block(part.ty) else {
                product(kernel, out, &Acts::Float(x), part, n);
                continue;
            };
            if quantized != Some(block) {
                acts.quantize(x, n, k, block);
                (quantized, order) = (Some(block), None);
            }
            let wanted = kernel_piece_order(kernel, part);
            if wanted.is_some() && order != wanted {
                vnni_permute(&acts.qs, permuted, wanted);
                order = wanted;
            }
            let permuted = wanted.map(|_| &permuted[..]);
            product(kernel, out, &Acts::Int { acts, permuted }, part, n);
        }
    });
    if let Some(bias) = bias {
        for row in out.chunks_exact_mut(oc) {
            row.iter_mut().zip(bias).for_each(|(y, b)| *y += b);
        }
    }
}

/// The piece order `kernel` wants activations in for `w`, if not the natural one.
fn kernel_piece_order(kernel: QKernel, w: &QWeight) -> Option<&'static [u8; 16]> {
    #[cfg(target_arch = "x86_64")]
    if kernel == QKernel::Avx512Vnni
        && w.cols.is_multiple_of(truthgpt_quant::QK_K)
        && w.packed_rows() < w.rows
    {
        return vnni::piece_order(w.ty);
    }
    let _ = (kernel, w);
    None
}

fn vnni_permute(qs: &[i8], out: &mut Vec<i8>, order: Option<&'static [u8; 16]>) {
    #[cfg(target_arch = "x86_64")]
    if let Some(order) = order {
        vnni::permute_pieces(qs, out, order);
    }
    let _ = (qs, out, order);
}

/// The activations as a kernel sees them: f32 for the float types, else quantized, and for a
/// vector kernel that wants them so, their bytes in its piece order.
enum Acts<'a> {
    Float(&'a [f32]),
    Int { acts: &'a Q8Acts, permuted: Option<&'a [i8]> },
}

/// Where a part's products go: activation row `r` and weight row `c` to
/// `out[r * ld + offset + c]`.
#[derive(Clone, Copy)]
struct Out<'a> {
    ptr: &'a DisjointPtr,
    ld: usize,
    offset: usize,
}

impl Out<'_> {
    /// Columns `cols` of row `r`.
    ///
    /// # Safety
    /// No other task may access them meanwhile.
    #[allow(clippy::mut_from_ref)]
    unsafe fn row(&self, r: usize, cols: Range<usize>) -> &mut [f32] {
        // SAFETY: the caller's contract; `slice` checks the bounds.
        unsafe { self.ptr.slice(r * self.ld + self.offset + cols.start, cols.len()) }
    }
}

/// Splits the output columns (weight rows) over threads, each task writing its columns of every
/// row of `out`.
fn product(kernel: QKernel, out: Out, acts: &Acts, w: &QWeight, n: usize) {
    let oc = w.rows;
    let per_task = TASK_WORK.div_ceil(n * w.cols).max(1);
    let threads = rayon::current_num_threads();
    let per_task = per_task.max(oc.div_ceil(4 * threads));
    // Whole groups of sixteen weight rows per task, the packed kernels' group (and four of the
    // other vector kernels' tiles).
    let per_task = per_task.next_multiple_of(GROUP);
    let run = |cols: Range<usize>| columns(kernel, out, acts, w, n, cols);
    if oc > per_task && threads > 1 {
        (0..oc.div_ceil(per_task))
            .into_par_iter()
            .for_each(|t| run(t * per_task..oc.min((t + 1) * per_task)));
    } else {
        run(0..oc);
    }
}

/// Output columns `cols` of every row.
fn columns(kernel: QKernel, out: Out, acts: &Acts, w: &QWeight, n: usize, mut cols: Range<usize>) {
    #[cfg(target_arch = "x86_64")]
    if let (QKernel::Avx512Vnni, Some(packed), Acts::Int { acts, .. }) = (kernel, &w.packed, acts) {
        // Tasks start at multiples of GROUP, so the packed rows are whole groups.
        let split = cols.end.min(packed.rows()).max(cols.start);
        // SAFETY: `available` confirmed the CPU features; this task alone writes `cols`.
        unsafe { vnni::packed::columns(out, acts, packed, n, cols.start..split) };
        cols.start = split;
        if cols.is_empty() {
            return;
        }
    }
    #[cfg(target_arch = "x86_64")]
    if kernel == QKernel::Avx512Vnni {
        // SAFETY: `available` confirmed the CPU features; this task alone writes `cols`.
        if unsafe { vnni::columns(out, acts, w, n, cols.clone()) } {
            return;
        }
    }
    let _ = kernel;
    portable_columns(out, acts, w, n, cols);
}

/// Writes output columns `cols` of rows `0..n` through `dot(c, r)`.
fn write_columns(out: Out, n: usize, cols: Range<usize>, dot: impl Fn(usize, usize) -> f32) {
    for r in 0..n {
        // SAFETY: the caller's task alone writes these columns.
        let row = unsafe { out.row(r, cols.clone()) };
        for (y, c) in row.iter_mut().zip(cols.clone()) {
            *y = dot(c, r);
        }
    }
}

fn portable_columns(out: Out, acts: &Acts, w: &QWeight, n: usize, cols: Range<usize>) {
    macro_rules! int {
        ($block:ty) => {
            portable_int::<$block>(out, acts, w, n, cols)
        };
    }
    macro_rules! float {
        ($block:ty) => {
            portable_float::<$block>(out, acts, w, n, cols)
        };
    }
    match w.ty {
        GgmlType::F32 => float!(F32Le),
        GgmlType::F16 => float!(F16Le),
        GgmlType::BF16 => float!(Bf16Le),
        GgmlType::Q8_0 => int!(BlockQ8_0),
        GgmlType::Q4_0 => int!(BlockQ4_0),
        GgmlType::Q4_1 => int!(BlockQ4_1),
        GgmlType::Q5_0 => int!(BlockQ5_0),
        GgmlType::Q5_1 => int!(BlockQ5_1),
        GgmlType::Q2_K => int!(BlockQ2_K),
        GgmlType::Q3_K => int!(BlockQ3_K),
        GgmlType::Q4_K => int!(BlockQ4_K),
        GgmlType::Q5_K => int!(BlockQ5_K),
        GgmlType::Q6_K => int!(BlockQ6_K),
    }
}

fn portable_int<B: IntBlock>(out: Out, acts: &Acts, w: &QWeight, n: usize, cols: Range<usize>) {
    let Acts::Int { acts, .. } = acts else { unreachable!("integer types take quantized activations") };
    write_columns(out, n, cols, |c, r| {
        let (qs, d, sums) = acts.row(r);
        dot_row::<B>(bytemuck::cast_slice(w.row(c)), qs, d, sums)
    });
}

/// Float weights, decoded 16 at a time and multiplied in f32.
fn portable_float<B: Block>(out: Out, acts: &Acts, w: &QWeight, n: usize, cols: Range<usize>) {
    let Acts::Float(x) = acts else { unreachable!("float types take f32 activations") };
    let k = w.cols;
    write_columns(out, n, cols, |c, r| {
        let blocks: &[B] = bytemuck::cast_slice(w.row(c));
        let x = &x[r * k..][..k];
        let mut decoded = [0f32; 16];
        let mut sum = 0.0f32;
        for (chunk, x) in blocks.chunks(16).zip(x.chunks(16)) {
            for (block, y) in chunk.iter().zip(&mut decoded) {
                block.dequantize(std::slice::from_mut(y));
            }
            sum += decoded.iter().zip(x).map(|(w, x)| w * x).sum::<f32>();
        }
        sum
    });
}

/// The reference path: each weight row dequantized to f32 (bit-exact with ggml), multiplied by
/// the unquantized activations in f64. What the exactness tests compare against.
pub fn reference_forward(out: &mut [f32], x: &[f32], w: &QMatrix, n: usize) {
    let (k, oc) = (w.cols(), w.rows);
    let mut row = vec![0f32; k];
    for c in 0..oc {
        w.dequantize_row(c, &mut row);
        for r in 0..n {
            let dot: f64 = row.iter().zip(&x[r * k..][..k]).map(|(&w, &x)| w as f64 * x as f64).sum();
            out[r * oc + c] = dot as f32;
        }
    }
}

/// The input gradient of [`qlinear_forward`], `dx (N, IN) (+)= dy (N, OUT) @ w`, for training
/// adapters over a frozen quantized base (QLoRA). No dequantized copy of `w` is made: `TILE`
/// rows at a time are decoded (bit-exact, as [`reference_forward`]) and multiplied in f32.
pub fn qlinear_input_grad(dx: &mut [f32], dy: &[f32], w: &QMatrix, n: usize, accumulate: bool) {
    const TILE: usize = 128;
    let (k, oc) = (w.cols(), w.rows);
    assert!(dx.len() >= n * k && dy.len() >= n * oc, "qlinear_input_grad: operands too short");
    let dx = &mut dx[..n * k];
    if !accumulate {
        dx.fill(0.0);
    }
    let tile_rows = TILE.min(oc);
    let mut tile = vec![0f32; tile_rows * k];
    let mut dy_tile = vec![0f32; n * tile_rows];
    for start in (0..oc).step_by(TILE) {
        let rows = tile_rows.min(oc - start);
        let (tile, dy_tile) = (&mut tile[..rows * k], &mut dy_tile[..n * rows]);
        tile.par_chunks_mut(k).enumerate().for_each(|(i, row)| w.dequantize_row(start + i, row));
        for (d, dy) in dy_tile.chunks_exact_mut(rows).zip(dy.chunks_exact(oc)) {
            d.copy_from_slice(&dy[start..start + rows]);
        }
        crate::matmul::matmul(
            dx,
            crate::matmul::Op::N(dy_tile),
            crate::matmul::Op::N(tile),
            n,
            rows,
            k,
            true,
        );
    }
}
