//! The quantized products, for every ggml type:
//! - the portable integer kernel against the reference path (each weight row dequantized to
//!   f32, dotted in f64 with the unquantized activations), within the bound that quantizing the
//!   activations to 8 bits allows;
//! - every vector kernel this CPU runs against the portable one, within float rounding;
//! - NaN in the activations reaches the output, and the split over threads changes nothing.

use std::sync::Arc;

use half::f16;
use truthgpt_engine::close::max_abs_diff;
use truthgpt_engine::qmatmul::{
    qlinear_forward_with, qlinear_input_grad, reference_forward, QKernel, QMatrix, QWeight,
};
use truthgpt_engine::rng::Rng;
use truthgpt_quant::GgmlType;

/// Byte offsets of a block's f16 scales, which random bytes would make infinite or NaN.
fn scale_offsets(ty: GgmlType) -> &'static [usize] {
    match ty {
        GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q5_0 => &[0],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::Q2_K => &[80, 82],
        GgmlType::Q3_K => &[108],
        GgmlType::Q6_K => &[208],
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => &[],
    }
}

/// A random (rows, cols) matrix of `ty`: random bytes with finite scales of about 0.01 for the
/// quantized types, normal values for the float ones.
fn random_weight(ty: GgmlType, rows: usize, cols: usize, rng: &mut Rng) -> QWeight {
    let mut values = vec![0f32; rows * cols];
    rng.fill_normal(&mut values, 1.0);
    let bytes: Vec<u8> = match ty {
        GgmlType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        GgmlType::F16 => values.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect(),
        GgmlType::BF16 => values.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect(),
        _ => {
            let mut bytes: Vec<u8> =
                (0..ty.bytes_for((rows * cols) as u64).unwrap()).map(|_| rng.next_u64() as u8).collect();
            for block in bytes.chunks_exact_mut(ty.block_bytes()) {
                for &at in scale_offsets(ty) {
                    let scale = 0.005 + 0.01 * rng.uniform();
                    block[at..at + 2].copy_from_slice(&f16::from_f32(scale).to_le_bytes());
                }
            }
            bytes
        }
    };
    QWeight::new(ty, rows, cols, Arc::new(bytes), 0).unwrap()
}

/// The largest error quantizing `x` to 8 bits in blocks of `block` can make in each output:
/// `sum |w| * d / 2` with `d = max|x| / 127` per block, plus float rounding (all there is when
/// `block` is `None`: the float types multiply the activations unquantized).
fn error_bound(w: &QMatrix, x: &[f32], n: usize, block: Option<usize>) -> Vec<f32> {
    let (k, oc) = (w.cols(), w.rows());
    let mut row = vec![0f32; k];
    let mut bound = vec![0f32; n * oc];
    for c in 0..oc {
        w.dequantize_row(c, &mut row);
        for r in 0..n {
            let x = &x[r * k..][..k];
            let mut b = 0.0f64;
            for (wb, xb) in row.chunks(block.unwrap_or(k)).zip(x.chunks(block.unwrap_or(k))) {
                let magnitude: f64 = wb.iter().zip(xb).map(|(w, x)| (w * x).abs() as f64).sum();
                b += 1e-5 * magnitude;
                if block.is_some() {
                    let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                    let wsum: f64 = wb.iter().map(|w| w.abs() as f64).sum();
                    b += wsum * (amax as f64 / 127.0 / 2.0);
                }
            }
            bound[r * oc + c] = b as f32;
        }
    }
    bound
}

const SHAPES: [(usize, usize); 3] = [(13, 512), (4, 256), (9, 768)];

fn run(kernel: QKernel, w: &QMatrix, x: &[f32], n: usize) -> Vec<f32> {
    let mut out = vec![f32::NAN; n * w.rows()];
    qlinear_forward_with(kernel, &mut out, x, w, None, n);
    out
}

#[test]
fn portable_kernel_is_the_reference_within_the_activation_bound() {
    let mut rng = Rng::new(7);
    for &ty in GgmlType::ALL {
        for (oc, k) in SHAPES {
            let w = QMatrix::from(random_weight(ty, oc, k, &mut rng));
            for n in [1, 3, 6] {
                let mut x = vec![0f32; n * k];
                rng.fill_normal(&mut x, 1.0);
                let got = run(QKernel::Portable, &w, &x, n);
                let mut want = vec![0f32; n * oc];
                reference_forward(&mut want, &x, &w, n);
                let bound = error_bound(&w, &x, n, truthgpt_quant::int::act_block(ty));
                for (i, ((g, want), bound)) in got.iter().zip(&want).zip(&bound).enumerate() {
                    assert!(
                        (g - want).abs() <= *bound,
                        "{ty} {oc}x{k} n={n} [{i}]: {g} vs {want}, bound {bound}"
                    );
                }
            }
        }
    }
}

#[test]
fn every_kernel_matches_the_portable_one() {
    let kernels = QKernel::available();
    eprintln!("kernels on this CPU: {kernels:?}");
    let mut rng = Rng::new(11);
    for &ty in GgmlType::ALL {
        for (oc, k) in SHAPES {
            let w = QMatrix::from(random_weight(ty, oc, k, &mut rng));
            for n in [1, 2, 3, 4, 5, 9] {
                let mut x = vec![0f32; n * k];
                rng.fill_normal(&mut x, 1.0);
                let want = run(QKernel::Portable, &w, &x, n);
                let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
                for &kernel in &kernels {
                    let got = run(kernel, &w, &x, n);
                    let diff = max_abs_diff(&got, &want);
                    assert!(diff <= 2e-5 * scale as f64, "{kernel:?} {ty} {oc}x{k} n={n}: max diff {diff}");
                }
            }
        }
    }
}

#[test]
fn packed_weights_give_the_portable_products() {
    // Packing covers the rows but the last `rows % 16`, which the row-wise kernels do; 576
    // columns (SmolLM2's width) are whole periods of the 32-element types only.
    let packs = QKernel::best() != QKernel::Portable;
    let mut rng = Rng::new(17);
    for ty in [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q4_K, GgmlType::Q6_K] {
        for (oc, k) in [(37, 512), (48, 256), (16, 1024), (35, 576), (96, 64)] {
            if k % ty.block_elements() != 0 {
                continue;
            }
            let plain = QMatrix::from(random_weight(ty, oc, k, &mut rng));
            let packed = plain.clone().pack();
            let part = &packed.parts()[0];
            if packs {
                let rows = part.packed().map(|p| p.rows());
                assert_eq!(rows, Some(oc / 16 * 16), "{ty} {oc}x{k}: {part:?}");
            }
            for n in [1, 2, 4, 5, 11, 16] {
                let mut x = vec![0f32; n * k];
                rng.fill_normal(&mut x, 1.0);
                if n == 5 {
                    x[4 * k + 3] = f32::NAN;
                }
                let want = run(QKernel::Portable, &plain, &x, n);
                let got = run(QKernel::best(), &packed, &x, n);
                let finite: Vec<usize> = (0..n * oc).filter(|&i| !(n == 5 && i / oc == 4)).collect();
                let scale = finite.iter().fold(1.0f32, |m, &i| m.max(want[i].abs()));
                let diff = max_abs_diff(
                    &finite.iter().map(|&i| got[i]).collect::<Vec<_>>(),
                    &finite.iter().map(|&i| want[i]).collect::<Vec<_>>(),
                );
                assert!(diff <= 2e-5 * scale as f64, "{ty} {oc}x{k} n={n}: max diff {diff}");
                if n == 5 {
                    assert!(got[4 * oc..].iter().all(|v| v.is_nan()), "{ty} {oc}x{k}: NaN row");
                }
            }
        }
    }
}

#[test]
fn nan_in_the_activations_reaches_the_output() {
    let mut rng = Rng::new(3);
    for &ty in GgmlType::ALL {
        let w = QMatrix::from(random_weight(ty, 8, 256, &mut rng));
        let mut x = vec![0.5f32; 2 * 256];
        x[256 + 100] = f32::NAN;
        for kernel in QKernel::available() {
            let out = run(kernel, &w, &x, 2);
            assert!(out[..8].iter().all(|v| v.is_finite()), "{kernel:?} {ty}: clean row");
            assert!(out[8..].iter().all(|v| v.is_nan()), "{kernel:?} {ty}: NaN row {:?}", &out[8..]);
        }
    }
}

#[test]
fn threads_and_bias_change_nothing_but_the_bias() {
    // 1,024 x 2,048 is large enough to be split over threads; one thread computes it whole.
    let mut rng = Rng::new(5);
    let (oc, k, n) = (1024, 2048, 3);
    let w = QMatrix::from(random_weight(GgmlType::Q4_K, oc, k, &mut rng));
    let mut x = vec![0f32; n * k];
    rng.fill_normal(&mut x, 1.0);
    let bias: Vec<f32> = (0..oc).map(|i| i as f32).collect();
    for kernel in QKernel::available() {
        let single = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let want = single.install(|| run(kernel, &w, &x, n));
        let pool = rayon::ThreadPoolBuilder::new().num_threads(4).build().unwrap();
        let mut got = vec![0f32; n * oc];
        pool.install(|| qlinear_forward_with(kernel, &mut got, &x, &w, Some(&bias), n));
        let unbiased: Vec<f32> = got.iter().enumerate().map(|(i, v)| v - bias[i % oc]).collect();
        assert!(max_abs_diff(&unbiased, &want) <= 1e-3, "{kernel:?}");
    }
}

#[test]
fn bad_shapes_are_errors() {
    let bytes: Arc<Vec<u8>> = Arc::new(vec![0; 34 * 4]);
    assert!(QWeight::new(GgmlType::Q8_0, 2, 64, bytes.clone(), 0).is_ok());
    assert!(QWeight::new(GgmlType::Q8_0, 2, 64, bytes.clone(), 1).is_err(), "past the end");
    assert!(QWeight::new(GgmlType::Q8_0, 3, 64, bytes.clone(), 0).is_err(), "too few bytes");
    assert!(QWeight::new(GgmlType::Q8_0, 4, 48, bytes, 0).is_err(), "partial blocks");
}

#[test]
fn stacked_parts_and_row_orders_are_their_rows() {
    // q (Q4_K, rows reversed), k (Q6_K) and v (F16) stacked, as a fused projection over a
    // llama.cpp mix: each output column is its own part's row.
    let mut rng = Rng::new(13);
    let k = 512;
    let q = random_weight(GgmlType::Q4_K, 8, k, &mut rng);
    let reversed = q.clone().with_row_order((0..8).rev().collect()).unwrap();
    let parts = [
        reversed,
        random_weight(GgmlType::Q6_K, 4, k, &mut rng),
        random_weight(GgmlType::F16, 4, k, &mut rng),
    ];
    let stacked = QMatrix::new(parts.to_vec()).unwrap();
    let n = 3;
    let mut x = vec![0f32; n * k];
    rng.fill_normal(&mut x, 1.0);
    for kernel in QKernel::available() {
        let got = run(kernel, &stacked, &x, n);
        let alone: Vec<Vec<f32>> =
            parts.iter().map(|p| run(kernel, &QMatrix::from(p.clone()), &x, n)).collect();
        let plain_q = run(kernel, &QMatrix::from(q.clone()), &x, n);
        for r in 0..n {
            let want: Vec<f32> =
                alone.iter().zip([8, 4, 4]).flat_map(|(a, rows)| a[r * rows..][..rows].to_vec()).collect();
            assert_eq!(&got[r * 16..][..16], &want[..], "{kernel:?} row {r}");
            let reversed: Vec<f32> = plain_q[r * 8..][..8].iter().rev().copied().collect();
            assert_eq!(&got[r * 16..][..8], &reversed[..], "{kernel:?} row order");
        }
    }
    assert!(q.clone().with_row_order(vec![0, 0, 1, 2, 3, 4, 5, 6]).is_err());
    assert!(q.with_row_order(vec![0, 1]).is_err());
    assert!(QMatrix::new(vec![]).is_err());
}

#[test]
fn packed_stacked_parts_give_the_portable_products() {
    // A fused gate/up projection over two tensors of different packed types.
    let mut rng = Rng::new(19);
    let parts = vec![
        random_weight(GgmlType::Q4_0, 96, 64, &mut rng),
        random_weight(GgmlType::Q4_1, 96, 64, &mut rng),
    ];
    let plain = QMatrix::new(parts).unwrap();
    let packed = plain.clone().pack();
    for n in [1, 3, 16] {
        let mut x = vec![0f32; n * 64];
        rng.fill_normal(&mut x, 1.0);
        let want = run(QKernel::Portable, &plain, &x, n);
        let got = run(QKernel::best(), &packed, &x, n);
        let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        let diff = max_abs_diff(&got, &want);
        assert!(diff <= 2e-5 * scale as f64, "n={n}: max diff {diff}");
    }
}

#[test]
fn input_gradient_is_the_dequantized_product() {
    // QLoRA's backward through a frozen base: dx = dy @ W, against W decoded whole and multiplied
    // in f64. 300 rows span three tiles, the last one partial; parts of two types and a row order.
    let mut rng = Rng::new(21);
    let k = 256;
    let q = random_weight(GgmlType::Q4_K, 200, k, &mut rng).with_row_order((0..200).rev().collect()).unwrap();
    let w = QMatrix::new(vec![q, random_weight(GgmlType::Q8_0, 100, k, &mut rng)]).unwrap();
    let (n, oc) = (5, w.rows());
    let mut dense = vec![0f32; oc * k];
    for (r, row) in dense.chunks_exact_mut(k).enumerate() {
        w.dequantize_row(r, row);
    }
    let mut dy = vec![0f32; n * oc];
    rng.fill_normal(&mut dy, 1.0);
    let want: Vec<f64> = (0..n * k)
        .map(|i| (0..oc).map(|o| dy[i / k * oc + o] as f64 * dense[o * k + i % k] as f64).sum())
        .collect();
    let mut dx = vec![f32::NAN; n * k];
    qlinear_input_grad(&mut dx, &dy, &w, n, false);
    let diff = max_abs_diff(&dx, &want);
    assert!(diff <= 1e-4, "written: {diff}");
    let mut summed = vec![1f32; n * k];
    qlinear_input_grad(&mut summed, &dy, &w, n, true);
    let plus_one: Vec<f64> = want.iter().map(|w| w + 1.0).collect();
    let diff = max_abs_diff(&summed, &plus_one);
    assert!(diff <= 1e-4, "accumulated: {diff}");
}
