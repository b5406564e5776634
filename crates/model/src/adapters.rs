//! A model's LoRA adapters: attaching them (which freezes the base), merging them into the base
//! weights and taking them out again.

use std::ops::Range;

use truthgpt_engine::rng::Rng;

use crate::block::FeedForward;
use crate::error::{ModelError, Result};
use crate::linear::Linear;
use crate::lora::Lora;
use crate::model::Model;
use crate::params::{Grads, Init, ParamSpec, P};

/// Where one adapter goes: a linear layer by its tensors' prefix (`blocks.0.attn.qkv`), the
/// part of it (`q_proj`, or the layer's own last name for all of it) and that part's output rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoraSite {
    pub linear: String,
    pub part: String,
    pub rows: Range<usize>,
}

/// Rank and scaling of the adapters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoraShape {
    pub rank: usize,
    pub alpha: f32,
    /// rsLoRA (Kalajdzievski 2023): scale by `alpha / sqrt(rank)` instead of `alpha / rank`.
    pub rslora: bool,
}

impl LoraShape {
    pub fn scale(&self) -> f32 {
        if self.rslora {
            self.alpha / (self.rank as f32).sqrt()
        } else {
            self.alpha / self.rank as f32
        }
    }
}

impl Model {
    /// Every linear layer, named by its tensors' prefix, in the order of the spec table (the
    /// head last, as `head` even when it shares the token embedding).
    pub fn linears(&self) -> Vec<(String, &Linear)> {
        let mut out = Vec::new();
        for (l, block) in self.blocks.iter().enumerate() {
            let prefix = format!("blocks.{l}");
            out.push((format!("{prefix}.attn.qkv"), &block.attn.qkv));
            out.push((format!("{prefix}.attn.proj"), &block.attn.proj));
            match &block.ffn {
                FeedForward::Dense(ffn) => {
                    out.push((format!("{prefix}.ffn.fc1"), &ffn.fc1));
                    out.push((format!("{prefix}.ffn.fc2"), &ffn.fc2));
                }
                FeedForward::Moe(moe) => {
                    out.push((format!("{prefix}.ffn.router"), &moe.router));
                    for (e, expert) in moe.experts.iter().enumerate() {
                        out.push((format!("{prefix}.ffn.experts.{e}.fc1"), &expert.fc1));
                        out.push((format!("{prefix}.ffn.experts.{e}.fc2"), &expert.fc2));
                    }
                }
            }
        }
        out.push(("head".into(), &self.head));
        out
    }

    fn linear_mut(&mut self, name: &str) -> Option<&mut Linear> {
        if name == "head" {
            return Some(&mut self.head);
        }
        let rest = name.strip_prefix("blocks.")?;
        let (layer, path) = rest.split_once('.')?;
        let block = self.blocks.get_mut(layer.parse::<usize>().ok()?)?;
        match (path, &mut block.ffn) {
            ("attn.qkv", _) => Some(&mut block.attn.qkv),
            ("attn.proj", _) => Some(&mut block.attn.proj),
            ("ffn.fc1", FeedForward::Dense(ffn)) => Some(&mut ffn.fc1),
            ("ffn.fc2", FeedForward::Dense(ffn)) => Some(&mut ffn.fc2),
            ("ffn.router", FeedForward::Moe(moe)) => Some(&mut moe.router),
            (path, FeedForward::Moe(moe)) => {
                let (e, fc) = path.strip_prefix("ffn.experts.")?.split_once('.')?;
                let expert = moe.experts.get_mut(e.parse::<usize>().ok()?)?;
                match fc {
                    "fc1" => Some(&mut expert.fc1),
                    "fc2" => Some(&mut expert.fc2),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// Whether any adapter is attached.
    pub fn has_lora(&self) -> bool {
        self.linears().iter().any(|(_, l)| !l.adapters.is_empty())
    }

    /// Every adapter with its layer's name.
    pub fn adapters(&self) -> Vec<(String, &Lora)> {
        let linears = self.linears();
        linears.into_iter().flat_map(|(name, l)| l.adapters.iter().map(move |a| (name.clone(), a))).collect()
    }

    /// Attaches an adapter at each of `sites` and freezes everything that was there before, so
    /// that only the adapters train: `A` is drawn from `seed` as PEFT does (uniform in
    /// `±1/sqrt(IN)`, Kaiming's with `a = sqrt(5)`), `B` is zero. The tensors are named
    /// `<linear>.lora.<part>.A` and `.B`, and weight-decayed as any matrix.
    pub fn add_lora(&mut self, sites: &[LoraSite], shape: LoraShape, seed: u64) -> Result<()> {
        let bad = |problem: String| Err(ModelError::Lora(problem));
        if shape.rank == 0 {
            return bad("the rank must be at least 1".into());
        }
        if !(shape.alpha.is_finite() && shape.alpha > 0.0) {
            return bad(format!("alpha must be a positive number, not {}", shape.alpha));
        }
        if sites.is_empty() {
            return bad("no layer to adapt".into());
        }
        if self.has_lora() {
            return bad("this model already has adapters".into());
        }
        let mut rng = Rng::new(seed);
        let mut offset = self.params.len();
        let mut new_specs = Vec::new();
        for site in sites {
            let linear = self.linear_mut(&site.linear).ok_or_else(|| {
                ModelError::Lora(format!("the model has no linear layer `{}`", site.linear))
            })?;
            let (inp, out) = (linear.inp, linear.out);
            let rows = site.rows.clone();
            if rows.is_empty() || rows.end > out {
                return bad(format!("`{}` has {out} output rows, not {rows:?}", site.linear));
            }
            if linear.adapters.iter().any(|a| a.rows.start < rows.end && rows.start < a.rows.end) {
                return bad(format!("two adapters on the same rows of `{}`", site.linear));
            }
            let name = format!("{}.lora.{}", site.linear, site.part);
            let a = P { offset, len: shape.rank * inp };
            let b = P { offset: a.offset + a.len, len: rows.len() * shape.rank };
            offset = b.offset + b.len;
            let a_init = Init::Uniform(1.0 / (inp as f32).sqrt());
            new_specs.push(spec(format!("{name}.A"), vec![shape.rank, inp], a, a_init));
            new_specs.push(spec(format!("{name}.B"), vec![rows.len(), shape.rank], b, Init::Zeros));
            linear.adapters.push(Lora::new(site.part.clone(), a, b, shape.rank, shape.scale(), rows));
        }
        let base = self.params.len();
        self.params.resize(offset, 0.0);
        for s in &new_specs {
            s.init.fill(s.handle.of_mut(&mut self.params), &mut rng);
        }
        self.specs.extend(new_specs);
        self.grads = Grads::new(base, offset);
        Ok(())
    }

    /// Adds every adapter's `scale * B A` into its layer's weight, after which the forward runs
    /// on the base alone. An f32 base only: quantized blocks cannot take the update exactly.
    pub fn merge_lora(&mut self) -> Result<()> {
        self.merge_with(false)
    }

    /// Takes merged adapters back out of the base weights.
    pub fn unmerge_lora(&mut self) -> Result<()> {
        self.merge_with(true)
    }

    /// This model with its adapters merged into the base weights and then dropped: a plain model
    /// of the base's architecture whose every weight trains again (a fine-tune of a fine-tune
    /// starts from it). An f32 base only, as for [`Model::merge_lora`].
    pub fn into_merged(mut self) -> Result<Model> {
        self.merge_lora()?;
        let base = self.grads.start();
        self.specs.retain(|s| s.handle.offset < base);
        self.params.truncate(base);
        let names: Vec<String> = self.linears().into_iter().map(|(name, _)| name).collect();
        for name in names {
            self.linear_mut(&name).expect("named by linears()").adapters.clear();
        }
        self.grads = Grads::new(0, base);
        Ok(self)
    }

    fn merge_with(&mut self, unmerge: bool) -> Result<()> {
        // Every update is computed from the adapters as they are, then applied.
        let mut updates = Vec::new();
        for (name, linear) in self.linears() {
            for adapter in linear.adapters.iter().filter(|a| a.merged == unmerge) {
                if linear.quant.is_some() {
                    return Err(ModelError::Quantized("take LoRA adapters into its weights"));
                }
                let rows = adapter.rows.start * linear.inp..adapter.rows.end * linear.inp;
                updates.push((name.clone(), linear.weight, rows, adapter.delta(&self.params, linear.inp)));
            }
        }
        let sign = if unmerge { -1.0 } else { 1.0 };
        for (name, weight, rows, delta) in updates {
            let w = &mut weight.of_mut(&mut self.params)[rows.clone()];
            w.iter_mut().zip(&delta).for_each(|(w, d)| *w += sign * d);
            let linear = self.linear_mut(&name).expect("named by linears()");
            for adapter in &mut linear.adapters {
                if adapter.rows.start * linear.inp == rows.start {
                    adapter.merged = !unmerge;
                }
            }
        }
        Ok(())
    }
}

fn spec(name: String, shape: Vec<usize>, handle: P, init: Init) -> ParamSpec {
    ParamSpec { name, shape, handle, init, decay: true, quantized: false }
}
