//! Incremental decoding with a key/value cache: each new token attends to the cached keys and
//! values of the tokens before it, so generating costs O(T) per token instead of re-running the
//! whole O(T^2) sequence. The buffers of one sequence live in its [`KvCache`]; the model's own
//! training buffers are untouched, so a model can decode between training steps.

use truthgpt_engine::embedding;

use crate::attention::{Cached, LayerKv};
use crate::block::BlockActs;
use crate::error::{ModelError, Result};
use crate::linear::NormSaved;
use crate::model::Model;

/// Everything one sequence needs to be decoded: per-layer keys and values for up to
/// `max_seq_len` positions (allocated as the sequence grows), and activation buffers for the
/// chunk being run.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<LayerKv>,
    /// Positions filled so far.
    len: usize,
    capacity: usize,
    /// (NH, positions) attention scores, grown with the keys.
    scores: Vec<f32>,
    chunk: Option<Chunk>,
    /// (V) logits of the last position run.
    logits: Vec<f32>,
}

/// Buffers for a chunk of `n` new positions, kept while consecutive chunks have the same size
/// (prefill once, then one token at a time).
#[derive(Debug, Clone)]
struct Chunk {
    n: usize,
    acts: BlockActs,
    x: Vec<f32>,
    y: Vec<f32>,
    final_norm: NormSaved,
    head_in: Vec<f32>,
}

impl KvCache {
    /// Positions decoded so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The most positions this cache holds: the model's `max_seq_len`.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forgets every position, keeping the buffers.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Bytes of the key/value buffers now allocated.
    pub fn kv_bytes(&self) -> usize {
        self.layers.iter().map(|l| 4 * (l.k.len() + l.v.len())).sum()
    }
}

impl Model {
    /// An empty cache for one sequence of up to `max_seq_len` positions.
    pub fn new_cache(&self) -> KvCache {
        let layers = (0..self.config.n_layers).map(|l| self.block(l).attn.layer_kv()).collect();
        KvCache {
            layers,
            len: 0,
            capacity: self.config.max_seq_len,
            scores: Vec::new(),
            chunk: None,
            logits: vec![0.0; self.config.vocab_size],
        }
    }

    /// Appends `tokens` to the sequence in `cache` and returns the logits (V) that predict the
    /// token after the last of them. Dropout is off and MoE counters are not updated.
    pub fn forward_cached<'c>(&mut self, cache: &'c mut KvCache, tokens: &[u32]) -> Result<&'c [f32]> {
        let (start, n) = (cache.len, tokens.len());
        if n == 0 {
            return Err(ModelError::EmptyBatch { b: 1, t: 0 });
        }
        if cache.capacity != self.config.max_seq_len || cache.layers.len() != self.config.n_layers {
            return Err(ModelError::CacheMismatch);
        }
        if start + n > self.config.max_seq_len {
            return Err(ModelError::SequenceTooLong { t: start + n, max: self.config.max_seq_len });
        }
        let vocab = self.config.vocab_size;
        if let Some(position) = tokens.iter().position(|&id| id as usize >= vocab) {
            return Err(ModelError::TokenOutOfRange { id: tokens[position], position, vocab });
        }
        let c = self.config.d_model;
        if cache.chunk.as_ref().is_none_or(|chunk| chunk.n != n) {
            cache.chunk = Some(Chunk {
                n,
                acts: self.block(0).acts(1, n),
                x: vec![0.0; n * c],
                y: vec![0.0; n * c],
                final_norm: NormSaved::new(1),
                head_in: vec![0.0; c],
            });
        }
        let KvCache { layers, scores, chunk, logits, capacity, .. } = cache;
        for kv in layers.iter_mut() {
            kv.reserve(start + n, *capacity);
        }
        let heads = self.config.n_heads;
        if scores.len() < heads * (start + n) {
            scores.resize(heads * (start + n).max(2 * scores.len() / heads).min(*capacity), 0.0);
        }
        let chunk = chunk.as_mut().expect("chunk was just ensured");
        let Model { params, blocks, positions, wte, final_norm, head, .. } = self;
        let table = positions.table(params).map(|table| &table[start * c..]);
        embedding::forward(&mut chunk.x, tokens, wte.of(params), table, n, c);
        let unique = blocks.len();
        for (layer, kv) in layers.iter_mut().enumerate() {
            let cached = Cached { kv, start, scores };
            blocks[layer % unique].forward(
                params,
                &mut chunk.acts,
                &mut chunk.y,
                &chunk.x,
                1,
                n,
                None,
                false,
                Some(cached),
            );
            std::mem::swap(&mut chunk.x, &mut chunk.y);
        }
        let last = &chunk.x[(n - 1) * c..];
        match final_norm {
            Some(norm) => norm.forward(params, &mut chunk.head_in, &mut chunk.final_norm, last, 1),
            None => chunk.head_in.copy_from_slice(last),
        }
        head.forward(params, logits, &chunk.head_in, 1);
        cache.len = start + n;
        Ok(&cache.logits)
    }
}
