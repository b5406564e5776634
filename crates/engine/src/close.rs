//! NaN-safe closeness checks, shared by every test and bench that compares numbers.
//!
//! The trap these exist to avoid: `fold(0.0, f32::max)` drops NaN (`f32::max` returns the other
//! argument), and `if diff > tol { fail }` is false for NaN, so a NaN difference reads as a match.
//! Here a NaN on either side makes the difference NaN, a length mismatch makes it infinite, and
//! [`assert_close`] passes only when `diff <= tol`, which NaN never is.

/// The larger of two differences, NaN if either is NaN (unlike `f64::max`, which drops it).
pub fn nan_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

/// The largest `|got - want|`; NaN if any element of either side is NaN, infinite if the
/// lengths differ.
pub fn max_abs_diff<G: Copy + Into<f64>, W: Copy + Into<f64>>(got: &[G], want: &[W]) -> f64 {
    max_diff_by(got, want, |g, w| (g - w).abs())
}

/// The largest `|got - want| / (1 + |want|)`: absolute near zero, relative for large values.
/// NaN and length mismatches as in [`max_abs_diff`].
pub fn max_rel_diff<G: Copy + Into<f64>, W: Copy + Into<f64>>(got: &[G], want: &[W]) -> f64 {
    max_diff_by(got, want, |g, w| (g - w).abs() / (1.0 + w.abs()))
}

fn max_diff_by<G: Copy + Into<f64>, W: Copy + Into<f64>>(
    got: &[G],
    want: &[W],
    diff: impl Fn(f64, f64) -> f64,
) -> f64 {
    if got.len() != want.len() {
        return f64::INFINITY;
    }
    got.iter().zip(want).map(|(&g, &w)| diff(g.into(), w.into())).fold(0.0, nan_max)
}

/// Panics unless every `|got - want| / (1 + |want|)` is at most `tol` (so NaN anywhere fails),
/// naming the first offending element. Returns the largest difference, for reports.
#[track_caller]
pub fn assert_close<G: Copy + Into<f64>, W: Copy + Into<f64>>(
    what: &str,
    got: &[G],
    want: &[W],
    tol: f64,
) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: {} values, expected {}", got.len(), want.len());
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let (g, w): (f64, f64) = (g.into(), w.into());
        let diff = (g - w).abs() / (1.0 + w.abs());
        assert!(diff <= tol, "{what}[{i}]: got {g}, want {w}, difference {diff:e} over {tol:e}");
    }
    max_rel_diff(got, want)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nan_max_keeps_nan_from_either_side() {
        assert!(nan_max(f64::NAN, 1.0).is_nan());
        assert!(nan_max(1.0, f64::NAN).is_nan());
        assert!(nan_max(f64::NAN, f64::NAN).is_nan());
        assert_eq!(nan_max(1.0, 2.0), 2.0);
        assert_eq!(nan_max(2.0, 1.0), 2.0);
        assert_eq!(nan_max(0.0, f64::INFINITY), f64::INFINITY);
    }

    #[test]
    fn every_diff_is_nan_when_either_side_has_nan() {
        let clean = [1.0f32, 2.0, 3.0];
        for at in 0..3 {
            let mut dirty = clean;
            dirty[at] = f32::NAN;
            assert!(max_abs_diff(&clean, &dirty).is_nan(), "want NaN at {at}");
            assert!(max_abs_diff(&dirty, &clean).is_nan());
            assert!(max_rel_diff(&clean, &dirty).is_nan());
            assert!(max_rel_diff(&dirty, &clean).is_nan());
        }
        assert_eq!(max_abs_diff(&clean, &clean), 0.0);
        assert_eq!(max_abs_diff(&[1.0f64], &[1.5]), 0.5);
        assert_eq!(max_rel_diff(&[3.0f64], &[1.0]), 1.0);
    }

    #[test]
    fn different_lengths_never_compare_close() {
        assert_eq!(max_abs_diff(&[1.0f32], &[1.0, 1.0]), f64::INFINITY);
        assert_eq!(max_rel_diff::<f32, f32>(&[], &[1.0]), f64::INFINITY);
    }

    #[test]
    fn assert_close_fails_on_nan_and_on_a_real_difference() {
        assert_eq!(assert_close("same", &[1.0f32, -2.0], &[1.0, -2.0], 0.0), 0.0);
        for (got, want) in [([f32::NAN], [1.0f32]), ([1.0], [f32::NAN]), ([1.1], [1.0])] {
            let caught = std::panic::catch_unwind(|| assert_close("x", &got, &want, 1e-3));
            assert!(caught.is_err(), "{got:?} against {want:?} passed");
        }
    }
}
