//! GGUF import through the f32 reference path:
//! - files in a mix of ggml types (`scripts/make_gguf_fixtures.py`, written as llama.cpp's
//!   converter lays them out) give transformers' logits for the same file within 1e-4;
//! - our own export reads back to the very parameters it was written from (llama, qwen2, and
//!   Mixtral's stacked experts);
//! - other architectures, and metadata that disagrees with the tensors, are refused by name.

mod common;

use std::path::{Path, PathBuf};

use common::gguf_fixture;
use truthgpt_config::{ExpertKind, FfnKind, ModelConfig, NormKind, Positional};
use truthgpt_data::Tokenizer;
use truthgpt_engine::close::max_abs_diff;
use truthgpt_interop::gguf::import::Weights;
use truthgpt_interop::gguf::{self, import, GgufDtype};
use truthgpt_interop::hf::Family;
use truthgpt_interop::InteropError;
use truthgpt_model::{Mode, Model};

#[test]
fn mixed_type_files_give_transformers_logits() {
    for (name, family) in [("llama", Family::Llama), ("qwen2", Family::Qwen2), ("gpt2", Family::Gpt2)] {
        let dir = gguf_fixture(name);
        let path = dir.join("model.gguf");
        let mut loaded =
            import::load_with(&path, Weights::Dequantized).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!((loaded.family, loaded.architecture.as_str()), (family, name));
        let (ids, want) = common::expected(&dir);
        let got = loaded.model.forward(&ids, 1, ids.len(), Mode::Eval).unwrap().to_vec();
        let diff = max_abs_diff(&got, &want);
        println!("{name:>6}: max |ours - transformers(gguf_file)| = {diff:.2e} over {} logits", want.len());
        assert!(diff <= 1e-4, "{name}: logits differ from transformers by {diff:e}");
        // The decode path agrees too, one token at a time.
        let vocab = loaded.model.config.vocab_size;
        let mut cache = loaded.model.new_cache();
        for (i, &id) in ids.iter().enumerate() {
            let step = loaded.model.forward_cached(&mut cache, &[id]).unwrap();
            let diff = max_abs_diff(step, &want[i * vocab..(i + 1) * vocab]);
            assert!(diff <= 1e-4, "{name} position {i}: cached logits differ by {diff:e}");
        }
    }
}

/// Through the integer kernels (the default load: matrices stay in their blocks, activations
/// quantized to 8 bits per block), the same files stay close to transformers' logits on the
/// dequantized weights. The tolerance is from the measurement (printed), with headroom.
#[test]
fn quantized_kernels_stay_close_to_transformers() {
    for name in ["llama", "qwen2", "gpt2"] {
        let dir = gguf_fixture(name);
        let mut loaded = import::load(&dir.join("model.gguf")).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(loaded.model.is_quantized(), "{name}: matrices should stay in their blocks");
        let (ids, want) = common::expected(&dir);
        let vocab = loaded.model.config.vocab_size;
        let got = loaded.model.forward(&ids, 1, ids.len(), Mode::Eval).unwrap().to_vec();
        let diff = max_abs_diff(&got, &want);
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let agree = common::top1_agreement(&got, &want, vocab);
        let positions = ids.len();
        println!(
            "{name:>6}: quantized kernels: max |ours - transformers| = {diff:.2e} (logits up to {scale:.2}), top-1 {agree}/{positions}"
        );
        assert!(diff <= 0.05 * scale as f64, "{name}: quantized logits differ from transformers by {diff:e}");
        assert!(agree * 10 >= positions * 9, "{name}: top-1 agrees at {agree} of {positions} positions");
        // One token at a time through the KV cache: the same products row by row.
        let mut cache = loaded.model.new_cache();
        for (i, &id) in ids.iter().enumerate() {
            let step = loaded.model.forward_cached(&mut cache, &[id]).unwrap();
            let diff = max_abs_diff(step, &got[i * vocab..(i + 1) * vocab]);
            assert!(diff <= 1e-4, "{name} position {i}: cached quantized logits differ by {diff:e}");
        }
    }
}

const TEXT: &str = "To be, or not to be, that is the question: Whether 'tis nobler in the mind to suffer \
    The slings and arrows of outrageous fortune, Or to take arms against a sea of troubles 0123456789";

fn llama_config() -> ModelConfig {
    ModelConfig {
        vocab_size: 320,
        d_model: 64,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: 2,
        d_ff: 96,
        max_seq_len: 48,
        bias: false,
        tie_embeddings: false,
        norm: NormKind::RmsNorm,
        positional: Positional::Rope,
        rope_theta: 50_000.0,
        ffn: FfnKind::Swiglu,
        ..ModelConfig::default()
    }
}

fn mixtral_config() -> ModelConfig {
    let mut m = ModelConfig { ffn: FfnKind::Moe, tie_embeddings: true, ..llama_config() };
    (m.moe.n_experts, m.moe.top_k, m.moe.expert, m.moe.dropless) = (4, 2, ExpertKind::Swiglu, true);
    m
}

/// A random model of `config`, exported as `dtype` into `dir`.
fn export(config: &ModelConfig, dtype: GgufDtype, dir: &Path) -> (Model, PathBuf) {
    let model = Model::new(config, 18);
    let path = dir.join("model.gguf");
    let tokenizer = Tokenizer::train_bpe_from_texts(&[TEXT, TEXT], 300).unwrap();
    gguf::export(&model, &tokenizer, &path, dtype).unwrap();
    (model, path)
}

#[test]
fn our_export_reads_back_to_the_same_parameters() {
    let qwen2 = ModelConfig { qkv_bias: true, tie_embeddings: true, ..llama_config() };
    let biased = ModelConfig { bias: true, ..llama_config() };
    for (config, family) in [
        (llama_config(), Family::Llama),
        (biased, Family::Llama),
        (qwen2, Family::Qwen2),
        (mixtral_config(), Family::Mixtral),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (model, path) = export(&config, GgufDtype::F32, dir.path());
        let back = import::load(&path).unwrap_or_else(|e| panic!("{family:?}: {e}"));
        assert_eq!(back.family, family);
        assert_eq!(back.model.config, model.config, "{family:?}: config");
        assert_eq!(back.model.specs.len(), model.specs.len());
        for (ours, theirs) in back.model.specs.iter().zip(&model.specs) {
            assert_eq!(ours.name, theirs.name);
            let (a, b) = (ours.handle.of(&back.model.params), theirs.handle.of(&model.params));
            let same = a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same, "{family:?}: {} differs by {:e}", ours.name, max_abs_diff(a, b));
        }
    }
}

#[test]
fn a_q8_0_export_reads_back_within_its_rounding() {
    let dir = tempfile::tempdir().unwrap();
    let (mut model, path) = export(&llama_config(), GgufDtype::Q8_0, dir.path());
    let mut back = import::load(&path).unwrap();
    let ids: Vec<u32> = (0..16).map(|i| i * 7 % 300).collect();
    let want = model.forward(&ids, 1, ids.len(), Mode::Eval).unwrap().to_vec();
    let got = back.model.forward(&ids, 1, ids.len(), Mode::Eval).unwrap();
    let diff = max_abs_diff(got, &want);
    println!("q8_0 llama: max |logits - f32| = {diff:.2e}");
    assert!(diff <= 2e-2, "q8_0 logits differ from f32 by {diff:e}");
}

/// `bytes` with the first occurrence of `from` (which must be there) replaced by `to`, as long.
fn patched(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let at = bytes.windows(from.len()).position(|w| w == from).expect("pattern present");
    let mut out = bytes.to_vec();
    out[at..at + to.len()].copy_from_slice(to);
    out
}

/// The u32 value of metadata `key` (GGUF: key, type 4, value), replaced by `value`.
fn with_u32(bytes: &[u8], key: &str, value: u32) -> Vec<u8> {
    let at = bytes.windows(key.len()).position(|w| w == key.as_bytes()).expect("key present") + key.len();
    assert_eq!(bytes[at..at + 4], 4u32.to_le_bytes(), "{key} is a u32");
    let mut out = bytes.to_vec();
    out[at + 4..at + 8].copy_from_slice(&value.to_le_bytes());
    out
}

fn load_err(dir: &Path, bytes: &[u8]) -> String {
    let path = dir.join("bad.gguf");
    std::fs::write(&path, bytes).unwrap();
    let err: InteropError = import::load(&path).expect_err("should be refused");
    let err = err.to_string();
    assert!(err.contains("bad.gguf"), "no file name in: {err}");
    err
}

#[test]
fn other_architectures_and_inconsistent_files_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let (_, path) = export(&llama_config(), GgufDtype::F32, dir.path());
    let good = std::fs::read(&path).unwrap();
    let arch =
        |name: &[u8]| [&b"general.architecture"[..], &8u32.to_le_bytes(), &5u64.to_le_bytes(), name].concat();
    let err = load_err(dir.path(), &patched(&good, &arch(b"llama"), &arch(b"bloom")));
    assert!(err.contains("architecture `bloom` is not supported; supported are llama, qwen2, gpt2"), "{err}");
    let err = load_err(dir.path(), &with_u32(&good, "llama.feed_forward_length", 95));
    assert!(
        err.contains("tensor `blk.0.ffn_gate.weight`: has dims [64, 96], but the metadata implies [64, 95]"),
        "{err}"
    );
    let err = load_err(dir.path(), &with_u32(&good, "llama.block_count", 3));
    assert!(err.contains("tensor `blk.2.attn_norm.weight`: missing"), "{err}");
    let err = load_err(dir.path(), &with_u32(&good, "llama.block_count", 1));
    assert!(
        err.contains("tensor(s) that a Llama model with this metadata does not have, e.g. blk.1."),
        "{err}"
    );
    // Metadata claiming a huge model fails on the tensors before anything is allocated for it.
    let err = load_err(dir.path(), &with_u32(&good, "llama.block_count", 1 << 30));
    assert!(err.contains("block_count 1073741824 but the file has"), "{err}");
    let err = load_err(dir.path(), &with_u32(&good, "llama.embedding_length", 1 << 30));
    assert!(err.contains("rope.dimension_count < head size"), "{err}");
    let err = load_err(dir.path(), &with_u32(&good, "llama.feed_forward_length", u32::MAX));
    assert!(err.contains("the metadata implies [64, 4294967295]"), "{err}");
    let err = load_err(dir.path(), &with_u32(&good, "llama.attention.head_count", 0));
    assert!(err.contains("head sizes other than"), "{err}");
    let err = load_err(dir.path(), &patched(&good, b"llama.context_length", b"llama.context_lengtX"));
    assert!(err.contains("metadata `llama.context_length`"), "{err}");
    let err = load_err(dir.path(), &good[..good.len() / 2]);
    assert!(err.contains("run past the end of the file"), "{err}");
}

#[test]
fn the_tokenizer_comes_from_the_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let (_, path) = export(&llama_config(), GgufDtype::F32, dir.path());
    let tokenizer = import::load(&path).unwrap().tokenizer.unwrap();
    let original = Tokenizer::train_bpe_from_texts(&[TEXT, TEXT], 300).unwrap();
    for text in [
        "To be, or not to be",
        "fn main() {\n    println!(\"{x}\");\n}",
        "héllo wörld — 数学 🙂",
        "  a  \t\n\n  b   ",
        "<|endoftext|>the end<|endoftext|>",
    ] {
        assert_eq!(tokenizer.encode(text).unwrap(), original.encode(text).unwrap(), "{text:?}");
    }
    assert_eq!((tokenizer.eos_id(), tokenizer.eos_token()), (original.eos_id(), original.eos_token()));

    // No tokenizer metadata, or a kind we do not read: the model still loads, and says why.
    let gpt2 = import::load(&gguf_fixture("gpt2").join("model.gguf")).unwrap();
    let err = gpt2.tokenizer.unwrap_err().to_string();
    assert!(err.contains("metadata `tokenizer.ggml.model`"), "{err}");
    let good = std::fs::read(&path).unwrap();
    let bloom_pre = patched(&good, b"gpt-2", b"bloom");
    std::fs::write(dir.path().join("pre.gguf"), bloom_pre).unwrap();
    let err = import::load(&dir.path().join("pre.gguf")).unwrap().tokenizer.unwrap_err().to_string();
    assert!(err.contains("pre.gguf") && err.contains("pre-tokenizer `bloom`"), "{err}");
}
