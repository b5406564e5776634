//! Which ggml type each tensor of an exported GGUF file gets: the file's type
//! ([`GgufDtype`], llama.cpp's `llama_ftype`) and the per-tensor rule.
//!
//! - `f32`, `f16`: convert_hf_to_gguf's rule: matrices in that type, 1-D tensors f32;
//! - the quantized types follow llama.cpp's `llama-quantize`: which tensors are quantized at
//!   all (`llama_model_quantize_impl`: 2-D or more, named `*.weight`, not a norm, not the MoE
//!   router), and the type of each (`llama_tensor_get_type` in `src/llama-quant.cpp`):
//!   - `output.weight` (or `token_embd.weight` when the head is tied, since it then serves as the
//!     output) gets Q6_K, unless the file's type is Q8_0 or its rows are not whole blocks of the
//!     file's type (then Q8_0);
//!   - for Q4_K_M and Q5_K_M, `attn_v.weight` and `ffn_down` of the layers `use_more_bits` picks
//!     (the first and last eighth of the layers, and every third between) get Q6_K;
//!   - a tensor whose rows are not whole blocks of its type falls back as llama.cpp's
//!     `convert_incompatible_tensor` does (Q4_K to Q5_0, Q5_K to Q5_1, Q6_K to Q8_0), then to F16
//!     if that does not fit either (llama.cpp refuses the 32-element types there; F16 is what
//!     convert_hf_to_gguf does). Every fallback is reported ([`TypeChoice::wanted`]).

use std::fmt;
use std::str::FromStr;

use truthgpt_quant::GgmlType;

/// How a file's matrices are stored: the float types of the converter, or a quantization
/// preset of llama-quantize. 1-D tensors are always f32.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufDtype {
    F32,
    F16,
    Q8_0,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q4_K_M,
    Q5_K_M,
    Q6_K,
}

impl GgufDtype {
    /// Every type, in the order `--help` lists them.
    pub const ALL: [GgufDtype; 10] = [
        GgufDtype::F32,
        GgufDtype::F16,
        GgufDtype::Q8_0,
        GgufDtype::Q4_0,
        GgufDtype::Q4_1,
        GgufDtype::Q5_0,
        GgufDtype::Q5_1,
        GgufDtype::Q4_K_M,
        GgufDtype::Q5_K_M,
        GgufDtype::Q6_K,
    ];

    /// The lower-case name llama-quantize and our flags use (`q4_k_m`).
    pub fn name(self) -> &'static str {
        match self {
            GgufDtype::F32 => "f32",
            GgufDtype::F16 => "f16",
            GgufDtype::Q8_0 => "q8_0",
            GgufDtype::Q4_0 => "q4_0",
            GgufDtype::Q4_1 => "q4_1",
            GgufDtype::Q5_0 => "q5_0",
            GgufDtype::Q5_1 => "q5_1",
            GgufDtype::Q4_K_M => "q4_k_m",
            GgufDtype::Q5_K_M => "q5_k_m",
            GgufDtype::Q6_K => "q6_k",
        }
    }

    /// `general.file_type` (llama.cpp's `llama_ftype`).
    pub fn file_type(self) -> u32 {
        match self {
            GgufDtype::F32 => 0,
            GgufDtype::F16 => 1,
            GgufDtype::Q4_0 => 2,
            GgufDtype::Q4_1 => 3,
            GgufDtype::Q8_0 => 7,
            GgufDtype::Q5_0 => 8,
            GgufDtype::Q5_1 => 9,
            GgufDtype::Q4_K_M => 15,
            GgufDtype::Q5_K_M => 17,
            GgufDtype::Q6_K => 18,
        }
    }

    /// The type of a matrix no rule singles out (llama-quantize's `default_type`).
    pub fn default_type(self) -> GgmlType {
        match self {
            GgufDtype::F32 => GgmlType::F32,
            GgufDtype::F16 => GgmlType::F16,
            GgufDtype::Q8_0 => GgmlType::Q8_0,
            GgufDtype::Q4_0 => GgmlType::Q4_0,
            GgufDtype::Q4_1 => GgmlType::Q4_1,
            GgufDtype::Q5_0 => GgmlType::Q5_0,
            GgufDtype::Q5_1 => GgmlType::Q5_1,
            GgufDtype::Q4_K_M => GgmlType::Q4_K,
            GgufDtype::Q5_K_M => GgmlType::Q5_K,
            GgufDtype::Q6_K => GgmlType::Q6_K,
        }
    }

    fn is_float(self) -> bool {
        matches!(self, GgufDtype::F32 | GgufDtype::F16)
    }
}

impl fmt::Display for GgufDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for GgufDtype {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let lower = s.to_ascii_lowercase();
        GgufDtype::ALL.into_iter().find(|d| d.name() == lower).ok_or_else(|| {
            let names: Vec<&str> = GgufDtype::ALL.iter().map(|d| d.name()).collect();
            format!("unknown GGUF type `{s}`; known: {}", names.join(", "))
        })
    }
}

/// The type a tensor gets and, when its rows do not fit that, the type the rule wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TypeChoice {
    pub ty: GgmlType,
    pub wanted: Option<GgmlType>,
}

/// What the rule needs to know of the whole model.
#[derive(Debug, Clone, Copy)]
pub struct ModelShape {
    pub layers: usize,
    /// Whether the file has an `output.weight` (the head is not tied).
    pub has_output: bool,
}

/// The type of tensor `name` of row-major `shape` in a file of type `dtype`.
pub fn tensor_type(name: &str, shape: &[usize], dtype: GgufDtype, model: ModelShape) -> TypeChoice {
    let row = *shape.last().unwrap_or(&0);
    let fixed = |ty| TypeChoice { ty, wanted: None };
    let quantized = shape.len() >= 2
        && name.ends_with(".weight")
        && !name.ends_with("_norm.weight")
        && !name.contains("ffn_gate_inp");
    if !quantized || dtype == GgufDtype::F32 {
        return fixed(GgmlType::F32);
    }
    if dtype.is_float() {
        return fixed(GgmlType::F16);
    }
    let base = dtype.default_type();
    let is_output = name == "output.weight" || (!model.has_output && name == "token_embd.weight");
    let wanted = if is_output {
        if base == GgmlType::Q8_0 || !row.is_multiple_of(base.block_elements()) {
            GgmlType::Q8_0
        } else {
            GgmlType::Q6_K
        }
    } else if more_bits_for(name, dtype, model.layers) {
        GgmlType::Q6_K
    } else {
        base
    };
    fit(wanted, row)
}

/// Q4_K_M and Q5_K_M give Q6_K to `attn_v` and `ffn_down` of the layers `use_more_bits` picks.
/// llama.cpp counts `attn_v` tensors in file order; ours come one per layer in layer order, so
/// the count is the layer of the name.
fn more_bits_for(name: &str, dtype: GgufDtype, layers: usize) -> bool {
    if !matches!(dtype, GgufDtype::Q4_K_M | GgufDtype::Q5_K_M) {
        return false;
    }
    if !(name.contains("attn_v.weight") || name.contains("ffn_down")) {
        return false;
    }
    let layer = name.strip_prefix("blk.").and_then(|r| r.split('.').next()).and_then(|l| l.parse().ok());
    layer.is_some_and(|layer| use_more_bits(layer, layers))
}

/// llama.cpp's `use_more_bits(i_layer, n_layers)`.
fn use_more_bits(layer: usize, layers: usize) -> bool {
    // The subtraction cannot underflow: the first test failing means `layer >= layers / 8`.
    layer < layers / 8 || layer >= 7 * layers / 8 || (layer - layers / 8) % 3 == 2
}

/// `wanted`, or the fallback of a tensor whose rows of `row` elements are not whole blocks.
fn fit(wanted: GgmlType, row: usize) -> TypeChoice {
    let fits = |ty: GgmlType| row.is_multiple_of(ty.block_elements());
    if fits(wanted) {
        return TypeChoice { ty: wanted, wanted: None };
    }
    let fallback = match wanted {
        GgmlType::Q4_K => GgmlType::Q5_0,
        GgmlType::Q5_K => GgmlType::Q5_1,
        GgmlType::Q6_K => GgmlType::Q8_0,
        _ => GgmlType::F16,
    };
    let ty = if fits(fallback) { fallback } else { GgmlType::F16 };
    TypeChoice { ty, wanted: Some(wanted) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOLLM: ModelShape = ModelShape { layers: 30, has_output: false };

    #[test]
    fn use_more_bits_is_llama_cpps() {
        // 30 layers: 30/8 = 3, 7*30/8 = 26.
        let picked: Vec<usize> = (0..30).filter(|&l| use_more_bits(l, 30)).collect();
        assert_eq!(picked, [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]);
    }

    #[test]
    fn q4_k_m_types_follow_llama_quantize() {
        let t = |name: &str, shape: &[usize]| tensor_type(name, shape, GgufDtype::Q4_K_M, SMOLLM);
        // SmolLM2-135M: d_model 576 is not a multiple of 256, so Q4_K falls back to Q5_0 and Q6_K
        // to Q8_0; ffn_down's rows are d_ff = 1536 = 6 * 256 long.
        let want = |ty, wanted| TypeChoice { ty, wanted };
        assert_eq!(t("token_embd.weight", &[49152, 576]), want(GgmlType::Q8_0, None));
        assert_eq!(t("blk.0.attn_q.weight", &[576, 576]), want(GgmlType::Q5_0, Some(GgmlType::Q4_K)));
        assert_eq!(t("blk.0.attn_v.weight", &[192, 576]), want(GgmlType::Q8_0, Some(GgmlType::Q6_K)));
        assert_eq!(t("blk.3.attn_v.weight", &[192, 576]), want(GgmlType::Q5_0, Some(GgmlType::Q4_K)));
        assert_eq!(t("blk.0.ffn_down.weight", &[576, 1536]), want(GgmlType::Q6_K, None));
        assert_eq!(t("blk.3.ffn_down.weight", &[576, 1536]), want(GgmlType::Q4_K, None));
        assert_eq!(t("blk.5.ffn_down.weight", &[576, 1536]), want(GgmlType::Q6_K, None));
        assert_eq!(t("blk.0.attn_norm.weight", &[576]), want(GgmlType::F32, None));
        let wide = ModelShape { layers: 8, has_output: true };
        assert_eq!(tensor_type("output.weight", &[100, 512], GgufDtype::Q4_K_M, wide).ty, GgmlType::Q6_K);
        assert_eq!(tensor_type("token_embd.weight", &[100, 512], GgufDtype::Q4_K_M, wide).ty, GgmlType::Q4_K);
        assert_eq!(tensor_type("output.weight", &[100, 512], GgufDtype::Q8_0, wide).ty, GgmlType::Q8_0);
        assert_eq!(tensor_type("output.weight", &[100, 512], GgufDtype::Q4_0, wide).ty, GgmlType::Q6_K);
        // Rows of 48: no 32-element type fits, so F16, and the choice says what was wanted.
        let odd = tensor_type("blk.0.attn_q.weight", &[48, 48], GgufDtype::Q4_0, wide);
        assert_eq!(odd, want(GgmlType::F16, Some(GgmlType::Q4_0)));
    }

    #[test]
    fn names_parse_back_and_unknown_ones_are_listed() {
        for dtype in GgufDtype::ALL {
            assert_eq!(dtype.name().parse::<GgufDtype>(), Ok(dtype));
        }
        let err = "q3_k_xl".parse::<GgufDtype>().unwrap_err();
        assert!(err.contains("q3_k_xl") && err.contains("q4_k_m"), "{err}");
    }
}
