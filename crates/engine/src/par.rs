//! Threading helpers. Element-wise kernels split rows over rayon; small inputs stay on the calling
//! thread because a fork-join costs more than the work.

use rayon::prelude::*;

/// Below this many elements per task a kernel is not worth splitting.
const MIN_ELEMS_PER_TASK: usize = 16 * 1024;

/// Rows per task so that each task has at least `MIN_ELEMS_PER_TASK` elements.
fn rows_per_task(row_len: usize) -> usize {
    MIN_ELEMS_PER_TASK.div_ceil(row_len.max(1)).max(1)
}

/// Runs `f(row_index, out_row)` for every `row_len`-long row of `out`, in parallel for large inputs.
pub fn for_each_row<F>(out: &mut [f32], row_len: usize, f: F)
where
    F: Fn(usize, &mut [f32]) + Sync,
{
    let rows = rows_per_task(row_len);
    out.par_chunks_mut(rows * row_len).enumerate().for_each(|(chunk, block)| {
        for (r, row) in block.chunks_mut(row_len).enumerate() {
            f(chunk * rows + r, row);
        }
    });
}

/// Runs `f` on matching chunks of two equally long slices, in parallel for large inputs.
pub fn zip_chunks<F>(a: &mut [f32], b: &[f32], f: F)
where
    F: Fn(&mut [f32], &[f32]) + Sync,
{
    debug_assert_eq!(a.len(), b.len());
    a.par_chunks_mut(MIN_ELEMS_PER_TASK).zip(b.par_chunks(MIN_ELEMS_PER_TASK)).for_each(|(a, b)| f(a, b));
}

/// `out += a`, element-wise.
pub fn add_assign(out: &mut [f32], a: &[f32]) {
    zip_chunks(out, a, |o, a| o.iter_mut().zip(a).for_each(|(o, a)| *o += a));
}

/// `out = a + b`, element-wise.
pub fn add(out: &mut [f32], a: &[f32], b: &[f32]) {
    debug_assert!(out.len() == a.len() && a.len() == b.len());
    out.par_chunks_mut(MIN_ELEMS_PER_TASK)
        .zip(a.par_chunks(MIN_ELEMS_PER_TASK).zip(b.par_chunks(MIN_ELEMS_PER_TASK)))
        .for_each(|(o, (a, b))| o.iter_mut().zip(a.iter().zip(b)).for_each(|(o, (a, b))| *o = a + b));
}

/// `out[j] += sum_r x[r, j]` for `x (rows, out.len())`, split over column blocks so that threads
/// never share an accumulator (bias and norm-shift gradients).
pub fn add_column_sums(out: &mut [f32], x: &[f32]) {
    const COLS: usize = 64;
    let cols = out.len();
    out.par_chunks_mut(COLS).enumerate().for_each(|(block, acc)| {
        let span = block * COLS..block * COLS + acc.len();
        for row in x.chunks_exact(cols) {
            acc.iter_mut().zip(&row[span.clone()]).for_each(|(a, v)| *a += v);
        }
    });
}

/// A raw pointer that kernels share across rayon tasks which write provably disjoint elements
/// (e.g. attention tasks, each owning one (batch, kv-head) slice of a strided buffer). It keeps
/// the length, so every access is bounds-checked; disjointness is the caller's proof.
#[derive(Clone, Copy)]
pub struct DisjointPtr {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: users only write through it to elements no other task touches; see each call site.
unsafe impl Send for DisjointPtr {}
unsafe impl Sync for DisjointPtr {}

impl DisjointPtr {
    pub fn new(data: &mut [f32]) -> Self {
        DisjointPtr { ptr: data.as_mut_ptr(), len: data.len() }
    }

    /// # Safety
    /// No other task may access `offset..offset + len` while the returned slice lives.
    #[inline(always)]
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice(&self, offset: usize, len: usize) -> &mut [f32] {
        assert!(offset + len <= self.len, "disjoint write {offset}+{len} past {}", self.len);
        std::slice::from_raw_parts_mut(self.ptr.add(offset), len)
    }

    /// A raw pointer to element `offset`, for strided writes (GEMM tiles) that cover more than
    /// one contiguous run. The caller checks that its strides stay below [`DisjointPtr::len`].
    ///
    /// # Safety
    /// No other task may access the elements written through it meanwhile.
    #[inline(always)]
    pub unsafe fn ptr(&self, offset: usize) -> *mut f32 {
        assert!(offset < self.len, "disjoint pointer {offset} past {}", self.len);
        self.ptr.add(offset)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}
