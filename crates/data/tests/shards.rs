mod common;

use std::fs;
use std::path::Path;

use common::{message, text};
use truthgpt_data::shards::{self, PrepareOptions};
use truthgpt_data::stats::unigram_entropy;
use truthgpt_data::{fsio, DataError, TokenDataset, TokenStream, Tokenizer};

fn all(stream: &TokenStream) -> Vec<u32> {
    let mut out = vec![0; stream.len() as usize];
    stream.copy_to(0, &mut out);
    out
}

/// A corpus directory of three files, its tokenizer, and a dataset prepared from it.
fn prepared(dir: &Path, options: &PrepareOptions) -> (Tokenizer, shards::DatasetInfo) {
    let corpus = dir.join("corpus");
    fs::create_dir_all(&corpus).unwrap();
    for i in 0..3 {
        fs::write(corpus.join(format!("{i}.txt")), text(i, 1500)).unwrap();
    }
    let tokenizer = Tokenizer::train_bpe(&corpus, "text", 300).unwrap();
    let info = shards::prepare(&corpus, &tokenizer, &dir.join("out"), options).unwrap();
    (tokenizer, info)
}

fn small_shards() -> PrepareOptions {
    PrepareOptions {
        val_fraction: 0.2,
        seed: 5,
        shard_tokens: 1000,
        block_tokens: 128,
        ..PrepareOptions::default()
    }
}

#[test]
fn prepare_then_open_equals_the_in_memory_split() {
    let dir = tempfile::tempdir().unwrap();
    let options = small_shards();
    let (tokenizer, info) = prepared(dir.path(), &options);
    let out = dir.path().join("out");
    assert!(shards::is_dataset_dir(&out) && !shards::is_dataset_dir(dir.path()));
    assert_eq!((info.dtype.as_str(), info.documents, info.eos_id), ("u16", 3, tokenizer.eos_id()));
    assert!(info.train.len() > 1 && !info.val.is_empty(), "several shards: {info:?}");
    assert!(info.train.iter().chain(&info.val).all(|s| s.tokens <= 1000));
    assert_eq!(fs::read_to_string(out.join("tokenizer.json")).unwrap(), tokenizer.to_json());
    assert_eq!(info.tokenizer_sha256, fsio::sha256_file(&out.join("tokenizer.json")).unwrap());

    let mut tokens = Vec::new();
    for i in 0..3 {
        tokens.extend(tokenizer.encode(&text(i, 1500)).unwrap());
        tokens.extend(tokenizer.eos_id());
    }
    let memory = TokenDataset::split_tokens(tokens, tokenizer.vocab_size(), 0.2, 5, 128).unwrap();
    let opened = TokenDataset::open(&out).unwrap();
    assert_eq!(opened.vocab_size, tokenizer.vocab_size());
    assert_eq!(opened.tokenizer_sha256, Some(fsio::sha256_hex(tokenizer.to_json().as_bytes())));
    assert_eq!(all(&opened.train), all(&memory.train));
    assert_eq!(all(&opened.val), all(&memory.val));
    // Reads that straddle shard boundaries.
    let whole = all(&opened.train);
    for start in [0, 990, 999, 1000, 1999] {
        let mut out = vec![0; 25];
        opened.train.copy_to(start, &mut out);
        assert_eq!(out, whole[start as usize..start as usize + 25]);
    }
}

#[test]
fn the_split_is_seeded_and_never_leaves_validation_empty() {
    let tokens: Vec<u32> = (0..10_000).map(|i| i % 50).collect();
    let split = |fraction, seed| TokenDataset::split_tokens(tokens.clone(), 50, fraction, seed, 100).unwrap();
    let (a, b, c) = (split(0.1, 1), split(0.1, 1), split(0.1, 2));
    assert_eq!((all(&a.train), all(&a.val)), (all(&b.train), all(&b.val)));
    assert_ne!(all(&a.val), all(&c.val));
    assert_eq!(a.train.len() + a.val.len(), 10_000);
    assert!((500..=2000).contains(&a.val.len()), "about 10% in validation: {}", a.val.len());
    // A fraction too small to draw any block still holds one out.
    assert!(!split(1e-9, 1).val.is_empty());
    assert!(split(0.0, 1).val.is_empty());
    assert!(TokenDataset::split_tokens(tokens[..50].to_vec(), 50, 0.1, 1, 100).is_err());
}

#[test]
fn large_vocabularies_are_stored_as_u32() {
    let dir = tempfile::tempdir().unwrap();
    let tokens: Vec<u32> = vec![70_000, 1, 69_999, 0];
    let bytes: Vec<u8> = tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
    fs::write(dir.path().join("train-00000.bin"), &bytes).unwrap();
    let manifest = serde_json::json!({
        "format": 1, "dtype": "u32", "vocab_size": 70_001, "tokenizer_sha256": "", "eos_id": null,
        "documents": 1, "train": [{"file": "train-00000.bin", "tokens": 4, "sha256": fsio::sha256_hex(&bytes)}],
        "val": [],
    });
    fs::write(dir.path().join("data.json"), manifest.to_string()).unwrap();
    let dataset = TokenDataset::open(dir.path()).unwrap();
    assert_eq!(all(&dataset.train), tokens);
    assert!(dataset.val.is_empty());
}

#[test]
fn damaged_shards_are_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    prepared(dir.path(), &small_shards());
    let out = dir.path().join("out");
    let shard = out.join("train-00001.bin");
    let original = fs::read(&shard).unwrap();

    fs::write(&shard, &original[..original.len() - 2]).unwrap();
    let err = message(TokenDataset::open(&out));
    assert!(err.contains("train-00001.bin") && err.contains("truncated"), "{err}");
    assert!(
        err.contains(&format!("expected {} bytes, found {}", original.len(), original.len() - 2)),
        "{err}"
    );

    let mut flipped = original.clone();
    flipped[7] ^= 0x01;
    fs::write(&shard, &flipped).unwrap();
    let err = message(TokenDataset::open(&out));
    assert!(err.contains("train-00001.bin") && err.contains("checksum mismatch"), "{err}");

    fs::remove_file(&shard).unwrap();
    assert!(message(TokenDataset::open(&out)).contains("train-00001.bin"));
}

#[test]
fn token_ids_outside_the_vocabulary_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let bytes: Vec<u8> = [3u16, 9, 10].iter().flat_map(|t| t.to_le_bytes()).collect();
    fs::write(dir.path().join("train-00000.bin"), &bytes).unwrap();
    let manifest = serde_json::json!({
        "format": 1, "dtype": "u16", "vocab_size": 10, "tokenizer_sha256": "", "eos_id": null,
        "documents": 1, "train": [{"file": "train-00000.bin", "tokens": 3, "sha256": fsio::sha256_hex(&bytes)}],
        "val": [],
    });
    fs::write(dir.path().join("data.json"), manifest.to_string()).unwrap();
    let err = message(TokenDataset::open(dir.path()));
    assert!(err.contains("train-00000.bin") && err.contains("10"), "{err}");
}

#[test]
fn missing_or_invalid_manifests_are_errors_naming_data_json() {
    let dir = tempfile::tempdir().unwrap();
    assert!(message(TokenDataset::open(dir.path())).contains("data.json"));
    for bad in ["", "{}", "{\"format\": 1}", "{\"format\": 99, \"dtype\": \"u16\"}"] {
        fs::write(dir.path().join("data.json"), bad).unwrap();
        let err = TokenDataset::open(dir.path()).unwrap_err();
        assert!(
            matches!(err, DataError::Dataset { .. }) && err.to_string().contains("data.json"),
            "{bad}: {err}"
        );
    }
}

#[test]
fn prepare_leaves_no_temporary_files() {
    let dir = tempfile::tempdir().unwrap();
    prepared(dir.path(), &small_shards());
    for entry in fs::read_dir(dir.path().join("out")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(!name.starts_with('.'), "left behind: {name}");
    }
}

#[test]
fn unigram_entropy_is_the_frequency_entropy() {
    let uniform = TokenStream::from_tokens((0..4000).map(|i| i % 4).collect());
    assert!((unigram_entropy(&uniform, 4) - 4f64.ln()).abs() < 1e-12);
    assert_eq!(unigram_entropy(&TokenStream::from_tokens(vec![7; 100]), 8), 0.0);
    assert_eq!(unigram_entropy(&TokenStream::from_tokens(Vec::new()), 8), 0.0);
}

#[test]
fn forced_validation_takes_the_last_full_block_not_a_short_tail() {
    // 10 blocks of 100 and a tail of 7; at this fraction no block is drawn.
    let tokens: Vec<u32> = (0..1007).map(|i| i % 50).collect();
    let split = TokenDataset::split_tokens(tokens.clone(), 50, 1e-9, 3, 100).unwrap();
    assert_eq!(all(&split.val), tokens[900..1000]);
    assert_eq!(all(&split.train), [&tokens[..900], &tokens[1000..]].concat());
}

#[test]
fn bad_split_options_are_errors() {
    let tokens = vec![1u32; 1000];
    for fraction in [-0.1, 1.0, f64::NAN] {
        let err = TokenDataset::split_tokens(tokens.clone(), 2, fraction, 0, 100).unwrap_err();
        assert!(matches!(err, DataError::InvalidOption { name: "val_fraction", .. }), "{err}");
    }
    assert!(TokenDataset::split_tokens(tokens.clone(), 2, 0.1, 0, 0).is_err());
    let err = TokenDataset::split_tokens(tokens[..50].to_vec(), 2, 0.1, 0, 100).unwrap_err();
    assert!(matches!(err, DataError::EmptyTrainSplit { tokens: 50, blocks: 1, block_tokens: 100 }), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let tokenizer = Tokenizer::train_bpe_from_texts(&[&text(0, 500)], 300).unwrap();
    fs::write(dir.path().join("a.txt"), text(0, 500)).unwrap();
    let options = PrepareOptions { shard_tokens: 0, ..PrepareOptions::default() };
    assert!(
        shards::prepare(&dir.path().join("a.txt"), &tokenizer, &dir.path().join("out"), &options).is_err()
    );
}

/// Hardening finding 6: a prepare that failed part-way (a full disk) left an empty directory, or
/// one holding only `val-00000.bin`, and `train --data` on it said "holds no text". Now a failed
/// prepare leaves no partial output and an earlier dataset there whole, and a directory of
/// shards without a manifest is an error that says what it is.
#[test]
fn data_prepare_on_a_full_disk_leaves_partial_output() {
    let dir = tempfile::tempdir().unwrap();
    let (tokenizer, _) = prepared(dir.path(), &small_shards());
    let out = dir.path().join("out");
    let before = TokenDataset::open(&out).unwrap();
    let tiny = dir.path().join("tiny.txt");
    fs::write(&tiny, "a few words").unwrap();
    let err = shards::prepare(&tiny, &tokenizer, &out, &small_shards()).unwrap_err();
    assert!(matches!(err, DataError::EmptyTrainSplit { .. }), "{err}");
    let after = TokenDataset::open(&out).expect("the earlier dataset is untouched");
    assert_eq!((after.train.len(), after.val.len()), (before.train.len(), before.val.len()));
    let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(leftovers.iter().all(|n| !n.to_string_lossy().contains(".tmp-")), "{leftovers:?}");
    // A fresh output that fails leaves nothing at all.
    let fresh = dir.path().join("fresh");
    assert!(shards::prepare(&tiny, &tokenizer, &fresh, &small_shards()).is_err());
    assert!(!fresh.exists());
    // Shards without a manifest (what older builds left) are named as such, not read as text.
    fs::remove_file(out.join("data.json")).unwrap();
    let err = shards::is_complete_dataset_dir(&out).unwrap_err().to_string();
    assert!(err.contains("data.json") && err.contains("incomplete"), "{err}");
    // A directory that is not a dataset is never replaced.
    let mine = dir.path().join("mine");
    fs::create_dir(&mine).unwrap();
    fs::write(mine.join("notes.txt"), "keep me").unwrap();
    let corpus = dir.path().join("corpus");
    let err = shards::prepare(&corpus, &tokenizer, &mine, &small_shards()).unwrap_err().to_string();
    assert!(err.contains("not a prepared dataset"), "{err}");
    assert_eq!(fs::read_to_string(mine.join("notes.txt")).unwrap(), "keep me");
}
