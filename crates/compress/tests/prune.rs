//! Issue 20 (pruning): exact counts, N:M groups, Wanda = magnitude on equal norms, SparseGPT's
//! reconstruction error below magnitude's and Wanda's, sparsity 0 is the identity, bad input.

use truthgpt_compress::{
    input_norms, magnitude, prune, reconstruction_error, sparsegpt, wanda, CompressError, Method, Pattern,
    SparseGptOptions,
};

/// A small deterministic generator (xorshift), values in [-1, 1).
fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Calibration inputs with correlated columns and uneven scales, as real activations have.
fn calib(n: usize, inp: usize, seed: u64) -> Vec<f32> {
    let base = rand_vec(n * inp, seed);
    let shared = rand_vec(n, seed + 1);
    let mut x = vec![0f32; n * inp];
    for r in 0..n {
        for j in 0..inp {
            let scale = 0.2 + 3.0 * ((j * 7) % 11) as f32 / 11.0;
            x[r * inp + j] = scale * (base[r * inp + j] + 0.8 * shared[r]);
        }
    }
    x
}

const METHODS: [Method; 3] = [Method::Magnitude, Method::Wanda, Method::SparseGpt];

#[test]
fn issue20_exact_unstructured_counts_per_row() {
    let (out, inp) = (8, 40);
    let x = calib(64, inp, 3);
    for method in METHODS {
        for s in [0.25f32, 0.5, 0.7] {
            let mut w = rand_vec(out * inp, 1);
            let zeros = prune(&mut w, out, inp, &x, method, Pattern::Unstructured(s)).unwrap();
            let k = (s as f64 * inp as f64).floor() as usize;
            assert_eq!(zeros, k * out, "{method:?} {s}");
            for row in w.chunks_exact(inp) {
                assert_eq!(row.iter().filter(|v| **v == 0.0).count(), k, "{method:?} {s}");
            }
        }
    }
}

#[test]
fn issue20_two_four_pattern_per_group() {
    let (out, inp) = (6, 32);
    let x = calib(64, inp, 5);
    for method in METHODS {
        let mut w = rand_vec(out * inp, 2);
        prune(&mut w, out, inp, &x, method, Pattern::NM { n: 2, m: 4 }).unwrap();
        for g in w.chunks_exact(4) {
            assert_eq!(g.iter().filter(|v| **v == 0.0).count(), 2, "{method:?} group {g:?}");
        }
    }
}

#[test]
fn issue20_wanda_equals_magnitude_on_equal_norms() {
    let (out, inp) = (5, 24);
    let norms = vec![1.7f32; inp];
    for pattern in [Pattern::Unstructured(0.5), Pattern::NM { n: 2, m: 4 }] {
        let w0 = rand_vec(out * inp, 9);
        let (mut a, mut b) = (w0.clone(), w0.clone());
        magnitude(&mut a, out, inp, pattern).unwrap();
        wanda(&mut b, out, inp, &norms, pattern).unwrap();
        assert_eq!(a, b);
    }
}

#[test]
fn issue20_sparsegpt_reconstructs_better_than_magnitude_and_wanda() {
    let (out, inp) = (16, 64);
    let x = calib(256, inp, 11);
    let w0 = rand_vec(out * inp, 4);
    for pattern in [Pattern::Unstructured(0.5), Pattern::Unstructured(0.7), Pattern::NM { n: 2, m: 4 }] {
        let mut errs = Vec::new();
        for method in METHODS {
            let mut w = w0.clone();
            prune(&mut w, out, inp, &x, method, pattern).unwrap();
            errs.push(reconstruction_error(&w0, &w, out, inp, &x));
        }
        let (mag, wan, sgpt) = (errs[0], errs[1], errs[2]);
        assert!(
            sgpt.is_finite() && sgpt < wan && sgpt < mag,
            "{pattern:?}: magnitude {mag} wanda {wan} sparsegpt {sgpt}"
        );
        assert!(wan <= mag, "{pattern:?}: wanda {wan} vs magnitude {mag}");
    }
}

#[test]
fn issue20_sparsity_zero_is_identity() {
    let (out, inp) = (4, 16);
    let x = calib(32, inp, 1);
    for method in METHODS {
        let w0 = rand_vec(out * inp, 6);
        let mut w = w0.clone();
        assert_eq!(prune(&mut w, out, inp, &x, method, Pattern::Unstructured(0.0)).unwrap(), 0);
        assert_eq!(w, w0, "{method:?}");
    }
}

#[test]
fn issue20_sparsegpt_small_blocks_match_one_block() {
    // Lazy block updates are an evaluation order: blocks of 8 and one block of 64 give the same weights.
    let (out, inp) = (4, 64);
    let x = calib(128, inp, 8);
    let w0 = rand_vec(out * inp, 3);
    let pattern = Pattern::NM { n: 2, m: 4 };
    let (mut a, mut b) = (w0.clone(), w0.clone());
    sparsegpt(&mut a, out, inp, &x, pattern, &SparseGptOptions { percdamp: 0.01, block: 8 }).unwrap();
    sparsegpt(&mut b, out, inp, &x, pattern, &SparseGptOptions { percdamp: 0.01, block: 64 }).unwrap();
    for (p, q) in a.iter().zip(&b) {
        assert!((p - q).abs() <= 1e-4, "{p} vs {q}");
    }
}

#[test]
fn issue20_bad_input_is_an_error() {
    let mut w = rand_vec(4 * 8, 1);
    let x = calib(8, 8, 1);
    assert!(matches!(magnitude(&mut w, 4, 8, Pattern::Unstructured(1.0)), Err(CompressError::Sparsity(_))));
    assert!(matches!(magnitude(&mut w, 4, 8, Pattern::Unstructured(-0.1)), Err(CompressError::Sparsity(_))));
    assert!(matches!(
        magnitude(&mut w, 4, 8, Pattern::Unstructured(f32::NAN)),
        Err(CompressError::Sparsity(_))
    ));
    assert!(matches!(Pattern::parse_nm("4:4"), Err(CompressError::Pattern { .. })));
    assert!(matches!(Pattern::parse_nm("0:4"), Err(CompressError::Pattern { .. })));
    assert!(matches!(Pattern::parse_nm("two:four"), Err(CompressError::PatternText(t)) if t == "two:four"));
    assert_eq!(Pattern::parse_nm("2:4").unwrap(), Pattern::NM { n: 2, m: 4 });
    assert!(matches!(
        magnitude(&mut w, 4, 8, Pattern::NM { n: 2, m: 3 }),
        Err(CompressError::PatternWidth { .. })
    ));
    assert!(matches!(
        prune(&mut w, 4, 8, &x[..7], Method::Wanda, Pattern::Unstructured(0.5)),
        Err(CompressError::Shape { .. })
    ));
    assert_eq!(input_norms(&[3.0, 0.0, 4.0, 0.0], 2), vec![5.0, 0.0]);
}
