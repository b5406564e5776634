//! One transformer block: attention and feed-forward sub-layers, each inside a residual, with
//! the norm before (`pre`: GPT-2, Llama) or after (`post`: Vaswani et al.) the residual sum.
//!
//! ```text
//! pre:  mid = x + drop(attn(norm1(x)))      y = mid + drop(ffn(norm2(mid)))
//! post: mid = norm1(x + drop(attn(x)))      y = norm2(mid + drop(ffn(mid)))
//! ```

use truthgpt_config::{ExpertKind, FfnKind, ModelConfig, NormPosition};
use truthgpt_engine::par::{add, add_assign};
use truthgpt_engine::rng::dropout_inplace;

use crate::attention::{Attention, AttentionActs, AttentionScratch, Cached};
use crate::ffn::Ffn;
use crate::linear::{Norm, NormSaved};
use crate::moe::{Moe, MoeActs, MoeScratch};
use crate::params::{Grads, ParamBuilder};

#[derive(Debug, Clone)]
pub enum FeedForward {
    Dense(Ffn),
    Moe(Moe),
}

#[derive(Debug, Clone)]
pub struct Block {
    pub norm1: Norm,
    pub attn: Attention,
    pub norm2: Norm,
    pub ffn: FeedForward,
    position: NormPosition,
    dropout: f32,
}

#[derive(Debug, Clone)]
pub enum FfnActs {
    /// Pre-activation `h (N, hidden)` and activation `a (N, F)`.
    Dense {
        h: Vec<f32>,
        a: Vec<f32>,
    },
    Moe(Box<MoeActs>),
}

/// What one block's forward saves for its backward. Each buffer is (N, C) unless noted.
#[derive(Debug, Clone)]
pub struct BlockActs {
    pub norm1: NormSaved,
    pub norm2: NormSaved,
    /// pre: `norm1(x)`; post: `x + drop(attn(x))`, the input of norm1.
    pub sum_or_norm1: Vec<f32>,
    pub attn: AttentionActs,
    /// Residual stream between the two sub-layers.
    pub mid: Vec<f32>,
    /// pre: `norm2(mid)`; post: `mid + drop(ffn(mid))`, the input of norm2.
    pub sum_or_norm2: Vec<f32>,
    pub ffn: FfnActs,
    /// Branch output before dropout and the residual add (also backward scratch).
    pub branch: Vec<f32>,
}

impl BlockActs {
    /// Rows each expert processed in this block's last forward; `None` for a dense block.
    pub fn expert_rows(&self) -> Option<&[usize]> {
        match &self.ffn {
            FfnActs::Moe(moe) => Some(moe.rows_per_expert()),
            FfnActs::Dense { .. } => None,
        }
    }
}

/// Backward scratch shared by all blocks.
#[derive(Debug, Clone)]
pub struct BlockScratch {
    d1: Vec<f32>,
    d2: Vec<f32>,
    attn: AttentionScratch,
    ffn: FfnScratch,
}

#[derive(Debug, Clone)]
enum FfnScratch {
    Dense { dh: Vec<f32>, da: Vec<f32> },
    Moe(MoeScratch),
}

/// Seeds of the two dropout sites of one layer at one step.
#[derive(Debug, Clone, Copy)]
pub struct DropoutSeeds {
    pub attn: u64,
    pub ffn: u64,
}

/// What one block forward is for: it decides dropout, MoE counting and the key/value cache.
#[derive(Debug)]
pub enum Pass<'a> {
    /// Training: dropout with `seeds` (none when the model has no dropout), MoE routing counted.
    Train { seeds: Option<DropoutSeeds> },
    /// A training forward run again in backward, under gradient checkpointing: the same
    /// dropout, and routing not counted twice.
    Recompute { seeds: Option<DropoutSeeds> },
    /// No dropout, nothing counted.
    Eval,
    /// Incremental decoding: the rows continue sequences from their key/value cache (see
    /// [`Cached`]); no dropout, nothing counted.
    Decode(Cached<'a>),
}

impl Block {
    pub fn new(pb: &mut ParamBuilder, m: &ModelConfig) -> Self {
        // GPT-2: projections into the residual stream start smaller, by 1/sqrt(2 * layers).
        let proj_std = m.init_std / (2.0 * m.n_layers as f32).sqrt();
        let norm = |pb: &mut ParamBuilder, name| Norm::new(pb, name, m.norm, m.d_model, m.norm_eps, m.bias);
        let norm1 = norm(pb, "norm1");
        let attn = Attention::new(pb, m, proj_std);
        let norm2 = norm(pb, "norm2");
        let ffn = match m.expert_groups() {
            Some(groups) => FeedForward::Moe(Moe::new(pb, m, &groups, proj_std)),
            None => {
                let kind = match m.ffn {
                    FfnKind::Geglu => ExpertKind::Geglu,
                    FfnKind::Swiglu => ExpertKind::Swiglu,
                    FfnKind::Mlp | FfnKind::Moe | FfnKind::Pimoe => ExpertKind::Mlp,
                };
                FeedForward::Dense(Ffn::new(pb, "ffn", m, kind, m.d_ff, proj_std))
            }
        };
        Block { norm1, attn, norm2, ffn, position: m.norm_position, dropout: m.dropout }
    }

    pub fn acts(&self, b: usize, t: usize) -> BlockActs {
        let (n, c) = (b * t, self.norm1.c);
        let ffn = match &self.ffn {
            FeedForward::Dense(f) => {
                FfnActs::Dense { h: vec![0.0; n * f.hidden_width()], a: vec![0.0; n * f.width] }
            }
            FeedForward::Moe(moe) => FfnActs::Moe(Box::new(moe.acts(n))),
        };
        BlockActs {
            norm1: NormSaved::new(n),
            norm2: NormSaved::new(n),
            sum_or_norm1: vec![0.0; n * c],
            attn: self.attn.acts(b, t),
            mid: vec![0.0; n * c],
            sum_or_norm2: vec![0.0; n * c],
            ffn,
            branch: vec![0.0; n * c],
        }
    }

    pub fn scratch(&self, b: usize, t: usize) -> BlockScratch {
        let (n, c) = (b * t, self.norm1.c);
        let ffn = match &self.ffn {
            FeedForward::Dense(f) => {
                FfnScratch::Dense { dh: vec![0.0; n * f.hidden_width()], da: vec![0.0; n * f.width] }
            }
            FeedForward::Moe(moe) => FfnScratch::Moe(moe.scratch(n)),
        };
        BlockScratch { d1: vec![0.0; n * c], d2: vec![0.0; n * c], attn: self.attn.scratch(b, t), ffn }
    }

    fn ffn_forward(&self, params: &[f32], acts: &mut FfnActs, y: &mut [f32], x: &[f32], n: usize) {
        match (&self.ffn, acts) {
            (FeedForward::Dense(f), FfnActs::Dense { h, a }) => f.forward(params, h, a, y, x, n),
            (FeedForward::Moe(moe), FfnActs::Moe(acts)) => moe.forward(params, acts, y, x, n),
            _ => unreachable!("activations are built by this block"),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn ffn_backward(
        &self,
        params: &[f32],
        grads: &mut Grads,
        scratch: &mut FfnScratch,
        acts: &FfnActs,
        dx: &mut [f32],
        dy: &[f32],
        x: &[f32],
        n: usize,
        loss_scale: f32,
    ) {
        match (&self.ffn, acts, scratch) {
            (FeedForward::Dense(f), FfnActs::Dense { h, a }, FfnScratch::Dense { dh, da }) => {
                f.backward(params, grads, dh, da, dx, dy, x, h, a, n)
            }
            (FeedForward::Moe(moe), FfnActs::Moe(acts), FfnScratch::Moe(scratch)) => {
                moe.backward(params, grads, scratch, acts, dx, dy, x, n, loss_scale)
            }
            _ => unreachable!("activations and scratch are built by this block"),
        }
    }

    /// `y = block(x)`, both (N, C), for the purpose `pass` names.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &mut self,
        params: &[f32],
        acts: &mut BlockActs,
        y: &mut [f32],
        x: &[f32],
        b: usize,
        t: usize,
        pass: Pass,
    ) {
        let counted = matches!(pass, Pass::Train { .. });
        let (seeds, cached) = match pass {
            Pass::Train { seeds } | Pass::Recompute { seeds } => (seeds, None),
            Pass::Eval => (None, None),
            Pass::Decode(cached) => (None, Some(cached)),
        };
        let n = b * t;
        let nc = n * self.norm1.c;
        let (x, y) = (&x[..nc], &mut y[..nc]);
        let p = self.dropout;
        let drop = |buf: &mut [f32], seed: Option<u64>| {
            if let Some(seed) = seed {
                dropout_inplace(buf, p, seed);
            }
        };
        match self.position {
            NormPosition::Pre => {
                self.norm1.forward(params, &mut acts.sum_or_norm1, &mut acts.norm1, x, n);
                self.attn.forward(params, &mut acts.attn, &mut acts.branch, &acts.sum_or_norm1, b, t, cached);
                drop(&mut acts.branch[..nc], seeds.map(|s| s.attn));
                add(&mut acts.mid[..nc], x, &acts.branch);
                self.norm2.forward(params, &mut acts.sum_or_norm2, &mut acts.norm2, &acts.mid, n);
                self.ffn_forward(params, &mut acts.ffn, &mut acts.branch, &acts.sum_or_norm2, n);
                drop(&mut acts.branch[..nc], seeds.map(|s| s.ffn));
                add(y, &acts.mid, &acts.branch);
            }
            NormPosition::Post => {
                self.attn.forward(params, &mut acts.attn, &mut acts.branch, x, b, t, cached);
                drop(&mut acts.branch[..nc], seeds.map(|s| s.attn));
                add(&mut acts.sum_or_norm1[..nc], x, &acts.branch);
                self.norm1.forward(params, &mut acts.mid, &mut acts.norm1, &acts.sum_or_norm1, n);
                self.ffn_forward(params, &mut acts.ffn, &mut acts.branch, &acts.mid, n);
                drop(&mut acts.branch[..nc], seeds.map(|s| s.ffn));
                add(&mut acts.sum_or_norm2[..nc], &acts.mid, &acts.branch);
                self.norm2.forward(params, y, &mut acts.norm2, &acts.sum_or_norm2, n);
            }
        }
        if let (true, FeedForward::Moe(moe), FfnActs::Moe(moe_acts)) = (counted, &mut self.ffn, &acts.ffn) {
            moe.count(moe_acts, n);
        }
    }

    /// On entry `dres` is the gradient of the block output; on return, of its input `x`.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        params: &[f32],
        grads: &mut Grads,
        scratch: &mut BlockScratch,
        acts: &BlockActs,
        dres: &mut [f32],
        x: &[f32],
        b: usize,
        t: usize,
        seeds: Option<DropoutSeeds>,
        loss_scale: f32,
    ) {
        let n = b * t;
        let nc = n * self.norm1.c;
        let dres = &mut dres[..nc];
        let BlockScratch { d1, d2, attn: attn_scratch, ffn: ffn_scratch } = scratch;
        let (d1, d2) = (&mut d1[..nc], &mut d2[..nc]);
        // Gradient of a branch output: the residual gradient through the same dropout mask.
        let branch_grad = |out: &mut [f32], from: &[f32], seed: Option<u64>| {
            out.copy_from_slice(from);
            if let Some(seed) = seed {
                dropout_inplace(out, self.dropout, seed);
            }
        };
        match self.position {
            NormPosition::Pre => {
                branch_grad(d1, dres, seeds.map(|s| s.ffn));
                self.ffn_backward(
                    params,
                    grads,
                    ffn_scratch,
                    &acts.ffn,
                    d2,
                    d1,
                    &acts.sum_or_norm2,
                    n,
                    loss_scale,
                );
                self.norm2.backward(params, grads, d1, d2, &acts.mid, &acts.norm2, n);
                add_assign(dres, d1);
                branch_grad(d1, dres, seeds.map(|s| s.attn));
                self.attn.backward(params, grads, attn_scratch, &acts.attn, d2, d1, &acts.sum_or_norm1, b, t);
                self.norm1.backward(params, grads, d1, d2, &x[..nc], &acts.norm1, n);
                add_assign(dres, d1);
            }
            NormPosition::Post => {
                self.norm2.backward(params, grads, d1, dres, &acts.sum_or_norm2, &acts.norm2, n);
                dres.copy_from_slice(d1);
                branch_grad(d2, d1, seeds.map(|s| s.ffn));
                self.ffn_backward(params, grads, ffn_scratch, &acts.ffn, d1, d2, &acts.mid, n, loss_scale);
                add_assign(dres, d1);
                self.norm1.backward(params, grads, d1, dres, &acts.sum_or_norm1, &acts.norm1, n);
                dres.copy_from_slice(d1);
                branch_grad(d2, d1, seeds.map(|s| s.attn));
                self.attn.backward(params, grads, attn_scratch, &acts.attn, d1, d2, &x[..nc], b, t);
                add_assign(dres, d1);
            }
        }
    }

    /// Aux and z losses of this block's MoE from its last forward (0 for dense blocks).
    pub fn router_losses(acts: &BlockActs) -> (f32, f32) {
        match &acts.ffn {
            FfnActs::Moe(m) => (m.aux_loss, m.z_loss),
            FfnActs::Dense { .. } => (0.0, 0.0),
        }
    }
}
