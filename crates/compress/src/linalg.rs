//! The small dense linear algebra SparseGPT needs, on a d×d symmetric matrix in f64.

use rayon::prelude::*;

use crate::{CompressError, Result};

/// In place: lower Cholesky factor L of `a: (d, d)` (a = L L^T); the upper triangle is zeroed.
pub fn cholesky_lower(a: &mut [f64], d: usize) -> Result<()> {
    for j in 0..d {
        let mut s = a[j * d + j];
        for k in 0..j {
            s -= a[j * d + k] * a[j * d + k];
        }
        if s.is_nan() || s <= 0.0 {
            return Err(CompressError::NotPositiveDefinite { col: j, pivot: s });
        }
        let ljj = s.sqrt();
        a[j * d + j] = ljj;
        for i in j + 1..d {
            let mut s = a[i * d + j];
            for k in 0..j {
                s -= a[i * d + k] * a[j * d + k];
            }
            a[i * d + j] = s / ljj;
        }
        for k in j + 1..d {
            a[j * d + k] = 0.0;
        }
    }
    Ok(())
}

/// The inverse of a symmetric positive-definite `a: (d, d)` through its Cholesky factor. Every
/// inner loop runs along a row, so the O(d³) work streams through memory (column-order loops
/// were 10x slower at d = 1536, a feed-forward's width).
pub fn spd_inverse(a: &[f64], d: usize) -> Result<Vec<f64>> {
    let mut l = a.to_vec();
    cholesky_lower(&mut l, d)?;
    // X = L^-1 (lower), a row at a time: X[i] = (e_i - sum_{k<i} L[i,k] X[k]) / L[i,i].
    let mut linv = vec![0f64; d * d];
    for i in 0..d {
        let (done, rest) = linv.split_at_mut(i * d);
        let row = &mut rest[..d];
        row[i] = 1.0;
        for k in 0..i {
            let lik = l[i * d + k];
            if lik != 0.0 {
                for (r, &x) in row[..=k].iter_mut().zip(&done[k * d..=k * d + k]) {
                    *r -= lik * x;
                }
            }
        }
        let pivot = l[i * d + i];
        row[..=i].iter_mut().for_each(|r| *r /= pivot);
    }
    // A^-1 = X^T X: row i is sum_{k >= i} X[k, i] X[k], rows in parallel; X[k] is zero past k.
    let mut inv = vec![0f64; d * d];
    inv.par_chunks_exact_mut(d).enumerate().for_each(|(i, out)| {
        for k in i..d {
            let xki = linv[k * d + i];
            if xki != 0.0 {
                for (o, &x) in out[..=k].iter_mut().zip(&linv[k * d..=k * d + k]) {
                    *o += xki * x;
                }
            }
        }
    });
    Ok(inv)
}

/// The upper Cholesky factor U of `a` (a = U^T U), row-major.
pub fn cholesky_upper(a: &[f64], d: usize) -> Result<Vec<f64>> {
    let mut l = a.to_vec();
    cholesky_lower(&mut l, d)?;
    let mut u = vec![0f64; d * d];
    for i in 0..d {
        for j in 0..=i {
            u[j * d + i] = l[i * d + j];
        }
    }
    Ok(u)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `B B^T + I` for a deterministic, badly scaled `B`: symmetric positive definite.
    fn spd(d: usize) -> Vec<f64> {
        let b: Vec<f64> =
            (0..d * d).map(|i| ((i * 7919 % 101) as f64 - 50.0) * (1.0 + (i % d) as f64)).collect();
        let mut a = vec![0f64; d * d];
        for i in 0..d {
            for j in 0..d {
                a[i * d + j] = (0..d).map(|k| b[i * d + k] * b[j * d + k]).sum::<f64>() + f64::from(i == j);
            }
        }
        a
    }

    #[test]
    fn inverse_times_matrix_is_identity_and_upper_factor_reproduces_it() {
        for d in [1, 2, 5, 37] {
            let a = spd(d);
            let inv = spd_inverse(&a, d).unwrap();
            let mut worst = 0f64;
            for i in 0..d {
                for j in 0..d {
                    let p: f64 = (0..d).map(|k| a[i * d + k] * inv[k * d + j]).sum();
                    let err = (p - f64::from(i == j)).abs();
                    // Not f64::max, which would drop a NaN.
                    if err.is_nan() || err > worst {
                        worst = err;
                    }
                }
            }
            // Ill-conditioned on purpose (columns scaled 1..d): a condition number near 1e8.
            assert!(worst <= 1e-6, "d = {d}: |A A^-1 - I| = {worst:e}");
            let u = cholesky_upper(&inv, d).unwrap();
            for i in 0..d {
                for j in 0..d {
                    let utu: f64 = (0..d).map(|k| u[k * d + i] * u[k * d + j]).sum();
                    let tol = 1e-9 * inv[i * d + i].abs().max(1e-30);
                    assert!((utu - inv[i * d + j]).abs() <= tol, "d = {d}: U^T U differs at ({i}, {j})");
                }
            }
        }
    }
}
