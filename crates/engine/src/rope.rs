//! Rotary position embeddings (Su et al. 2021) in the rotate-half layout of HF Llama/GPT-NeoX:
//! channel `i` pairs with `i + HS/2`.
//!
//! Frequencies and angles are f32 products, as HF computes them, so imported models see the
//! rotations they were trained with; only `cos`/`sin` of each angle are taken in f64.

use std::ops::Range;

/// The unscaled frequencies `inv_freq[i] = 1 / theta^(2i/HS)`, `HS/2` of them.
pub fn inv_freq(head_size: usize, theta: f32) -> Vec<f32> {
    (0..head_size / 2).map(|i| 1.0 / theta.powf((2 * i) as f32 / head_size as f32)).collect()
}

/// Llama 3.1's scaling: wavelengths longer than `original / low` are divided by `factor`, shorter
/// than `original / high` kept, and those between interpolated.
pub fn llama3_frequencies(inv_freq: &mut [f32], factor: f32, original: usize, low: f32, high: f32) {
    let original = original as f32;
    let (low_freq_wavelen, high_freq_wavelen) = (original / low, original / high);
    for f in inv_freq {
        let wavelen = 2.0 * std::f32::consts::PI / *f;
        if wavelen > low_freq_wavelen {
            *f /= factor;
        } else if wavelen >= high_freq_wavelen {
            let smooth = (original / wavelen - low) / (high - low);
            *f = (1.0 - smooth) * *f / factor + smooth * *f;
        }
    }
}

/// Precomputed `cos`/`sin` of `position * inv_freq` for a range of positions, each (T, HS/2).
#[derive(Debug, Clone)]
pub struct RopeTable {
    cos: Vec<f32>,
    sin: Vec<f32>,
    half: usize,
    first: usize,
}

impl RopeTable {
    /// The table of `positions` for frequencies `inv_freq` (one per pair of channels).
    pub fn new(positions: Range<usize>, inv_freq: &[f32]) -> Self {
        let (cos, sin) = positions
            .clone()
            .flat_map(|p| inv_freq.iter().map(move |f| (p as f32 * f) as f64))
            .map(|angle| (angle.cos() as f32, angle.sin() as f32))
            .unzip();
        RopeTable { cos, sin, half: inv_freq.len(), first: positions.start }
    }

    /// The `cos` and `sin` tables, each (positions, HS/2).
    pub fn cos_sin(&self) -> (&[f32], &[f32]) {
        (&self.cos, &self.sin)
    }

    /// Channel pairs per head (HS/2).
    pub fn half(&self) -> usize {
        self.half
    }

    /// The first position the table covers.
    pub fn first(&self) -> usize {
        self.first
    }

    /// Rotates heads `first_head..first_head + n_heads` of every `row_len`-long row of `x` in
    /// place; row `n` is at position `start + n % t`. `inverse` rotates backwards, which is the
    /// backward pass (rotations are orthogonal).
    #[allow(clippy::too_many_arguments)]
    pub fn apply(
        &self,
        x: &mut [f32],
        row_len: usize,
        first_head: usize,
        n_heads: usize,
        t: usize,
        start: usize,
        inverse: bool,
    ) {
        let half = self.half;
        let sign = if inverse { -1.0 } else { 1.0 };
        assert!(
            start >= self.first && (start + t - self.first) * half <= self.cos.len(),
            "RoPE table covers positions {}.., not {start}..{}",
            self.first,
            start + t
        );
        crate::par::for_each_row(x, row_len, |row, r| {
            let pos = start + row % t - self.first;
            let (cos, sin) =
                (&self.cos[pos * half..(pos + 1) * half], &self.sin[pos * half..(pos + 1) * half]);
            for h in first_head..first_head + n_heads {
                let head = &mut r[h * 2 * half..(h + 1) * 2 * half];
                let (x1, x2) = head.split_at_mut(half);
                for i in 0..half {
                    let (a, b, s) = (x1[i], x2[i], sign * sin[i]);
                    x1[i] = a * cos[i] - b * s;
                    x2[i] = b * cos[i] + a * s;
                }
            }
        });
    }
}
