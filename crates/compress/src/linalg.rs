//! The small dense linear algebra SparseGPT needs, on a d×d symmetric matrix in f64.

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

/// The inverse of a symmetric positive-definite `a: (d, d)` through its Cholesky factor.
pub fn spd_inverse(a: &[f64], d: usize) -> Result<Vec<f64>> {
    let mut l = a.to_vec();
    cholesky_lower(&mut l, d)?;
    // Linv = L^-1 (lower), by forward substitution column by column.
    let mut linv = vec![0f64; d * d];
    for c in 0..d {
        for i in c..d {
            let mut s = if i == c { 1.0 } else { 0.0 };
            for k in c..i {
                s -= l[i * d + k] * linv[k * d + c];
            }
            linv[i * d + c] = s / l[i * d + i];
        }
    }
    // A^-1 = Linv^T Linv.
    let mut inv = vec![0f64; d * d];
    for i in 0..d {
        for j in 0..=i {
            let s: f64 = (i.max(j)..d).map(|k| linv[k * d + i] * linv[k * d + j]).sum();
            inv[i * d + j] = s;
            inv[j * d + i] = s;
        }
    }
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
