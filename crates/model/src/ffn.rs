//! Dense feed-forward sub-layers: `mlp` (GELU), `geglu` and `swiglu` (Shazeer 2020). The same
//! struct is one expert of an MoE layer, run on that expert's gathered rows.

use truthgpt_config::{ExpertKind, GeluApproximate, ModelConfig};
use truthgpt_engine::activation::{self, Activation};

use crate::linear::Linear;
use crate::params::{Grads, ParamBuilder};

/// `y = fc2(act(fc1 x))`, or `y = fc2(act(gate) * up)` with `fc1 x = [gate | up]` for gated kinds.
#[derive(Debug, Clone)]
pub struct Ffn {
    pub kind: ExpertKind,
    pub fc1: Linear,
    pub fc2: Linear,
    /// Hidden width `F`.
    pub width: usize,
    activation: Activation,
}

impl Ffn {
    /// An FFN of `kind` and hidden width `width` on the model's `d_model`, with its bias, init and GELU.
    pub fn new(
        pb: &mut ParamBuilder,
        name: &str,
        m: &ModelConfig,
        kind: ExpertKind,
        width: usize,
        proj_std: f32,
    ) -> Self {
        let activation = match (kind, m.gelu_approximate) {
            (ExpertKind::Swiglu, _) => Activation::Silu,
            (ExpertKind::Mlp | ExpertKind::Geglu, GeluApproximate::None) => Activation::Gelu,
            (ExpertKind::Mlp | ExpertKind::Geglu, GeluApproximate::Tanh) => Activation::GeluTanh,
        };
        let (c, gated) = (m.d_model, kind != ExpertKind::Mlp);
        pb.scope(name, |pb| Ffn {
            kind,
            fc1: Linear::new(pb, "fc1", c, if gated { 2 * width } else { width }, m.bias, m.init_std),
            fc2: Linear::new(pb, "fc2", width, c, m.bias, proj_std),
            width,
            activation,
        })
    }

    /// Width of `fc1`'s output: `F`, or `2F` when gated.
    pub fn hidden_width(&self) -> usize {
        self.fc1.out
    }

    /// `h (n, hidden_width)` and `a (n, F)` are saved for backward; `y (n, C)` is written.
    pub fn forward(&self, params: &[f32], h: &mut [f32], a: &mut [f32], y: &mut [f32], x: &[f32], n: usize) {
        let (h, a) = (&mut h[..n * self.hidden_width()], &mut a[..n * self.width]);
        self.fc1.forward(params, h, x, n);
        match self.kind {
            ExpertKind::Mlp => activation::forward(self.activation, a, h),
            ExpertKind::Geglu | ExpertKind::Swiglu => {
                activation::gated_forward(self.activation, a, h, self.width)
            }
        }
        self.fc2.forward(params, y, a, n);
    }

    /// `dx (n, C)` is written; `dh (n, hidden_width)` and `da (n, F)` are scratch.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        params: &[f32],
        grads: &mut Grads,
        dh: &mut [f32],
        da: &mut [f32],
        dx: &mut [f32],
        dy: &[f32],
        x: &[f32],
        h: &[f32],
        a: &[f32],
        n: usize,
    ) {
        let (h, da) = (&h[..n * self.hidden_width()], &mut da[..n * self.width]);
        self.fc2.backward(params, grads, Some(&mut *da), dy, a, n, false);
        let dh: &[f32] = match self.kind {
            ExpertKind::Mlp => {
                activation::backward_inplace(self.activation, da, h);
                da
            }
            ExpertKind::Geglu | ExpertKind::Swiglu => {
                let dh = &mut dh[..n * self.hidden_width()];
                activation::gated_backward(self.activation, dh, da, h, self.width);
                dh
            }
        };
        self.fc1.backward(params, grads, Some(dx), dh, x, n, false);
    }
}
