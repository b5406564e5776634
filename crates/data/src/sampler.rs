//! Which windows of the training stream make each batch. Sampling is a pure function of (seed,
//! sample index), so a resumed run draws exactly the batches an uninterrupted one would.
//!
//! Epochs shuffle without replacement: epoch `e` shifts the window grid by a random offset in
//! `[0, seq_len)` (so window boundaries differ between epochs) and visits the non-overlapping
//! windows of that grid in a random order.

use crate::shards::splitmix64;
use crate::{DataError, TokenStream};

#[derive(Debug, Clone)]
pub struct WindowSampler {
    len: u64,
    seq_len: usize,
    seed: u64,
    /// The epoch whose order is cached, its grid offset and window order.
    epoch: Option<u64>,
    shift: u64,
    order: Vec<u64>,
    window: Vec<u32>,
}

impl WindowSampler {
    /// A window is `seq_len + 1` tokens: inputs and the targets shifted by one.
    pub fn new(len: u64, seq_len: usize, seed: u64) -> Result<Self, DataError> {
        if seq_len == 0 {
            return Err(DataError::InvalidOption {
                name: "seq_len",
                value: "0".into(),
                requirement: "at least 1",
            });
        }
        let needed = seq_len as u64 + 1;
        if len < needed {
            return Err(DataError::TooShort { split: "train", tokens: len, seq_len, needed });
        }
        Ok(WindowSampler {
            len,
            seq_len,
            seed,
            epoch: None,
            shift: 0,
            order: Vec::new(),
            window: vec![0; seq_len + 1],
        })
    }

    /// Windows in every epoch (the grid at the largest shift still has this many).
    pub fn windows_per_epoch(&self) -> u64 {
        let t = self.seq_len as u64;
        ((self.len - 1) / t).saturating_sub(1).max(1)
    }

    /// First token of sample `g`.
    pub fn window_start(&mut self, g: u64) -> u64 {
        let per_epoch = self.windows_per_epoch();
        let (epoch, index) = (g / per_epoch, g % per_epoch);
        if self.epoch != Some(epoch) {
            self.shuffle(epoch, per_epoch);
        }
        self.shift + self.order[index as usize] * self.seq_len as u64
    }

    fn shuffle(&mut self, epoch: u64, per_epoch: u64) {
        let mut state = splitmix64(self.seed ^ epoch.wrapping_mul(0xD1B5_4A32_D192_ED03));
        let mut next = || {
            state = splitmix64(state);
            state
        };
        let t = self.seq_len as u64;
        // Largest shift that keeps `per_epoch` windows of t + 1 tokens inside the stream.
        let max_shift = (self.len - per_epoch * t - 1).min(t - 1);
        self.shift = if max_shift == 0 { 0 } else { next() % (max_shift + 1) };
        self.order.clear();
        self.order.extend(0..per_epoch);
        for i in (1..self.order.len()).rev() {
            let j = (next() % (i as u64 + 1)) as usize;
            self.order.swap(i, j);
        }
        self.epoch = Some(epoch);
    }

    /// Fills a (b, seq_len) batch of inputs and targets with samples `first_sample..`.
    pub fn fill_batch(
        &mut self,
        stream: &TokenStream,
        first_sample: u64,
        b: usize,
        tokens: &mut [u32],
        targets: &mut [u32],
    ) {
        let t = self.seq_len;
        for row in 0..b {
            let start = self.window_start(first_sample + row as u64);
            let mut window = std::mem::take(&mut self.window);
            stream.copy_to(start, &mut window);
            tokens[row * t..(row + 1) * t].copy_from_slice(&window[..t]);
            targets[row * t..(row + 1) * t].copy_from_slice(&window[1..]);
            self.window = window;
        }
    }
}

/// Starts of up to `max_windows` non-overlapping windows of `seq_len + 1` tokens, spread evenly
/// over a stream of `len` tokens.
pub fn eval_windows(len: u64, seq_len: usize, max_windows: usize) -> Vec<u64> {
    let t = seq_len as u64;
    if len < t + 1 || max_windows == 0 {
        return Vec::new();
    }
    let available = (len - 1) / t;
    let n = available.min(max_windows as u64);
    let stride = available / n;
    (0..n).map(|i| i * stride * t).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn windows_are_in_bounds_and_each_epoch_is_a_permutation(len in 2u64..5000, seq_len in 1usize..300, seed: u64) {
            prop_assume!(len > seq_len as u64);
            let mut sampler = WindowSampler::new(len, seq_len, seed).unwrap();
            let per_epoch = sampler.windows_per_epoch();
            for epoch in 0..3 {
                let mut starts: Vec<u64> = (0..per_epoch).map(|i| sampler.window_start(epoch * per_epoch + i)).collect();
                prop_assert!(starts.iter().all(|&s| s + (seq_len as u64) < len));
                starts.sort();
                starts.dedup();
                prop_assert_eq!(starts.len() as u64, per_epoch);
            }
        }

        #[test]
        fn same_seed_same_windows(len in 100u64..5000, seed: u64) {
            let mut a = WindowSampler::new(len, 16, seed).unwrap();
            let mut b = WindowSampler::new(len, 16, seed).unwrap();
            // Visiting in a different order must not change what a sample index maps to.
            let forward: Vec<u64> = (0..50).map(|g| a.window_start(g)).collect();
            let backward: Vec<u64> = (0..50).rev().map(|g| b.window_start(g)).collect();
            prop_assert_eq!(forward, backward.into_iter().rev().collect::<Vec<_>>());
        }

        #[test]
        fn eval_windows_fit(len in 0u64..5000, seq_len in 1usize..100, max in 0usize..50) {
            let starts = eval_windows(len, seq_len, max);
            prop_assert!(starts.len() <= max);
            prop_assert!(starts.iter().all(|&s| s + (seq_len as u64) < len));
            prop_assert!(starts.windows(2).all(|w| w[1] >= w[0] + seq_len as u64));
        }
    }

    #[test]
    fn different_seeds_differ() {
        let mut a = WindowSampler::new(100_000, 64, 1).unwrap();
        let mut b = WindowSampler::new(100_000, 64, 2).unwrap();
        let differ = (0..100).filter(|&g| a.window_start(g) != b.window_start(g)).count();
        assert!(differ > 90);
    }

    #[test]
    fn zero_seq_len_is_an_error() {
        assert!(matches!(
            WindowSampler::new(10, 0, 0),
            Err(DataError::InvalidOption { name: "seq_len", .. })
        ));
    }

    #[test]
    fn too_short_is_an_error() {
        assert!(matches!(
            WindowSampler::new(10, 10, 0),
            Err(DataError::TooShort { tokens: 10, needed: 11, .. })
        ));
    }
}
