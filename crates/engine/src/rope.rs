//! Rotary position embeddings (Su et al. 2021) in the rotate-half layout of HF Llama/GPT-NeoX:
//! channel `i` pairs with `i + HS/2`.

/// Precomputed `cos`/`sin` of `position * inv_freq`, each (T, HS/2).
#[derive(Debug, Clone)]
pub struct RopeTable {
    cos: Vec<f32>,
    sin: Vec<f32>,
    half: usize,
}

impl RopeTable {
    /// `inv_freq[i] = theta^(-2i/HS)`; positions are divided by `position_divisor` (linear
    /// interpolation; 1.0 for none).
    pub fn new(max_t: usize, head_size: usize, theta: f64, position_divisor: f64) -> Self {
        let half = head_size / 2;
        let mut cos = vec![0.0; max_t * half];
        let mut sin = vec![0.0; max_t * half];
        for p in 0..max_t {
            for i in 0..half {
                let inv_freq = theta.powf(-2.0 * i as f64 / head_size as f64);
                let angle = p as f64 / position_divisor * inv_freq;
                cos[p * half + i] = angle.cos() as f32;
                sin[p * half + i] = angle.sin() as f32;
            }
        }
        RopeTable { cos, sin, half }
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
        crate::par::for_each_row(x, row_len, |row, r| {
            let pos = start + row % t;
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
