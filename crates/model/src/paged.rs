//! The key/value pool of incremental decoding, paged as in vLLM (Kwon et al. 2023): keys and
//! values live in fixed-size blocks of positions, a sequence holds a table of its blocks, and
//! sequences whose prompts share a prefix share that prefix's full blocks.
//!
//! A full block is identified by the SHA-256 of every token up to its end, chained block by
//! block, so equal prefixes map to equal blocks and no one can craft a prompt that reads another's
//! keys through a hash collision. A block nobody holds stays cached (least recently freed are
//! reused first) until its memory is needed. Blocks are only ever written while their one
//! sequence is filling them, so sharing needs no copy-on-write.

use std::collections::{HashMap, VecDeque};

use sha2::{Digest, Sha256};

use crate::error::{ModelError, Result};

/// One layer's keys and values for every block: `(blocks * block_size, KVH * HS)` each.
#[derive(Debug, Clone, Default)]
pub struct LayerKv {
    pub k: Vec<f32>,
    pub v: Vec<f32>,
}

/// The blocks one sequence holds, and what it has written into them.
#[derive(Debug, Clone, Default)]
pub struct SeqKv {
    blocks: Vec<u32>,
    /// Positions written.
    len: usize,
    /// Tokens of the last, partial block: it becomes shareable once full.
    partial: Vec<u32>,
    /// The key of the last full block.
    prefix: Option<BlockKey>,
}

impl SeqKv {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn blocks(&self) -> &[u32] {
        &self.blocks
    }
}

/// What makes a full block reusable: the digest of every token up to its end.
type BlockKey = [u8; 32];

fn chain(prefix: Option<&BlockKey>, tokens: &[u32]) -> BlockKey {
    let mut hasher = Sha256::new();
    if let Some(prefix) = prefix {
        hasher.update(prefix);
    }
    for token in tokens {
        hasher.update(token.to_le_bytes());
    }
    hasher.finalize().into()
}

#[derive(Debug, Clone)]
pub struct KvPool {
    block_size: usize,
    width: usize,
    max_blocks: usize,
    pub(crate) layers: Vec<LayerKv>,
    /// Sequences holding each block.
    holders: Vec<u32>,
    /// The key of each full, shareable block.
    keys: Vec<Option<BlockKey>>,
    by_key: HashMap<BlockKey, u32>,
    /// Blocks no sequence holds, least recently freed first; those with keys can be revived.
    idle: VecDeque<u32>,
}

impl KvPool {
    /// A pool of at most `max_blocks` blocks of `block_size` positions for `layers` layers of
    /// `width = KVH * HS`; memory is allocated as blocks are first used.
    pub fn new(layers: usize, width: usize, block_size: usize, max_blocks: usize) -> Self {
        assert!(block_size > 0 && width > 0, "blocks hold at least one position of one head");
        KvPool {
            block_size,
            width,
            max_blocks,
            layers: vec![LayerKv::default(); layers],
            holders: Vec::new(),
            keys: Vec::new(),
            by_key: HashMap::new(),
            idle: VecDeque::new(),
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// `KVH * HS` of the model the pool was made for.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Blocks `seq` must still take to hold `n` more positions.
    pub fn blocks_needed(&self, seq: &SeqKv, n: usize) -> usize {
        (seq.len + n).div_ceil(self.block_size).saturating_sub(seq.blocks.len())
    }

    /// The most blocks the pool may hold.
    pub fn capacity(&self) -> usize {
        self.max_blocks
    }

    /// Blocks held by at least one sequence.
    pub fn used_blocks(&self) -> usize {
        self.holders.iter().filter(|&&h| h > 0).count()
    }

    /// Blocks a sequence could still take: never allocated, or idle.
    pub fn free_blocks(&self) -> usize {
        self.max_blocks - self.holders.len() + self.idle.len()
    }

    /// Bytes of key/value memory one block takes, over every layer.
    pub fn block_bytes(&self) -> usize {
        2 * std::mem::size_of::<f32>() * self.layers.len() * self.block_size * self.width
    }

    /// Bytes of key/value memory allocated.
    pub fn bytes(&self) -> usize {
        self.layers.iter().map(|l| 4 * (l.k.len() + l.v.len())).sum()
    }

    /// A sequence for `prompt`, holding the cached blocks of its longest prefix of full blocks
    /// (at most `prompt.len() - 1` positions, so that at least one token is left to run for the
    /// next token's logits). Returns it and the number of prompt positions already cached.
    pub fn start(&mut self, prompt: &[u32]) -> (SeqKv, usize) {
        let mut seq = SeqKv::default();
        let reusable = prompt.len().saturating_sub(1) / self.block_size;
        for tokens in prompt.chunks_exact(self.block_size).take(reusable) {
            let key = chain(seq.prefix.as_ref(), tokens);
            let Some(&block) = self.by_key.get(&key) else { break };
            self.hold(block);
            seq.blocks.push(block);
            seq.len += self.block_size;
            seq.prefix = Some(key);
        }
        let cached = seq.len;
        (seq, cached)
    }

    fn hold(&mut self, block: u32) {
        if self.holders[block as usize] == 0 {
            self.idle.retain(|&b| b != block);
        }
        self.holders[block as usize] += 1;
    }

    /// Makes room in `seq` for `n` more positions, or fails without taking any block.
    pub fn reserve(&mut self, seq: &mut SeqKv, n: usize) -> Result<()> {
        let needed = self.blocks_needed(seq, n);
        if needed > self.free_blocks() {
            return Err(ModelError::KvPoolExhausted {
                needed,
                free: self.free_blocks(),
                capacity: self.max_blocks,
            });
        }
        for _ in 0..needed {
            let block = self.take_block();
            seq.blocks.push(block);
        }
        Ok(())
    }

    /// A block for a sequence to fill: a new one while the pool may grow, else the least recently
    /// freed (forgetting its cached contents).
    fn take_block(&mut self) -> u32 {
        let block = if self.holders.len() < self.max_blocks {
            let block = self.holders.len() as u32;
            self.holders.push(0);
            self.keys.push(None);
            let len = self.holders.len() * self.block_size * self.width;
            for layer in &mut self.layers {
                layer.k.resize(len, 0.0);
                layer.v.resize(len, 0.0);
            }
            block
        } else {
            let block = self.idle.pop_front().expect("reserve checked there is a free block");
            if let Some(key) = self.keys[block as usize].take() {
                self.by_key.remove(&key);
            }
            block
        };
        self.holders[block as usize] = 1;
        block
    }

    /// Records that `tokens` were written at the end of `seq`; blocks they fill become shareable.
    pub(crate) fn commit(&mut self, seq: &mut SeqKv, tokens: &[u32]) {
        for &token in tokens {
            seq.partial.push(token);
            seq.len += 1;
            if seq.partial.len() == self.block_size {
                let key = chain(seq.prefix.as_ref(), &seq.partial);
                seq.partial.clear();
                seq.prefix = Some(key);
                let block = seq.blocks[seq.len / self.block_size - 1];
                // The first block with these contents stays the shared one.
                if let std::collections::hash_map::Entry::Vacant(entry) = self.by_key.entry(key) {
                    entry.insert(block);
                    self.keys[block as usize] = Some(key);
                }
            }
        }
    }

    /// Returns `seq`'s blocks to the pool; full ones stay cached for later prompts.
    pub fn release(&mut self, seq: SeqKv) {
        for block in seq.blocks {
            let holders = &mut self.holders[block as usize];
            *holders -= 1;
            if *holders == 0 {
                self.idle.push_back(block);
            }
        }
    }
}
