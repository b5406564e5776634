//! SparseGPT (Frantar & Alistarh 2023, arXiv:2301.00774), after the reference `sparsegpt.py`.
//!
//! `H = 2 X^T X / N + λI` (λ = percdamp · mean diag), `U = chol_upper(H^-1)`. Columns are taken in
//! blocks of B; at a block's start (unstructured) or every M columns (N:M) the mask is chosen by
//! `w^2 / U_jj^2`; each pruned column's error `(w - q) / U_jj` is spread over the block's later
//! columns at once and over the columns after the block lazily, in one product per block. Rows are
//! independent given `U`, so the loop runs row by row on the row-major `(O, I)` weights. Unlike the
//! reference, the unstructured mask is chosen per row (`floor(S·I)` zeros in every row, spread over
//! blocks cumulatively) so the count is exact, like Wanda's per-output comparison group.

use rayon::prelude::*;
use truthgpt_engine::matmul::{matmul, Op};

use crate::linalg::{cholesky_upper, spd_inverse};
use crate::{check, lowest_k, Pattern, Result, SparseGptOptions};

/// `U = chol_upper((2 X^T X / N + λI)^-1)`; also returns the columns with a zero diagonal (dead).
/// `X^T X` is one f32 product on the engine's GEMM, as the reference accumulates `H` in f32; the
/// inverse and its factor are taken in f64.
fn hessian_factor(x: &[f32], inp: usize, percdamp: f64) -> Result<(Vec<f64>, Vec<bool>)> {
    let rows = x.len() / inp.max(1);
    let n = rows.max(1) as f64;
    let mut gram = vec![0f32; inp * inp];
    matmul(&mut gram, Op::T(x), Op::N(x), inp, rows, inp, false);
    let mut h: Vec<f64> = gram.into_iter().map(f64::from).collect();
    h.iter_mut().for_each(|v| *v *= 2.0 / n);
    let mut dead = vec![false; inp];
    for (i, d) in dead.iter_mut().enumerate() {
        if h[i * inp + i] == 0.0 {
            *d = true;
            h[i * inp + i] = 1.0;
        }
    }
    let damp = percdamp * (0..inp).map(|i| h[i * inp + i]).sum::<f64>() / inp as f64;
    for i in 0..inp {
        h[i * inp + i] += damp;
    }
    let inv = spd_inverse(&h, inp)?;
    Ok((cholesky_upper(&inv, inp)?, dead))
}

/// SparseGPT on `w: (out, inp)` with calibration inputs `x: (N, inp)`; returns the zeros set.
pub fn sparsegpt(
    w: &mut [f32],
    out: usize,
    inp: usize,
    x: &[f32],
    pattern: Pattern,
    opt: &SparseGptOptions,
) -> Result<usize> {
    pattern.validate(inp)?;
    check("sparsegpt weight", out * inp, w.len())?;
    check("sparsegpt calibration width", 0, x.len() % inp.max(1))?;
    if let Pattern::Unstructured(s) = pattern {
        if s == 0.0 {
            return Ok(0);
        }
    }
    let (u, dead) = hessian_factor(x, inp, opt.percdamp)?;
    let block = match pattern {
        Pattern::NM { m, .. } => opt.block.max(m).div_ceil(m) * m,
        Pattern::Unstructured(_) => opt.block.max(1),
    };
    // Rows are independent given `U`.
    Ok(w.par_chunks_exact_mut(inp).map(|row| prune_row(row, &u, &dead, pattern, block)).sum())
}

/// One row of SparseGPT: `row` is overwritten by its pruned, error-compensated values.
fn prune_row(row: &mut [f32], u: &[f64], dead: &[bool], pattern: Pattern, block: usize) -> usize {
    let inp = row.len();
    let mut w: Vec<f64> = row.iter().zip(dead).map(|(&v, &d)| if d { 0.0 } else { f64::from(v) }).collect();
    let mut err = vec![0f64; block];
    let mut mask = vec![false; inp];
    let mut zeros = 0;
    for i1 in (0..inp).step_by(block) {
        let i2 = (i1 + block).min(inp);
        if let Pattern::Unstructured(s) = pattern {
            let k = (s as f64 * i2 as f64).floor() as usize - (s as f64 * i1 as f64).floor() as usize;
            let scores = block_scores(&w, u, i1, i2);
            lowest_k(&scores, k, &mut mask[i1..i2]);
        }
        for i in i1..i2 {
            if let Pattern::NM { n, m } = pattern {
                if (i - i1) % m == 0 {
                    let scores = block_scores(&w, u, i, i + m);
                    lowest_k(&scores, n, &mut mask[i..i + m]);
                }
            }
            let d = u[i * inp + i];
            let q = if mask[i] { 0.0 } else { w[i] };
            let e = (w[i] - q) / d;
            w[i] = q;
            for j in i + 1..i2 {
                w[j] -= e * u[i * inp + j];
            }
            err[i - i1] = e;
        }
        // The lazy update of the columns after the block: w[i2..] -= err · U[i1..i2, i2..].
        for (r, &e) in (i1..i2).zip(&err) {
            if e != 0.0 {
                for j in i2..inp {
                    w[j] -= e * u[r * inp + j];
                }
            }
        }
    }
    for ((dst, &v), &m) in row.iter_mut().zip(&w).zip(&mask) {
        *dst = if m { 0.0 } else { v as f32 };
        zeros += usize::from(m);
    }
    zeros
}

/// SparseGPT's saliency `w_j^2 / U_jj^2` for columns `a..b`.
fn block_scores(w: &[f64], u: &[f64], a: usize, b: usize) -> Vec<f32> {
    let inp = w.len();
    (a..b).map(|j| (w[j] * w[j] / (u[j * inp + j] * u[j * inp + j])) as f32).collect()
}
