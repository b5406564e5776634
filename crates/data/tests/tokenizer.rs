mod common;

use std::fs;

use common::{message, text};
use truthgpt_data::tokenizer::END_OF_TEXT;
use truthgpt_data::{DataError, Tokenizer};

const UNICODE: &str = "Café crème — naïve 🙂👍🏽 日本語\n\ttabs  and  spaces";

fn trained() -> Tokenizer {
    let (a, b) = (text(1, 3000), text(2, 3000));
    Tokenizer::train_bpe_from_texts(&[&a, &b], 400).unwrap()
}

#[test]
fn training_is_deterministic_and_files_match_memory() {
    let corpus = text(7, 4000);
    let first = Tokenizer::train_bpe_from_texts(&[&corpus], 350).unwrap().to_json();
    let second = Tokenizer::train_bpe_from_texts(&[&corpus], 350).unwrap().to_json();
    assert_eq!(first, second);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corpus.txt");
    fs::write(&path, &corpus).unwrap();
    assert_eq!(Tokenizer::train_bpe(&path, "text", 350).unwrap().to_json(), first);
}

#[test]
fn trained_tokenizer_has_bytes_eos_and_merges() {
    let tokenizer = trained();
    let eos = tokenizer.eos_id().expect("end-of-text token");
    assert!(tokenizer.vocab_size() > 257 && tokenizer.vocab_size() <= 400, "{}", tokenizer.vocab_size());
    assert!((eos as usize) < tokenizer.vocab_size());
    // Merges make common words shorter than their bytes.
    assert!(tokenizer.encode("the model learns").unwrap().len() < "the model learns".len());
    // Special tokens are skipped when decoding, and never added when encoding.
    let ids = tokenizer.encode("data").unwrap();
    assert!(!ids.contains(&eos));
    assert_eq!(tokenizer.decode(&[ids.clone(), vec![eos]].concat()).unwrap(), "data");
}

#[test]
fn any_text_round_trips_even_characters_never_seen() {
    let tokenizer = trained();
    for s in [UNICODE, "", " leading space", "\u{0}\u{7f}", "ünïcödé—"] {
        let ids = tokenizer.encode(s).unwrap();
        assert!(ids.iter().all(|&id| (id as usize) < tokenizer.vocab_size()));
        assert_eq!(tokenizer.decode(&ids).unwrap(), s);
    }
}

#[test]
fn text_decoder_streams_whole_characters() {
    let tokenizer = trained();
    let ids = tokenizer.encode(UNICODE).unwrap();
    let mut decoder = tokenizer.text_decoder();
    let mut streamed = String::new();
    for &id in &ids {
        if let Some(piece) = decoder.push(id).unwrap() {
            assert!(!piece.contains('\u{FFFD}'), "a piece split a character: {piece:?}");
            streamed.push_str(&piece);
        }
    }
    assert_eq!(streamed, UNICODE);
}

#[test]
fn save_and_load_round_trip() {
    let tokenizer = trained();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/tokenizer.json");
    tokenizer.save(&path).unwrap();
    let loaded = Tokenizer::from_file(&path).unwrap();
    assert_eq!(loaded.to_json(), tokenizer.to_json());
    assert_eq!(loaded.eos_id(), tokenizer.eos_id());
    assert_eq!(Tokenizer::from_json(&tokenizer.to_json()).unwrap().vocab_size(), tokenizer.vocab_size());
}

#[test]
fn check_fits_names_both_sizes() {
    let tokenizer = trained();
    let n = tokenizer.vocab_size();
    tokenizer.check_fits(n).unwrap();
    let err = tokenizer.check_fits(n - 1).unwrap_err();
    assert!(
        matches!(err, DataError::TokenizerTooLarge { tokenizer, model } if tokenizer == n && model == n - 1)
    );
    assert!(err.to_string().contains(&format!("has {n} tokens but model.vocab_size is {}", n - 1)), "{err}");
}

#[test]
fn bad_inputs_are_errors() {
    assert!(matches!(
        Tokenizer::train_bpe_from_texts(&["abc abc"], 100),
        Err(DataError::VocabTooSmall { .. })
    ));
    assert!(message(Tokenizer::from_json("{not json")).contains("tokenizer"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.json");
    assert!(message(Tokenizer::from_file(&path)).contains("missing.json"));
    fs::write(&path, "[]").unwrap();
    assert!(message(Tokenizer::from_file(&path)).contains("missing.json"));
    assert!(matches!(
        Tokenizer::train_bpe(&dir.path().join("none"), "text", 300),
        Err(DataError::Missing { .. })
    ));
}

#[test]
fn eos_is_found_by_its_usual_names() {
    let json = |token: &str| {
        format!(
            r#"{{"version":"1.0","added_tokens":[{{"id":2,"content":"{token}","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}}],
            "model":{{"type":"WordLevel","vocab":{{"a":0,"b":1,"{token}":2}},"unk_token":"a"}}}}"#
        )
    };
    for token in [END_OF_TEXT, "</s>", "<eos>"] {
        assert_eq!(Tokenizer::from_json(&json(token)).unwrap().eos_id(), Some(2), "{token}");
    }
    assert_eq!(Tokenizer::from_json(&json("<pad>")).unwrap().eos_id(), None);
}

#[test]
fn vocab_size_covers_the_largest_id_when_ids_have_gaps() {
    let json = r#"{"version":"1.0","added_tokens":[],
        "model":{"type":"WordLevel","vocab":{"a":0,"b":9},"unk_token":"a"},
        "pre_tokenizer":{"type":"Whitespace"}}"#;
    let tokenizer = Tokenizer::from_json(json).unwrap();
    assert_eq!(tokenizer.encode("b").unwrap(), [9]);
    assert_eq!(tokenizer.vocab_size(), 10);
    assert!(tokenizer.check_fits(2).is_err());
}

/// The serving path tokenizes large prompts without the word cache; the ids must not change.
#[test]
fn the_uncached_tokenizer_gives_the_same_ids() {
    let tokenizer = trained();
    let text = "the quick brown fox jumps over the lazy dog; the dog sleeps. ".repeat(50);
    let uncached = tokenizer.without_cache();
    assert_eq!(uncached.encode(&text).unwrap(), tokenizer.encode(&text).unwrap());
    assert_eq!(uncached.encode(&text).unwrap(), tokenizer.encode(&text).unwrap(), "with the cache warm");
}
