//! `config.json` of the supported Hugging Face families, to and from our [`ModelConfig`].
//!
//! Both RoPE spellings are read: the `rope_theta` + `rope_scaling` of published checkpoints and
//! the `rope_parameters` that transformers 5 writes. Exports use the first, which every
//! transformers version reads.

use std::path::Path;

use serde_json::{json, Map, Value};
use truthgpt_config::{
    Config, ExpertKind, FfnKind, GeluApproximate, ModelConfig, NormKind, NormPosition, Positional,
    RopeScaling, RopeScalingKind,
};

use truthgpt_model::Model;

use crate::error::{InteropError, Result};

/// The architectures we import and export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Llama,
    Mistral,
    Qwen2,
    Mixtral,
    Gpt2,
}

impl Family {
    pub const ALL: [Family; 5] =
        [Family::Llama, Family::Mistral, Family::Qwen2, Family::Mixtral, Family::Gpt2];

    /// The `architectures` entry of `config.json`.
    pub fn architecture(self) -> &'static str {
        match self {
            Family::Llama => "LlamaForCausalLM",
            Family::Mistral => "MistralForCausalLM",
            Family::Qwen2 => "Qwen2ForCausalLM",
            Family::Mixtral => "MixtralForCausalLM",
            Family::Gpt2 => "GPT2LMHeadModel",
        }
    }

    pub fn model_type(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Mistral => "mistral",
            Family::Qwen2 => "qwen2",
            Family::Mixtral => "mixtral",
            Family::Gpt2 => "gpt2",
        }
    }

    /// The family `config.json` declares, by `architectures`, else `model_type`.
    pub fn of(json: &Value, path: &Path) -> Result<Family> {
        let declared = json
            .get("architectures")
            .and_then(|a| a.as_array())
            .and_then(|a| a.first())
            .and_then(Value::as_str)
            .map(|a| (a, Family::ALL.into_iter().find(|f| f.architecture() == a)))
            .or_else(|| {
                let t = json.get("model_type")?.as_str()?;
                Some((t, Family::ALL.into_iter().find(|f| f.model_type() == t)))
            });
        match declared {
            Some((_, Some(family))) => Ok(family),
            Some((name, None)) => Err(InteropError::Unsupported {
                path: path.into(),
                problem: format!("architecture `{name}` is not supported; supported are {}", supported()),
            }),
            None => Err(InteropError::Invalid {
                path: path.into(),
                problem: "neither `architectures` nor `model_type` says what model this is".into(),
            }),
        }
    }

    fn is_llama_like(self) -> bool {
        self != Family::Gpt2
    }
}

fn supported() -> String {
    Family::ALL.iter().map(|f| f.architecture()).collect::<Vec<_>>().join(", ")
}

/// Typed reads of `config.json` fields with errors that name the field.
struct Fields<'a> {
    json: &'a Map<String, Value>,
    path: &'a Path,
}

impl Fields<'_> {
    fn invalid(&self, key: &str, want: &str) -> InteropError {
        InteropError::Invalid {
            path: self.path.into(),
            problem: format!("`{key}` is {}, expected {want}", self.json.get(key).unwrap_or(&Value::Null)),
        }
    }

    fn unsupported(&self, problem: String) -> InteropError {
        InteropError::Unsupported { path: self.path.into(), problem }
    }

    /// A field, `None` when absent or null.
    fn get(&self, key: &str) -> Option<&Value> {
        self.json.get(key).filter(|v| !v.is_null())
    }

    fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        self.get(key)
            .map(|v| {
                v.as_u64().map(|n| n as usize).ok_or_else(|| self.invalid(key, "a non-negative integer"))
            })
            .transpose()
    }

    fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?.ok_or_else(|| self.invalid(key, "a non-negative integer"))
    }

    fn f32_or(&self, key: &str, default: f32) -> Result<f32> {
        self.get(key)
            .map(|v| v.as_f64().map(|x| x as f32).ok_or_else(|| self.invalid(key, "a number")))
            .transpose()
            .map(|x| x.unwrap_or(default))
    }

    fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        self.get(key)
            .map(|v| v.as_bool().ok_or_else(|| self.invalid(key, "true or false")))
            .transpose()
            .map(|x| x.unwrap_or(default))
    }

    fn str_or<'s>(&'s self, key: &str, default: &'s str) -> Result<&'s str> {
        self.get(key)
            .map(|v| v.as_str().ok_or_else(|| self.invalid(key, "a string")))
            .transpose()
            .map(|x| x.unwrap_or(default))
    }
}

/// Our model config for the `config.json` at `path` (already parsed as `json`).
pub fn import(json: &Value, path: &Path) -> Result<(Family, ModelConfig)> {
    let family = Family::of(json, path)?;
    let object = json
        .as_object()
        .ok_or_else(|| InteropError::Invalid { path: path.into(), problem: "not a JSON object".into() })?;
    let f = Fields { json: object, path };
    let config = if family.is_llama_like() { llama_like(family, &f)? } else { gpt2(&f)? };
    settings_for(&config)
        .validate()
        .map_err(|e| f.unsupported(format!("the model it describes is not one we can build: {e}")))?;
    Ok((family, config))
}

/// Our full configuration for an imported model: its architecture, and training defaults whose
/// sequence length fits it.
pub fn settings_for(model: &ModelConfig) -> Config {
    let mut config = Config { model: model.clone(), ..Config::default() };
    config.train.seq_len = config.train.seq_len.min(model.max_seq_len);
    config
}

fn llama_like(family: Family, f: &Fields) -> Result<ModelConfig> {
    let d_model = f.usize("hidden_size")?;
    let n_heads = f.usize("num_attention_heads")?;
    if let Some(head_dim) = f.opt_usize("head_dim")? {
        if head_dim.checked_mul(n_heads) != Some(d_model) {
            return Err(f.unsupported(format!(
                "head_dim {head_dim} differs from hidden_size / num_attention_heads = {d_model} / {n_heads}"
            )));
        }
    }
    let act = f.str_or("hidden_act", "silu")?;
    if act != "silu" {
        return Err(f.unsupported(format!("hidden_act `{act}`; only `silu` (SwiGLU) is supported")));
    }
    if f.f32_or("partial_rotary_factor", 1.0)? != 1.0 {
        return Err(f.unsupported("partial_rotary_factor other than 1".into()));
    }
    // Llama's switches; Qwen2 always has q/k/v biases and nothing else.
    let (attention_bias, mlp_bias) = (f.bool_or("attention_bias", false)?, f.bool_or("mlp_bias", false)?);
    if attention_bias != mlp_bias {
        return Err(f.unsupported(format!(
            "attention_bias = {attention_bias} with mlp_bias = {mlp_bias}; biases must be on both or neither"
        )));
    }
    let sliding_window = match family {
        Family::Mistral | Family::Mixtral => f.opt_usize("sliding_window")?,
        Family::Qwen2 if f.bool_or("use_sliding_window", false)? => {
            return Err(f.unsupported("Qwen2's per-layer sliding windows (use_sliding_window)".into()));
        }
        _ => None,
    };
    let max_position_embeddings = f.usize("max_position_embeddings")?;
    // The defaults of transformers' config classes, for configs written by hand.
    let (default_theta, default_eps) = if family == Family::Mixtral { (1e6, 1e-5) } else { (1e4, 1e-6) };
    let (rope_theta, rope_scaling) = rope(f, max_position_embeddings, default_theta)?;
    // Dynamic NTK scaling exists to run past the trained context; allow `factor` times it.
    let max_seq_len = match rope_scaling {
        Some(RopeScaling { kind: RopeScalingKind::Dynamic, factor, .. }) if factor.is_finite() => {
            (max_position_embeddings as f64 * factor as f64).ceil() as usize
        }
        _ => max_position_embeddings,
    };
    let mut m = ModelConfig {
        vocab_size: f.usize("vocab_size")?,
        d_model,
        n_layers: f.usize("num_hidden_layers")?,
        n_heads,
        n_kv_heads: f.opt_usize("num_key_value_heads")?.unwrap_or(n_heads),
        d_ff: f.usize("intermediate_size")?,
        max_seq_len,
        bias: attention_bias,
        qkv_bias: family == Family::Qwen2,
        norm: NormKind::RmsNorm,
        norm_eps: f.f32_or("rms_norm_eps", default_eps)?,
        norm_position: NormPosition::Pre,
        positional: Positional::Rope,
        rope_theta,
        rope_scaling,
        sliding_window,
        ffn: FfnKind::Swiglu,
        tie_embeddings: f.bool_or("tie_word_embeddings", false)?,
        init_std: f.f32_or("initializer_range", 0.02)?,
        dropout: 0.0,
        ..ModelConfig::default()
    };
    if family == Family::Mixtral {
        m.ffn = FfnKind::Moe;
        m.moe.n_experts = f.usize("num_local_experts")?;
        m.moe.top_k = f.usize("num_experts_per_tok")?;
        m.moe.expert = ExpertKind::Swiglu;
        m.moe.dropless = true;
        m.moe.aux_loss_coef = f.f32_or("router_aux_loss_coef", 0.001)?;
        if m.moe.top_k < 2 {
            // Mixtral renormalises even one gate to 1; our top-1 gate is the router probability (Switch).
            return Err(f.unsupported("num_experts_per_tok = 1 (Mixtral's top-1 gate is always 1)".into()));
        }
    }
    Ok(m)
}

/// `rope_theta` and our scaling, from either spelling; see the module docs.
fn rope(
    f: &Fields,
    max_position_embeddings: usize,
    default_theta: f32,
) -> Result<(f32, Option<RopeScaling>)> {
    let (params, name) = match (f.get("rope_parameters"), f.get("rope_scaling")) {
        (Some(p), _) => (p, "rope_parameters"),
        (None, Some(s)) => (s, "rope_scaling"),
        (None, None) => return Ok((f.f32_or("rope_theta", default_theta)?, None)),
    };
    let params = params.as_object().ok_or_else(|| f.invalid(name, "an object"))?;
    let p = Fields { json: params, path: f.path };
    let theta = match p.get("rope_theta") {
        Some(_) => p.f32_or("rope_theta", default_theta)?,
        None => f.f32_or("rope_theta", default_theta)?,
    };
    let kind = match p.get("rope_type") {
        Some(_) => p.str_or("rope_type", "default")?,
        None => p.str_or("type", "default")?,
    };
    let factor = p.f32_or("factor", 1.0)?;
    let scaling = match kind {
        "default" => None,
        "linear" => Some(RopeScaling::new(RopeScalingKind::Linear, factor)),
        // HF measures a dynamic sequence against max_position_embeddings.
        "dynamic" => Some(RopeScaling {
            original_max_seq_len: Some(max_position_embeddings),
            ..RopeScaling::new(RopeScalingKind::Dynamic, factor)
        }),
        "llama3" => Some(RopeScaling {
            original_max_seq_len: Some(p.usize("original_max_position_embeddings")?),
            low_freq_factor: p.f32_or("low_freq_factor", 1.0)?,
            high_freq_factor: p.f32_or("high_freq_factor", 4.0)?,
            ..RopeScaling::new(RopeScalingKind::Llama3, factor)
        }),
        other => {
            return Err(f.unsupported(format!(
                "{name} type `{other}`; supported are default, linear, dynamic and llama3"
            )))
        }
    };
    Ok((theta, scaling))
}

fn gpt2(f: &Fields) -> Result<ModelConfig> {
    let d_model = f.usize("n_embd")?;
    let gelu_approximate = match f.str_or("activation_function", "gelu_new")? {
        "gelu_new" | "gelu_pytorch_tanh" => GeluApproximate::Tanh,
        "gelu" => GeluApproximate::None,
        other => return Err(f.unsupported(format!("activation_function `{other}`"))),
    };
    if !f.bool_or("scale_attn_weights", true)? || f.bool_or("scale_attn_by_inverse_layer_idx", false)? {
        return Err(f.unsupported("attention scaled other than by 1/sqrt(head size)".into()));
    }
    let n_heads = f.usize("n_head")?;
    Ok(ModelConfig {
        vocab_size: f.usize("vocab_size")?,
        d_model,
        n_layers: f.usize("n_layer")?,
        n_heads,
        n_kv_heads: n_heads,
        d_ff: f.opt_usize("n_inner")?.unwrap_or(d_model.saturating_mul(4)),
        max_seq_len: f.usize("n_positions")?,
        bias: true,
        norm: NormKind::LayerNorm,
        norm_eps: f.f32_or("layer_norm_epsilon", 1e-5)?,
        norm_position: NormPosition::Pre,
        positional: Positional::Learned,
        ffn: FfnKind::Mlp,
        gelu_approximate,
        tie_embeddings: f.bool_or("tie_word_embeddings", true)?,
        init_std: f.f32_or("initializer_range", 0.02)?,
        dropout: 0.0,
        ..ModelConfig::default()
    })
}

/// The family that represents `model` exactly, or every reason none does.
pub fn family_of(model: &Model) -> Result<Family> {
    let family = family_for(&model.config)?;
    if model.moe_layers().any(|moe| moe.selection_bias.iter().any(|&b| b != 0.0)) {
        return Err(InteropError::NoTarget(
            "the MoE routers carry aux-free balancing biases (`moe.balancing: bias`), which Mixtral has no \
             place for"
                .into(),
        ));
    }
    Ok(family)
}

/// The family whose architecture is `m`'s, or every reason none is.
pub fn family_for(m: &ModelConfig) -> Result<Family> {
    let mut reasons = Vec::new();
    let mut need = |ok: bool, reason: &str| {
        if !ok {
            reasons.push(reason.to_string());
        }
    };
    need(m.norm_position == NormPosition::Pre, "norm_position must be pre");
    need(!m.share_layers, "share_layers has no Hugging Face equivalent");
    let family = if m.positional == Positional::Learned {
        need(m.norm == NormKind::LayerNorm, "GPT-2 (learned positions) needs norm: layernorm");
        need(m.ffn == FfnKind::Mlp, "GPT-2 (learned positions) needs ffn: mlp");
        need(m.bias, "GPT-2 (learned positions) needs bias: true");
        need(m.sliding_window.is_none(), "GPT-2 has no sliding window");
        need(m.n_kv_heads == m.n_heads, "GPT-2 has no grouped-query attention (n_kv_heads = n_heads)");
        need(!m.qkv_bias || m.bias, "GPT-2 has biases on every linear layer or none");
        Family::Gpt2
    } else {
        need(m.positional == Positional::Rope, "positional must be rope (Llama family) or learned (GPT-2)");
        need(m.norm == NormKind::RmsNorm, "the Llama family needs norm: rmsnorm");
        need(
            !matches!(m.rope_scaling, Some(RopeScaling { kind: RopeScalingKind::Ntk, .. })),
            "static NTK RoPE scaling has no Hugging Face equivalent (use dynamic)",
        );
        match m.ffn {
            FfnKind::Swiglu if m.qkv_bias && !m.bias => {
                need(m.sliding_window.is_none(), "Qwen2 export has no sliding window");
                Family::Qwen2
            }
            FfnKind::Swiglu if m.sliding_window.is_some() => {
                need(!m.bias, "Mistral has no biases");
                Family::Mistral
            }
            FfnKind::Swiglu => Family::Llama,
            FfnKind::Moe => {
                need(m.moe.expert == ExpertKind::Swiglu, "Mixtral experts are SwiGLU");
                need(m.moe.top_k >= 2, "Mixtral renormalises its gates: top_k must be at least 2");
                need(!m.bias && !m.qkv_bias, "Mixtral has no biases");
                // Our capacity limit drops tokens at inference too; Mixtral runs every routed token.
                need(m.moe.dropless, "Mixtral is dropless; this model drops tokens past moe.capacity_factor");
                Family::Mixtral
            }
            other => {
                need(false, &format!("ffn {other:?} has no Hugging Face equivalent here (swiglu or moe)"));
                Family::Llama
            }
        }
    };
    if reasons.is_empty() {
        Ok(family)
    } else {
        Err(InteropError::NoTarget(reasons.join("; ")))
    }
}

/// `config.json` for `m` as `family`, with the tokenizer's special ids when known.
pub fn export(family: Family, m: &ModelConfig, eos: Option<u32>) -> Value {
    let mut json = json!({
        "architectures": [family.architecture()],
        "model_type": family.model_type(),
        "vocab_size": m.vocab_size,
        "tie_word_embeddings": m.tie_embeddings,
        "initializer_range": m.init_std,
        "torch_dtype": "float32",
        "bos_token_id": eos,
        "eos_token_id": eos,
    });
    let extra = if family == Family::Gpt2 {
        json!({
            "n_embd": m.d_model,
            "n_layer": m.n_layers,
            "n_head": m.n_heads,
            "n_inner": m.d_ff,
            "n_positions": m.max_seq_len,
            "n_ctx": m.max_seq_len,
            "layer_norm_epsilon": m.norm_eps,
            "activation_function": match m.gelu_approximate {
                GeluApproximate::Tanh => "gelu_new",
                GeluApproximate::None => "gelu",
            },
            "resid_pdrop": 0.0,
            "embd_pdrop": 0.0,
            "attn_pdrop": 0.0,
        })
    } else {
        // HF measures dynamic scaling against max_position_embeddings: that is the original context.
        let (max_position_embeddings, rope_scaling) = match m.rope_scaling {
            None => (m.max_seq_len, Value::Null),
            Some(s) => match s.kind {
                RopeScalingKind::Linear => {
                    (m.max_seq_len, json!({"rope_type": "linear", "factor": s.factor}))
                }
                RopeScalingKind::Dynamic => (
                    s.original_max_seq_len.unwrap_or(m.max_seq_len),
                    json!({"rope_type": "dynamic", "factor": s.factor}),
                ),
                RopeScalingKind::Llama3 => (
                    m.max_seq_len,
                    json!({
                        "rope_type": "llama3",
                        "factor": s.factor,
                        "low_freq_factor": s.low_freq_factor,
                        "high_freq_factor": s.high_freq_factor,
                        "original_max_position_embeddings": s.original_max_seq_len,
                    }),
                ),
                RopeScalingKind::Ntk => unreachable!("family_for refuses static NTK"),
            },
        };
        let mut extra = json!({
            "hidden_size": m.d_model,
            "intermediate_size": m.d_ff,
            "num_hidden_layers": m.n_layers,
            "num_attention_heads": m.n_heads,
            "num_key_value_heads": m.n_kv_heads,
            "head_dim": m.head_dim(),
            "max_position_embeddings": max_position_embeddings,
            "rms_norm_eps": m.norm_eps,
            "rope_theta": m.rope_theta,
            "rope_scaling": rope_scaling,
            "hidden_act": "silu",
            "attention_dropout": 0.0,
        });
        let object = extra.as_object_mut().expect("an object");
        match family {
            Family::Llama => {
                object.insert("attention_bias".into(), m.bias.into());
                object.insert("mlp_bias".into(), m.bias.into());
            }
            Family::Mistral => {
                object.insert("sliding_window".into(), m.sliding_window.into());
            }
            Family::Qwen2 => {
                object.insert("use_sliding_window".into(), false.into());
                object.insert("sliding_window".into(), Value::Null);
                object.insert("max_window_layers".into(), m.n_layers.into());
            }
            Family::Mixtral => {
                object.insert("sliding_window".into(), m.sliding_window.into());
                object.insert("num_local_experts".into(), m.moe.n_experts.into());
                object.insert("num_experts_per_tok".into(), m.moe.top_k.into());
                object.insert("router_aux_loss_coef".into(), m.moe.aux_loss_coef.into());
                object.insert("router_jitter_noise".into(), 0.0.into());
                object.insert("output_router_logits".into(), false.into());
            }
            Family::Gpt2 => unreachable!(),
        }
        extra
    };
    json.as_object_mut().expect("an object").extend(extra.as_object().expect("an object").clone());
    json
}
