//! Token ids equal llama.cpp's for the tokenizer kinds we read (byte-level BPE with the `gpt-2`,
//! `llama-bpe` and `qwen2` pre-tokenizers, and the SentencePiece-style `llama`, as Llama 2,
//! Mistral and TinyLlama files have it): llama.cpp's own tokenizer test texts (English, code, Unicode,
//! whitespace runs, digits) and ids, with the part of each vocabulary they need
//! (`scripts/make_vocab_fixtures.py`), written as GGUF metadata here and read back.

use std::path::Path;

use serde_json::Value;
use truthgpt_interop::gguf::{vocab, Gguf};

fn string(s: &str) -> Vec<u8> {
    [&(s.len() as u64).to_le_bytes()[..], s.as_bytes()].concat()
}

fn kv(key: &str, ty: u32, payload: &[u8]) -> Vec<u8> {
    [string(key), ty.to_le_bytes().to_vec(), payload.to_vec()].concat()
}

fn array(elem: u32, items: &[Vec<u8>]) -> Vec<u8> {
    [elem.to_le_bytes().to_vec(), (items.len() as u64).to_le_bytes().to_vec(), items.concat()].concat()
}

/// A GGUF file with just the tokenizer metadata of `fixture`; the ids the fixture leaves out are
/// empty tokens of type unused (5), which the reader skips.
fn gguf(fixture: &Value) -> Vec<u8> {
    let n = fixture["n_tokens"].as_u64().unwrap() as usize;
    let (mut tokens, mut types, mut scores) = (vec![String::new(); n], vec![5i32; n], vec![0f32; n]);
    for t in fixture["tokens"].as_array().unwrap() {
        let id = t[0].as_u64().unwrap() as usize;
        tokens[id] = t[1].as_str().unwrap().to_string();
        types[id] = t[2].as_i64().unwrap() as i32;
        scores[id] = t.get(3).and_then(Value::as_f64).unwrap_or(0.0) as f32;
    }
    let merges: Vec<Vec<u8>> =
        fixture["merges"].as_array().unwrap().iter().map(|m| string(m.as_str().unwrap())).collect();
    let u32_value = |v: &Value| (v.as_u64().unwrap() as u32).to_le_bytes();
    let mut kvs = vec![
        kv("tokenizer.ggml.model", 8, &string(fixture["model"].as_str().unwrap())),
        kv("tokenizer.ggml.pre", 8, &string(fixture["pre"].as_str().unwrap())),
        kv("tokenizer.ggml.tokens", 9, &array(8, &tokens.iter().map(|t| string(t)).collect::<Vec<_>>())),
        kv(
            "tokenizer.ggml.token_type",
            9,
            &array(5, &types.iter().map(|t| t.to_le_bytes().to_vec()).collect::<Vec<_>>()),
        ),
        kv("tokenizer.ggml.merges", 9, &array(8, &merges)),
        kv("tokenizer.ggml.eos_token_id", 4, &u32_value(&fixture["eos"])),
    ];
    if fixture["model"] == "llama" {
        let scores: Vec<Vec<u8>> = scores.iter().map(|s| s.to_le_bytes().to_vec()).collect();
        kvs.push(kv("tokenizer.ggml.scores", 9, &array(6, &scores)));
        kvs.push(kv("tokenizer.ggml.unknown_token_id", 4, &u32_value(&fixture["unk"])));
    }
    let header =
        [&b"GGUF"[..], &3u32.to_le_bytes(), &0u64.to_le_bytes(), &(kvs.len() as u64).to_le_bytes()].concat();
    [header, kvs.concat()].concat()
}

#[test]
fn token_ids_equal_llama_cpps() {
    for name in ["gpt-2", "llama-bpe", "qwen2", "llama-spm"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/vocab/{name}.json"));
        let fixture: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let g = Gguf::from_bytes(Path::new(name), gguf(&fixture)).unwrap();
        let tokenizer = vocab::tokenizer(&g).unwrap_or_else(|e| panic!("{name}: {e}"));
        let tests = fixture["tests"].as_array().unwrap();
        for test in tests {
            let text = test[0].as_str().unwrap();
            let want: Vec<u32> =
                test[1].as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as u32).collect();
            assert_eq!(tokenizer.encode(text).unwrap(), want, "{name}: {text:?}");
        }
        assert_eq!(tokenizer.eos_id(), fixture["eos"].as_u64().map(|i| i as u32), "{name}: eos");
        println!("{name:>9}: {} texts, ids identical to llama.cpp's", tests.len());
    }
}
