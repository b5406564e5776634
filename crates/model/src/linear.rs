//! `nn.Linear` and the norms as modules: parameter handles plus forward/backward over caller buffers.

use truthgpt_config::NormKind;
use truthgpt_engine::matmul::{self, Precision};
use truthgpt_engine::norm;
use truthgpt_engine::qmatmul::{self, QMatrix};

use crate::lora::Lora;
use crate::params::{Grads, Init, ParamBuilder, P};

/// `y (N, OUT) = x (N, IN) @ weight (OUT, IN)^T + bias (OUT)`, its products at `precision`, or
/// with the weight in quantized blocks (`quant`, then `weight` is empty and frozen), plus the
/// low-rank updates of any LoRA `adapters`.
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: P,
    pub bias: Option<P>,
    pub inp: usize,
    pub out: usize,
    pub precision: Precision,
    pub quant: Option<QMatrix>,
    pub adapters: Vec<Lora>,
}

impl Linear {
    pub fn new(pb: &mut ParamBuilder, name: &str, inp: usize, out: usize, bias: bool, std: f32) -> Self {
        pb.scope(name, |pb| {
            let (weight, quant) = match pb.take_quantized("weight", [out, inp]) {
                Some((weight, q)) => (weight, Some(q)),
                None => (pb.add("weight", &[out, inp], Init::Normal(std)), None),
            };
            let bias = bias.then(|| pb.add("bias", &[out], Init::Zeros));
            Linear { weight, bias, inp, out, precision: Precision::F32, quant, adapters: Vec::new() }
        })
    }

    pub fn forward(&self, params: &[f32], y: &mut [f32], x: &[f32], n: usize) {
        match &self.quant {
            Some(q) => {
                let bias = self.bias.map(|b| b.of(params));
                qmatmul::qlinear_forward(&mut y[..n * self.out], &x[..n * self.inp], q, bias, n)
            }
            None => matmul::linear_forward(
                self.precision,
                &mut y[..n * self.out],
                &x[..n * self.inp],
                self.weight.of(params),
                self.bias.map(|b| b.of(params)),
                n,
                self.inp,
                self.out,
            ),
        }
        for adapter in &self.adapters {
            adapter.forward(params, y, x, n, self.inp, self.out);
        }
    }

    /// `dx` is written, or added to when `accumulate_dx`; the gradients of the parameters that
    /// are not frozen accumulate. A quantized weight is always frozen: its input gradient runs
    /// through the blocks ([`qmatmul::qlinear_input_grad`]), for adapters below it to train.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        params: &[f32],
        grads: &mut Grads,
        mut dx: Option<&mut [f32]>,
        dy: &[f32],
        x: &[f32],
        n: usize,
        accumulate_dx: bool,
    ) {
        let (dweight, dbias) = grads.pair_mut(self.weight, self.bias);
        let dy = &dy[..n * self.out];
        match &self.quant {
            Some(q) => {
                if let Some(dx) = dx.as_deref_mut() {
                    qmatmul::qlinear_input_grad(dx, dy, q, n, accumulate_dx);
                }
                if let Some(dbias) = dbias {
                    truthgpt_engine::par::add_column_sums(&mut dbias[..self.out], dy);
                }
            }
            None => matmul::linear_backward(
                self.precision,
                dx.as_deref_mut().map(|dx| &mut dx[..n * self.inp]),
                dweight,
                dbias,
                dy,
                &x[..n * self.inp],
                self.weight.of(params),
                n,
                self.inp,
                self.out,
                accumulate_dx,
            ),
        }
        for adapter in &self.adapters {
            adapter.backward(params, grads, dx.as_deref_mut(), dy, x, n, self.inp, self.out);
        }
    }
}

/// LayerNorm or RMSNorm over `C` channels.
#[derive(Debug, Clone)]
pub struct Norm {
    pub kind: NormKind,
    pub weight: P,
    pub bias: Option<P>,
    pub c: usize,
    pub eps: f32,
}

/// What a norm's forward keeps for its backward: per-row mean (LayerNorm) and 1/std.
#[derive(Debug, Clone, Default)]
pub struct NormSaved {
    pub mean: Vec<f32>,
    pub rstd: Vec<f32>,
}

impl NormSaved {
    pub fn new(n: usize) -> Self {
        NormSaved { mean: vec![0.0; n], rstd: vec![0.0; n] }
    }
}

impl Norm {
    /// LayerNorm has a bias exactly when the model's linears do; RMSNorm never has one.
    pub fn new(pb: &mut ParamBuilder, name: &str, kind: NormKind, c: usize, eps: f32, bias: bool) -> Self {
        pb.scope(name, |pb| Norm {
            kind,
            weight: pb.add("weight", &[c], Init::Ones),
            bias: (bias && kind == NormKind::LayerNorm).then(|| pb.add("bias", &[c], Init::Zeros)),
            c,
            eps,
        })
    }

    pub fn forward(&self, params: &[f32], y: &mut [f32], saved: &mut NormSaved, x: &[f32], n: usize) {
        let (w, c) = (self.weight.of(params), self.c);
        let (mean, rstd) = (&mut saved.mean[..n], &mut saved.rstd[..n]);
        match self.kind {
            NormKind::LayerNorm => {
                norm::layernorm_forward(y, mean, rstd, x, w, self.bias.map(|b| b.of(params)), c, self.eps)
            }
            NormKind::RmsNorm => norm::rmsnorm_forward(y, rstd, x, w, c, self.eps),
        }
    }

    /// `dx` is written; the gradients of parameters that are not frozen accumulate.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        params: &[f32],
        grads: &mut Grads,
        dx: &mut [f32],
        dy: &[f32],
        x: &[f32],
        saved: &NormSaved,
        n: usize,
    ) {
        let (w, c) = (self.weight.of(params), self.c);
        let (dweight, dbias) = grads.pair_mut(self.weight, self.bias);
        match self.kind {
            NormKind::LayerNorm => {
                norm::layernorm_backward(dx, dweight, dbias, dy, x, w, &saved.mean[..n], &saved.rstd[..n], c)
            }
            NormKind::RmsNorm => norm::rmsnorm_backward(dx, dweight, dy, x, w, &saved.rstd[..n], c),
        }
    }
}
