//! Small corpora generated on the fly, so tests need no fixtures.
#![allow(dead_code)]

/// Sentences of a few hundred words with accents, dashes and emoji, reproducible from `seed`.
pub fn text(seed: u64, words: usize) -> String {
    const WORDS: &[&str] = &[
        "the", "model", "learns", "café", "naïve", "tokens", "—", "🙂", "data", "über", "training", "loss",
        "a", "of", "and", "日本", "batch", "window", "seed", "shard",
    ];
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut out = String::new();
    for i in 0..words {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        out.push_str(WORDS[(state >> 33) as usize % WORDS.len()]);
        out.push(if i % 11 == 10 { '\n' } else { ' ' });
    }
    out
}

/// The error's message, which must name `needle` (a file, a line).
pub fn message<T, E: std::fmt::Display>(result: Result<T, E>) -> String {
    match result {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}
