//! The decoder-only transformer: embeddings, blocks, final norm and head, with the activation
//! buffers of one (B, T) shape allocated once and reused by every step.
//!
//! `forward` -> `loss_and_grad` (fused softmax cross-entropy, writes dlogits over the logits) ->
//! `backward`. A forward's [`Mode`] decides dropout and whether MoE routing is counted; backward
//! replays the dropout of the forward before it. With gradient checkpointing only the residual stream between blocks is kept; each
//! block's internals are recomputed, one block at a time, in backward.

use std::collections::HashMap;
use truthgpt_config::{ModelConfig, NormPosition, Positional};

use truthgpt_engine::loss::{self, DistillationLoss};
use truthgpt_engine::matmul::{Gemm, Precision};
use truthgpt_engine::qmatmul::QMatrix;
use truthgpt_engine::{embedding, rng::dropout_inplace};

use crate::block::{Block, BlockActs, BlockScratch, DropoutSeeds, FeedForward, Pass};
use crate::error::{ModelError, Result};
use crate::ffn::Ffn;
use crate::linear::{Linear, Norm, NormSaved};
use crate::moe::Moe;
use crate::params::{Grads, Init, ParamBuilder, ParamSpec, P};

#[derive(Debug, Clone)]
pub(crate) enum PositionTable {
    /// Positions act inside attention (RoPE, ALiBi, relative), or nowhere.
    None,
    Learned(P),
    /// The sinusoidal (T, C) table.
    Fixed(Vec<f32>),
}

impl PositionTable {
    /// The (max_seq_len, C) table added to the token embeddings, if positions act there.
    pub(crate) fn table<'a>(&'a self, params: &'a [f32]) -> Option<&'a [f32]> {
        match self {
            PositionTable::Learned(p) => Some(p.of(params)),
            PositionTable::Fixed(table) => Some(table),
            PositionTable::None => None,
        }
    }
}

/// What a forward is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A training step: dropout masks drawn from `dropout_seed` (when the config has dropout),
    /// and the MoE token counters and aux-free balancing see the batch.
    Train { dropout_seed: u64 },
    /// Evaluation: no dropout, nothing counted.
    Eval,
}

/// The inputs of one pre-norm dense block's linear layers ([`Model::linear_inputs`]), each
/// `(rows, that layer's input width)`.
#[derive(Debug, Clone, Copy)]
pub struct LinearInputs<'a> {
    pub rows: usize,
    /// `norm1(x)`, the input of the attention's `qkv`.
    pub qkv: &'a [f32],
    /// The attention's output before `proj`.
    pub proj: &'a [f32],
    /// `norm2(mid)`, the input of the feed-forward's `fc1`.
    pub fc1: &'a [f32],
    /// The feed-forward's activation, the input of `fc2`.
    pub fc2: &'a [f32],
}

#[derive(Debug, Clone)]
pub struct Model {
    pub config: ModelConfig,
    pub specs: Vec<ParamSpec>,
    pub params: Vec<f32>,
    /// Gradients of the trainable parameters: all of them, or only the adapters' once the base
    /// is frozen ([`Model::add_lora`]).
    pub grads: Grads,
    pub(crate) wte: P,
    /// The token embedding in quantized blocks, when `wte` is empty.
    pub(crate) wte_quant: Option<QMatrix>,
    pub(crate) positions: PositionTable,
    /// Unique parameter sets; layer `l` uses `blocks[l % blocks.len()]` (one set when shared).
    pub(crate) blocks: Vec<Block>,
    pub(crate) final_norm: Option<Norm>,
    pub(crate) head: Linear,
    checkpointing: bool,
    state: Option<State>,
}

/// Buffers for one (B, T); shapes in the comments.
#[derive(Debug, Clone)]
struct State {
    b: usize,
    t: usize,
    /// (N)
    tokens: Vec<u32>,
    /// (L + 1, N, C): the input of every block and the output of the last.
    residual: Vec<f32>,
    /// One per layer, or a single reused one under checkpointing.
    acts: Vec<BlockActs>,
    scratch: BlockScratch,
    final_norm: NormSaved,
    /// (N, C): the head's input.
    head_in: Vec<f32>,
    /// (N, V): logits, overwritten by dlogits in `loss_and_grad`.
    logits: Vec<f32>,
    /// (N)
    losses: Vec<f32>,
    /// (N, C) x 2: the residual gradient and the head's input gradient.
    dres: Vec<f32>,
    dhead_in: Vec<f32>,
    logits_are_grads: bool,
    router_losses: (f32, f32),
    /// The last forward's dropout seed (`None`: no dropout), which its backward replays.
    dropout_seed: Option<u64>,
}

impl Model {
    /// Builds a model with freshly initialised parameters. The config must be validated.
    pub fn new(config: &ModelConfig, seed: u64) -> Self {
        Self::build(config, ParamBuilder::default(), |pb| pb.finish(seed))
    }

    /// Builds a model whose parameters are all zero, to load weights into.
    pub fn zeroed(config: &ModelConfig) -> Self {
        Self::build(config, ParamBuilder::default(), ParamBuilder::finish_zeroed)
    }

    /// [`Model::zeroed`], except that the matrices in `quantized` (by spec name: the token
    /// embedding and any linear layer's `weight`) stay in their blocks and take no room in the
    /// flat buffers. Such a model runs forwards only: [`Model::is_quantized`].
    pub fn zeroed_quantized(config: &ModelConfig, quantized: HashMap<String, QMatrix>) -> Self {
        Self::build(config, ParamBuilder::with_quantized(quantized), ParamBuilder::finish_zeroed)
    }

    fn build(
        config: &ModelConfig,
        mut pb: ParamBuilder,
        finish: impl FnOnce(ParamBuilder) -> (Vec<ParamSpec>, Vec<f32>),
    ) -> Self {
        let m = config;
        let (wte, wte_quant) = match pb.take_quantized("embed.tokens", [m.vocab_size, m.d_model]) {
            Some((wte, q)) => (wte, Some(q)),
            None => (pb.add("embed.tokens", &[m.vocab_size, m.d_model], Init::Normal(m.init_std)), None),
        };
        let positions = match m.positional {
            Positional::Learned => PositionTable::Learned(pb.add(
                "embed.positions",
                &[m.max_seq_len, m.d_model],
                Init::Normal(m.init_std),
            )),
            Positional::Sinusoidal => {
                let mut table = vec![0.0; m.max_seq_len * m.d_model];
                embedding::sinusoidal_table(&mut table, m.max_seq_len, m.d_model);
                PositionTable::Fixed(table)
            }
            Positional::Rope | Positional::Alibi | Positional::Relative => PositionTable::None,
        };
        let unique = if m.share_layers { 1 } else { m.n_layers };
        let blocks = (0..unique).map(|l| pb.scope(format!("blocks.{l}"), |pb| Block::new(pb, m))).collect();
        let final_norm = (m.norm_position == NormPosition::Pre)
            .then(|| Norm::new(&mut pb, "norm_f", m.norm, m.d_model, m.norm_eps, m.bias));
        let head = if m.tie_embeddings {
            Linear {
                weight: wte,
                bias: None,
                inp: m.d_model,
                out: m.vocab_size,
                precision: Precision::F32,
                quant: wte_quant.clone(),
                adapters: Vec::new(),
            }
        } else {
            Linear::new(&mut pb, "head", m.d_model, m.vocab_size, false, m.init_std)
        };
        let (specs, params) = finish(pb);
        let grads = Grads::new(0, params.len());
        Model {
            config: m.clone(),
            specs,
            params,
            grads,
            wte,
            wte_quant,
            positions,
            blocks,
            final_norm,
            head,
            checkpointing: false,
            state: None,
        }
    }

    pub fn num_params(&self) -> usize {
        // Quantized tensors live in their modules' blocks, not in `params`; they count too.
        let quantized: usize =
            self.specs.iter().filter(|s| s.quantized).map(|s| s.shape.iter().product::<usize>()).sum();
        self.params.len() + quantized
    }

    /// Whether some weights are in quantized blocks: such a model runs forwards (evaluation,
    /// generation, serving) but cannot be trained or saved as f32.
    pub fn is_quantized(&self) -> bool {
        self.specs.iter().any(|s| s.quantized)
    }

    /// Recompute block activations in backward instead of keeping them (frees the buffers now).
    pub fn set_gradient_checkpointing(&mut self, on: bool) {
        if self.checkpointing != on {
            self.checkpointing = on;
            self.state = None;
        }
    }

    /// Runs every linear layer's products at `precision` (mixed precision: bf16 operands, f32
    /// sums and f32 weights; see [`Precision`]). Attention's products, the norms and the loss
    /// stay f32.
    pub fn set_precision(&mut self, precision: Precision) {
        let Model { blocks, head, .. } = self;
        for block in blocks {
            let ffn: Vec<&mut Ffn> = match &mut block.ffn {
                FeedForward::Dense(ffn) => vec![ffn],
                FeedForward::Moe(moe) => {
                    moe.router.precision = precision;
                    moe.experts.iter_mut().collect()
                }
            };
            for ffn in ffn {
                ffn.fc1.precision = precision;
                ffn.fc2.precision = precision;
            }
            block.attn.qkv.precision = precision;
            block.attn.proj.precision = precision;
        }
        head.precision = precision;
    }

    /// The GEMM kernel the linear layers' products run on (the head's stands for all).
    pub fn linear_gemm(&self) -> Gemm {
        Gemm::for_precision(self.head.precision)
    }

    pub fn zero_grad(&mut self) {
        use rayon::prelude::*;
        self.grads.as_mut_slice().par_chunks_mut(1 << 16).for_each(|chunk| chunk.fill(0.0));
    }

    pub(crate) fn block(&self, layer: usize) -> &Block {
        &self.blocks[layer % self.blocks.len()]
    }

    /// The MoE layers' modules (router counters, selection bias); empty for dense models.
    pub fn moe_layers(&self) -> impl Iterator<Item = &Moe> {
        self.blocks.iter().filter_map(|b| match &b.ffn {
            FeedForward::Moe(moe) => Some(moe),
            FeedForward::Dense(_) => None,
        })
    }

    /// Applies aux-free balancing after an optimiser step (a no-op unless `balancing: bias`).
    pub fn update_selection_bias(&mut self) {
        for block in &mut self.blocks {
            if let FeedForward::Moe(moe) = &mut block.ffn {
                moe.update_selection_bias();
            }
        }
    }

    fn ensure_state(&mut self, b: usize, t: usize) {
        if self.state.as_ref().is_some_and(|s| s.b == b && s.t == t) {
            return;
        }
        let (n, c, v, l) = (b * t, self.config.d_model, self.config.vocab_size, self.config.n_layers);
        let kept = if self.checkpointing { 1 } else { l };
        self.state = Some(State {
            b,
            t,
            tokens: vec![0; n],
            residual: vec![0.0; (l + 1) * n * c],
            acts: (0..kept).map(|layer| self.block(layer).acts(b, t)).collect(),
            scratch: self.blocks[0].scratch(b, t),
            final_norm: NormSaved::new(n),
            head_in: vec![0.0; n * c],
            logits: vec![0.0; n * v],
            losses: vec![0.0; n],
            dres: vec![0.0; n * c],
            dhead_in: vec![0.0; n * c],
            logits_are_grads: false,
            router_losses: (0.0, 0.0),
            dropout_seed: None,
        });
    }

    /// Bytes of activation buffers kept between forward and backward at the current shape
    /// (residual stream plus per-block saved tensors, excluding logits and scratch).
    pub fn activation_bytes(&self) -> usize {
        fn block_floats(a: &BlockActs) -> usize {
            let ffn = match &a.ffn {
                crate::block::FfnActs::Dense { h, a } => h.len() + a.len(),
                crate::block::FfnActs::Moe(moe) => moe.saved_elements(),
            };
            a.norm1.mean.len() * 2
                + a.norm2.mean.len() * 2
                + a.sum_or_norm1.len()
                + a.attn.qkv.len()
                + a.attn.out.len()
                + a.attn.lse.len()
                + a.mid.len()
                + a.sum_or_norm2.len()
                + a.branch.len()
                + ffn
        }
        self.state
            .as_ref()
            .map_or(0, |s| 4 * (s.residual.len() + s.acts.iter().map(block_floats).sum::<usize>()))
    }

    /// Checks that `tokens` (or targets) fill a (B, T) batch of in-vocabulary ids.
    pub fn check_batch(&self, tokens: &[u32], b: usize, t: usize) -> Result<()> {
        if b == 0 || t == 0 {
            return Err(ModelError::EmptyBatch { b, t });
        }
        if t > self.config.max_seq_len {
            return Err(ModelError::SequenceTooLong { t, max: self.config.max_seq_len });
        }
        if tokens.len() != b * t {
            return Err(ModelError::BatchShape { b, t, expected: b * t, got: tokens.len() });
        }
        let vocab = self.config.vocab_size;
        match tokens.iter().position(|&id| id as usize >= vocab) {
            Some(position) => Err(ModelError::TokenOutOfRange { id: tokens[position], position, vocab }),
            None => Ok(()),
        }
    }

    /// Runs the model on `tokens (B, T)` and returns the logits (B*T, V).
    pub fn forward(&mut self, tokens: &[u32], b: usize, t: usize, mode: Mode) -> Result<&[f32]> {
        self.check_batch(tokens, b, t)?;
        self.ensure_state(b, t);
        let (n, c, layers) = (b * t, self.config.d_model, self.config.n_layers);
        let dropout = self.config.dropout;
        let dropout_seed = match mode {
            Mode::Train { dropout_seed } if dropout > 0.0 => Some(dropout_seed),
            Mode::Train { .. } | Mode::Eval => None,
        };
        let Model {
            params, blocks, state, positions, wte, wte_quant, final_norm, head, checkpointing, ..
        } = self;
        let s = state.as_mut().expect("state was just ensured");
        s.tokens.copy_from_slice(tokens);
        s.logits_are_grads = false;
        s.dropout_seed = dropout_seed;
        let residual = &mut s.residual[..n * c];
        embed(residual, tokens, wte.of(params), wte_quant.as_ref(), positions.table(params), t, c);
        if let Some(seed) = dropout_seed {
            dropout_inplace(&mut s.residual[..n * c], dropout, seed ^ EMBEDDING_DROPOUT);
        }
        let mut router_losses = (0.0, 0.0);
        for layer in 0..layers {
            let (x, y) = s.residual.split_at_mut((layer + 1) * n * c);
            let acts = &mut s.acts[if *checkpointing { 0 } else { layer }];
            let unique = blocks.len();
            let pass = match mode {
                Mode::Train { .. } => Pass::Train { seeds: dropout_seeds(dropout_seed, layer) },
                Mode::Eval => Pass::Eval,
            };
            blocks[layer % unique].forward(params, acts, y, &x[layer * n * c..], b, t, pass);
            let (aux, z) = Block::router_losses(acts);
            router_losses = (router_losses.0 + aux, router_losses.1 + z);
        }
        s.router_losses = router_losses;
        let last = &s.residual[layers * n * c..];
        match final_norm {
            Some(norm) => norm.forward(params, &mut s.head_in, &mut s.final_norm, last, n),
            None => s.head_in.copy_from_slice(last),
        }
        head.forward(params, &mut s.logits, &s.head_in, n);
        Ok(&s.logits[..n * self.config.vocab_size])
    }

    /// Runs block `layer` again (in eval mode) on the input it had in the last forward, after its
    /// weights changed, overwriting its activations and its output, which is the next block's
    /// input; the later blocks and the logits are left stale. One-shot pruning calls it layer by
    /// layer, so each block is calibrated on the outputs of the already-pruned blocks before it.
    pub fn rerun_block(&mut self, layer: usize) -> Result<()> {
        let Model { params, blocks, state, checkpointing, config, .. } = self;
        let s = state
            .as_mut()
            .filter(|_| !*checkpointing && layer < config.n_layers)
            .ok_or(ModelError::NoActivations("rerunning a block"))?;
        let (n, c, unique) = (s.b * s.t, config.d_model, blocks.len());
        let (x, y) = s.residual.split_at_mut((layer + 1) * n * c);
        blocks[layer % unique].forward(
            params,
            &mut s.acts[layer],
            y,
            &x[layer * n * c..],
            s.b,
            s.t,
            Pass::Eval,
        );
        Ok(())
    }

    /// What block `layer`'s linear layers read in the last forward, for calibrating quantization
    /// (AWQ): `None` unless that forward kept every block's activations (no checkpointing) and the
    /// block is pre-norm and dense.
    pub fn linear_inputs(&self, layer: usize) -> Option<LinearInputs<'_>> {
        let s = self.state.as_ref().filter(|_| !self.checkpointing && layer < self.config.n_layers)?;
        if self.config.norm_position != NormPosition::Pre {
            return None;
        }
        // The buffers are allocated for exactly the last forward's (B, T).
        let acts = &s.acts[layer];
        let crate::block::FfnActs::Dense { a, .. } = &acts.ffn else { return None };
        Some(LinearInputs {
            rows: s.b * s.t,
            qkv: &acts.sum_or_norm1,
            proj: &acts.attn.out,
            fc1: &acts.sum_or_norm2,
            fc2: a,
        })
    }

    /// The experts every token chose in the last forward, one (B*T, k) vector per MoE layer.
    /// Under gradient checkpointing only the last recomputed layer is kept, so this is empty.
    pub fn routing(&self) -> Vec<&[u32]> {
        match &self.state {
            Some(s) if !self.checkpointing => s
                .acts
                .iter()
                .filter_map(|a| match &a.ffn {
                    crate::block::FfnActs::Moe(m) => Some(&m.choices()[..s.b * s.t * self.config.moe.top_k]),
                    crate::block::FfnActs::Dense { .. } => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Sum over layers of the (aux, z) router losses of the last forward.
    pub fn router_losses(&self) -> (f32, f32) {
        self.state.as_ref().map_or((0.0, 0.0), |s| s.router_losses)
    }

    fn check_targets(&self, targets: &[u32]) -> Result<&State> {
        let s = self.state.as_ref().ok_or(ModelError::NoForward)?;
        if s.logits_are_grads {
            return Err(ModelError::NoForward);
        }
        let n = s.b * s.t;
        if targets.len() != n {
            return Err(ModelError::BatchShape { b: s.b, t: s.t, expected: n, got: targets.len() });
        }
        let vocab = self.config.vocab_size;
        if let Some(position) = targets.iter().position(|&id| id as usize >= vocab) {
            return Err(ModelError::TokenOutOfRange { id: targets[position], position, vocab });
        }
        Ok(s)
    }

    /// Mean cross-entropy of the last forward's logits, leaving them intact.
    pub fn loss(&mut self, targets: &[u32]) -> Result<f32> {
        self.check_targets(targets)?;
        let v = self.config.vocab_size;
        let s = self.state.as_mut().expect("checked");
        Ok(loss::cross_entropy(&mut s.losses, &s.logits, targets, v))
    }

    /// Mean cross-entropy of the last forward, and the gradient of `grad_scale * loss` with
    /// respect to the logits, written over them. Call [`Model::backward`] next.
    pub fn loss_and_grad(&mut self, targets: &[u32], grad_scale: f32) -> Result<f32> {
        self.check_targets(targets)?;
        let v = self.config.vocab_size;
        let s = self.state.as_mut().expect("checked");
        let n = targets.len();
        s.logits_are_grads = true;
        Ok(loss::cross_entropy_fused(
            &mut s.logits[..n * v],
            &mut s.losses,
            targets,
            v,
            grad_scale / n as f32,
        ))
    }

    /// [`Model::loss_and_grad`] for knowledge distillation: the gradient of `alpha * tau^2 *
    /// KL(softmax(teacher / tau) || softmax(logits / tau)) + (1 - alpha) * cross_entropy`, where
    /// `teacher` holds a teacher's logits for the same (B, T) tokens
    /// ([`truthgpt_engine::loss::distillation_fused`]).
    pub fn distillation_loss_and_grad(
        &mut self,
        targets: &[u32],
        teacher: &[f32],
        (tau, alpha): (f32, f32),
        grad_scale: f32,
    ) -> Result<DistillationLoss> {
        self.check_targets(targets)?;
        let (v, n) = (self.config.vocab_size, targets.len());
        if teacher.len() != n * v {
            return Err(ModelError::Tensor {
                name: "teacher logits".into(),
                problem: format!("{} values for {n} positions of a {v}-token vocabulary", teacher.len()),
            });
        }
        let s = self.state.as_mut().expect("checked");
        s.logits_are_grads = true;
        let mut kl = vec![0.0; n];
        Ok(loss::distillation_fused(
            &mut s.logits[..n * v],
            teacher,
            &mut s.losses,
            &mut kl,
            targets,
            v,
            (tau, alpha),
            grad_scale / n as f32,
        ))
    }

    /// Accumulates into `grads` the gradient of `grad_scale * cross_entropy + loss_scale * router
    /// losses`, where `grad_scale` was given to [`Model::loss_and_grad`].
    pub fn backward(&mut self, loss_scale: f32) -> Result<()> {
        if !self.state.as_ref().is_some_and(|s| s.logits_are_grads) {
            return Err(ModelError::NoForward);
        }
        let (c, layers) = (self.config.d_model, self.config.n_layers);
        let dropout = self.config.dropout;
        let Model { params, grads, blocks, state, positions, wte, final_norm, head, checkpointing, .. } =
            self;
        let s = state.as_mut().expect("checked");
        let (b, t) = (s.b, s.t);
        let n = b * t;
        head.backward(params, grads, Some(&mut s.dhead_in), &s.logits, &s.head_in, n, false);
        let last = &s.residual[layers * n * c..];
        match final_norm {
            Some(norm) => norm.backward(params, grads, &mut s.dres, &s.dhead_in, last, &s.final_norm, n),
            None => s.dres.copy_from_slice(&s.dhead_in),
        }
        let unique = blocks.len();
        for layer in (0..layers).rev() {
            let seeds = dropout_seeds(s.dropout_seed, layer);
            let (x, y) = s.residual.split_at_mut((layer + 1) * n * c);
            let x = &x[layer * n * c..];
            let acts = if *checkpointing {
                // Recompute this block's internals; its output is already in the residual stream.
                // The last block's are still in the shared buffer from the forward pass.
                if layer + 1 < layers {
                    let pass = Pass::Recompute { seeds };
                    blocks[layer % unique].forward(params, &mut s.acts[0], &mut y[..n * c], x, b, t, pass);
                }
                &s.acts[0]
            } else {
                &s.acts[layer]
            };
            blocks[layer % unique].backward(
                params,
                grads,
                &mut s.scratch,
                acts,
                &mut s.dres,
                x,
                b,
                t,
                seeds,
                loss_scale,
            );
        }
        if let Some(seed) = s.dropout_seed {
            dropout_inplace(&mut s.dres, dropout, seed ^ EMBEDDING_DROPOUT);
        }
        // With a tied head, `wte`'s gradient already holds the head's part; the lookup adds to it.
        let (dwte, dpositions) = match positions {
            PositionTable::Learned(p) => grads.pair_mut(*wte, Some(*p)),
            PositionTable::Fixed(_) | PositionTable::None => (grads.of_mut(*wte), None),
        };
        if let Some(dwte) = dwte {
            embedding::backward(dwte, dpositions, &s.dres, &s.tokens, t, c);
        }
        s.logits_are_grads = false;
        Ok(())
    }
}

/// Mixed into the step's dropout seed for the embedding dropout site.
const EMBEDDING_DROPOUT: u64 = 0x5DEE_CE66_D1CE_4E5B;

pub(crate) fn dropout_seeds(seed: Option<u64>, layer: usize) -> Option<DropoutSeeds> {
    seed.map(|s| {
        let base = s ^ (layer as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407);
        DropoutSeeds { attn: base ^ 1, ffn: base ^ 2 }
    })
}

/// Writes the embeddings of `tokens` (rows of `out`) from the f32 table `wte`, or from `quant`
/// when the table is in quantized blocks, plus row `n % t` of the position table when
/// positions act there.
pub(crate) fn embed(
    out: &mut [f32],
    tokens: &[u32],
    wte: &[f32],
    quant: Option<&QMatrix>,
    positions: Option<&[f32]>,
    t: usize,
    c: usize,
) {
    let Some(q) = quant else { return embedding::forward(out, tokens, wte, positions, t, c) };
    for (n, (row, &tok)) in out.chunks_exact_mut(c).zip(tokens).enumerate() {
        q.dequantize_row(tok as usize, row);
        if let Some(table) = positions {
            let p = n % t;
            row.iter_mut().zip(&table[p * c..(p + 1) * c]).for_each(|(o, w)| *o += w);
        }
    }
}
