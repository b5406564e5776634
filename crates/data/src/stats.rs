//! Corpus statistics that put a model's loss in context.

use crate::TokenStream;

/// Entropy, in nats per token, of the stream's token frequencies: the loss of the best model that
/// ignores context. A language model that learned anything beats it.
pub fn unigram_entropy(stream: &TokenStream, vocab_size: usize) -> f64 {
    let mut counts = vec![0u64; vocab_size];
    let mut buf = vec![0u32; 1 << 16];
    let mut at = 0;
    while at < stream.len() {
        let n = (stream.len() - at).min(buf.len() as u64) as usize;
        stream.copy_to(at, &mut buf[..n]);
        for &id in &buf[..n] {
            if let Some(c) = counts.get_mut(id as usize) {
                *c += 1;
            }
        }
        at += n as u64;
    }
    let total: u64 = counts.iter().sum();
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / total as f64;
            -p * p.ln()
        })
        .sum()
}
