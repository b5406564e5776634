//! Mixture-of-Experts feed-forward: one token-level router over groups of experts.
//!
//! Plain MoE (Shazeer et al. 2017; Switch, Fedus et al. 2021; Mixtral, Jiang et al. 2024) is one
//! group of identical experts. PiMoE is several typed groups of different kinds and widths behind
//! the same router; balancing then acts within each type, so the router may prefer a type for a
//! token while the experts of that type still share its load.
//!
//! Forward: router logits -> softmax -> top-k (scores plus the aux-free bias when enabled) ->
//! gates renormalised over the chosen k (raw probability when k = 1, as in Switch) -> tokens
//! permuted by expert, capped at the capacity unless dropless -> per-expert GEMMs -> weighted
//! un-permute. A dropped assignment contributes nothing; the block's residual carries the token.
//! Capacity is per expert, `ceil(capacity_factor * tokens * k / E)` over all E experts, so in
//! PiMoE a type the router favours fills up first. Within a choice rank, earlier tokens in the
//! batch win a contested slot (all first choices are placed before any second choice).
//!
//! Losses (added to the training loss):
//! - balancing, per group `g`: `aux_loss_coef * E_g * sum_{i in g} f_i * P_i`, where `f_i` is the
//!   share of the group's assignments that chose expert `i` times `k`, and `P_i` the mean over
//!   tokens of the router softmax restricted to the group. With one group this is HF Mixtral's
//!   `load_balancing_loss_func`. Not applied under `balancing: bias`.
//! - router z-loss (Zoph et al. 2022): `z_loss_coef * mean_t logsumexp(logits_t)^2`.

use std::ops::Range;

use truthgpt_config::{Balancing, ExpertGroup, ModelConfig, MAX_TOP_K};
use truthgpt_engine::fastmath::{axpy, dot};
use truthgpt_engine::loss::max_and_sum_exp;

use crate::ffn::Ffn;
use crate::linear::Linear;
use crate::params::{Grads, ParamBuilder};

/// Marks an assignment dropped by the capacity limit.
const DROPPED: u32 = u32::MAX;

/// Experts of one type: `start..start + count` in expert order.
#[derive(Debug, Clone)]
pub struct Group {
    pub name: String,
    pub start: usize,
    pub count: usize,
}

/// Token counters, per expert, over every training forward since the model was built.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExpertStats {
    /// Assignments each expert processed.
    pub tokens: Vec<u64>,
    /// Assignments dropped by the capacity limit.
    pub dropped: u64,
}

#[derive(Debug, Clone)]
pub struct Moe {
    pub router: Linear,
    pub experts: Vec<Ffn>,
    pub groups: Vec<Group>,
    group_of: Vec<usize>,
    top_k: usize,
    /// `None` when dropless.
    capacity_factor: Option<f32>,
    aux_loss_coef: f32,
    z_loss_coef: f32,
    balancing: Balancing,
    bias_update_rate: f32,
    /// Aux-free balancing bias, added to scores for selection only (never to gates).
    pub selection_bias: Vec<f32>,
    pub stats: ExpertStats,
    /// Choices per expert since the last bias update.
    pending_load: Vec<u64>,
}

/// Saved for backward. Rows of the gathered buffers are ordered by expert.
#[derive(Debug, Clone)]
pub struct MoeActs {
    /// Router logits, then softmax over all experts, then softmax within each group; (N, E) each.
    logits: Vec<f32>,
    probs: Vec<f32>,
    group_probs: Vec<f32>,
    /// logsumexp of each row of logits (N), for the z-loss.
    lse: Vec<f32>,
    /// Chosen experts, their gates and their rows in the gathered buffers (or DROPPED); (N, k) each.
    choice: Vec<u32>,
    gates: Vec<f32>,
    slot: Vec<u32>,
    /// Rows per expert after capacity, choices per expert before it; (E).
    rows: Vec<usize>,
    chosen: Vec<usize>,
    /// First gathered row of each expert, and first element of its hidden activations; (E + 1).
    row_start: Vec<usize>,
    hidden_start: Vec<usize>,
    act_start: Vec<usize>,
    /// Gathered inputs and expert outputs (N k, C); hidden pre- and post-activation.
    x: Vec<f32>,
    y: Vec<f32>,
    h: Vec<f32>,
    a: Vec<f32>,
    pub aux_loss: f32,
    pub z_loss: f32,
}

impl MoeActs {
    /// Elements kept between forward and backward, for memory reports.
    pub fn saved_elements(&self) -> usize {
        self.logits.len()
            + self.probs.len()
            + self.group_probs.len()
            + self.lse.len()
            + self.choice.len()
            + self.gates.len()
            + self.slot.len()
            + self.x.len()
            + self.y.len()
            + self.h.len()
            + self.a.len()
    }

    /// The experts each token chose in the last forward, (N, k) row-major.
    pub fn choices(&self) -> &[u32] {
        &self.choice
    }

    /// Rows each expert processed in the last forward (E).
    pub fn rows_per_expert(&self) -> &[usize] {
        &self.rows
    }
}

/// Where each expert's rows, hidden and activation values start in the gathered buffers;
/// `E + 1` entries each.
struct Spans<'a> {
    rows: &'a [usize],
    hidden: &'a [usize],
    act: &'a [usize],
    c: usize,
}

/// Backward scratch shared by all layers.
#[derive(Debug, Clone)]
pub struct MoeScratch {
    dy: Vec<f32>,
    dx: Vec<f32>,
    dh: Vec<f32>,
    da: Vec<f32>,
    dlogits: Vec<f32>,
}

impl Moe {
    pub fn new(pb: &mut ParamBuilder, m: &ModelConfig, groups: &[ExpertGroup], proj_std: f32) -> Self {
        let moe = &m.moe;
        pb.scope("ffn", |pb| {
            let n_experts: usize = groups.iter().map(|g| g.count).sum();
            let router = Linear::new(pb, "router", m.d_model, n_experts, false, m.init_std);
            let mut experts = Vec::with_capacity(n_experts);
            let mut layout = Vec::with_capacity(groups.len());
            let mut group_of = Vec::with_capacity(n_experts);
            for (g, group) in groups.iter().enumerate() {
                layout.push(Group { name: group.name.clone(), start: experts.len(), count: group.count });
                for _ in 0..group.count {
                    let name = format!("experts.{}", experts.len());
                    experts.push(Ffn::new(pb, &name, m, group.kind, group.width, proj_std));
                    group_of.push(g);
                }
            }
            Moe {
                router,
                experts,
                groups: layout,
                group_of,
                top_k: moe.top_k,
                capacity_factor: (!moe.dropless).then_some(moe.capacity_factor),
                aux_loss_coef: if moe.balancing == Balancing::Aux { moe.aux_loss_coef } else { 0.0 },
                z_loss_coef: moe.z_loss_coef,
                balancing: moe.balancing,
                bias_update_rate: moe.bias_update_rate,
                selection_bias: vec![0.0; n_experts],
                stats: ExpertStats { tokens: vec![0; n_experts], dropped: 0 },
                pending_load: vec![0; n_experts],
            }
        })
    }

    fn n_experts(&self) -> usize {
        self.experts.len()
    }

    fn max_widths(&self) -> (usize, usize) {
        let hidden = self.experts.iter().map(Ffn::hidden_width).max().unwrap_or(0);
        let width = self.experts.iter().map(|e| e.width).max().unwrap_or(0);
        (hidden, width)
    }

    pub fn acts(&self, n: usize) -> MoeActs {
        let (e, k, c) = (self.n_experts(), self.top_k, self.router.inp);
        let (hidden, width) = self.max_widths();
        MoeActs {
            logits: vec![0.0; n * e],
            probs: vec![0.0; n * e],
            group_probs: vec![0.0; n * e],
            lse: vec![0.0; n],
            choice: vec![0; n * k],
            gates: vec![0.0; n * k],
            slot: vec![0; n * k],
            rows: vec![0; e],
            chosen: vec![0; e],
            row_start: vec![0; e + 1],
            hidden_start: vec![0; e + 1],
            act_start: vec![0; e + 1],
            x: vec![0.0; n * k * c],
            y: vec![0.0; n * k * c],
            h: vec![0.0; n * k * hidden],
            a: vec![0.0; n * k * width],
            aux_loss: 0.0,
            z_loss: 0.0,
        }
    }

    pub fn scratch(&self, n: usize) -> MoeScratch {
        let (k, c) = (self.top_k, self.router.inp);
        let (hidden, width) = self.max_widths();
        MoeScratch {
            dy: vec![0.0; n * k * c],
            dx: vec![0.0; n * k * c],
            dh: vec![0.0; n * k * hidden],
            da: vec![0.0; n * k * width],
            dlogits: vec![0.0; n * self.n_experts()],
        }
    }

    /// Per-expert capacity for `n` tokens, or unlimited when dropless.
    fn capacity(&self, n: usize) -> usize {
        match self.capacity_factor {
            Some(cf) => (cf as f64 * (n * self.top_k) as f64 / self.n_experts() as f64).ceil() as usize,
            None => usize::MAX,
        }
    }

    /// `y (N, C)` is written. Counting the routing is [`Moe::count`]'s, for training forwards.
    pub fn forward(&self, params: &[f32], acts: &mut MoeActs, y: &mut [f32], x: &[f32], n: usize) {
        let (e, k, c) = (self.n_experts(), self.top_k, self.router.inp);
        self.router.forward(params, &mut acts.logits, x, n);
        self.route(acts, n);
        self.dispatch(acts, n);

        // Gather, run each expert on its rows, then scatter back weighted by the gates.
        for t in 0..n {
            for r in 0..k {
                let slot = acts.slot[t * k + r];
                if slot != DROPPED {
                    let slot = slot as usize;
                    acts.x[slot * c..(slot + 1) * c].copy_from_slice(&x[t * c..(t + 1) * c]);
                }
            }
        }
        let MoeActs { x: gathered, h, a, y: expert_y, row_start, hidden_start, act_start, .. } = &mut *acts;
        let spans = Spans { rows: row_start, hidden: hidden_start, act: act_start, c };
        self.forward_experts(params, &spans, 0..e, h, a, expert_y, gathered);
        y[..n * c].fill(0.0);
        for t in 0..n {
            let out = &mut y[t * c..(t + 1) * c];
            for r in 0..k {
                let slot = acts.slot[t * k + r];
                if slot != DROPPED {
                    let slot = slot as usize;
                    axpy(out, acts.gates[t * k + r], &acts.y[slot * c..(slot + 1) * c]);
                }
            }
        }
        self.losses(acts, n);
    }

    /// Adds the routing of the forward that filled `acts` (`n` tokens) to the token counters and
    /// the bias balancer. Training forwards only: an evaluation, a decode step or a checkpointing
    /// recompute must not move the balancing.
    pub fn count(&mut self, acts: &MoeActs, n: usize) {
        for i in 0..self.n_experts() {
            self.stats.tokens[i] += acts.rows[i] as u64;
            self.pending_load[i] += acts.chosen[i] as u64;
        }
        self.stats.dropped += acts.slot[..n * self.top_k].iter().filter(|&&s| s == DROPPED).count() as u64;
    }

    /// Runs experts `range` on their gathered rows, the two halves of the range in parallel:
    /// experts write disjoint spans of `h`, `a` and `y`, which here start at the first expert's
    /// offsets. With few rows per expert (decoding), one expert's products are too small to
    /// split over threads, but the experts side by side are not. Recursion, not a task list, so
    /// a training step still allocates nothing.
    #[allow(clippy::too_many_arguments)]
    fn forward_experts(
        &self,
        params: &[f32],
        spans: &Spans,
        range: Range<usize>,
        h: &mut [f32],
        a: &mut [f32],
        y: &mut [f32],
        gathered: &[f32],
    ) {
        let (first, c) = (range.start, spans.c);
        if range.len() == 1 {
            let rows = spans.rows[first + 1] - spans.rows[first];
            if rows > 0 {
                let x = &gathered[spans.rows[first] * c..(spans.rows[first] + rows) * c];
                self.experts[first].forward(params, h, a, &mut y[..rows * c], x, rows);
            }
            return;
        }
        let mid = range.start + range.len() / 2;
        let (h1, h2) = h.split_at_mut(spans.hidden[mid] - spans.hidden[first]);
        let (a1, a2) = a.split_at_mut(spans.act[mid] - spans.act[first]);
        let (y1, y2) = y.split_at_mut((spans.rows[mid] - spans.rows[first]) * c);
        let mut left = || self.forward_experts(params, spans, first..mid, h1, a1, y1, gathered);
        let mut right = || self.forward_experts(params, spans, mid..range.end, h2, a2, y2, gathered);
        // A half without rows costs nothing; forking for it would (one token has k experts).
        match (spans.rows[mid] > spans.rows[first], spans.rows[range.end] > spans.rows[mid]) {
            (true, true) => drop(rayon::join(left, right)),
            (true, false) => left(),
            (false, true) => right(),
            (false, false) => {}
        }
    }

    /// Softmaxes, top-k choice and gates.
    fn route(&self, acts: &mut MoeActs, n: usize) {
        let (e, k) = (self.n_experts(), self.top_k);
        for t in 0..n {
            let logits = &acts.logits[t * e..(t + 1) * e];
            let (max, sum) = max_and_sum_exp(logits);
            acts.lse[t] = max + sum.ln();
            for (p, &l) in acts.probs[t * e..(t + 1) * e].iter_mut().zip(logits) {
                *p = (l - acts.lse[t]).exp();
            }
            for group in &self.groups {
                let range = t * e + group.start..t * e + group.start + group.count;
                let (max, sum) = max_and_sum_exp(&acts.logits[range.clone()]);
                let lse = max + sum.ln();
                for (q, &l) in acts.group_probs[range.clone()].iter_mut().zip(&acts.logits[range]) {
                    *q = (l - lse).exp();
                }
            }
            let probs = &acts.probs[t * e..(t + 1) * e];
            let choice = &mut acts.choice[t * k..(t + 1) * k];
            // Repeated arg-max: k is tiny; ties go to the lower index, so routing is deterministic.
            for r in 0..k {
                let mut best = usize::MAX;
                for i in 0..e {
                    if choice[..r].contains(&(i as u32)) {
                        continue;
                    }
                    let score = probs[i] + self.selection_bias[i];
                    if best == usize::MAX || score > probs[best] + self.selection_bias[best] {
                        best = i;
                    }
                }
                choice[r] = best as u32;
            }
            let chosen_sum: f32 = choice.iter().map(|&i| probs[i as usize]).sum();
            for r in 0..k {
                let p = probs[choice[r] as usize];
                acts.gates[t * k + r] = if k > 1 { p / chosen_sum } else { p };
            }
        }
    }

    /// Assigns every (token, choice) a gathered row, honouring capacity. Earlier ranks win: every
    /// token's first choice is placed before any second choice (GShard's priority).
    fn dispatch(&self, acts: &mut MoeActs, n: usize) {
        let (e, k, capacity) = (self.n_experts(), self.top_k, self.capacity(n));
        acts.rows[..e].fill(0);
        acts.chosen[..e].fill(0);
        for r in 0..k {
            for t in 0..n {
                let i = acts.choice[t * k + r] as usize;
                acts.chosen[i] += 1;
                acts.slot[t * k + r] = if acts.rows[i] < capacity {
                    acts.rows[i] += 1;
                    (acts.rows[i] - 1) as u32
                } else {
                    DROPPED
                };
            }
        }
        for i in 0..e {
            acts.row_start[i + 1] = acts.row_start[i] + acts.rows[i];
            acts.hidden_start[i + 1] = acts.hidden_start[i] + acts.rows[i] * self.experts[i].hidden_width();
            acts.act_start[i + 1] = acts.act_start[i] + acts.rows[i] * self.experts[i].width;
        }
        for (slot, &choice) in acts.slot[..n * k].iter_mut().zip(&acts.choice) {
            if *slot != DROPPED {
                *slot += acts.row_start[choice as usize] as u32;
            }
        }
    }

    /// The share `f_i` of expert `i` in the balancing loss, times `E_g * coef`: the constant that
    /// multiplies `P_i`, so it is also the loss's gradient with respect to `P_i`.
    fn balance_weight(&self, acts: &MoeActs, i: usize) -> f32 {
        let group = &self.groups[self.group_of[i]];
        let group_choices: usize = acts.chosen[group.start..group.start + group.count].iter().sum();
        let f = self.top_k as f32 * acts.chosen[i] as f32 / group_choices.max(1) as f32;
        self.aux_loss_coef * group.count as f32 * f
    }

    fn losses(&self, acts: &mut MoeActs, n: usize) {
        let e = self.n_experts();
        acts.aux_loss = (0..e)
            .map(|i| {
                let mean_prob = (0..n).map(|t| acts.group_probs[t * e + i]).sum::<f32>() / n as f32;
                self.balance_weight(acts, i) * mean_prob
            })
            .sum();
        acts.z_loss = self.z_loss_coef * acts.lse[..n].iter().map(|l| l * l).sum::<f32>() / n as f32;
    }

    /// `dx (N, C)` is written. `loss_scale` is the weight of this layer's aux and z losses in the
    /// objective being differentiated (1 / grad_accum in training).
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        params: &[f32],
        grads: &mut Grads,
        scratch: &mut MoeScratch,
        acts: &MoeActs,
        dx: &mut [f32],
        dy: &[f32],
        x: &[f32],
        n: usize,
        loss_scale: f32,
    ) {
        let (e, k, c) = (self.n_experts(), self.top_k, self.router.inp);
        let dlogits = &mut scratch.dlogits[..n * e];
        dlogits.fill(0.0);
        // Gate gradients, and each expert's output gradient `gate * dy`.
        for t in 0..n {
            let dy_t = &dy[t * c..(t + 1) * c];
            let (choice, gates) = (&acts.choice[t * k..(t + 1) * k], &acts.gates[t * k..(t + 1) * k]);
            let mut dgates = [0.0f32; MAX_TOP_K];
            for ((dgate, &slot), &gate) in dgates.iter_mut().zip(&acts.slot[t * k..(t + 1) * k]).zip(gates) {
                if slot == DROPPED {
                    continue;
                }
                let slot = slot as usize;
                *dgate = dot(dy_t, &acts.y[slot * c..(slot + 1) * c]);
                for (d, g) in scratch.dy[slot * c..(slot + 1) * c].iter_mut().zip(dy_t) {
                    *d = gate * g;
                }
            }
            // Gate -> router probabilities: g_r = p_r / S (k > 1) gives dp_r = (dg_r - sum_j dg_j g_j) / S.
            let probs = &acts.probs[t * e..(t + 1) * e];
            let mut dprobs = [0.0f32; MAX_TOP_K];
            if k > 1 {
                let chosen_sum: f32 = choice.iter().map(|&i| probs[i as usize]).sum();
                let weighted: f32 = dgates.iter().zip(gates).map(|(dg, g)| dg * g).sum();
                for (dp, dg) in dprobs.iter_mut().zip(&dgates[..k]) {
                    *dp = (dg - weighted) / chosen_sum;
                }
            } else {
                dprobs[0] = dgates[0];
            }
            // Softmax backward over all experts: dlogit_i = p_i (dp_i - sum_j p_j dp_j).
            let p_dot_dp: f32 = choice.iter().zip(&dprobs).map(|(&i, dp)| probs[i as usize] * dp).sum();
            let row = &mut dlogits[t * e..(t + 1) * e];
            for (i, d) in row.iter_mut().enumerate() {
                *d = -probs[i] * p_dot_dp;
            }
            for (&i, dp) in choice.iter().zip(&dprobs) {
                row[i as usize] += probs[i as usize] * dp;
            }
            // Balancing: dL/dq_{t,i} = weight_i / N, through the group's softmax.
            if self.aux_loss_coef > 0.0 {
                let group_probs = &acts.group_probs[t * e..(t + 1) * e];
                for group in &self.groups {
                    let range = group.start..group.start + group.count;
                    let dq = |i: usize| loss_scale * self.balance_weight(acts, i) / n as f32;
                    let q_dot_dq: f32 = range.clone().map(|i| group_probs[i] * dq(i)).sum();
                    for i in range {
                        row[i] += group_probs[i] * (dq(i) - q_dot_dq);
                    }
                }
            }
            // z-loss: d/dlogit_i of coef * lse^2 / N = coef * 2 lse p_i / N.
            let dz = loss_scale * self.z_loss_coef * 2.0 * acts.lse[t] / n as f32;
            for (d, p) in row.iter_mut().zip(probs) {
                *d += dz * p;
            }
        }
        for (i, expert) in self.experts.iter().enumerate() {
            let rows = acts.rows[i];
            if rows == 0 {
                continue;
            }
            let (r0, h0, a0) = (acts.row_start[i], acts.hidden_start[i], acts.act_start[i]);
            let span = r0 * c..(r0 + rows) * c;
            expert.backward(
                params,
                grads,
                &mut scratch.dh,
                &mut scratch.da,
                &mut scratch.dx[span.clone()],
                &scratch.dy[span.clone()],
                &acts.x[span],
                &acts.h[h0..],
                &acts.a[a0..],
                rows,
            );
        }
        // Un-gather the input gradients, then add the router's.
        dx[..n * c].fill(0.0);
        for t in 0..n {
            for r in 0..k {
                let slot = acts.slot[t * k + r];
                if slot != DROPPED {
                    let slot = slot as usize;
                    axpy(&mut dx[t * c..(t + 1) * c], 1.0, &scratch.dx[slot * c..(slot + 1) * c]);
                }
            }
        }
        self.router.backward(params, grads, Some(dx), dlogits, x, n, true);
    }

    /// Aux-free balancing (DeepSeek-V3): after each optimiser step, raise the selection bias of
    /// experts chosen less than their group's mean and lower it for those chosen more.
    pub fn update_selection_bias(&mut self) {
        if self.balancing == Balancing::Bias {
            for group in &self.groups {
                let range = group.start..group.start + group.count;
                let mean = self.pending_load[range.clone()].iter().sum::<u64>() as f32 / group.count as f32;
                for i in range {
                    let load = self.pending_load[i] as f32;
                    if load < mean {
                        self.selection_bias[i] += self.bias_update_rate;
                    } else if load > mean {
                        self.selection_bias[i] -= self.bias_update_rate;
                    }
                }
            }
        }
        self.pending_load.fill(0);
    }

    /// Share of assignments each group received since the counters started.
    pub fn group_utilisation(&self) -> Vec<(String, f64)> {
        let total = self.stats.tokens.iter().sum::<u64>().max(1) as f64;
        self.groups
            .iter()
            .map(|g| {
                (
                    g.name.clone(),
                    self.stats.tokens[g.start..g.start + g.count].iter().sum::<u64>() as f64 / total,
                )
            })
            .collect()
    }
}
