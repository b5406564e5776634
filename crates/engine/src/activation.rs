//! GELU (exact, erf form, as `torch.nn.functional.gelu`) and SiLU, plain and gated (GEGLU, SwiGLU).

use crate::fastmath::{erf, erf_given_exp, exp};
use crate::par::zip_chunks;

const INV_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// 1 / sqrt(2 pi)
const INV_SQRT_2PI: f32 = 0.398_942_3;

/// The non-linearities the feed-forward layers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Gelu,
    Silu,
}

#[inline(always)]
fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * INV_SQRT_2))
}

#[inline(always)]
fn gelu_derivative(x: f32) -> f32 {
    // Phi'(x) and erf(x / sqrt 2) share exp(-x^2 / 2): one exp instead of two.
    let gaussian = exp(-0.5 * x * x);
    0.5 * (1.0 + erf_given_exp(x * INV_SQRT_2, gaussian)) + x * INV_SQRT_2PI * gaussian
}

#[inline(always)]
fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

#[inline(always)]
fn silu_derivative(x: f32) -> f32 {
    let s = 1.0 / (1.0 + exp(-x));
    s * (1.0 + x * (1.0 - s))
}

impl Activation {
    #[inline(always)]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Activation::Gelu => gelu(x),
            Activation::Silu => silu(x),
        }
    }

    /// d apply(x) / dx.
    #[inline(always)]
    pub fn derivative(self, x: f32) -> f32 {
        match self {
            Activation::Gelu => gelu_derivative(x),
            Activation::Silu => silu_derivative(x),
        }
    }
}

/// Calls `$body` with `$f` and `$df` bound to the activation and its derivative as plain
/// functions, so each kernel is monomorphised per activation and its loop vectorises.
macro_rules! with_activation {
    ($act:expr, |$f:ident, $df:ident| $body:expr) => {
        match $act {
            Activation::Gelu => {
                let ($f, $df) = (gelu, gelu_derivative);
                $body
            }
            Activation::Silu => {
                let ($f, $df) = (silu, silu_derivative);
                $body
            }
        }
    };
}

/// `out = act(inp)`, element-wise.
pub fn forward(act: Activation, out: &mut [f32], inp: &[f32]) {
    with_activation!(act, |f, _df| zip_chunks(out, inp, |o, x| {
        for (o, &x) in o.iter_mut().zip(x) {
            *o = f(x);
        }
    }))
}

/// `dinp = dout * act'(inp)`, written in place over `dout` (the caller no longer needs `dout`).
pub fn backward_inplace(act: Activation, dout_dinp: &mut [f32], inp: &[f32]) {
    with_activation!(act, |_f, df| zip_chunks(dout_dinp, inp, |d, x| {
        for (d, &x) in d.iter_mut().zip(x) {
            *d *= df(x);
        }
    }))
}

/// Gated unit over a fused projection: each row of `h (N, 2F)` is `[gate | up]`, and
/// `out (N, F) = act(gate) * up` (GEGLU with GELU, SwiGLU with SiLU).
pub fn gated_forward(act: Activation, out: &mut [f32], h: &[f32], f: usize) {
    with_activation!(act, |apply, _df| crate::par::for_each_row(out, f, |row, o| {
        let (gate, up) = h[row * 2 * f..(row + 1) * 2 * f].split_at(f);
        for i in 0..f {
            o[i] = apply(gate[i]) * up[i];
        }
    }))
}

/// Backward of [`gated_forward`]: `dh (N, 2F)` is written, `[dout * up * act'(gate) | dout * act(gate)]`.
pub fn gated_backward(act: Activation, dh: &mut [f32], dout: &[f32], h: &[f32], f: usize) {
    with_activation!(act, |apply, derivative| crate::par::for_each_row(dh, 2 * f, |row, dh| {
        let (gate, up) = h[row * 2 * f..(row + 1) * 2 * f].split_at(f);
        let d = &dout[row * f..(row + 1) * f];
        let (dgate, dup) = dh.split_at_mut(f);
        for i in 0..f {
            dgate[i] = d[i] * up[i] * derivative(gate[i]);
            dup[i] = d[i] * apply(gate[i]);
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derivatives_match_finite_differences() {
        for act in [Activation::Gelu, Activation::Silu] {
            for i in -40..=40 {
                let x = i as f64 * 0.1;
                let h = 1e-3f32;
                let numeric = (act.apply(x as f32 + h) - act.apply(x as f32 - h)) / (2.0 * h);
                let analytic = act.derivative(x as f32);
                assert!((numeric - analytic).abs() < 2e-3, "{act:?}'({x}) = {analytic}, numeric {numeric}");
            }
        }
    }

    #[test]
    fn gelu_is_the_erf_form() {
        // torch.nn.functional.gelu(torch.tensor([-2., -0.5, 0.5, 1., 3.]))
        let want = [-0.045_500_26, -0.154_268_5, 0.345_731_5, 0.841_344_7, 2.995_950_4];
        for (x, w) in [-2.0f32, -0.5, 0.5, 1.0, 3.0].iter().zip(want) {
            assert!((Activation::Gelu.apply(*x) - w).abs() < 1e-6);
        }
    }
}
