//! GELU (exact erf form, and the tanh form GPT-2 calls `gelu_new`) and SiLU, plain and gated
//! (GEGLU, SwiGLU), as `torch.nn.functional.gelu(x, approximate=...)` and `silu` compute them.

use crate::fastmath::{erf, erf_given_exp, exp};
use crate::par::zip_chunks;

const INV_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// 1 / sqrt(2 pi)
const INV_SQRT_2PI: f32 = 0.398_942_3;

/// The non-linearities the feed-forward layers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Gelu,
    GeluTanh,
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

/// sqrt(2 / pi)
const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const GELU_TANH_CUBIC: f32 = 0.044_715;

/// `tanh(u) = 1 - 2 / (1 + e^(2u))`, exact at both saturations (exp is 0 or saturates).
#[inline(always)]
fn tanh(u: f32) -> f32 {
    1.0 - 2.0 / (1.0 + exp(2.0 * u))
}

#[inline(always)]
fn gelu_tanh(x: f32) -> f32 {
    0.5 * x * (1.0 + tanh(SQRT_2_OVER_PI * (x + GELU_TANH_CUBIC * x * x * x)))
}

#[inline(always)]
fn gelu_tanh_derivative(x: f32) -> f32 {
    let t = tanh(SQRT_2_OVER_PI * (x + GELU_TANH_CUBIC * x * x * x));
    let du = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_TANH_CUBIC * x * x);
    0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du
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
            Activation::GeluTanh => gelu_tanh(x),
            Activation::Silu => silu(x),
        }
    }

    /// d apply(x) / dx.
    #[inline(always)]
    pub fn derivative(self, x: f32) -> f32 {
        match self {
            Activation::Gelu => gelu_derivative(x),
            Activation::GeluTanh => gelu_tanh_derivative(x),
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
            Activation::GeluTanh => {
                let ($f, $df) = (gelu_tanh, gelu_tanh_derivative);
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
        // Zipped, not indexed: the loop carries no bounds checks.
        for ((o, &gate), &up) in o.iter_mut().zip(gate).zip(up) {
            *o = apply(gate) * up;
        }
    }))
}

/// Backward of [`gated_forward`]: `dh (N, 2F)` is written, `[dout * up * act'(gate) | dout * act(gate)]`.
pub fn gated_backward(act: Activation, dh: &mut [f32], dout: &[f32], h: &[f32], f: usize) {
    with_activation!(act, |apply, derivative| crate::par::for_each_row(dh, 2 * f, |row, dh| {
        let (gate, up) = h[row * 2 * f..(row + 1) * 2 * f].split_at(f);
        let d = &dout[row * f..(row + 1) * f];
        let (dgate, dup) = dh.split_at_mut(f);
        for ((((dgate, dup), &d), &gate), &up) in dgate.iter_mut().zip(dup).zip(d).zip(gate).zip(up) {
            *dgate = d * up * derivative(gate);
            *dup = d * apply(gate);
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derivatives_match_finite_differences() {
        for act in [Activation::Gelu, Activation::GeluTanh, Activation::Silu] {
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

    #[test]
    fn gelu_tanh_is_gpt2_gelu_new() {
        // torch.nn.functional.gelu(torch.tensor([-6., -2., -0.5, 0.5, 1., 3., 12.]), approximate="tanh")
        let want = [-0.0, -0.045_402_3, -0.154_286, 0.345_714, 0.841_192, 2.996_363_7, 12.0];
        for (x, w) in [-6.0f32, -2.0, -0.5, 0.5, 1.0, 3.0, 12.0].iter().zip(want) {
            let got = Activation::GeluTanh.apply(*x);
            assert!((got - w).abs() < 1e-6, "gelu_tanh({x}) = {got}, torch {w}");
        }
    }
}
