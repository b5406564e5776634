//! The tokenizer of a GGUF file, from its `tokenizer.ggml.*` metadata.
//!
//! Read: `tokenizer.ggml.model = gpt2`, the byte-level BPE, with the pre-tokenizers (text
//! splitting rules) of [`PRE_TOKENIZERS`]: `gpt-2` (what our export writes, and GPT-2's files),
//! `llama-bpe` (Llama 3), `qwen2` and `smollm`. Each becomes the equivalent `tokenizers` BPE:
//! tokens and merges in file order, control and user-defined tokens also as added tokens (special
//! for control), unused ones (padding) left out, and the EOS id. tests/gguf_vocab.rs checks the
//! ids against llama.cpp's own tokenizer tests for `gpt-2`, `llama-bpe` and `qwen2`; `smollm`
//! follows llama.cpp's regexes for it, but llama.cpp ships no test vocabulary to check it on.
//!
//! Other kinds (`llama` SentencePiece-style BPE with scores, other pre-tokenizers) are refused by
//! name: a tokenizer that splits differently from llama.cpp's would give other ids silently.

use serde_json::{json, Map, Value as Json};
use truthgpt_data::Tokenizer;

use super::read::Gguf;
use super::value::{Array, Value};
use super::{TOKEN_CONTROL, TOKEN_UNUSED, TOKEN_USER_DEFINED};
use crate::error::{InteropError, Result};

/// The file's tokenizer; an error says why there is none we can use.
pub fn tokenizer<B: AsRef<[u8]>>(g: &Gguf<B>) -> Result<Tokenizer> {
    let unsupported = |problem: String| InteropError::Unsupported { path: g.path().into(), problem };
    let kind = string(g, "tokenizer.ggml.model")?;
    let pre = string(g, "tokenizer.ggml.pre").unwrap_or_else(|_| "(none)".into());
    let pre_tokenizer = match (kind.as_str(), pre_tokenizer(&pre)) {
        ("gpt2", Some(p)) => p,
        _ => {
            return Err(unsupported(format!(
                "tokenizer.ggml.model `{kind}` with pre-tokenizer `{pre}`: we read `gpt2` (byte-level \
                 BPE) with pre-tokenizer {}",
                PRE_TOKENIZERS.join(", ")
            )))
        }
    };
    let tokens = strings(g, "tokenizer.ggml.tokens")?;
    let merges = strings(g, "tokenizer.ggml.merges")?;
    let types = match g.get("tokenizer.ggml.token_type") {
        None => vec![],
        Some(Value::Array(Array::I32(t))) if t.len() == tokens.len() => t.clone(),
        Some(v) => {
            return Err(invalid(
                g,
                format!("tokenizer.ggml.token_type is {}, expected {} i32", v.type_name(), tokens.len()),
            ))
        }
    };
    let mut vocab = Map::new();
    let mut added = Vec::new();
    for (id, token) in tokens.iter().enumerate() {
        let ty = types.get(id).copied();
        if ty == Some(TOKEN_UNUSED) {
            continue;
        }
        // Added tokens are in the model's vocabulary too, else `tokenizers` gives them new ids.
        vocab.insert(token.clone(), json!(id));
        if let Some(ty @ (TOKEN_CONTROL | TOKEN_USER_DEFINED)) = ty {
            added.push(json!({
                "id": id, "content": token, "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": false, "special": ty == TOKEN_CONTROL,
            }));
        }
    }
    let merges = merges
        .iter()
        .map(|m| m.split_once(' ').map(|(a, b)| json!([a, b])))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| invalid(g, "tokenizer.ggml.merges has an entry that is not `a b`".into()))?;
    let json = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": pre_tokenizer, "post_processor": null,
        "decoder": byte_level(false),
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            // Llama 3 takes a word that is a token as it is, before any merge (llama.cpp's
            // `ignore_merges`, set for that type alone).
            "ignore_merges": pre == "llama-bpe", "vocab": Json::Object(vocab), "merges": merges,
        },
    });
    let mut tokenizer = Tokenizer::from_json(&json.to_string())?;
    if let Some(eos) = g.get("tokenizer.ggml.eos_token_id") {
        let token = eos.as_u64().and_then(|id| tokens.get(id as usize)).ok_or_else(|| {
            invalid(g, format!("tokenizer.ggml.eos_token_id is {eos:?}, not an id of the vocabulary"))
        })?;
        tokenizer.set_eos_token(token)?;
    }
    Ok(tokenizer)
}

/// The `tokenizer.ggml.pre` values we read.
pub const PRE_TOKENIZERS: [&str; 4] = ["gpt-2", "llama-bpe", "qwen2", "smollm"];

/// `tokenizers`' ByteLevel step; with `regex`, it first splits by GPT-2's regex.
fn byte_level(regex: bool) -> Json {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": regex})
}

/// The pre-tokenizer that splits text as llama.cpp does for `pre` (the regexes of its
/// `llama_vocab` for that type, where the case-insensitive contractions are spelled out), or none
/// if we do not read it.
fn pre_tokenizer(pre: &str) -> Option<Json> {
    let split = |regex: &str| json!({"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false});
    let sequence = |steps: Vec<Json>| json!({"type": "Sequence", "pretokenizers": steps});
    const CONTRACTIONS: &str = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])";
    Some(match pre {
        "gpt-2" => byte_level(true),
        // Llama 3 groups digits by three, Qwen2 splits every digit.
        "llama-bpe" | "qwen2" => {
            let digits = if pre == "qwen2" { r"\p{N}" } else { r"\p{N}{1,3}" };
            let regex = format!(
                r"{CONTRACTIONS}|[^\r\n\p{{L}}\p{{N}}]?\p{{L}}+|{digits}| ?[^\s\p{{L}}\p{{N}}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
            );
            sequence(vec![split(&regex), byte_level(false)])
        }
        // Every digit apart, then GPT-2's split.
        "smollm" => sequence(vec![split(r"\p{N}"), byte_level(true)]),
        _ => return None,
    })
}

fn invalid<B: AsRef<[u8]>>(g: &Gguf<B>, problem: String) -> InteropError {
    InteropError::Invalid { path: g.path().into(), problem }
}

fn string<B: AsRef<[u8]>>(g: &Gguf<B>, key: &str) -> Result<String> {
    match g.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(v) => Err(invalid(g, format!("{key} is {}, not a string", v.type_name()))),
        None => Err(InteropError::Missing { path: g.path().into(), what: format!("metadata `{key}`") }),
    }
}

fn strings<'a, B: AsRef<[u8]>>(g: &'a Gguf<B>, key: &str) -> Result<&'a [String]> {
    match g.get(key) {
        Some(Value::Array(Array::String(s))) => Ok(s),
        Some(v) => Err(invalid(g, format!("{key} is {}, not an array of strings", v.type_name()))),
        None => Err(InteropError::Missing { path: g.path().into(), what: format!("metadata `{key}`") }),
    }
}
