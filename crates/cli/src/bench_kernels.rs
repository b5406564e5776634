//! `bench kernels --device cuda`: each CUDA kernel against its CPU twin at GPT-2 small's sizes
//! (4 x 1024 tokens, width 768, 12 heads), one JSON line per kernel with both times, the speed-up
//! and, for GEMMs and attention, the GPU's TFLOP/s. Outputs are compared first: a kernel that
//! disagrees with the CPU is reported, not timed.

use std::time::Instant;

use anyhow::{bail, Context};
use serde_json::json;
use truthgpt_engine::activation::{self, Activation};
use truthgpt_engine::attention::{self, AttentionShape, ScoreBias};
use truthgpt_engine::close::max_rel_diff;
use truthgpt_engine::cuda::{CudaSlice, Gpu, GpuOp};
use truthgpt_engine::device::Device;
use truthgpt_engine::matmul::{self, Op};
use truthgpt_engine::optim::AdamW;
use truthgpt_engine::rng::Rng;
use truthgpt_engine::{loss, norm};

use crate::args::BenchKernelsArgs;

const ROWS: usize = 4 * 1024;
const C: usize = 768;

/// Median seconds of `reps` runs of `f` after one warm-up.
fn time(reps: usize, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    f()?;
    let mut samples = Vec::with_capacity(reps);
    for _ in 0..reps {
        let start = Instant::now();
        f()?;
        samples.push(start.elapsed().as_secs_f64());
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples[reps / 2])
}

struct Bench<'g> {
    gpu: &'g Gpu,
    rng: Rng,
}

impl Bench<'_> {
    fn normal(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.rng.normal()).collect()
    }

    /// Times both sides (the GPU's launches synchronised) and prints the line.
    fn report(
        &self,
        kernel: &str,
        shape: String,
        flops: Option<f64>,
        mut cpu: impl FnMut(),
        mut gpu: impl FnMut() -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let cpu_secs = time(3, || {
            cpu();
            Ok(())
        })?;
        let gpu_secs = time(20, || {
            gpu()?;
            Ok(self.gpu.synchronize()?)
        })?;
        let mut line = json!({
            "kernel": kernel, "shape": shape, "cpu_ms": cpu_secs * 1e3, "gpu_ms": gpu_secs * 1e3,
            "gpu_speedup": cpu_secs / gpu_secs,
        });
        if let Some(flops) = flops {
            line["gpu_tflops"] = json!(flops / gpu_secs / 1e12);
        }
        println!("{line}");
        Ok(())
    }
}

fn agree(gpu: &Gpu, kernel: &str, got: &CudaSlice<f32>, want: &[f32], bound: f64) -> anyhow::Result<()> {
    let error = max_rel_diff(&gpu.download(got)?, want);
    if error.is_nan() || error > bound {
        bail!("{kernel}: the GPU differs from the CPU by {error:.2e} (bound {bound:.0e})");
    }
    Ok(())
}

pub fn run(args: &BenchKernelsArgs) -> anyhow::Result<()> {
    let Device::Cuda(ordinal) = args.device else {
        bail!("bench kernels compares a CUDA device with the CPU: --device cuda[:N]")
    };
    let threads = crate::bench::init_threads(args.threads)?;
    let gpu = Gpu::open(ordinal).with_context(|| format!("opening cuda:{ordinal}"))?;
    eprintln!("{} ({}) against {threads} CPU threads", gpu.name()?, gpu.arch());
    let mut b = Bench { gpu: &gpu, rng: Rng::new(7) };

    // The MLP's up-projection, f32 and bf16 (f32 accumulation).
    let (x, w) = (b.normal(ROWS * C), b.normal(4 * C * C));
    let (dx, dw) = (gpu.upload(&x)?, gpu.upload(&w)?);
    let (mut want, mut out) = (vec![0.0; ROWS * 4 * C], gpu.zeros(ROWS * 4 * C)?);
    matmul::matmul(&mut want, Op::N(&x), Op::T(&w), ROWS, C, 4 * C, false);
    gpu.matmul(&mut out, GpuOp::N(&dx), GpuOp::T(&dw), ROWS, C, 4 * C, false)?;
    agree(&gpu, "matmul", &out, &want, 1e-4)?;
    let flops = 2.0 * (ROWS * C * 4 * C) as f64;
    let shape = format!("{ROWS}x{C} @ ({}x{C})^T", 4 * C);
    b.report(
        "matmul f32",
        shape.clone(),
        Some(flops),
        || matmul::matmul(&mut want, Op::N(&x), Op::T(&w), ROWS, C, 4 * C, false),
        || Ok(gpu.matmul(&mut out, GpuOp::N(&dx), GpuOp::T(&dw), ROWS, C, 4 * C, false)?),
    )?;
    let (mut xb, mut wb) = (gpu.zeros::<half::bf16>(x.len())?, gpu.zeros::<half::bf16>(w.len())?);
    gpu.to_bf16(&mut xb, &dx)?;
    gpu.to_bf16(&mut wb, &dw)?;
    b.report(
        "matmul bf16 (f32 accumulate), against the CPU's f32",
        shape,
        Some(flops),
        || matmul::matmul(&mut want, Op::N(&x), Op::T(&w), ROWS, C, 4 * C, false),
        || Ok(gpu.matmul_bf16(&mut out, GpuOp::N(&xb), GpuOp::T(&wb), ROWS, C, 4 * C, false)?),
    )?;

    // LayerNorm forward and backward.
    let (weight, bias, dy) = (b.normal(C), b.normal(C), b.normal(ROWS * C));
    let (d_weight, d_bias, d_dy) = (gpu.upload(&weight)?, gpu.upload(&bias)?, gpu.upload(&dy)?);
    let (mut y, mut mean, mut rstd, mut dinp, mut dweight, mut dbias) = (
        vec![0.0; ROWS * C],
        vec![0.0; ROWS],
        vec![0.0; ROWS],
        vec![0.0; ROWS * C],
        vec![0.0; C],
        vec![0.0; C],
    );
    let (mut d_y, mut d_mean, mut d_rstd, mut d_dinp, mut d_dweight, mut d_dbias) = (
        gpu.zeros(ROWS * C)?,
        gpu.zeros(ROWS)?,
        gpu.zeros(ROWS)?,
        gpu.zeros(ROWS * C)?,
        gpu.zeros(C)?,
        gpu.zeros(C)?,
    );
    let shape = format!("{ROWS}x{C}");
    b.report(
        "layernorm forward",
        shape.clone(),
        None,
        || norm::layernorm_forward(&mut y, &mut mean, &mut rstd, &x, &weight, Some(&bias), C, 1e-5),
        || {
            let (mean, residual) = (Some(&mut d_mean), None);
            Ok(gpu.norm_forward(
                &mut d_y,
                mean,
                &mut d_rstd,
                &dx,
                residual,
                &d_weight,
                Some(&d_bias),
                C,
                1e-5,
            )?)
        },
    )?;
    agree(&gpu, "layernorm forward", &d_y, &y, 1e-5)?;
    b.report(
        "layernorm backward",
        shape,
        None,
        || {
            norm::layernorm_backward(
                &mut dinp,
                Some(&mut dweight[..]),
                Some(&mut dbias),
                &dy,
                &x,
                &weight,
                &mean,
                &rstd,
                C,
            )
        },
        || {
            let (dbias, mean) = (Some(&mut d_dbias), Some(&d_mean));
            Ok(gpu.norm_backward(
                &mut d_dinp,
                &mut d_dweight,
                dbias,
                None,
                &d_dy,
                &dx,
                &d_weight,
                mean,
                &d_rstd,
                C,
            )?)
        },
    )?;
    agree(&gpu, "layernorm backward", &d_dinp, &dinp, 1e-5)?;

    // GELU (tanh form) over the MLP's hidden activations.
    let (h, d_h) = (want.clone(), gpu.upload(&want)?);
    let mut g = vec![0.0; h.len()];
    b.report(
        "gelu_tanh forward",
        format!("{ROWS}x{}", 4 * C),
        None,
        || activation::forward(Activation::GeluTanh, &mut g, &h),
        || Ok(gpu.activation_forward(Activation::GeluTanh, &mut out, &d_h)?),
    )?;
    agree(&gpu, "gelu_tanh forward", &out, &g, 1e-5)?;

    // Attention forward and backward.
    let s = AttentionShape { b: 4, t: 1024, nh: 12, kvh: 12, hs: 64, window: None };
    let qkv = b.normal(ROWS * s.qkv_width());
    let douts = b.normal(ROWS * C);
    let (d_qkv, d_douts) = (gpu.upload(&qkv)?, gpu.upload(&douts)?);
    let (mut att, mut lse, mut dqkv) = (vec![0.0; ROWS * C], vec![0.0; 4 * 12 * 1024], vec![0.0; qkv.len()]);
    let (mut d_att, mut d_lse, mut d_dqkv, mut d_delta) =
        (gpu.zeros(ROWS * C)?, gpu.zeros(lse.len())?, gpu.zeros(qkv.len())?, gpu.zeros(lse.len())?);
    let none = gpu.bias(ScoreBias::None, s.nh)?;
    // Causal: half the T x T scores, two GEMM-like products each.
    let flops = 4.0 * (s.b * s.nh * s.t * s.t * s.hs) as f64 / 2.0;
    let shape = format!("B{} T{} NH{} HS{}", s.b, s.t, s.nh, s.hs);
    b.report(
        "attention forward",
        shape.clone(),
        Some(flops),
        || attention::attention_forward(&mut att, &mut lse, &qkv, s, ScoreBias::None),
        || Ok(gpu.attention_forward(&mut d_att, &mut d_lse, &d_qkv, s, &none)?),
    )?;
    agree(&gpu, "attention forward", &d_att, &att, 1e-4)?;
    b.report(
        "attention backward",
        shape,
        Some(2.5 * flops),
        || attention::attention_backward(&mut dqkv, None, &douts, &qkv, &att, &lse, s, ScoreBias::None),
        || {
            Ok(gpu.attention_backward(
                &mut d_dqkv,
                &mut d_delta,
                &d_douts,
                &d_qkv,
                &d_att,
                &d_lse,
                s,
                &none,
            )?)
        },
    )?;
    agree(&gpu, "attention backward", &d_dqkv, &dqkv, 1e-4)?;

    // Cross-entropy over GPT-2's vocabulary (a quarter of the rows: 200 MB of logits).
    let (rows, v) = (ROWS / 4, 50_257);
    let logits = b.normal(rows * v);
    let targets: Vec<u32> = (0..rows as u32).map(|i| i * 37 % v as u32).collect();
    let (mut work, mut losses) = (logits.clone(), vec![0.0; rows]);
    let (mut d_logits, mut d_losses, d_targets) =
        (gpu.upload(&logits)?, gpu.zeros(rows)?, gpu.upload(&targets)?);
    b.report(
        "cross-entropy fused",
        format!("{rows}x{v}"),
        None,
        || {
            work.copy_from_slice(&logits);
            loss::cross_entropy_fused(&mut work, &mut losses, &targets, v, 1.0 / rows as f32);
        },
        || Ok(gpu.cross_entropy_fused(&mut d_logits, &mut d_losses, &d_targets, v, 1.0 / rows as f32)?),
    )?;

    // AdamW over 16M parameters in one launch.
    let n = 16 << 20;
    let opt = AdamW { lr: 6e-4, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 };
    let (mut p, mut m, mut vv, grads) = (b.normal(n), vec![0.0; n], vec![0.0; n], b.normal(n));
    let (mut d_p, mut d_m, mut d_v, d_g) =
        (gpu.upload(&p)?, gpu.zeros(n)?, gpu.zeros(n)?, gpu.upload(&grads)?);
    let regions = gpu.regions(&[(n / 2, true), (n, false)])?;
    b.report(
        "adamw",
        format!("{n} parameters"),
        None,
        || {
            opt.update(&mut p[..n / 2], &mut m[..n / 2], &mut vv[..n / 2], &grads[..n / 2], 1, 1.0, true);
            opt.update(&mut p[n / 2..], &mut m[n / 2..], &mut vv[n / 2..], &grads[n / 2..], 1, 1.0, false);
        },
        || Ok(gpu.adamw(&opt, &mut d_p, &mut d_m, &mut d_v, &d_g, &regions, 1, 1.0)?),
    )
}
