//! Deterministic randomness: SplitMix64 for weight init, and a counter-based hash for dropout so
//! the mask of element `i` is recomputed in backward (and under checkpointing) instead of stored.

/// SplitMix64 (Steele et al. 2014): tiny, fast, and enough for initialisation.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f32 {
        let u1 = ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        let u2 = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }

    pub fn fill_normal(&mut self, out: &mut [f32], std: f32) {
        for x in out {
            *x = self.normal() * std;
        }
    }
}

#[inline(always)]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Inverted dropout applied in place: element `i` is zeroed when `hash(seed, i) < p`, otherwise
/// scaled by `1 / (1 - p)`. The same call is its own backward (applied to the gradient).
pub fn dropout_inplace(x: &mut [f32], p: f32, seed: u64) {
    if p <= 0.0 {
        return;
    }
    let threshold = (p as f64 * u32::MAX as f64) as u32;
    let scale = 1.0 / (1.0 - p);
    for (i, x) in x.iter_mut().enumerate() {
        let keep = (mix(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)) >> 32) as u32 >= threshold;
        *x = if keep { *x * scale } else { 0.0 };
    }
}
