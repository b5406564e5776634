//! `truthgpt bench qmatmul`: the quantized product of each ggml type, with each kernel this CPU
//! runs (and with the best one over the weights packed as a model's are at load, where the type
//! packs), against the f32 product of the same (dequantized) weights, alternated round by round.
//! One JSON line per (type, rows), with the weights' bytes per second, which bounds decoding.

use std::time::Instant;

use anyhow::ensure;
use serde_json::json;
use truthgpt_engine::matmul::{self, Precision};
use truthgpt_engine::qmatmul::{qlinear_forward_with, QKernel, QMatrix, QWeight};
use truthgpt_engine::rng::Rng;
use truthgpt_quant::GgmlType;

use crate::args::BenchQmatmulArgs;

pub fn run(args: &BenchQmatmulArgs) -> anyhow::Result<()> {
    ensure!(args.rounds > 0, "--rounds must be at least 1");
    let threads = crate::bench::init_threads(args.threads)?;
    let [k, oc] = args.shape;
    ensure!(k % 256 == 0 && oc > 0, "--shape IN,OUT: IN must be a multiple of 256");
    let mut rng = Rng::new(7);
    let mut dense = vec![0f32; oc * k];
    rng.fill_normal(&mut dense, 0.02);
    for &ty in &args.types {
        let w = QMatrix::from(quantized(ty, &dense, oc, k)?);
        let packed = w.clone().pack();
        // Each kernel over the weights as stored, then the best over the packed weights.
        let mut sides: Vec<(String, QKernel, &QMatrix)> =
            QKernel::available().into_iter().map(|k| (format!("{k:?}").to_lowercase(), k, &w)).collect();
        if packed.parts()[0].packed().is_some() {
            sides.push(("packed".into(), QKernel::best(), &packed));
        }
        let mut f32_weight = vec![0f32; oc * k];
        for (r, row) in f32_weight.chunks_exact_mut(k).enumerate() {
            w.dequantize_row(r, row);
        }
        for &n in &args.rows {
            let mut x = vec![0f32; n * k];
            rng.fill_normal(&mut x, 1.0);
            let mut out = vec![0f32; n * oc];
            // Enough calls per round for ~0.2 s of the slowest side.
            let calls =
                (2e9 / (2.0 * (n * k * oc) as f64 + 1e9 * (w.bytes_len() as f64 / 10e9))).max(1.0) as usize;
            let mut seconds = vec![Vec::new(); sides.len() + 1];
            for round in 0..=args.rounds {
                for (i, times) in seconds.iter_mut().enumerate() {
                    let start = Instant::now();
                    rayon::scope(|_| {
                        for _ in 0..calls {
                            match sides.get(i) {
                                Some(&(_, kernel, w)) => {
                                    qlinear_forward_with(kernel, &mut out, &x, w, None, n)
                                }
                                None => matmul::linear_forward(
                                    Precision::F32,
                                    &mut out,
                                    &x,
                                    &f32_weight,
                                    None,
                                    n,
                                    k,
                                    oc,
                                ),
                            }
                        }
                    });
                    if round > 0 {
                        times.push(start.elapsed().as_secs_f64() / calls as f64);
                    }
                }
            }
            let f32_ms = crate::bench::median(&mut seconds[sides.len()]) * 1e3;
            let mut line = json!({"type": ty.name(), "rows": n, "in": k, "out": oc, "threads": threads,
                "weight_bytes": w.bytes_len(), "f32_ms": f32_ms});
            for ((name, ..), times) in sides.iter().zip(&mut seconds) {
                let secs = crate::bench::median(times);
                line[format!("{name}_ms")] = json!(secs * 1e3);
                line[format!("{name}_weight_gb_per_s")] = json!(w.bytes_len() as f64 / secs / 1e9);
                line[format!("{name}_vs_f32")] = json!(f32_ms / (secs * 1e3));
            }
            println!("{line}");
        }
    }
    Ok(())
}

/// `dense` in `ty`: round-to-nearest where we quantize to it, else random blocks of that type
/// (the speed of a product does not depend on its values).
fn quantized(ty: GgmlType, dense: &[f32], oc: usize, k: usize) -> anyhow::Result<QWeight> {
    if let Ok(w) = QWeight::quantize(ty, dense, oc, k) {
        return Ok(w);
    }
    let mut rng = Rng::new(ty.id() as u64);
    let len = ty.bytes_for((oc * k) as u64)?;
    let bytes: Vec<u8> = match ty {
        GgmlType::F32 => dense.iter().flat_map(|v| v.to_le_bytes()).collect(),
        GgmlType::F16 => dense.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect(),
        GgmlType::BF16 => dense.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect(),
        // Masking keeps the f16 scales' exponents small, so the values stay finite.
        _ => (0..len).map(|_| rng.next_u64() as u8 & 0x3B).collect(),
    };
    Ok(QWeight::new(ty, oc, k, std::sync::Arc::new(bytes), 0)?)
}
