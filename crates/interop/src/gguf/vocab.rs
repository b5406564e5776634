//! The tokenizer of a GGUF file, from its `tokenizer.ggml.*` metadata.
//!
//! Read: `tokenizer.ggml.model = gpt2` with `pre = gpt-2`, the byte-level BPE with GPT-2's
//! pre-tokenizer (what our export writes, and GPT-2's own files), rebuilt as the equivalent
//! `tokenizers` BPE: tokens and merges in file order, control and user-defined tokens also as added
//! tokens (special for control), unused ones (padding) left out, and the EOS id. Other kinds
//! (`llama` SentencePiece-style BPE with scores, other pre-tokenizer regexes) are refused by name:
//! their splitting rules differ, and a tokenizer that splits differently from llama.cpp's would
//! give other ids silently.

use serde_json::{json, Map, Value as Json};
use truthgpt_data::Tokenizer;

use super::read::Gguf;
use super::value::{Array, Value};
use super::{TOKEN_CONTROL, TOKEN_UNUSED, TOKEN_USER_DEFINED};
use crate::error::{InteropError, Result};

/// The file's tokenizer; an error says why there is none we can use.
pub fn tokenizer(g: &Gguf) -> Result<Tokenizer> {
    let unsupported = |problem: String| InteropError::Unsupported { path: g.path().into(), problem };
    let kind = string(g, "tokenizer.ggml.model")?;
    let pre = string(g, "tokenizer.ggml.pre").unwrap_or_else(|_| "(none)".into());
    if kind != "gpt2" || pre != "gpt-2" {
        return Err(unsupported(format!(
            "tokenizer.ggml.model `{kind}` with pre-tokenizer `{pre}`: only `gpt2` with `gpt-2` \
             (byte-level BPE, GPT-2's regex) is read so far"
        )));
    }
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
    let byte_level =
        json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    let json = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": byte_level, "post_processor": null, "decoder": byte_level,
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": false, "vocab": Json::Object(vocab), "merges": merges,
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

fn invalid(g: &Gguf, problem: String) -> InteropError {
    InteropError::Invalid { path: g.path().into(), problem }
}

fn string(g: &Gguf, key: &str) -> Result<String> {
    match g.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(v) => Err(invalid(g, format!("{key} is {}, not a string", v.type_name()))),
        None => Err(InteropError::Missing { path: g.path().into(), what: format!("metadata `{key}`") }),
    }
}

fn strings<'a>(g: &'a Gguf, key: &str) -> Result<&'a [String]> {
    match g.get(key) {
        Some(Value::Array(Array::String(s))) => Ok(s),
        Some(v) => Err(invalid(g, format!("{key} is {}, not an array of strings", v.type_name()))),
        None => Err(InteropError::Missing { path: g.path().into(), what: format!("metadata `{key}`") }),
    }
}
