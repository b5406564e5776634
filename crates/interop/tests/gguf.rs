//! GGUF export, read back by a small independent GGUF reader: header, every metadata key and
//! value, tensor names, dims, types and offsets, and the data (exact for f32 once the q/k RoPE
//! permutation is undone, within q8_0's rounding for q8_0), the tokenizer, and the refusals; and
//! the library's own reader reads back the same, bit for bit.

use std::collections::BTreeMap;
use std::path::Path;

use half::f16;
use serde_json::Value;
use truthgpt_config::{
    Balancing, ExpertKind, FfnKind, ModelConfig, NormKind, Positional, RopeScaling, RopeScalingKind,
};
use truthgpt_data::Tokenizer;
use truthgpt_engine::close::max_abs_diff;
use truthgpt_interop::gguf::value::{Array, Value as Meta};
use truthgpt_interop::gguf::{self, GgufDtype};
use truthgpt_interop::InteropError;
use truthgpt_model::{Mode, Model};

// ---------------------------------------------------------------------------------------------
// A GGUF reader, written from the spec (github.com/ggml-org/ggml/blob/master/docs/gguf.md).

#[derive(Debug, Clone, PartialEq)]
enum V {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    Arr(Vec<V>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl V {
    fn u32(&self) -> u32 {
        match self {
            V::U32(x) => *x,
            other => panic!("expected u32, got {other:?}"),
        }
    }
    fn f32(&self) -> f32 {
        match self {
            V::F32(x) => *x,
            other => panic!("expected f32, got {other:?}"),
        }
    }
    fn str(&self) -> &str {
        match self {
            V::Str(s) => s,
            other => panic!("expected string, got {other:?}"),
        }
    }
    fn strs(&self) -> Vec<String> {
        match self {
            V::Arr(items) => items.iter().map(|v| v.str().to_string()).collect(),
            other => panic!("expected array, got {other:?}"),
        }
    }
    fn i32s(&self) -> Vec<i32> {
        match self {
            V::Arr(items) => items
                .iter()
                .map(|v| match v {
                    V::I32(x) => *x,
                    other => panic!("expected i32, got {other:?}"),
                })
                .collect(),
            other => panic!("expected array, got {other:?}"),
        }
    }
}

#[derive(Debug, Clone)]
struct TensorInfo {
    dims: Vec<u64>,
    ty: u32,
    offset: u64,
}

struct Gguf {
    version: u32,
    kv: BTreeMap<String, V>,
    /// Tensors in file order.
    names: Vec<String>,
    tensors: BTreeMap<String, TensorInfo>,
    data_start: usize,
    bytes: Vec<u8>,
}

struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        let s = &self.b[self.at..self.at + n];
        self.at += n;
        s
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take(4).try_into().unwrap())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take(8).try_into().unwrap())
    }
    fn str(&mut self) -> String {
        let n = self.u64() as usize;
        String::from_utf8(self.take(n).to_vec()).expect("GGUF strings are UTF-8")
    }
    fn value(&mut self, ty: u32) -> V {
        match ty {
            0 => V::U8(self.take(1)[0]),
            1 => V::I8(self.take(1)[0] as i8),
            2 => V::U16(u16::from_le_bytes(self.take(2).try_into().unwrap())),
            3 => V::I16(i16::from_le_bytes(self.take(2).try_into().unwrap())),
            4 => V::U32(self.u32()),
            5 => V::I32(i32::from_le_bytes(self.take(4).try_into().unwrap())),
            6 => V::F32(f32::from_le_bytes(self.take(4).try_into().unwrap())),
            7 => V::Bool(match self.take(1)[0] {
                0 => false,
                1 => true,
                b => panic!("bool byte {b}"),
            }),
            8 => V::Str(self.str()),
            9 => {
                let elem = self.u32();
                let n = self.u64();
                V::Arr((0..n).map(|_| self.value(elem)).collect())
            }
            10 => V::U64(self.u64()),
            11 => V::I64(self.u64() as i64),
            12 => V::F64(f64::from_bits(self.u64())),
            other => panic!("unknown metadata type {other}"),
        }
    }
}

fn read_gguf(path: &Path) -> Gguf {
    let bytes = std::fs::read(path).unwrap();
    let mut c = Cursor { b: &bytes, at: 0 };
    assert_eq!(c.take(4), b"GGUF", "magic");
    let version = c.u32();
    let n_tensors = c.u64();
    let n_kv = c.u64();
    let mut kv = BTreeMap::new();
    for _ in 0..n_kv {
        let key = c.str();
        let ty = c.u32();
        let value = c.value(ty);
        assert!(kv.insert(key.clone(), value).is_none(), "key {key} twice");
    }
    let alignment = kv.get("general.alignment").map_or(32, |v| v.u32()) as usize;
    let mut names = Vec::new();
    let mut tensors = BTreeMap::new();
    for _ in 0..n_tensors {
        let name = c.str();
        let n_dims = c.u32();
        let dims = (0..n_dims).map(|_| c.u64()).collect();
        let ty = c.u32();
        let offset = c.u64();
        names.push(name.clone());
        assert!(
            tensors.insert(name.clone(), TensorInfo { dims, ty, offset }).is_none(),
            "tensor {name} twice"
        );
    }
    let data_start = c.at.div_ceil(alignment) * alignment;
    Gguf { version, kv, names, tensors, data_start, bytes }
}

const F32: u32 = 0;
const F16: u32 = 1;
const Q8_0: u32 = 8;

fn type_bytes(ty: u32, n: usize) -> usize {
    match ty {
        F32 => 4 * n,
        F16 => 2 * n,
        Q8_0 => n / 32 * 34,
        other => panic!("type {other}"),
    }
}

impl Gguf {
    fn get(&self, key: &str) -> &V {
        self.kv.get(key).unwrap_or_else(|| panic!("metadata key {key} missing"))
    }

    fn info(&self, name: &str) -> &TensorInfo {
        self.tensors.get(name).unwrap_or_else(|| panic!("tensor {name} missing; have {:?}", self.names))
    }

    /// A tensor's values as f32 (dequantised for q8_0).
    fn values(&self, name: &str) -> Vec<f32> {
        let t = self.info(name);
        let n: usize = t.dims.iter().product::<u64>() as usize;
        let start = self.data_start + t.offset as usize;
        let data = &self.bytes[start..start + type_bytes(t.ty, n)];
        match t.ty {
            F32 => data.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect(),
            F16 => data.chunks_exact(2).map(|b| f16::from_le_bytes(b.try_into().unwrap()).to_f32()).collect(),
            Q8_0 => data
                .chunks_exact(34)
                .flat_map(|block| {
                    let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
                    block[2..].iter().map(move |&q| q as i8 as f32 * d)
                })
                .collect(),
            other => panic!("type {other}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Models and what their GGUF tensors must hold

const TEXT: &str = "To be, or not to be, that is the question: Whether 'tis nobler in the mind to suffer \
    The slings and arrows of outrageous fortune, Or to take arms against a sea of troubles And by \
    opposing end them. To die: to sleep; No more; and by a sleep to say we end The heart-ache and \
    the thousand natural shocks That flesh is heir to, 'tis a consummation Devoutly to be wish'd. \
    1234567890 0.5 3.14159 hello world hello world hello world";

fn tokenizer() -> Tokenizer {
    Tokenizer::train_bpe_from_texts(&[TEXT, TEXT], 300).unwrap()
}

fn llama_config() -> ModelConfig {
    ModelConfig {
        vocab_size: 320,
        d_model: 64,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: 2,
        // ffn_down rows are 80 long: not a multiple of 32, so q8_0 falls back to f16 there.
        d_ff: 80,
        max_seq_len: 48,
        bias: false,
        norm: NormKind::RmsNorm,
        norm_eps: 1e-5,
        positional: Positional::Rope,
        rope_theta: 50_000.0,
        ffn: FfnKind::Swiglu,
        tie_embeddings: false,
        ..ModelConfig::default()
    }
}

fn mixtral_config() -> ModelConfig {
    let mut m = ModelConfig { d_ff: 64, tie_embeddings: true, ffn: FfnKind::Moe, ..llama_config() };
    m.moe.n_experts = 4;
    m.moe.top_k = 2;
    m.moe.expert = ExpertKind::Swiglu;
    m.moe.dropless = true;
    m
}

fn qwen2_config() -> ModelConfig {
    ModelConfig { qkv_bias: true, n_heads: 8, n_kv_heads: 2, tie_embeddings: true, ..llama_config() }
}

fn param<'a>(model: &'a Model, name: &str) -> &'a [f32] {
    let spec = model.specs.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no tensor {name}"));
    spec.handle.of(&model.params)
}

/// Undoes llama.cpp's q/k permutation: GGUF row (h, i, j) holds Hugging Face row (h, j, i).
fn unpermute(gguf: &[f32], heads: usize, cols: usize) -> Vec<f32> {
    let rows = gguf.len() / cols;
    let half = rows / heads / 2;
    let mut hf = vec![0.0; gguf.len()];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let g = (h * 2 * half + 2 * i + j) * cols;
                let o = (h * 2 * half + j * half + i) * cols;
                hf[o..o + cols].copy_from_slice(&gguf[g..g + cols]);
            }
        }
    }
    hf
}

/// Every GGUF tensor of `model` as (name, ggml dims, values in Hugging Face order), built from our
/// parameter names alone.
fn expected_tensors(model: &Model) -> Vec<(String, Vec<u64>, Vec<f32>)> {
    let m = &model.config;
    let (c, v, f, hs) = (m.d_model, m.vocab_size, m.d_ff, m.head_dim());
    let (q, kv) = (m.n_heads * hs, m.n_kv_heads * hs);
    let d = |dims: &[usize]| dims.iter().map(|&x| x as u64).collect::<Vec<_>>();
    let mut out = vec![("token_embd.weight".to_string(), d(&[c, v]), param(model, "embed.tokens").to_vec())];
    for l in 0..m.n_layers {
        let b = format!("blocks.{l}");
        let blk = format!("blk.{l}");
        out.push((
            format!("{blk}.attn_norm.weight"),
            d(&[c]),
            param(model, &format!("{b}.norm1.weight")).to_vec(),
        ));
        out.push((
            format!("{blk}.ffn_norm.weight"),
            d(&[c]),
            param(model, &format!("{b}.norm2.weight")).to_vec(),
        ));
        let qkv = param(model, &format!("{b}.attn.qkv.weight"));
        out.push((format!("{blk}.attn_q.weight"), d(&[c, q]), qkv[..q * c].to_vec()));
        out.push((format!("{blk}.attn_k.weight"), d(&[c, kv]), qkv[q * c..(q + kv) * c].to_vec()));
        out.push((format!("{blk}.attn_v.weight"), d(&[c, kv]), qkv[(q + kv) * c..].to_vec()));
        if m.qkv_bias || m.bias {
            let bias = param(model, &format!("{b}.attn.qkv.bias"));
            out.push((format!("{blk}.attn_q.bias"), d(&[q]), bias[..q].to_vec()));
            out.push((format!("{blk}.attn_k.bias"), d(&[kv]), bias[q..q + kv].to_vec()));
            out.push((format!("{blk}.attn_v.bias"), d(&[kv]), bias[q + kv..].to_vec()));
        }
        out.push((
            format!("{blk}.attn_output.weight"),
            d(&[q, c]),
            param(model, &format!("{b}.attn.proj.weight")).to_vec(),
        ));
        if m.bias {
            out.push((
                format!("{blk}.attn_output.bias"),
                d(&[c]),
                param(model, &format!("{b}.attn.proj.bias")).to_vec(),
            ));
            let fc1 = param(model, &format!("{b}.ffn.fc1.bias"));
            out.push((format!("{blk}.ffn_gate.bias"), d(&[f]), fc1[..f].to_vec()));
            out.push((format!("{blk}.ffn_up.bias"), d(&[f]), fc1[f..].to_vec()));
            out.push((
                format!("{blk}.ffn_down.bias"),
                d(&[c]),
                param(model, &format!("{b}.ffn.fc2.bias")).to_vec(),
            ));
        }
        if m.ffn == FfnKind::Moe {
            let e = m.moe.n_experts;
            out.push((
                format!("{blk}.ffn_gate_inp.weight"),
                d(&[c, e]),
                param(model, &format!("{b}.ffn.router.weight")).to_vec(),
            ));
            let (mut gate, mut up, mut down) = (Vec::new(), Vec::new(), Vec::new());
            for x in 0..e {
                let fc1 = param(model, &format!("{b}.ffn.experts.{x}.fc1.weight"));
                gate.extend_from_slice(&fc1[..f * c]);
                up.extend_from_slice(&fc1[f * c..]);
                down.extend_from_slice(param(model, &format!("{b}.ffn.experts.{x}.fc2.weight")));
            }
            out.push((format!("{blk}.ffn_gate_exps.weight"), d(&[c, f, e]), gate));
            out.push((format!("{blk}.ffn_up_exps.weight"), d(&[c, f, e]), up));
            out.push((format!("{blk}.ffn_down_exps.weight"), d(&[f, c, e]), down));
        } else {
            let fc1 = param(model, &format!("{b}.ffn.fc1.weight"));
            out.push((format!("{blk}.ffn_gate.weight"), d(&[c, f]), fc1[..f * c].to_vec()));
            out.push((format!("{blk}.ffn_up.weight"), d(&[c, f]), fc1[f * c..].to_vec()));
            out.push((
                format!("{blk}.ffn_down.weight"),
                d(&[f, c]),
                param(model, &format!("{b}.ffn.fc2.weight")).to_vec(),
            ));
        }
    }
    out.push(("output_norm.weight".into(), d(&[c]), param(model, "norm_f.weight").to_vec()));
    if !m.tie_embeddings {
        out.push(("output.weight".into(), d(&[c, v]), param(model, "head.weight").to_vec()));
    }
    out
}

/// The type a tensor must have under `dtype`: 1-D and the router f32, q8_0 where rows allow.
fn expected_type(name: &str, dims: &[u64], dtype: GgufDtype) -> u32 {
    if dims.len() == 1 || name.contains("ffn_gate_inp") {
        return F32;
    }
    match dtype {
        GgufDtype::F32 => F32,
        GgufDtype::F16 => F16,
        GgufDtype::Q8_0 if dims[0].is_multiple_of(32) => Q8_0,
        GgufDtype::Q8_0 => F16,
        other => panic!("{other}: the quantized types are checked in tests/quantize.rs"),
    }
}

/// Exports `model` as `dtype` into a fresh directory and checks everything in the file; returns it.
fn export_and_check(model: &Model, tok: &Tokenizer, dtype: GgufDtype, arch: &str) -> Gguf {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    let exported = gguf::export(model, tok, &path, dtype).unwrap();
    let file_len = std::fs::metadata(&path).unwrap().len();
    assert_eq!(exported.bytes, file_len);
    assert_eq!(exported.architecture, arch);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers, ["model.gguf"], "nothing but the file is left behind");
    let g = read_gguf(&path);
    assert_eq!(g.version, 3);
    assert_eq!(exported.tensors, g.names.len());
    check_metadata(&g, model, tok, dtype, arch);
    check_tensors(&g, model, dtype, arch);
    check_reader_agrees(&g, &path);
    g
}

/// The library's reader ([`gguf::Gguf`]) reads back what this independent one reads, value for
/// value and bit for bit: the round trip of every export.
fn check_reader_agrees(g: &Gguf, path: &Path) {
    let r = gguf::Gguf::open(path).unwrap();
    assert_eq!(r.version(), g.version);
    assert_eq!(r.metadata().len(), g.kv.len());
    for (key, value) in r.metadata() {
        let value = match value {
            Meta::U32(x) => V::U32(*x),
            Meta::F32(x) => V::F32(*x),
            Meta::Bool(x) => V::Bool(*x),
            Meta::String(x) => V::Str(x.clone()),
            Meta::Array(Array::String(x)) => V::Arr(x.iter().map(|s| V::Str(s.clone())).collect()),
            Meta::Array(Array::I32(x)) => V::Arr(x.iter().map(|&i| V::I32(i)).collect()),
            other => panic!("{key}: export writes no {}", other.type_name()),
        };
        assert_eq!(&value, g.get(key), "{key}");
    }
    let names: Vec<_> = r.tensors().iter().map(|t| t.name.clone()).collect();
    assert_eq!(names, g.names);
    for t in r.tensors() {
        let info = g.info(&t.name);
        assert_eq!((&t.dims, t.ty.id(), t.offset), (&info.dims, info.ty, info.offset), "{}", t.name);
        let (got, want) = (r.dequantize(&t.name).unwrap(), g.values(&t.name));
        let same = got.len() == want.len() && got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "{}: values differ by up to {:e}", t.name, max_abs_diff(&got, &want));
    }
}

fn check_metadata(g: &Gguf, model: &Model, tok: &Tokenizer, dtype: GgufDtype, arch: &str) {
    let m = &model.config;
    assert_eq!(g.get("general.architecture").str(), arch);
    assert_eq!(g.get("general.name").str(), "model");
    let file_type = match dtype {
        GgufDtype::F32 => 0,
        GgufDtype::F16 => 1,
        GgufDtype::Q8_0 => 7,
        other => panic!("{other}: the quantized types are checked in tests/quantize.rs"),
    };
    assert_eq!(g.get("general.file_type").u32(), file_type);
    assert_eq!(g.get("general.alignment").u32(), 32);
    let key = |k: &str| format!("{arch}.{k}");
    assert_eq!(g.get(&key("context_length")).u32() as usize, m.max_seq_len);
    assert_eq!(g.get(&key("embedding_length")).u32() as usize, m.d_model);
    assert_eq!(g.get(&key("block_count")).u32() as usize, m.n_layers);
    assert_eq!(g.get(&key("feed_forward_length")).u32() as usize, m.d_ff);
    assert_eq!(g.get(&key("attention.head_count")).u32() as usize, m.n_heads);
    assert_eq!(g.get(&key("attention.head_count_kv")).u32() as usize, m.n_kv_heads);
    assert_eq!(g.get(&key("attention.layer_norm_rms_epsilon")).f32(), m.norm_eps);
    assert_eq!(g.get(&key("rope.freq_base")).f32(), m.rope_theta);
    assert_eq!(g.get(&key("rope.dimension_count")).u32() as usize, m.head_dim());
    assert_eq!(g.get(&key("vocab_size")).u32() as usize, m.vocab_size);
    if m.ffn == FfnKind::Moe {
        assert_eq!(g.get(&key("expert_count")).u32() as usize, m.moe.n_experts);
        assert_eq!(g.get(&key("expert_used_count")).u32() as usize, m.moe.top_k);
    } else {
        assert!(!g.kv.contains_key(&key("expert_count")));
    }
    match m.rope_scaling {
        Some(RopeScaling { kind: RopeScalingKind::Linear, factor, .. }) => {
            assert_eq!(g.get(&key("rope.scaling.type")).str(), "linear");
            assert_eq!(g.get(&key("rope.scaling.factor")).f32(), factor);
        }
        _ => assert!(!g.kv.contains_key(&key("rope.scaling.type"))),
    }

    // The tokenizer: every id of tokenizer.json at its index, gaps padded, added tokens control.
    assert_eq!(g.get("tokenizer.ggml.model").str(), "gpt2");
    assert_eq!(g.get("tokenizer.ggml.pre").str(), "gpt-2");
    let tokens = g.get("tokenizer.ggml.tokens").strs();
    let types = g.get("tokenizer.ggml.token_type").i32s();
    assert_eq!(tokens.len(), m.vocab_size);
    assert_eq!(types.len(), m.vocab_size);
    let json: Value = serde_json::from_str(&tok.to_json()).unwrap();
    let vocab = json["model"]["vocab"].as_object().unwrap();
    assert_eq!(vocab.len(), tok.vocab_size());
    for (token, id) in vocab {
        let id = id.as_u64().unwrap() as usize;
        assert_eq!(tokens[id], *token, "token {id}");
    }
    let eos = tok.eos_id().expect("trained tokenizers have <|endoftext|>");
    assert_eq!(tokens[eos as usize], "<|endoftext|>");
    for (id, (token, &ty)) in tokens.iter().zip(&types).enumerate() {
        if id >= tok.vocab_size() {
            assert_eq!((token.as_str(), ty), (format!("[PAD{id}]").as_str(), 5), "gap {id}");
        } else if id == eos as usize {
            assert_eq!(ty, 3, "<|endoftext|> is a control token");
        } else {
            assert_eq!(ty, 1, "token {id} `{token}` is normal");
        }
    }
    let merges = g.get("tokenizer.ggml.merges").strs();
    let want: Vec<String> = json["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|mg| match mg {
            Value::String(s) => s.clone(),
            Value::Array(p) => format!("{} {}", p[0].as_str().unwrap(), p[1].as_str().unwrap()),
            other => panic!("merge {other}"),
        })
        .collect();
    assert!(!want.is_empty());
    assert_eq!(merges, want);
    assert_eq!(g.get("tokenizer.ggml.eos_token_id").u32(), eos);
    assert_eq!(g.get("tokenizer.ggml.bos_token_id").u32(), eos);
    assert_eq!(g.get("tokenizer.ggml.add_bos_token"), &V::Bool(false));

    // Nothing else but what llama.cpp's converter also writes.
    let mut expected_keys = vec![
        "general.architecture",
        "general.name",
        "general.file_type",
        "general.alignment",
        "general.quantization_version",
        "tokenizer.ggml.model",
        "tokenizer.ggml.pre",
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.add_bos_token",
    ]
    .into_iter()
    .map(String::from)
    .collect::<Vec<_>>();
    for k in [
        "context_length",
        "embedding_length",
        "block_count",
        "feed_forward_length",
        "attention.head_count",
        "attention.head_count_kv",
        "attention.layer_norm_rms_epsilon",
        "rope.freq_base",
        "rope.dimension_count",
        "vocab_size",
    ] {
        expected_keys.push(key(k));
    }
    if m.ffn == FfnKind::Moe {
        expected_keys.extend([key("expert_count"), key("expert_used_count")]);
    }
    if matches!(m.rope_scaling, Some(RopeScaling { kind: RopeScalingKind::Linear, .. })) {
        expected_keys.extend([key("rope.scaling.type"), key("rope.scaling.factor")]);
    }
    expected_keys.sort();
    assert_eq!(g.kv.keys().cloned().collect::<Vec<_>>(), expected_keys);
}

fn check_tensors(g: &Gguf, model: &Model, dtype: GgufDtype, arch: &str) {
    let m = &model.config;
    let mut expected = expected_tensors(model);
    let llama3 = matches!(m.rope_scaling, Some(RopeScaling { kind: RopeScalingKind::Llama3, .. }));
    let mut want_names: Vec<String> = expected.iter().map(|e| e.0.clone()).collect();
    if llama3 {
        want_names.push("rope_freqs.weight".into());
    }
    want_names.sort();
    let mut have_names = g.names.clone();
    have_names.sort();
    assert_eq!(have_names, want_names);

    // Offsets: aligned, in file order, each tensor's data right after the previous one's (padded).
    let mut next = 0u64;
    for name in &g.names {
        let t = g.info(name);
        assert_eq!(t.offset % 32, 0, "{name} offset");
        assert_eq!(t.offset, next, "{name} follows the previous tensor");
        let n: u64 = t.dims.iter().product();
        next = (t.offset + type_bytes(t.ty, n as usize) as u64).div_ceil(32) * 32;
    }
    assert!(g.data_start as u64 + next <= g.bytes.len() as u64 + 31);
    assert_eq!(g.data_start % 32, 0);

    for (name, dims, want) in expected.drain(..) {
        let t = g.info(&name);
        assert_eq!(t.dims, dims, "{name} dims");
        assert_eq!(t.ty, expected_type(&name, &dims, dtype), "{name} type under {dtype:?}");
        let mut got = g.values(&name);
        // llama: q and k are stored interleaved; undo it (biases are rows of one).
        if arch == "llama" {
            let cols = if dims.len() == 2 { dims[0] as usize } else { 1 };
            if name.contains(".attn_q.") {
                got = unpermute(&got, m.n_heads, cols);
            } else if name.contains(".attn_k.") {
                got = unpermute(&got, m.n_kv_heads, cols);
            }
        }
        assert_eq!(got.len(), want.len(), "{name} length");
        match t.ty {
            F32 => assert!(got == want, "{name}: f32 data differs"),
            F16 => {
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(*g, f16::from_f32(*w).to_f32(), "{name}[{i}]");
                }
            }
            Q8_0 => {
                // Blocks run along rows (ne0, a multiple of 32), and the permutation moves whole rows:
                // each block of the unpermuted data is still one quantised block.
                for (bi, (gb, wb)) in got.chunks(32).zip(want.chunks(32)).enumerate() {
                    let amax = wb.iter().fold(0.0f32, |a, x| a.max(x.abs()));
                    let d = amax / 127.0;
                    // Half a step, plus the f16 rounding of the scale over up to 127 steps.
                    let tol = d / 2.0 + 127.0 * d * 2f32.powi(-11) + 1e-7;
                    for (g, w) in gb.iter().zip(wb) {
                        assert!((g - w).abs() <= tol, "{name} block {bi}: {g} vs {w} (tol {tol})");
                    }
                }
                let max_err = max_abs_diff(&got, &want);
                assert!(max_err > 0.0, "{name}: q8_0 should round something");
            }
            other => panic!("{name}: type {other}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn llama_exports_exactly_in_f32_with_linear_rope_scaling() {
    let tok = tokenizer();
    let mut m = llama_config();
    m.rope_scaling = Some(RopeScaling::new(RopeScalingKind::Linear, 2.0));
    assert!(m.vocab_size > tok.vocab_size(), "the test covers padded ids");
    let model = Model::new(&m, 1);
    let g = export_and_check(&model, &tok, GgufDtype::F32, "llama");
    // Untied: the head is there.
    assert!(g.tensors.contains_key("output.weight"));
}

#[test]
fn llama_in_f16_and_q8_0() {
    let tok = tokenizer();
    let model = Model::new(&llama_config(), 2);
    export_and_check(&model, &tok, GgufDtype::F16, "llama");
    let g = export_and_check(&model, &tok, GgufDtype::Q8_0, "llama");
    // Rows of 64 quantise; ffn_down's rows of 80 fall back to f16.
    assert_eq!(g.info("blk.0.attn_q.weight").ty, Q8_0);
    assert_eq!(g.info("blk.0.ffn_down.weight").ty, F16);
    assert_eq!(g.info("blk.0.attn_norm.weight").ty, F32);
}

#[test]
fn llama_with_biases_permutes_the_q_and_k_biases_too() {
    let tok = tokenizer();
    let mut model = Model::new(&ModelConfig { bias: true, ..llama_config() }, 12);
    // Biases start at zero; make every entry distinct so that a misplaced one shows.
    for spec in model.specs.clone().iter().filter(|s| s.name.ends_with(".bias")) {
        for (i, x) in spec.handle.of_mut(&mut model.params).iter_mut().enumerate() {
            *x = 0.01 * (i as f32 + 1.0) * if i % 3 == 0 { -1.0 } else { 1.0 };
        }
    }
    let g = export_and_check(&model, &tok, GgufDtype::F32, "llama");
    // Biases are rows of one: q bias entry 1 of GGUF is HF entry 8 (head size 16).
    let hf = param(&model, "blocks.0.attn.qkv.bias");
    let q = g.values("blk.0.attn_q.bias");
    assert_eq!((q[0], q[1], q[2]), (hf[0], hf[8], hf[1]));
    assert_ne!(q[1], q[2]);
    export_and_check(&model, &tok, GgufDtype::Q8_0, "llama");
}

#[test]
fn the_permutation_interleaves_rotate_half_pairs() {
    // Head size 16: HF row i pairs with row i + 8; llama.cpp wants the pair in rows 2i, 2i + 1.
    let tok = tokenizer();
    let model = Model::new(&llama_config(), 3);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    gguf::export(&model, &tok, &path, GgufDtype::F32).unwrap();
    let g = read_gguf(&path);
    let c = model.config.d_model;
    let q = g.values("blk.1.attn_q.weight");
    let hf = param(&model, "blocks.1.attn.qkv.weight");
    for (gguf_row, hf_row) in [(0, 0), (1, 8), (2, 1), (3, 9), (15, 15), (16, 16), (17, 24)] {
        assert_eq!(q[gguf_row * c..(gguf_row + 1) * c], hf[hf_row * c..(hf_row + 1) * c], "row {gguf_row}");
    }
    // k has its own 2 heads.
    let k = g.values("blk.1.attn_k.weight");
    let k_hf = &hf[model.config.n_heads * 16 * c..];
    assert_eq!(k[c..2 * c], k_hf[8 * c..9 * c]);
    assert_eq!(k[17 * c..18 * c], k_hf[24 * c..25 * c]);
}

#[test]
fn mixtral_moe_stacks_experts_in_every_dtype() {
    let tok = tokenizer();
    let model = Model::new(&mixtral_config(), 4);
    for dtype in [GgufDtype::F32, GgufDtype::F16, GgufDtype::Q8_0] {
        let g = export_and_check(&model, &tok, dtype, "llama");
        // Tied: no output.weight; llama.cpp falls back to token_embd.
        assert!(!g.tensors.contains_key("output.weight"));
        assert_eq!(g.info("blk.1.ffn_gate_inp.weight").ty, F32);
        assert_eq!(g.info("blk.1.ffn_down_exps.weight").dims, [64, 64, 4]);
    }
}

#[test]
fn qwen2_keeps_rotate_half_and_its_biases() {
    let tok = tokenizer();
    let model = Model::new(&qwen2_config(), 5);
    for dtype in [GgufDtype::F32, GgufDtype::Q8_0] {
        let g = export_and_check(&model, &tok, dtype, "qwen2");
        assert_eq!(g.info("blk.0.attn_q.bias").ty, F32);
        assert_eq!(g.info("blk.0.attn_k.bias").dims, [16]);
    }
}

#[test]
fn llama3_scaling_writes_rope_frequency_factors() {
    let tok = tokenizer();
    let mut m = llama_config();
    m.d_model = 256;
    m.n_heads = 2; // head size 128: Llama 3's, so frequencies span every band
    m.n_kv_heads = 1;
    m.rope_theta = 500_000.0;
    m.max_seq_len = 64;
    m.rope_scaling = Some(RopeScaling {
        original_max_seq_len: Some(8192),
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        ..RopeScaling::new(RopeScalingKind::Llama3, 8.0)
    });
    let model = Model::new(&m, 6);
    let g = export_and_check(&model, &tok, GgufDtype::F32, "llama");
    let factors = g.values("rope_freqs.weight");
    assert_eq!(g.info("rope_freqs.weight").dims, [64]);
    // Llama 3.1 8B's: short wavelengths kept, long ones divided by 8, a smooth band between.
    assert_eq!(factors[0], 1.0);
    assert_eq!(*factors.last().unwrap(), 8.0);
    assert!(factors.windows(2).all(|w| w[0] <= w[1]), "{factors:?}");
    let between: Vec<_> = factors.iter().filter(|&&f| f > 1.0 && f < 8.0).collect();
    assert!(!between.is_empty(), "{factors:?}");
    // Each factor divides HF's frequency into the scaled one.
    for (i, &f) in factors.iter().enumerate() {
        let freq = 1.0 / 500_000f32.powf(2.0 * i as f32 / 128.0);
        let wavelen = 2.0 * std::f32::consts::PI / freq;
        let scaled = if wavelen < 8192.0 / 4.0 {
            freq
        } else if wavelen > 8192.0 {
            freq / 8.0
        } else {
            let smooth = (8192.0 / wavelen - 1.0) / 3.0;
            (1.0 - smooth) * freq / 8.0 + smooth * freq
        };
        assert!((freq / f - scaled).abs() <= 1e-5 * freq, "factor {i}: {f}");
    }
}

fn export_err(model: &Model, tok: &Tokenizer) -> InteropError {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    let err = gguf::export(model, tok, &path, GgufDtype::F16).expect_err("export should be refused");
    assert!(!path.exists(), "a refused export writes nothing");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nor leaves a temporary file");
    err
}

fn no_target(err: InteropError) -> String {
    match err {
        InteropError::NoTarget(why) => why,
        other => panic!("expected NoTarget, got {other:?}"),
    }
}

#[test]
fn gpt2_is_refused_clearly() {
    let m = ModelConfig { vocab_size: 320, ..ModelConfig::default() }; // learned positions, layernorm, mlp
    let why = no_target(export_err(&Model::new(&m, 7), &tokenizer()));
    assert!(why.contains("GPT-2"), "{why}");
}

#[test]
fn models_llama_cpp_cannot_run_the_same_are_refused() {
    let tok = tokenizer();
    let cases: Vec<(ModelConfig, &str)> = vec![
        (
            ModelConfig {
                rope_scaling: Some(RopeScaling {
                    original_max_seq_len: Some(16),
                    ..RopeScaling::new(RopeScalingKind::Dynamic, 2.0)
                }),
                ..llama_config()
            },
            "dynamic",
        ),
        (ModelConfig { sliding_window: Some(16), ..llama_config() }, "sliding_window 16"),
        (
            ModelConfig {
                rope_scaling: Some(RopeScaling {
                    original_max_seq_len: Some(16),
                    ..RopeScaling::new(RopeScalingKind::Llama3, 2.0)
                }),
                ..qwen2_config()
            },
            "qwen2",
        ),
        (ModelConfig { positional: Positional::Alibi, ..llama_config() }, "positional"),
        (ModelConfig { ffn: FfnKind::Geglu, ..llama_config() }, "ffn"),
    ];
    for (m, needle) in cases {
        let why = no_target(export_err(&Model::new(&m, 8), &tok));
        assert!(why.contains(needle), "{needle}: {why}");
    }
    // A window as long as the context changes nothing: Mistral exports.
    let m = ModelConfig { sliding_window: Some(48), ..llama_config() };
    export_and_check(&Model::new(&m, 8), &tok, GgufDtype::F32, "llama");
}

#[test]
fn routers_with_balancing_biases_are_refused() {
    let mut m = mixtral_config();
    m.moe.balancing = Balancing::Bias;
    let mut model = Model::new(&m, 9);
    let ids: Vec<u32> = (0..32).map(|i| (i * 7 % 300) as u32).collect();
    model.forward(&ids, 1, 32, Mode::Train { dropout_seed: 0 }).unwrap();
    model.update_selection_bias();
    assert!(model.moe_layers().any(|moe| moe.selection_bias.iter().any(|&b| b != 0.0)));
    let why = no_target(export_err(&model, &tokenizer()));
    assert!(why.contains("balancing"), "{why}");
}

#[test]
fn an_existing_output_is_never_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    std::fs::write(&path, b"precious").unwrap();
    let err =
        gguf::export(&Model::new(&llama_config(), 10), &tokenizer(), &path, GgufDtype::F32).unwrap_err();
    assert!(matches!(err, InteropError::Exists { .. }), "{err:?}");
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
}

#[test]
fn tokenizers_llama_cpp_would_split_differently_are_refused() {
    let model = Model::new(&llama_config(), 11);
    let json: Value = serde_json::from_str(&tokenizer().to_json()).unwrap();
    let with = |pointer: &str, value: Value| {
        let mut j = json.clone();
        *j.pointer_mut(pointer).unwrap() = value;
        Tokenizer::from_json(&j.to_string()).unwrap()
    };
    let cases = [
        (with("/pre_tokenizer", serde_json::json!({"type": "Whitespace"})), "Whitespace"),
        (with("/pre_tokenizer/add_prefix_space", Value::Bool(true)), "prefix space"),
        (with("/normalizer", serde_json::json!({"type": "Lowercase"})), "normalizer"),
    ];
    for (tok, needle) in cases {
        let why = no_target(export_err(&model, &tok));
        assert!(why.contains(needle) && why.contains("byte-level BPE"), "{needle}: {why}");
    }
    // A tokenizer larger than the model's vocabulary is an error too.
    let small = ModelConfig { vocab_size: 280, ..llama_config() };
    let err = export_err(&Model::new(&small, 11), &tokenizer());
    assert!(err.to_string().contains("280"), "{err}");
}
