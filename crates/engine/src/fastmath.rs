//! Branch-free `exp` and `erf` that LLVM vectorises; libm's versions are calls per element and
//! dominated the profile of softmax, cross-entropy, GELU and SiLU.

/// `e^x` with ~2 ulp error on [-87, 88] (Cephes `expf`); exactly 0 below it (so masked scores,
/// `exp(-inf)`, weigh nothing) and saturated above it.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let underflow = x < -87.3;
    let x = x.clamp(-87.3, 88.3);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    // Cody-Waite reduction: ln 2 split in a high part exact in f32 and a correction.
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // 2^n from its exponent bits. `n + 127 + 2^23` is exact and holds `n + 127` in the low
    // mantissa bits, which the shift moves into the exponent: no float-to-int conversion, whose
    // saturating `as` scalarises the loop (a NaN `n` gives 0 bits, and `y` stays NaN).
    let y = y * f32::from_bits((n + (127.0 + 8_388_608.0)).to_bits() << 23);
    if underflow {
        0.0
    } else {
        y
    }
}

/// The error function, Abramowitz & Stegun 7.1.26 (max abs error 1.5e-7).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    erf_given_exp(x, exp(-x * x))
}

/// [`erf`] when the caller already has `exp(-x^2)` (GELU's derivative needs it too).
#[inline(always)]
pub fn erf_given_exp(x: f32, exp_neg_x2: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly =
        t * (0.254_829_6 + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152_1 + t * 1.061_405_4))));
    (1.0 - poly * exp_neg_x2).copysign(x)
}

/// Dot product with eight independent accumulators, so the loop vectorises without fast-math.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0.0f32; 8];
    let (a8, a_tail) = a.split_at(a.len() / 8 * 8);
    let (b8, b_tail) = b.split_at(a8.len());
    for (x, y) in a8.chunks_exact(8).zip(b8.chunks_exact(8)) {
        for l in 0..8 {
            acc[l] = x[l].mul_add(y[l], acc[l]);
        }
    }
    let mut sum = (acc[0] + acc[4]) + (acc[1] + acc[5]) + (acc[2] + acc[6]) + (acc[3] + acc[7]);
    for (x, y) in a_tail.iter().zip(b_tail) {
        sum += x * y;
    }
    sum
}

/// Sum with eight independent accumulators (vectorises; plain `.sum()` is a serial chain).
#[inline(always)]
pub fn sum(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (x8, tail) = x.split_at(x.len() / 8 * 8);
    for chunk in x8.chunks_exact(8) {
        for l in 0..8 {
            acc[l] += chunk[l];
        }
    }
    (acc[0] + acc[4]) + (acc[1] + acc[5]) + (acc[2] + acc[6]) + (acc[3] + acc[7]) + tail.iter().sum::<f32>()
}

/// Row maximum (vectorises: `max` has no rounding, so lanes may be reordered).
#[inline(always)]
pub fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let (x8, tail) = x.split_at(x.len() / 8 * 8);
    for chunk in x8.chunks_exact(8) {
        for l in 0..8 {
            acc[l] = acc[l].max(chunk[l]);
        }
    }
    acc.iter().chain(tail).copied().fold(f32::NEG_INFINITY, f32::max)
}

/// `y += alpha * x`.
#[inline(always)]
pub fn axpy(y: &mut [f32], alpha: f32, x: &[f32]) {
    debug_assert_eq!(x.len(), y.len());
    for (y, x) in y.iter_mut().zip(x) {
        *y = alpha.mul_add(*x, *y);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_std_to_a_few_ulp() {
        for i in -8700..=8800 {
            let x = i as f32 * 0.01;
            let (fast, exact) = (exp(x), x.exp());
            assert!((fast - exact).abs() <= 4.0 * f32::EPSILON * exact, "exp({x}) = {fast}, std {exact}");
        }
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(f32::INFINITY), exp(88.3));
        assert!(exp(f32::NAN).is_nan(), "a NaN must come through");
    }

    #[test]
    fn erf_matches_libm() {
        for i in -600..=600 {
            let x = i as f32 * 0.01;
            assert!((erf(x) - libm::erff(x)).abs() < 3e-7, "erf({x})");
        }
    }

    #[test]
    fn dot_handles_tails() {
        let a: Vec<f32> = (0..19).map(|i| i as f32).collect();
        assert_eq!(dot(&a, &a), (0..19).map(|i| (i * i) as f32).sum::<f32>());
    }
}
