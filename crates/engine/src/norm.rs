//! LayerNorm (Ba et al. 2016) and RMSNorm (Zhang & Sennrich 2019) over the last dimension.

use crate::fastmath;
use crate::par::{for_each_row, DisjointPtr};
use rayon::prelude::*;

/// `out (N, C) = (inp - mean) * rstd * weight + bias`; saves `mean (N)` and `rstd (N)` for backward.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_forward(
    out: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
    inp: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    c: usize,
    eps: f32,
) {
    let n = mean.len();
    let (mean_ptr, rstd_ptr) = (DisjointPtr::new(mean), DisjointPtr::new(rstd));
    for_each_row(&mut out[..n * c], c, |row, o| {
        let x = &inp[row * c..(row + 1) * c];
        let mu = fastmath::sum(x) / c as f32;
        for (o, &v) in o.iter_mut().zip(x) {
            *o = (v - mu) * (v - mu);
        }
        let rs = 1.0 / (fastmath::sum(o) / c as f32 + eps).sqrt();
        // SAFETY: each row index is visited by exactly one task.
        unsafe {
            mean_ptr.slice(row, 1)[0] = mu;
            rstd_ptr.slice(row, 1)[0] = rs;
        }
        match bias {
            Some(b) => (0..c).for_each(|i| o[i] = (x[i] - mu) * rs * weight[i] + b[i]),
            None => (0..c).for_each(|i| o[i] = (x[i] - mu) * rs * weight[i]),
        }
    });
}

/// Backward of [`layernorm_forward`]. `dinp` is written; `dweight`, `dbias` accumulate (a
/// frozen norm passes `None`).
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward(
    dinp: &mut [f32],
    dweight: Option<&mut [f32]>,
    dbias: Option<&mut [f32]>,
    dout: &[f32],
    inp: &[f32],
    weight: &[f32],
    mean: &[f32],
    rstd: &[f32],
    c: usize,
) {
    let n = mean.len();
    for_each_row(&mut dinp[..n * c], c, |row, dx| {
        let (x, dy) = (&inp[row * c..(row + 1) * c], &dout[row * c..(row + 1) * c]);
        let (mu, rs) = (mean[row], rstd[row]);
        // dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), dxhat = dy * weight.
        let (mut sum_dxhat, mut sum_dxhat_xhat) = (0.0f32, 0.0f32);
        for i in 0..c {
            let dxhat = dy[i] * weight[i];
            sum_dxhat += dxhat;
            sum_dxhat_xhat += dxhat * (x[i] - mu) * rs;
        }
        let (mean_dxhat, mean_dxhat_xhat) = (sum_dxhat / c as f32, sum_dxhat_xhat / c as f32);
        for i in 0..c {
            let xhat = (x[i] - mu) * rs;
            dx[i] = rs * (dy[i] * weight[i] - mean_dxhat - xhat * mean_dxhat_xhat);
        }
    });
    let dbias = dbias.map(|d| &mut d[..c]);
    param_grads(dweight, dbias, dout, n, c, |row, i| (inp[row * c + i] - mean[row]) * rstd[row]);
}

/// `out (N, C) = inp * rstd * weight` with `rstd = 1 / sqrt(mean(inp^2) + eps)`; saves `rstd (N)`.
pub fn rmsnorm_forward(out: &mut [f32], rstd: &mut [f32], inp: &[f32], weight: &[f32], c: usize, eps: f32) {
    let n = rstd.len();
    let rstd_ptr = DisjointPtr::new(rstd);
    for_each_row(&mut out[..n * c], c, |row, o| {
        let x = &inp[row * c..(row + 1) * c];
        let rs = 1.0 / (fastmath::dot(x, x) / c as f32 + eps).sqrt();
        // SAFETY: each row index is visited by exactly one task.
        unsafe { rstd_ptr.slice(row, 1)[0] = rs };
        for i in 0..c {
            o[i] = x[i] * rs * weight[i];
        }
    });
}

/// Backward of [`rmsnorm_forward`]. `dinp` is written; `dweight` accumulates (`None`: frozen).
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_backward(
    dinp: &mut [f32],
    dweight: Option<&mut [f32]>,
    dout: &[f32],
    inp: &[f32],
    weight: &[f32],
    rstd: &[f32],
    c: usize,
) {
    let n = rstd.len();
    for_each_row(&mut dinp[..n * c], c, |row, dx| {
        let (x, dy) = (&inp[row * c..(row + 1) * c], &dout[row * c..(row + 1) * c]);
        let rs = rstd[row];
        // dx = rstd * (dxhat - xhat * mean(dxhat * xhat)), xhat = x * rstd.
        let mean_dxhat_xhat = (0..c).map(|i| dy[i] * weight[i] * x[i] * rs).sum::<f32>() / c as f32;
        for i in 0..c {
            dx[i] = rs * (dy[i] * weight[i] - x[i] * rs * mean_dxhat_xhat);
        }
    });
    param_grads(dweight, None, dout, n, c, |row, i| inp[row * c + i] * rstd[row]);
}

/// `dweight += sum_rows(dout * xhat)`, `dbias += sum_rows(dout)`, split over column blocks so
/// threads never share an accumulator; a frozen tensor (`None`) gets nothing.
fn param_grads(
    dweight: Option<&mut [f32]>,
    dbias: Option<&mut [f32]>,
    dout: &[f32],
    n: usize,
    c: usize,
    xhat: impl Fn(usize, usize) -> f32 + Sync,
) {
    const COLS: usize = 64;
    if let Some(dweight) = dweight {
        dweight[..c].par_chunks_mut(COLS).enumerate().for_each(|(block, dw)| {
            for row in 0..n {
                for (j, dw) in dw.iter_mut().enumerate() {
                    let i = block * COLS + j;
                    *dw += dout[row * c + i] * xhat(row, i);
                }
            }
        });
    }
    if let Some(dbias) = dbias {
        crate::par::add_column_sums(&mut dbias[..c], &dout[..n * c]);
    }
}
