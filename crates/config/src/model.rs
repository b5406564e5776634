//! The `model:` section: sizes and architectural choices of the transformer.

use serde::{Deserialize, Serialize};

/// Which normalisation every block (and the final norm) uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NormKind {
    LayerNorm,
    RmsNorm,
}

/// Where the norm sits relative to the residual: `pre` is GPT-2/Llama, `post` is the original transformer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NormPosition {
    Pre,
    Post,
}

/// How token positions enter the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Positional {
    /// A trained (max_seq_len, d_model) table added to the token embeddings (GPT-2).
    Learned,
    /// Fixed sine/cosine table added to the token embeddings (Vaswani et al.).
    Sinusoidal,
    /// Rotary embeddings applied to queries and keys (Su et al.; Llama).
    Rope,
    /// Per-head linear distance penalty on attention scores (Press et al.).
    Alibi,
    /// T5-style learned bias per (relative-position bucket, head) on attention scores.
    Relative,
}

/// RoPE context extension.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RopeScaling {
    pub kind: RopeScalingKind,
    /// Context extension factor; 1.0 leaves RoPE unchanged.
    pub factor: f32,
    /// The context the model was trained for (`dynamic`, `llama3`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_max_seq_len: Option<usize>,
    /// `llama3`: wavelengths above `original_max_seq_len / low_freq_factor` are fully scaled.
    #[serde(default = "default_low_freq_factor")]
    pub low_freq_factor: f32,
    /// `llama3`: wavelengths below `original_max_seq_len / high_freq_factor` are unchanged.
    #[serde(default = "default_high_freq_factor")]
    pub high_freq_factor: f32,
}

fn default_low_freq_factor() -> f32 {
    1.0
}

fn default_high_freq_factor() -> f32 {
    4.0
}

impl RopeScaling {
    /// Scaling of `kind` by `factor`, with the Llama 3 frequency bands at their defaults.
    pub fn new(kind: RopeScalingKind, factor: f32) -> Self {
        RopeScaling {
            kind,
            factor,
            original_max_seq_len: None,
            low_freq_factor: default_low_freq_factor(),
            high_freq_factor: default_high_freq_factor(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RopeScalingKind {
    /// Position interpolation: positions are divided by `factor`.
    Linear,
    /// NTK-aware: the base is raised to `theta * factor^(d/(d-2))`.
    Ntk,
    /// Dynamic NTK (HF `dynamic`): unchanged up to `original_max_seq_len`; beyond it, a sequence
    /// of length L uses base `theta * (factor L / original - (factor - 1))^(d/(d-2))`.
    Dynamic,
    /// Llama 3.1: low frequencies divided by `factor`, high ones kept, a smooth band between.
    Llama3,
}

/// The GELU of `mlp` and `geglu` feed-forwards, named as `torch.nn.functional.gelu`'s `approximate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GeluApproximate {
    /// The exact erf form.
    None,
    /// `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`, GPT-2's `gelu_new`.
    Tanh,
}

/// The feed-forward sub-layer of every block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FfnKind {
    /// `W2 gelu(W1 x)` with exact (erf) GELU.
    Mlp,
    /// `W2 (gelu(Wg x) * Wu x)`.
    Geglu,
    /// `W2 (silu(Wg x) * Wu x)`.
    Swiglu,
    /// A routed mixture of identical experts (see `moe`).
    Moe,
    /// A routed mixture of typed, heterogeneous experts (see `pimoe`).
    Pimoe,
}

/// The kind of one expert inside an MoE or PiMoE layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExpertKind {
    Mlp,
    Geglu,
    Swiglu,
}

/// How an MoE layer keeps its experts evenly loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Balancing {
    /// Switch-Transformer auxiliary loss `aux_loss_coef * E * sum_i f_i * P_i` over the E experts.
    Aux,
    /// DeepSeek-V3 auxiliary-loss-free balancing: a per-expert bias added to the router scores
    /// for selection only, nudged after every step towards the mean load.
    Bias,
}

/// Routing settings, shared by `ffn: moe` and `ffn: pimoe`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MoeConfig {
    /// Number of experts for `ffn: moe` (PiMoE counts its experts from `pimoe.groups`).
    pub n_experts: usize,
    /// Experts per token. With k > 1 the chosen gates are renormalised to sum to one (Mixtral);
    /// with k = 1 the gate is the router probability (Switch).
    pub top_k: usize,
    /// Kind of every expert for `ffn: moe`; each is `d_ff` wide.
    pub expert: ExpertKind,
    /// Every expert takes every token routed to it; `capacity_factor` is then unused.
    pub dropless: bool,
    /// Per-expert capacity is `ceil(capacity_factor * tokens * top_k / n_experts)`; overflow
    /// assignments are dropped and the token passes through the residual.
    pub capacity_factor: f32,
    pub aux_loss_coef: f32,
    pub z_loss_coef: f32,
    pub balancing: Balancing,
    /// Step size of the aux-free bias update (`balancing: bias`).
    pub bias_update_rate: f32,
}

impl Default for MoeConfig {
    fn default() -> Self {
        MoeConfig {
            n_experts: 8,
            top_k: 2,
            expert: ExpertKind::Swiglu,
            dropless: true,
            capacity_factor: 1.25,
            aux_loss_coef: 1e-2,
            z_loss_coef: 1e-3,
            balancing: Balancing::Aux,
            bias_update_rate: 1e-3,
        }
    }
}

/// One typed group of PiMoE experts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpertGroup {
    /// A label for reports, e.g. `reasoning` or `computation`.
    pub name: String,
    pub kind: ExpertKind,
    pub count: usize,
    /// Hidden width of each expert in the group.
    pub width: usize,
}

/// Heterogeneous experts behind one token-level router.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PimoeConfig {
    pub groups: Vec<ExpertGroup>,
}

impl Default for PimoeConfig {
    fn default() -> Self {
        PimoeConfig {
            groups: vec![
                ExpertGroup { name: "reasoning".into(), kind: ExpertKind::Swiglu, count: 2, width: 256 },
                ExpertGroup { name: "computation".into(), kind: ExpertKind::Mlp, count: 4, width: 64 },
            ],
        }
    }
}

/// The `model:` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    pub vocab_size: usize,
    pub d_model: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    /// Key/value heads: equal to `n_heads` for MHA, fewer for GQA, 1 for MQA.
    pub n_kv_heads: usize,
    pub d_ff: usize,
    pub max_seq_len: usize,
    /// Biases on every linear layer.
    pub bias: bool,
    /// Biases on the query/key/value projection even when `bias` is false (Qwen2).
    pub qkv_bias: bool,
    pub norm: NormKind,
    pub norm_eps: f32,
    pub norm_position: NormPosition,
    pub positional: Positional,
    pub rope_theta: f32,
    pub rope_scaling: Option<RopeScaling>,
    /// Each query sees only the last `sliding_window` positions, itself included (Mistral).
    pub sliding_window: Option<usize>,
    /// Buckets of the T5 relative bias (`positional: relative`).
    pub relative_buckets: usize,
    /// Distance beyond which T5 relative positions share the last bucket.
    pub relative_max_distance: usize,
    pub ffn: FfnKind,
    pub gelu_approximate: GeluApproximate,
    pub moe: MoeConfig,
    pub pimoe: PimoeConfig,
    /// The output head reuses the token embedding matrix.
    pub tie_embeddings: bool,
    /// All layers share one block's parameters (ALBERT-style cross-layer sharing).
    pub share_layers: bool,
    /// Dropout on the embeddings and on each residual branch during training.
    pub dropout: f32,
    /// Standard deviation of the normal weight init; residual projections are scaled by `1/sqrt(2 n_layers)`.
    pub init_std: f32,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            vocab_size: 256,
            d_model: 64,
            n_layers: 2,
            n_heads: 4,
            n_kv_heads: 4,
            d_ff: 256,
            max_seq_len: 64,
            bias: true,
            qkv_bias: false,
            norm: NormKind::LayerNorm,
            norm_eps: 1e-5,
            norm_position: NormPosition::Pre,
            positional: Positional::Learned,
            rope_theta: 10_000.0,
            rope_scaling: None,
            sliding_window: None,
            relative_buckets: 32,
            relative_max_distance: 128,
            ffn: FfnKind::Mlp,
            gelu_approximate: GeluApproximate::None,
            moe: MoeConfig::default(),
            pimoe: PimoeConfig::default(),
            tie_embeddings: false,
            share_layers: false,
            dropout: 0.0,
            init_std: 0.02,
        }
    }
}

impl ModelConfig {
    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_heads
    }

    /// The expert groups of the FFN, or `None` for a dense FFN. Plain MoE is one group.
    pub fn expert_groups(&self) -> Option<Vec<ExpertGroup>> {
        match self.ffn {
            FfnKind::Moe => Some(vec![ExpertGroup {
                name: "experts".into(),
                kind: self.moe.expert,
                count: self.moe.n_experts,
                width: self.d_ff,
            }]),
            FfnKind::Pimoe => Some(self.pimoe.groups.clone()),
            FfnKind::Mlp | FfnKind::Geglu | FfnKind::Swiglu => None,
        }
    }
}
