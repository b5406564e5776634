//! The tokenizer of a GGUF file, from its `tokenizer.ggml.*` metadata.
//!
//! Read, each as the equivalent `tokenizers` model:
//! - `tokenizer.ggml.model = gpt2`, byte-level BPE, with the pre-tokenizers (text splitting
//!   rules) of [`PRE_TOKENIZERS`]: `gpt-2` (what our export writes, and GPT-2's files), `llama-bpe`
//!   (Llama 3), `qwen2` and `smollm`; tokens and merges in file order;
//! - `llama`, SentencePiece-style BPE with scores (Llama 2, Mistral, TinyLlama, Phi-3), see
//!   `sentencepiece_bpe`.
//!
//! Control and user-defined tokens become added tokens (special for control), unused ones
//! (padding) are left out, and the EOS id is kept. No BOS is added: `encode` gives the ids of the
//! text alone, as llama.cpp's tokenizer does without `add_special`.
//!
//! tests/gguf_vocab.rs checks the ids against llama.cpp's own tokenizer tests for `gpt-2`,
//! `llama-bpe`, `qwen2` and `llama`; `smollm` follows llama.cpp's regexes for it, but llama.cpp
//! ships no test vocabulary to check it on. Other kinds and pre-tokenizers are refused by name: a
//! tokenizer that splits differently from llama.cpp's would give other ids silently.

use std::collections::HashMap;

use serde_json::{json, Map, Value as Json};
use truthgpt_data::Tokenizer;

use super::read::Gguf;
use super::value::{Array, Value};
use super::{TOKEN_CONTROL, TOKEN_NORMAL, TOKEN_UNUSED, TOKEN_USER_DEFINED};
use crate::error::{InteropError, Result};

/// The file's tokenizer; an error says why there is none we can use.
pub fn tokenizer<B: AsRef<[u8]>>(g: &Gguf<B>) -> Result<Tokenizer> {
    let kind = string(g, "tokenizer.ggml.model")?;
    let pre = string(g, "tokenizer.ggml.pre").unwrap_or_else(|_| "(none)".into());
    let tokens = strings(g, "tokenizer.ggml.tokens")?;
    let types = match g.get("tokenizer.ggml.token_type") {
        None => vec![TOKEN_NORMAL; tokens.len()],
        Some(Value::Array(Array::I32(t))) if t.len() == tokens.len() => t.clone(),
        Some(v) => {
            return Err(invalid(
                g,
                format!("tokenizer.ggml.token_type is {}, expected {} i32", v.type_name(), tokens.len()),
            ))
        }
    };
    let (model, normalizer, pre_tokenizer, decoder) = match (kind.as_str(), pre_tokenizer(&pre)) {
        ("gpt2", Some(pre_tokenizer)) => {
            (byte_level_bpe(g, tokens, &types, &pre)?, Json::Null, pre_tokenizer, byte_level(false))
        }
        ("llama", _) => sentencepiece_bpe(g, tokens, &types)?,
        _ => {
            return Err(InteropError::Unsupported {
                path: g.path().into(),
                problem: format!(
                    "tokenizer.ggml.model `{kind}` with pre-tokenizer `{pre}`: we read `llama` \
                     (SentencePiece-style BPE) and `gpt2` (byte-level BPE) with pre-tokenizer {}",
                    PRE_TOKENIZERS.join(", ")
                ),
            })
        }
    };
    let json = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added_tokens(tokens, &types),
        "normalizer": normalizer, "pre_tokenizer": pre_tokenizer, "post_processor": null,
        "decoder": decoder, "model": model,
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

/// Every token but the unused ones (padding), by id. Added tokens are in the model's vocabulary
/// too, else `tokenizers` gives them new ids.
fn vocabulary(tokens: &[String], types: &[i32]) -> Map<String, Json> {
    let mut vocab = Map::new();
    for (id, (token, &ty)) in tokens.iter().zip(types).enumerate() {
        if ty != TOKEN_UNUSED {
            vocab.insert(token.clone(), json!(id));
        }
    }
    vocab
}

/// Control tokens (special) and user-defined ones, matched whole in the text before the model
/// sees it.
fn added_tokens(tokens: &[String], types: &[i32]) -> Vec<Json> {
    let added = tokens
        .iter()
        .zip(types)
        .enumerate()
        .filter(|(_, (_, &ty))| ty == TOKEN_CONTROL || ty == TOKEN_USER_DEFINED);
    added
        .map(|(id, (token, &ty))| {
            json!({
                "id": id, "content": token, "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": false, "special": ty == TOKEN_CONTROL,
            })
        })
        .collect()
}

/// The `gpt2` kind: the file's merges, in order.
fn byte_level_bpe<B: AsRef<[u8]>>(g: &Gguf<B>, tokens: &[String], types: &[i32], pre: &str) -> Result<Json> {
    let merges = strings(g, "tokenizer.ggml.merges")?
        .iter()
        .map(|m| m.split_once(' ').map(|(a, b)| json!([a, b])))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| invalid(g, "tokenizer.ggml.merges has an entry that is not `a b`".into()))?;
    Ok(json!({
        "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
        "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
        // Llama 3 takes a word that is a token as it is, before any merge (llama.cpp's
        // `ignore_merges`, set for that type alone).
        "ignore_merges": pre == "llama-bpe", "vocab": Json::Object(vocabulary(tokens, types)), "merges": merges,
    }))
}

/// The `llama` kind, as llama.cpp's SPM tokenizer runs it: spaces become `▁` and one is put in
/// front, then adjacent pieces are merged, highest-scoring result first, while the result is a
/// normal token; pieces left that are no token become their bytes' `<0xXX>` tokens. As a
/// `tokenizers` BPE, that is a merge for every way of splitting a normal token into two tokens,
/// ranked by the token's score, with byte fallback. Returns (model, normalizer, pre-tokenizer,
/// decoder).
fn sentencepiece_bpe<B: AsRef<[u8]>>(
    g: &Gguf<B>,
    tokens: &[String],
    types: &[i32],
) -> Result<(Json, Json, Json, Json)> {
    let scores = match g.get("tokenizer.ggml.scores") {
        Some(Value::Array(Array::F32(s))) if s.len() == tokens.len() => s,
        Some(v) => {
            return Err(invalid(
                g,
                format!("tokenizer.ggml.scores is {}, expected {} f32", v.type_name(), tokens.len()),
            ))
        }
        None => {
            return Err(InteropError::Missing {
                path: g.path().into(),
                what: "metadata `tokenizer.ggml.scores`".into(),
            })
        }
    };
    let ids: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .filter(|&(id, _)| types[id] != TOKEN_UNUSED)
        .map(|(id, t)| (t.as_str(), id))
        .collect();
    let mut merges: Vec<(f32, usize, usize, &str, &str)> = Vec::new();
    for (id, token) in tokens.iter().enumerate().filter(|&(id, _)| types[id] == TOKEN_NORMAL) {
        for (at, _) in token.char_indices().skip(1) {
            let (a, b) = token.split_at(at);
            if let (Some(&ia), Some(&ib)) = (ids.get(a), ids.get(b)) {
                merges.push((scores[id], ia, ib, a, b));
            }
        }
    }
    // Highest score first; ties by the parts' ids, for a stable order.
    merges.sort_by(|x, y| y.0.total_cmp(&x.0).then((x.1, x.2).cmp(&(y.1, y.2))));
    let merges: Vec<Json> = merges.iter().map(|&(_, _, _, a, b)| json!([a, b])).collect();
    let unk = g
        .get("tokenizer.ggml.unknown_token_id")
        .and_then(Value::as_u64)
        .and_then(|id| tokens.get(id as usize));
    let model = json!({
        "type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
        "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
        "vocab": Json::Object(vocabulary(tokens, types)), "merges": merges,
    });
    let add_space_prefix = g.get("tokenizer.ggml.add_space_prefix").and_then(Value::as_bool).unwrap_or(true);
    let mut normalize = vec![json!({"type": "Replace", "pattern": {"String": " "}, "content": "▁"})];
    let mut decode = vec![
        json!({"type": "Replace", "pattern": {"String": "▁"}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if add_space_prefix {
        normalize.insert(0, json!({"type": "Prepend", "prepend": "▁"}));
        decode.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    let normalizer = json!({"type": "Sequence", "normalizers": normalize});
    let decoder = json!({"type": "Sequence", "decoders": decode});
    Ok((model, normalizer, Json::Null, decoder))
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
