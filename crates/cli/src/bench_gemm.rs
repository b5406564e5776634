//! `truthgpt bench gemm`: each GEMM kernel this CPU runs on a training step's products, alternated
//! round by round; one JSON line per product, then one with the geometric means.

use std::time::Instant;

use anyhow::ensure;
use serde_json::json;
use truthgpt_engine::matmul::{matmul_with, Gemm, Op};
use truthgpt_engine::rng::Rng;

use crate::args::BenchGemmArgs;

/// How the operands of one product are laid out, as the linear layer's three products use them.
#[derive(Clone, Copy)]
enum Layout {
    /// Forward: `x (M, K) @ w (N, K)^T`.
    Nt,
    /// Input gradient: `dy (M, K) @ w (K, N)`.
    Nn,
    /// Weight gradient: `dy (K, M)^T @ x (K, N)`.
    Tn,
}

/// The products of one step of `torch-tiny-reference` (tokens 1024, width 256, feed-forward
/// 1024, vocabulary 1024): forward, input and weight gradients of the attention's fused q/k/v,
/// its output, the feed-forward's two layers and the head.
const STEP: [(&str, usize, usize, usize, Layout); 12] = [
    ("qkv", 1024, 256, 768, Layout::Nt),
    ("attn_out", 1024, 256, 256, Layout::Nt),
    ("ffn_up", 1024, 256, 1024, Layout::Nt),
    ("ffn_down", 1024, 1024, 256, Layout::Nt),
    ("qkv.dx", 1024, 768, 256, Layout::Nn),
    ("ffn_up.dx", 1024, 1024, 256, Layout::Nn),
    ("ffn_down.dx", 1024, 256, 1024, Layout::Nn),
    ("head.dx", 1024, 1024, 256, Layout::Nn),
    ("qkv.dw", 768, 1024, 256, Layout::Tn),
    ("attn_out.dw", 256, 1024, 256, Layout::Tn),
    ("ffn_up.dw", 1024, 1024, 256, Layout::Tn),
    ("ffn_down.dw", 256, 1024, 1024, Layout::Tn),
];

pub fn run(args: &BenchGemmArgs) -> anyhow::Result<()> {
    ensure!(args.rounds > 0, "--rounds must be at least 1");
    let threads = crate::bench::init_threads(args.threads)?;
    let kernels = Gemm::available();
    let mut rng = Rng::new(7);
    let mut log_rates = vec![0.0; kernels.len()];
    for (name, m, k, n, layout) in STEP {
        let (mut a, mut b) = (vec![0.0; m * k], vec![0.0; k * n]);
        rng.fill_normal(&mut a, 1.0);
        rng.fill_normal(&mut b, 1.0);
        let (lhs, rhs) = match layout {
            Layout::Nt => (Op::N(&a), Op::T(&b)),
            Layout::Nn => (Op::N(&a), Op::N(&b)),
            Layout::Tn => (Op::T(&a), Op::N(&b)),
        };
        let mut out = vec![0.0; m * n];
        // About 15 GFLOP per kernel and round: ~50 ms at 300 GFLOP/s, so that one product's
        // timer and wake-up do not dominate.
        let calls = ((7.5e9 / (m * n * k) as f64) as usize).max(1);
        let mut seconds = vec![Vec::new(); kernels.len()];
        // One untimed round first: page faults, packing buffers, the CPU's clock.
        for round in 0..=args.rounds {
            for (kernel, times) in kernels.iter().zip(&mut seconds) {
                // On a pool thread, as a training step runs.
                let start = Instant::now();
                rayon::scope(|_| {
                    (0..calls).for_each(|_| matmul_with(*kernel, &mut out, lhs, rhs, m, k, n, false))
                });
                if round > 0 {
                    times.push(start.elapsed().as_secs_f64() / calls as f64);
                }
            }
        }
        let mut line = json!({"product": name, "m": m, "k": k, "n": n, "threads": threads});
        for ((kernel, times), log_rate) in kernels.iter().zip(&mut seconds).zip(&mut log_rates) {
            let gflops = 2.0 * (m * n * k) as f64 / crate::bench::median(times) / 1e9;
            *log_rate += gflops.ln() / STEP.len() as f64;
            line[format!("{kernel:?}_gflops").to_lowercase()] = json!(gflops);
        }
        println!("{line}");
    }
    let mut summary = json!({"product": "geometric_mean", "threads": threads, "rounds": args.rounds});
    for (kernel, log_rate) in kernels.iter().zip(&log_rates) {
        summary[format!("{kernel:?}_gflops").to_lowercase()] = json!(log_rate.exp());
    }
    if let [first, .., best] = log_rates[..] {
        summary["speedup_vs_crate"] = json!((best - first).exp());
    }
    println!("{summary}");
    Ok(())
}
