//! Incremental decoding: each new token attends to the cached keys and values of the tokens
//! before it, so generating costs O(T) per token instead of re-running the whole O(T^2) sequence.
//!
//! [`Model::forward_paged`] runs one step of continuous batching: any number of sequences, each
//! adding one token (decoding) or many (a prompt), in one forward whose matrix products see every
//! row at once. Keys and values live in a [`KvPool`]. [`KvCache`] is the one-sequence case.
//! The model's own training buffers are untouched, so a model can decode between training steps.

use crate::attention::{is_fresh_prompt, Cached, Segment};
use crate::block::{BlockActs, Pass};
use crate::error::{ModelError, Result};
use crate::linear::NormSaved;
use crate::model::{embed, Model};
use crate::paged::{KvPool, SeqKv};

/// Positions per block of the pool of a [`KvCache`].
const BLOCK_SIZE: usize = 16;

/// Buffers of a decoding forward, kept while consecutive forwards have the same number of rows
/// and sequences (one prompt, then one token per sequence per step).
#[derive(Debug, Clone, Default)]
pub struct DecodeWork {
    rows: usize,
    sequences: usize,
    acts: Option<BlockActs>,
    x: Vec<f32>,
    y: Vec<f32>,
    tokens: Vec<u32>,
    /// (S, C): the last row of each sequence, normalised, and its saved statistics.
    last: Vec<f32>,
    head_in: Vec<f32>,
    final_norm: NormSaved,
    /// (S, V) logits of the last position of each sequence.
    logits: Vec<f32>,
    /// (layers, experts): rows each expert processed in the last forward (MoE models).
    expert_load: Vec<usize>,
}

impl DecodeWork {
    /// Rows each expert of each layer processed in the last forward, layer-major; empty for
    /// dense models. Servers export it as expert load.
    pub fn expert_load(&self) -> &[usize] {
        &self.expert_load
    }

    /// Buffers for a step of `rows` rows over `sequences` sequences of `model`, kept if the last
    /// step had the same shape.
    fn fit(&mut self, model: &Model, rows: usize, sequences: usize) {
        if self.acts.is_some() && self.rows == rows && self.sequences == sequences {
            return;
        }
        let (c, vocab) = (model.config.d_model, model.config.vocab_size);
        *self = DecodeWork {
            rows,
            sequences,
            acts: Some(model.block(0).acts(1, rows)),
            x: vec![0.0; rows * c],
            y: vec![0.0; rows * c],
            tokens: Vec::with_capacity(rows),
            last: vec![0.0; sequences * c],
            head_in: vec![0.0; sequences * c],
            final_norm: NormSaved::new(sequences),
            logits: vec![0.0; sequences * vocab],
            expert_load: std::mem::take(&mut self.expert_load),
        };
    }
}

/// Everything one sequence needs to be decoded: a pool of its own (allocated as it grows), the
/// sequence's blocks, and the buffers of the chunk being run.
#[derive(Debug, Clone)]
pub struct KvCache {
    pool: KvPool,
    seq: SeqKv,
    work: DecodeWork,
    capacity: usize,
}

impl KvCache {
    /// Positions decoded so far.
    pub fn len(&self) -> usize {
        self.seq.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seq.is_empty()
    }

    /// The most positions this cache holds: the model's `max_seq_len`.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forgets every position; the blocks stay allocated for the next sequence.
    pub fn clear(&mut self) {
        self.pool.release(std::mem::take(&mut self.seq));
    }

    /// Bytes of the key/value buffers now allocated.
    pub fn kv_bytes(&self) -> usize {
        self.pool.bytes()
    }
}

impl Model {
    /// A pool of at most `max_blocks` blocks of `block_size` positions for this model.
    pub fn new_pool(&self, block_size: usize, max_blocks: usize) -> KvPool {
        let width = self.config.n_kv_heads * self.config.head_dim();
        KvPool::new(self.config.n_layers, width, block_size, max_blocks)
    }

    /// An empty cache for one sequence of up to `max_seq_len` positions.
    pub fn new_cache(&self) -> KvCache {
        let capacity = self.config.max_seq_len;
        KvCache {
            pool: self.new_pool(BLOCK_SIZE, capacity.div_ceil(BLOCK_SIZE)),
            seq: SeqKv::default(),
            work: DecodeWork::default(),
            capacity,
        }
    }

    /// Appends `tokens` to the sequence in `cache` and returns the logits (V) that predict the
    /// token after the last of them. Dropout is off and MoE counters are not updated.
    pub fn forward_cached<'c>(&mut self, cache: &'c mut KvCache, tokens: &[u32]) -> Result<&'c [f32]> {
        if cache.capacity != self.config.max_seq_len {
            return Err(ModelError::CacheMismatch);
        }
        let KvCache { pool, seq, work, .. } = cache;
        self.forward_paged(pool, work, &mut [(seq, tokens)])
    }

    /// One step of continuous batching: appends each `(sequence, tokens)` pair's tokens to its
    /// sequence in `pool`, and returns the logits (S, V) that predict each sequence's next token.
    /// Nothing is written unless every sequence fits (in `max_seq_len` and in the pool).
    pub fn forward_paged<'w>(
        &mut self,
        pool: &mut KvPool,
        work: &'w mut DecodeWork,
        batch: &mut [(&mut SeqKv, &[u32])],
    ) -> Result<&'w [f32]> {
        // A step is a few dozen kernels of tens of microseconds each. Run from outside the rayon
        // pool, every parallel one would hand its work to the pool and sleep until woken; run on
        // a worker, the whole step makes that round trip once and the kernels fork-join inside.
        rayon::scope(|_| self.step_paged(pool, work, batch))
    }

    /// Checks that every sequence of `batch` fits (in `max_seq_len` and in `pool`) before any
    /// is written.
    fn check_step(&self, pool: &KvPool, batch: &[(&mut SeqKv, &[u32])]) -> Result<()> {
        let (vocab, max) = (self.config.vocab_size, self.config.max_seq_len);
        let width = self.config.n_kv_heads * self.config.head_dim();
        if pool.layers.len() != self.config.n_layers || pool.width() != width {
            return Err(ModelError::CacheMismatch);
        }
        if batch.is_empty() {
            return Err(ModelError::EmptyBatch { b: 0, t: 0 });
        }
        for (seq, tokens) in batch {
            if tokens.is_empty() {
                return Err(ModelError::EmptyBatch { b: 1, t: 0 });
            }
            if seq.len() + tokens.len() > max {
                return Err(ModelError::SequenceTooLong { t: seq.len() + tokens.len(), max });
            }
            if let Some(position) = tokens.iter().position(|&id| id as usize >= vocab) {
                return Err(ModelError::TokenOutOfRange { id: tokens[position], position, vocab });
            }
        }
        let needed: usize = batch.iter().map(|(seq, tokens)| pool.blocks_needed(seq, tokens.len())).sum();
        if needed > pool.free_blocks() {
            return Err(ModelError::KvPoolExhausted {
                needed,
                free: pool.free_blocks(),
                capacity: pool.capacity(),
            });
        }
        Ok(())
    }

    fn step_paged<'w>(
        &mut self,
        pool: &mut KvPool,
        work: &'w mut DecodeWork,
        batch: &mut [(&mut SeqKv, &[u32])],
    ) -> Result<&'w [f32]> {
        self.check_step(pool, batch)?;
        for (seq, tokens) in batch.iter_mut() {
            pool.reserve(seq, tokens.len())?;
        }

        let (rows, sequences) = (batch.iter().map(|(_, t)| t.len()).sum::<usize>(), batch.len());
        let c = self.config.d_model;
        work.fit(self, rows, sequences);
        work.tokens.clear();
        batch.iter().for_each(|(_, tokens)| work.tokens.extend_from_slice(tokens));
        let mut row = 0;
        let segments: Vec<Segment> = batch
            .iter()
            .map(|(seq, tokens)| {
                row += tokens.len();
                Segment { blocks: seq.blocks(), start: seq.len(), n: tokens.len(), row: row - tokens.len() }
            })
            .collect();
        let decoding: Vec<Segment> = segments.iter().filter(|s| !is_fresh_prompt(s)).copied().collect();

        let Model { params, blocks, positions, wte, wte_quant, final_norm, head, .. } = self;
        for segment in &segments {
            let table = positions.table(params).map(|table| &table[segment.start * c..]);
            let tokens = &work.tokens[segment.row..segment.row + segment.n];
            let x = &mut work.x[segment.row * c..];
            embed(x, tokens, wte.of(params), wte_quant.as_ref(), table, segment.n, c);
        }
        let acts = work.acts.as_mut().expect("ensured above");
        let unique = blocks.len();
        let block_size = pool.block_size();
        let layers = pool.layers.len();
        for (layer, kv) in pool.layers.iter_mut().enumerate() {
            let pass = Pass::Decode(Cached { kv, block_size, segments: &segments, decoding: &decoding });
            blocks[layer % unique].forward(params, acts, &mut work.y, &work.x, 1, rows, pass);
            std::mem::swap(&mut work.x, &mut work.y);
            if let Some(expert_rows) = acts.expert_rows() {
                let e = expert_rows.len();
                work.expert_load.resize(layers * e, 0);
                work.expert_load[layer * e..(layer + 1) * e].copy_from_slice(expert_rows);
            }
        }
        for (s, segment) in segments.iter().enumerate() {
            let end = segment.row + segment.n;
            work.last[s * c..(s + 1) * c].copy_from_slice(&work.x[(end - 1) * c..end * c]);
        }
        match final_norm {
            Some(norm) => {
                norm.forward(params, &mut work.head_in, &mut work.final_norm, &work.last, sequences)
            }
            None => work.head_in.copy_from_slice(&work.last),
        }
        head.forward(params, &mut work.logits, &work.head_in, sequences);
        drop((segments, decoding));
        for (seq, tokens) in batch.iter_mut() {
            pool.commit(seq, tokens);
        }
        Ok(&work.logits)
    }
}
