//! LoRA (Hu et al. 2021): a frozen linear layer plus a trainable low-rank update,
//! `y[:, rows] += scale * (x A^T) B^T` with `A (r, IN)`, `B (|rows|, r)` and `scale = alpha / r`
//! (`alpha / sqrt(r)` under rsLoRA).
//!
//! An adapter covers a span of its layer's output rows, so that one adapter can sit on the query
//! part of a fused `qkv` projection, as PEFT's `q_proj` does on an HF model. `B` starts at zero,
//! so a fresh adapter leaves the model's outputs as they were.
//!
//! The adapter's tensors live in the model's flat buffers after the base's, so the optimiser sees
//! only them once the base is frozen ([`crate::Grads`]). Forward and backward recompute `x A^T`
//! rather than keep it: it costs `r / OUT` of the base product.

use std::ops::Range;
use std::sync::Mutex;

use truthgpt_engine::matmul::{self, Op};

use crate::params::{Grads, P};

/// One low-rank adapter on a linear layer.
#[derive(Debug)]
pub struct Lora {
    /// The part of the layer it adapts: `q_proj`, `v_proj`, ... or the layer's own name.
    pub site: String,
    /// (r, IN)
    pub a: P,
    /// (|rows|, r)
    pub b: P,
    pub rank: usize,
    pub scale: f32,
    /// The layer's output rows it adds to.
    pub rows: Range<usize>,
    /// Added into the base weight ([`crate::Model::merge_lora`]): the forward skips it.
    pub merged: bool,
    /// `x A^T (N, r)`, its gradient (N, r) and `dy[:, rows] (N, |rows|)`, grown once and reused
    /// (a lock rather than a thread-local: MoE experts run their forwards on the pool in parallel).
    scratch: Mutex<Vec<f32>>,
}

impl Clone for Lora {
    fn clone(&self) -> Self {
        Lora {
            site: self.site.clone(),
            a: self.a,
            b: self.b,
            rank: self.rank,
            scale: self.scale,
            rows: self.rows.clone(),
            merged: self.merged,
            scratch: Mutex::default(),
        }
    }
}

impl Lora {
    pub fn new(site: String, a: P, b: P, rank: usize, scale: f32, rows: Range<usize>) -> Self {
        Lora { site, a, b, rank, scale, rows, merged: false, scratch: Mutex::default() }
    }

    fn with_scratch<T>(&self, len: usize, f: impl FnOnce(&mut [f32]) -> T) -> T {
        let mut scratch = self.scratch.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if scratch.len() < len {
            scratch.resize(len, 0.0);
        }
        f(&mut scratch[..len])
    }

    /// `y (N, OUT)[:, rows] += scale * (x (N, IN) A^T) B^T`.
    pub fn forward(&self, params: &[f32], y: &mut [f32], x: &[f32], n: usize, inp: usize, out: usize) {
        if self.merged {
            return;
        }
        let (r, width) = (self.rank, self.rows.len());
        self.with_scratch(n * (r + width), |scratch| {
            let (xa, update) = scratch.split_at_mut(n * r);
            matmul::matmul(xa, Op::N(&x[..n * inp]), Op::T(self.a.of(params)), n, inp, r, false);
            matmul::matmul(update, Op::N(xa), Op::T(self.b.of(params)), n, r, width, false);
            for (y, u) in y[..n * out].chunks_exact_mut(out).zip(update.chunks_exact(width)) {
                y[self.rows.clone()].iter_mut().zip(u).for_each(|(y, u)| *y += self.scale * u);
            }
        });
    }

    /// With `g = scale * dy[:, rows]`: `dB += g^T (x A^T)`, `dA += (g B)^T x`, `dx += (g B) A`.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        params: &[f32],
        grads: &mut Grads,
        dx: Option<&mut [f32]>,
        dy: &[f32],
        x: &[f32],
        n: usize,
        inp: usize,
        out: usize,
    ) {
        assert!(!self.merged, "backward through a merged LoRA adapter");
        let (r, width) = (self.rank, self.rows.len());
        let x = &x[..n * inp];
        self.with_scratch(n * (2 * r + width), |scratch| {
            let (xa, rest) = scratch.split_at_mut(n * r);
            let (dxa, g) = rest.split_at_mut(n * r);
            for (g, dy) in g.chunks_exact_mut(width).zip(dy[..n * out].chunks_exact(out)) {
                g.iter_mut().zip(&dy[self.rows.clone()]).for_each(|(g, dy)| *g = self.scale * dy);
            }
            matmul::matmul(dxa, Op::N(g), Op::N(self.b.of(params)), n, width, r, false);
            let (da, db) = grads.pair_mut(self.a, Some(self.b));
            if let Some(db) = db {
                matmul::matmul(xa, Op::N(x), Op::T(self.a.of(params)), n, inp, r, false);
                matmul::matmul(db, Op::T(g), Op::N(xa), width, n, r, true);
            }
            if let Some(da) = da {
                matmul::matmul(da, Op::T(dxa), Op::N(x), r, n, inp, true);
            }
            if let Some(dx) = dx {
                matmul::matmul(&mut dx[..n * inp], Op::N(dxa), Op::N(self.a.of(params)), n, r, inp, true);
            }
        });
    }

    /// `scale * B A`, the (|rows|, IN) update this adapter makes to its rows of the weight.
    pub fn delta(&self, params: &[f32], inp: usize) -> Vec<f32> {
        let (r, width) = (self.rank, self.rows.len());
        let mut delta = vec![0.0; width * inp];
        matmul::matmul(&mut delta, Op::N(self.b.of(params)), Op::N(self.a.of(params)), width, r, inp, false);
        delta.iter_mut().for_each(|d| *d *= self.scale);
        delta
    }
}
