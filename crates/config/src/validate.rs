//! Relations between fields that serde cannot express.

use crate::{Config, ConfigError, FfnKind, Invalid, Positional, RopeScalingKind, MAX_HEAD_SIZE, MAX_TOP_K};

/// Collects every violation so a user fixes a config in one pass, not one error at a time.
#[derive(Default)]
struct Violations(Vec<Invalid>);

impl Violations {
    fn check(&mut self, ok: bool, field: &'static str, value: impl ToString, allowed: impl Into<String>) {
        if !ok {
            self.0.push(Invalid { field, value: value.to_string(), allowed: allowed.into() });
        }
    }

    fn positive(&mut self, field: &'static str, value: usize) {
        self.check(value > 0, field, value, "a positive integer");
    }
}

impl Config {
    /// Checks every cross-field rule; the error lists all violations.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut v = Violations::default();
        let m = &self.model;
        v.positive("model.vocab_size", m.vocab_size);
        v.positive("model.d_model", m.d_model);
        v.positive("model.n_layers", m.n_layers);
        v.positive("model.n_heads", m.n_heads);
        v.positive("model.n_kv_heads", m.n_kv_heads);
        v.positive("model.d_ff", m.d_ff);
        v.positive("model.max_seq_len", m.max_seq_len);
        if m.n_heads > 0 {
            v.check(
                m.d_model.is_multiple_of(m.n_heads),
                "model.n_heads",
                m.n_heads,
                format!("a divisor of d_model = {}", m.d_model),
            );
        }
        if m.n_kv_heads > 0 {
            v.check(
                m.n_heads.is_multiple_of(m.n_kv_heads),
                "model.n_kv_heads",
                m.n_kv_heads,
                format!("a divisor of n_heads = {} (n_heads for MHA, 1 for MQA)", m.n_heads),
            );
        }
        if m.n_heads > 0 && m.d_model.is_multiple_of(m.n_heads) {
            v.check(
                m.head_dim() <= MAX_HEAD_SIZE,
                "model.n_heads",
                m.n_heads,
                format!("enough heads that d_model / n_heads <= {MAX_HEAD_SIZE}"),
            );
        }
        v.check(m.norm_eps > 0.0, "model.norm_eps", m.norm_eps, "a positive number");
        v.check((0.0..1.0).contains(&m.dropout), "model.dropout", m.dropout, "a probability in [0, 1)");
        v.check(m.init_std > 0.0, "model.init_std", m.init_std, "a positive number");
        if let Some(window) = m.sliding_window {
            v.check(window > 0, "model.sliding_window", window, "a positive integer, or null for none");
        }
        match m.positional {
            Positional::Rope => {
                if m.n_heads > 0 && m.d_model.is_multiple_of(m.n_heads) {
                    v.check(
                        m.head_dim().is_multiple_of(2),
                        "model.d_model",
                        m.d_model,
                        "d_model / n_heads even, for RoPE",
                    );
                }
                v.check(
                    m.rope_theta > 0.0 && m.rope_theta.is_finite(),
                    "model.rope_theta",
                    m.rope_theta,
                    "a positive number",
                );
                if let Some(scaling) = m.rope_scaling {
                    v.check(
                        scaling.factor >= 1.0 && scaling.factor.is_finite(),
                        "model.rope_scaling.factor",
                        scaling.factor,
                        "a finite number, at least 1.0",
                    );
                    if matches!(scaling.kind, RopeScalingKind::Dynamic | RopeScalingKind::Llama3) {
                        v.check(
                            scaling.original_max_seq_len.is_some_and(|n| n > 0),
                            "model.rope_scaling.original_max_seq_len",
                            format!("{:?}", scaling.original_max_seq_len),
                            "a positive integer for `dynamic` and `llama3`",
                        );
                    }
                    if scaling.kind == RopeScalingKind::Llama3 {
                        v.check(
                            scaling.high_freq_factor > scaling.low_freq_factor
                                && scaling.low_freq_factor > 0.0,
                            "model.rope_scaling.high_freq_factor",
                            scaling.high_freq_factor,
                            format!("above low_freq_factor = {}, both positive", scaling.low_freq_factor),
                        );
                    }
                }
            }
            Positional::Relative => {
                v.check(m.relative_buckets >= 2, "model.relative_buckets", m.relative_buckets, "at least 2");
                v.check(
                    m.relative_max_distance > m.relative_buckets / 2,
                    "model.relative_max_distance",
                    m.relative_max_distance,
                    format!("more than relative_buckets / 2 = {}", m.relative_buckets / 2),
                );
            }
            Positional::Learned | Positional::Sinusoidal | Positional::Alibi => {}
        }
        if let Some(groups) = m.expert_groups() {
            let moe = &m.moe;
            let total: usize = groups.iter().map(|g| g.count).sum();
            if m.ffn == FfnKind::Moe {
                v.positive("model.moe.n_experts", moe.n_experts);
            } else {
                v.check(!groups.is_empty(), "model.pimoe.groups", "[]", "at least one expert group");
                for group in &groups {
                    v.check(group.count > 0, "model.pimoe.groups.count", group.count, "a positive integer");
                    v.check(group.width > 0, "model.pimoe.groups.width", group.width, "a positive integer");
                }
            }
            v.check(
                moe.top_k >= 1 && moe.top_k <= total,
                "model.moe.top_k",
                moe.top_k,
                format!("between 1 and the number of experts ({total})"),
            );
            v.check(moe.top_k <= MAX_TOP_K, "model.moe.top_k", moe.top_k, format!("at most {MAX_TOP_K}"));
            if !moe.dropless {
                v.check(
                    moe.capacity_factor > 0.0,
                    "model.moe.capacity_factor",
                    moe.capacity_factor,
                    "a positive number",
                );
            }
            v.check(
                moe.aux_loss_coef >= 0.0,
                "model.moe.aux_loss_coef",
                moe.aux_loss_coef,
                "a non-negative number",
            );
            v.check(
                moe.z_loss_coef >= 0.0,
                "model.moe.z_loss_coef",
                moe.z_loss_coef,
                "a non-negative number",
            );
            v.check(
                moe.bias_update_rate >= 0.0,
                "model.moe.bias_update_rate",
                moe.bias_update_rate,
                "a non-negative number",
            );
        }

        let t = &self.train;
        v.positive("train.batch_size", t.batch_size);
        v.positive("train.seq_len", t.seq_len);
        // A fine-tune's `model:` is the base's, put in place once the base is read, which checks
        // this then (`finetune::start`); before, the schema's default context would be used.
        v.check(
            t.base.is_some() || t.seq_len <= m.max_seq_len,
            "train.seq_len",
            t.seq_len,
            format!("at most model.max_seq_len = {}", m.max_seq_len),
        );
        v.positive("train.steps", t.steps);
        v.positive("train.grad_accum", t.grad_accum);
        v.check(t.lr > 0.0, "train.lr", t.lr, "a positive number");
        v.check(
            t.min_lr >= 0.0 && t.min_lr <= t.lr,
            "train.min_lr",
            t.min_lr,
            format!("in [0, lr = {}]", t.lr),
        );
        v.check(t.weight_decay >= 0.0, "train.weight_decay", t.weight_decay, "a non-negative number");
        for beta in t.betas {
            v.check(
                (0.0..1.0).contains(&beta),
                "train.betas",
                format!("{:?}", t.betas),
                "two numbers in [0, 1)",
            );
        }
        v.check(t.eps > 0.0, "train.eps", t.eps, "a positive number");
        v.check(
            t.grad_clip >= 0.0,
            "train.grad_clip",
            t.grad_clip,
            "a non-negative number (0 turns clipping off)",
        );
        v.positive("train.eval_batches", t.eval_batches);
        v.positive("train.keep_checkpoints", t.keep_checkpoints);
        if let Some(lora) = &t.lora {
            v.check(t.base.is_some(), "train.lora", "set", "train.base too: adapters go on a base model");
            v.positive("train.lora.rank", lora.rank);
            v.check(
                lora.alpha.is_finite() && lora.alpha > 0.0,
                "train.lora.alpha",
                lora.alpha,
                "a positive number",
            );
            v.check(
                !lora.targets.is_empty() && lora.targets.iter().all(|t| !t.is_empty()),
                "train.lora.targets",
                format!("{:?}", lora.targets),
                "one or more projection names (q_proj, v_proj, ...)",
            );
        }

        if let Some(distill) = &t.distill {
            v.check(
                !distill.teacher.as_os_str().is_empty(),
                "train.distill.teacher",
                "\"\"",
                "the teacher model's path",
            );
            v.check(
                distill.temperature.is_finite() && distill.temperature > 0.0,
                "train.distill.temperature",
                distill.temperature,
                "a positive number",
            );
            v.check(
                (0.0..=1.0).contains(&distill.alpha),
                "train.distill.alpha",
                distill.alpha,
                "a weight in [0, 1]",
            );
        }

        let d = &self.data;
        v.check(!d.jsonl_field.is_empty(), "data.jsonl_field", "\"\"", "a field name");
        v.check(
            d.val_fraction > 0.0 && d.val_fraction <= 0.5,
            "data.val_fraction",
            d.val_fraction,
            "a fraction in (0, 0.5]",
        );

        if v.0.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid { invalid: v.0 })
        }
    }
}
