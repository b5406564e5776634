//! Every CUDA kernel against its CPU twin: the same random inputs through both, compared element
//! by element, forward and backward. `tests/cuda.rs` asserts these on a GPU, and
//! `truthgpt device --check` prints them on a machine without a Rust toolchain.

use super::{Gpu, GpuOp, Result};
use crate::activation::{self, Activation};
use crate::attention::{self, AttentionShape, ScoreBias};
use crate::close::max_rel_diff;
use crate::matmul::{self, Op};
use crate::optim::{self, AdamW};
use crate::rng::Rng;
use crate::rope::{self, RopeTable};
use crate::{embedding, loss, norm};

/// One comparison: the largest `|gpu - cpu| / (1 + |cpu|)` over a buffer (NaN if either has
/// one, infinite if their lengths differ), and its bound.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: String,
    pub max_error: f64,
    pub tolerance: f64,
}

impl Check {
    pub fn passed(&self) -> bool {
        self.max_error <= self.tolerance
    }
}

/// Elementwise kernels and single reductions differ from the CPU by rounding only.
const TIGHT: f64 = 1e-5;
/// Long reductions (GEMMs, attention) sum in another order.
const LOOSE: f64 = 1e-4;

struct Checker<'g> {
    gpu: &'g Gpu,
    rng: Rng,
    checks: Vec<Check>,
}

impl Checker<'_> {
    fn normal(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.rng.normal()).collect()
    }

    fn ids(&mut self, n: usize, below: usize) -> Vec<u32> {
        (0..n).map(|_| (self.rng.next_u64() % below as u64) as u32).collect()
    }

    fn compare(&mut self, name: String, gpu: &[f32], cpu: &[f32], tolerance: f64) {
        let max_error = max_rel_diff(gpu, cpu);
        self.checks.push(Check { name, max_error, tolerance });
    }

    fn compare_device(
        &mut self,
        name: String,
        gpu: &super::CudaSlice<f32>,
        cpu: &[f32],
        tolerance: f64,
    ) -> Result<()> {
        let got = self.gpu.download(gpu)?;
        self.compare(name, &got[..cpu.len().min(got.len())], cpu, tolerance);
        Ok(())
    }
}

/// Runs every check on `gpu`; an error is a failed launch or copy, not a mismatch.
pub fn run(gpu: &Gpu) -> Result<Vec<Check>> {
    let mut c = Checker { gpu, rng: Rng::new(2026), checks: Vec::new() };
    matmuls(&mut c)?;
    linear_biases(&mut c)?;
    bf16(&mut c)?;
    embeddings(&mut c)?;
    norms(&mut c)?;
    activations(&mut c)?;
    ropes(&mut c)?;
    cross_entropy(&mut c)?;
    adamw(&mut c)?;
    moe_permutes(&mut c)?;
    attentions(&mut c)?;
    gpu.synchronize()?;
    Ok(c.checks)
}

fn matmuls(c: &mut Checker) -> Result<()> {
    for (m, k, n) in [(37, 53, 29), (256, 512, 384), (1, 768, 2304)] {
        let (a, b) = (c.normal(m * k), c.normal(k * n));
        let (da, db) = (c.gpu.upload(&a)?, c.gpu.upload(&b)?);
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let mut want = c.normal(m * n);
            let mut got = c.gpu.upload(&want)?;
            let accumulate = ta ^ tb;
            let cpu_a = if ta { Op::T(&a) } else { Op::N(&a) };
            let cpu_b = if tb { Op::T(&b) } else { Op::N(&b) };
            matmul::matmul(&mut want, cpu_a, cpu_b, m, k, n, accumulate);
            let gpu_a = if ta { GpuOp::T(&da) } else { GpuOp::N(&da) };
            let gpu_b = if tb { GpuOp::T(&db) } else { GpuOp::N(&db) };
            c.gpu.matmul(&mut got, gpu_a, gpu_b, m, k, n, accumulate)?;
            let name = format!("matmul {m}x{k}x{n} a{} b{} accumulate {accumulate}", ta as u8, tb as u8);
            c.compare_device(name, &got, &want, LOOSE)?;
        }
    }
    Ok(())
}

fn linear_biases(c: &mut Checker) -> Result<()> {
    let (n, k, oc) = (70, 48, 300);
    let (x, w, bias, dout) = (c.normal(n * k), c.normal(oc * k), c.normal(oc), c.normal(n * oc));
    let mut want = vec![0.0; n * oc];
    matmul::linear_forward(matmul::Precision::F32, &mut want, &x, &w, Some(&bias), n, k, oc);
    let (d_x, d_w, d_bias, d_dout) =
        (c.gpu.upload(&x)?, c.gpu.upload(&w)?, c.gpu.upload(&bias)?, c.gpu.upload(&dout)?);
    let mut got = c.gpu.zeros(n * oc)?;
    c.gpu.broadcast_rows(&mut got, &d_bias, n)?;
    c.gpu.matmul(&mut got, GpuOp::N(&d_x), GpuOp::T(&d_w), n, k, oc, true)?;
    c.compare_device("linear forward with bias (broadcast + GEMM)".into(), &got, &want, LOOSE)?;
    let mut dbias = c.normal(oc);
    let mut d_dbias = c.gpu.upload(&dbias)?;
    crate::par::add_column_sums(&mut dbias, &dout);
    c.gpu.column_sums(&mut d_dbias, &d_dout, n)?;
    c.compare_device("linear backward: dbias (accumulated column sums)".into(), &d_dbias, &dbias, TIGHT)
}

/// Rounding to bf16 bit for bit as the `half` crate does (ties to even, infinities, subnormals),
/// and the bf16 GEMM against the CPU's f32 GEMM of the same rounded inputs.
fn bf16(c: &mut Checker) -> Result<()> {
    use half::bf16;
    let mut values: Vec<f32> = c.normal(4096).iter().map(|x| x * 1e3).collect();
    values.extend([
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::MAX,
        f32::MIN_POSITIVE,
        1e-40,
        f32::from_bits(0x3f80_8000), // halfway: to even (down)
        f32::from_bits(0x3f81_8000), // halfway: to even (up)
        f32::from_bits(0x7f7f_ffff), // rounds to infinity
    ]);
    let want: Vec<f32> = values.iter().map(|&x| bf16::from_f32(x).to_f32()).collect();
    let d_values = c.gpu.upload(&values)?;
    let (mut rounded, mut back) = (c.gpu.zeros::<bf16>(values.len())?, c.gpu.zeros(values.len())?);
    c.gpu.to_bf16(&mut rounded, &d_values)?;
    c.gpu.to_f32(&mut back, &rounded)?;
    let got = c.gpu.download(&back)?;
    let mismatches = got.iter().zip(&want).filter(|(g, w)| g.to_bits() != w.to_bits()).count();
    c.checks.push(Check {
        name: format!("bf16 rounding, {} values incl. ties and infinities: mismatched bits", values.len()),
        max_error: mismatches as f64,
        tolerance: 0.0,
    });

    let (m, k, n) = (129, 320, 250);
    let round = |x: Vec<f32>| -> Vec<f32> { x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect() };
    let (a, b) = (round(c.normal(m * k)), round(c.normal(n * k)));
    let mut want = c.normal(m * n);
    let mut got = c.gpu.upload(&want)?;
    matmul::matmul(&mut want, Op::N(&a), Op::T(&b), m, k, n, true);
    let to_bf16 = |x: &[f32]| -> Vec<bf16> { x.iter().map(|&v| bf16::from_f32(v)).collect() };
    let (d_a, d_b) = (c.gpu.upload(&to_bf16(&a))?, c.gpu.upload(&to_bf16(&b))?);
    c.gpu.matmul_bf16(&mut got, GpuOp::N(&d_a), GpuOp::T(&d_b), m, k, n, true)?;
    c.compare_device(format!("bf16 matmul {m}x{k}x{n}, f32 accumulate"), &got, &want, LOOSE)
}

fn embeddings(c: &mut Checker) -> Result<()> {
    let (vocab, t, width, rows) = (50, 7, 96, 21);
    // Few distinct ids, so the backward's atomic adds meet.
    let tokens = c.ids(rows, 9);
    let (wte, positions, dout) = (c.normal(vocab * width), c.normal(t * width), c.normal(rows * width));
    let (d_tokens, d_wte, d_positions, d_dout) =
        (c.gpu.upload(&tokens)?, c.gpu.upload(&wte)?, c.gpu.upload(&positions)?, c.gpu.upload(&dout)?);
    for with_positions in [false, true] {
        let mut want = vec![0.0; rows * width];
        embedding::forward(&mut want, &tokens, &wte, with_positions.then_some(&positions[..]), t, width);
        let mut got = c.gpu.zeros(rows * width)?;
        c.gpu.embedding_forward(
            &mut got,
            &d_tokens,
            &d_wte,
            with_positions.then_some(&d_positions),
            t,
            width,
        )?;
        c.compare_device(format!("embedding forward, positions {with_positions}"), &got, &want, TIGHT)?;
    }
    for with_positions in [false, true] {
        let (mut dwte, mut dpos) = (c.normal(vocab * width), vec![0.0; t * width]);
        let (mut d_dwte, mut d_dpos) = (c.gpu.upload(&dwte)?, c.gpu.upload(&dpos)?);
        embedding::backward(&mut dwte, with_positions.then_some(&mut dpos[..]), &dout, &tokens, t, width);
        c.gpu.embedding_backward(
            &mut d_dwte,
            with_positions.then_some(&mut d_dpos),
            &d_dout,
            &d_tokens,
            t,
            width,
        )?;
        let name = format!("embedding backward, positions {with_positions}");
        c.compare_device(format!("{name}: dwte (accumulated)"), &d_dwte, &dwte, TIGHT)?;
        c.compare_device(format!("{name}: dpositions"), &d_dpos, &dpos, TIGHT)?;
    }
    Ok(())
}

fn norms(c: &mut Checker) -> Result<()> {
    let (rows, width, eps) = (67, 200, 1e-5);
    for (layer, fused, with_bias) in [
        (true, false, true),
        (true, true, true),
        (true, false, false),
        (false, false, false),
        (false, true, false),
    ] {
        let kind = match (layer, with_bias) {
            (true, true) => "layernorm",
            (true, false) => "layernorm without bias",
            _ => "rmsnorm",
        };
        let (inp, residual, weight, bias) =
            (c.normal(rows * width), c.normal(rows * width), c.normal(width), c.normal(width));
        let (dout, dresidual) = (c.normal(rows * width), c.normal(rows * width));
        // CPU: the add, then the norm; backward: the norm's, then the residual gradient added.
        let x: Vec<f32> =
            if fused { inp.iter().zip(&residual).map(|(a, b)| a + b).collect() } else { inp.clone() };
        let (mut out, mut mean, mut rstd) = (vec![0.0; rows * width], vec![0.0; rows], vec![0.0; rows]);
        let (mut dinp, mut dweight, mut dbias) = (vec![0.0; rows * width], c.normal(width), c.normal(width));
        let (d_dweight0, d_dbias0) = (c.gpu.upload(&dweight)?, c.gpu.upload(&dbias)?);
        if layer {
            norm::layernorm_forward(
                &mut out,
                &mut mean,
                &mut rstd,
                &x,
                &weight,
                with_bias.then_some(&bias),
                width,
                eps,
            );
            norm::layernorm_backward(
                &mut dinp,
                Some(&mut dweight[..]),
                with_bias.then_some(&mut dbias),
                &dout,
                &x,
                &weight,
                &mean,
                &rstd,
                width,
            );
        } else {
            norm::rmsnorm_forward(&mut out, &mut rstd, &x, &weight, width, eps);
            norm::rmsnorm_backward(&mut dinp, Some(&mut dweight[..]), &dout, &x, &weight, &rstd, width);
        }
        if fused {
            dinp.iter_mut().zip(&dresidual).for_each(|(d, r)| *d += r);
        }

        let gpu = c.gpu;
        let (d_inp, d_residual, d_weight, d_bias) =
            (gpu.upload(&inp)?, gpu.upload(&residual)?, gpu.upload(&weight)?, gpu.upload(&bias)?);
        let (mut d_out, mut d_sum, mut d_mean, mut d_rstd) =
            (gpu.zeros(rows * width)?, gpu.zeros(rows * width)?, gpu.zeros(rows)?, gpu.zeros(rows)?);
        gpu.norm_forward(
            &mut d_out,
            layer.then_some(&mut d_mean),
            &mut d_rstd,
            &d_inp,
            fused.then_some((&d_residual, &mut d_sum)),
            &d_weight,
            with_bias.then_some(&d_bias),
            width,
            eps,
        )?;
        let name = format!("{kind}{}", if fused { " + residual" } else { "" });
        c.compare_device(format!("{name} forward"), &d_out, &out, TIGHT)?;
        c.compare_device(format!("{name} forward: rstd"), &d_rstd, &rstd, TIGHT)?;
        if layer {
            c.compare_device(format!("{name} forward: mean"), &d_mean, &mean, TIGHT)?;
        }
        if fused {
            c.compare_device(format!("{name} forward: residual sum"), &d_sum, &x, TIGHT)?;
        }
        let normalised = if fused { &d_sum } else { &d_inp };
        let (d_dout, d_dresidual) = (gpu.upload(&dout)?, gpu.upload(&dresidual)?);
        let (mut d_dinp, mut d_dweight, mut d_dbias) = (gpu.zeros(rows * width)?, d_dweight0, d_dbias0);
        gpu.norm_backward(
            &mut d_dinp,
            &mut d_dweight,
            with_bias.then_some(&mut d_dbias),
            fused.then_some(&d_dresidual),
            &d_dout,
            normalised,
            &d_weight,
            layer.then_some(&d_mean),
            &d_rstd,
            width,
        )?;
        c.compare_device(format!("{name} backward: dinp"), &d_dinp, &dinp, TIGHT)?;
        c.compare_device(format!("{name} backward: dweight (accumulated)"), &d_dweight, &dweight, LOOSE)?;
        if with_bias {
            c.compare_device(format!("{name} backward: dbias (accumulated)"), &d_dbias, &dbias, LOOSE)?;
        }
    }
    Ok(())
}

fn activations(c: &mut Checker) -> Result<()> {
    let (rows, f) = (33, 130);
    for act in [Activation::Gelu, Activation::GeluTanh, Activation::Silu] {
        let (x, dout) = (c.normal(rows * f), c.normal(rows * f));
        let (d_x, mut d_out) = (c.gpu.upload(&x)?, c.gpu.zeros(rows * f)?);
        let mut want = vec![0.0; rows * f];
        activation::forward(act, &mut want, &x);
        c.gpu.activation_forward(act, &mut d_out, &d_x)?;
        c.compare_device(format!("{act:?} forward"), &d_out, &want, TIGHT)?;
        let (mut want, mut d_grad) = (dout.clone(), c.gpu.upload(&dout)?);
        activation::backward_inplace(act, &mut want, &x);
        c.gpu.activation_backward_inplace(act, &mut d_grad, &d_x)?;
        c.compare_device(format!("{act:?} backward"), &d_grad, &want, TIGHT)?;

        let (h, dgated) = (c.normal(rows * 2 * f), c.normal(rows * f));
        let (d_h, d_dgated) = (c.gpu.upload(&h)?, c.gpu.upload(&dgated)?);
        let (mut want, mut got) = (vec![0.0; rows * f], c.gpu.zeros(rows * f)?);
        activation::gated_forward(act, &mut want, &h, f);
        c.gpu.gated_forward(act, &mut got, &d_h, f)?;
        c.compare_device(format!("gated {act:?} forward"), &got, &want, TIGHT)?;
        let (mut want, mut got) = (vec![0.0; rows * 2 * f], c.gpu.zeros(rows * 2 * f)?);
        activation::gated_backward(act, &mut want, &dgated, &h, f);
        c.gpu.gated_backward(act, &mut got, &d_dgated, &d_h, f)?;
        c.compare_device(format!("gated {act:?} backward"), &got, &want, TIGHT)?;
    }
    Ok(())
}

fn ropes(c: &mut Checker) -> Result<()> {
    let (t, heads, hs, batch, start) = (19, 5, 32, 3, 4);
    let table = RopeTable::new(2..40, &rope::inv_freq(hs, 10_000.0));
    let row_len = (heads + 2) * hs;
    let d_table = c.gpu.rope_table(&table)?;
    for inverse in [false, true] {
        let mut x = c.normal(batch * t * row_len);
        let mut d_x = c.gpu.upload(&x)?;
        table.apply(&mut x, row_len, 1, heads, t, start, inverse);
        c.gpu.rope_apply(&mut d_x, &d_table, row_len, 1, heads, t, start, inverse)?;
        c.compare_device(format!("rope, inverse {inverse}"), &d_x, &x, TIGHT)?;
    }
    Ok(())
}

fn cross_entropy(c: &mut Checker) -> Result<()> {
    for (rows, v) in [(13, 50), (9, 50_257)] {
        let logits: Vec<f32> = c.normal(rows * v).iter().map(|x| 3.0 * x).collect();
        let targets = c.ids(rows, v);
        let (mut want, mut losses) = (logits.clone(), vec![0.0; rows]);
        loss::cross_entropy_fused(&mut want, &mut losses, &targets, v, 0.25);
        let (mut d_logits, mut d_losses, d_targets) =
            (c.gpu.upload(&logits)?, c.gpu.zeros(rows)?, c.gpu.upload(&targets)?);
        c.gpu.cross_entropy_fused(&mut d_logits, &mut d_losses, &d_targets, v, 0.25)?;
        c.compare_device(format!("cross-entropy V={v}: losses"), &d_losses, &losses, TIGHT)?;
        c.compare_device(format!("cross-entropy V={v}: dlogits"), &d_logits, &want, TIGHT)?;
    }
    Ok(())
}

fn adamw(c: &mut Checker) -> Result<()> {
    let opt = AdamW { lr: 1e-2, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 };
    let regions = [(1000, true), (1100, false), (5000, true), (5003, false)];
    let n = 5003;
    let (mut params, mut m, mut v) = (c.normal(n), vec![0.0; n], vec![0.0; n]);
    let d_regions = c.gpu.regions(&regions)?;
    let (mut d_params, mut d_m, mut d_v) = (c.gpu.upload(&params)?, c.gpu.zeros(n)?, c.gpu.zeros(n)?);
    for step in 1..=3 {
        let grads = c.normal(n);
        let d_grads = c.gpu.upload(&grads)?;
        let mut begin = 0;
        for &(end, decay) in &regions {
            let r = begin..end;
            opt.update(
                &mut params[r.clone()],
                &mut m[r.clone()],
                &mut v[r.clone()],
                &grads[r],
                step,
                0.5,
                decay,
            );
            begin = end;
        }
        c.gpu.adamw(&opt, &mut d_params, &mut d_m, &mut d_v, &d_grads, &d_regions, step, 0.5)?;
        let squares = c.gpu.sum_of_squares(&d_grads)?;
        let want = optim::sum_of_squares(&grads);
        c.checks.push(Check {
            name: format!("sum of squares, step {step}"),
            max_error: (squares - want).abs() / want,
            tolerance: 1e-9,
        });
    }
    c.compare_device("adamw, 3 steps over 4 regions: params".into(), &d_params, &params, TIGHT)?;
    c.compare_device("adamw: m".into(), &d_m, &m, TIGHT)?;
    c.compare_device("adamw: v".into(), &d_v, &v, TIGHT)
}

/// Top-2 routing of 40 tokens to 4 experts: permute, gated unpermute and their backward, against
/// plain loops.
fn moe_permutes(c: &mut Checker) -> Result<()> {
    let (tokens, width, top_k) = (40, 48, 2);
    let rows = tokens * top_k;
    let x = c.normal(tokens * width);
    // Expert order: the routed (token, slot) pairs sorted by expert, as the CPU MoE groups them.
    let mut routed: Vec<(u32, u32)> = (0..rows).map(|r| (c.ids(1, 4)[0], (r / top_k) as u32)).collect();
    routed.sort();
    let index: Vec<u32> = routed.iter().map(|&(_, token)| token).collect();
    let gates: Vec<f32> = (0..rows).map(|_| c.rng.uniform()).collect();
    let expert_out = c.normal(rows * width);
    let dy = c.normal(tokens * width);

    let gathered: Vec<f32> = index.iter().flat_map(|&t| x[t as usize * width..][..width].to_vec()).collect();
    let mut combined = vec![0.0; tokens * width];
    for (r, &t) in index.iter().enumerate() {
        for d in 0..width {
            combined[t as usize * width + d] += gates[r] * expert_out[r * width + d];
        }
    }
    let dgates: Vec<f32> = index
        .iter()
        .enumerate()
        .map(|(r, &t)| (0..width).map(|d| dy[t as usize * width + d] * expert_out[r * width + d]).sum())
        .collect();

    let gpu = c.gpu;
    let (d_x, d_index, d_gates, d_expert_out, d_dy) = (
        gpu.upload(&x)?,
        gpu.upload(&index)?,
        gpu.upload(&gates)?,
        gpu.upload(&expert_out)?,
        gpu.upload(&dy)?,
    );
    let mut got = gpu.zeros(rows * width)?;
    gpu.gather_rows(&mut got, &d_x, &d_index, width)?;
    c.compare_device("moe permute (gather)".into(), &got, &gathered, TIGHT)?;
    let mut got = gpu.zeros(tokens * width)?;
    gpu.scatter_add_rows(&mut got, &d_expert_out, &d_index, Some(&d_gates), width)?;
    c.compare_device("moe unpermute (gated scatter-add)".into(), &got, &combined, TIGHT)?;
    // Ungated, it is the permute's backward: each token's rows summed back.
    let mut dx = vec![0.0; tokens * width];
    for (r, &t) in index.iter().enumerate() {
        for d in 0..width {
            dx[t as usize * width + d] += expert_out[r * width + d];
        }
    }
    let mut got = gpu.zeros(tokens * width)?;
    gpu.scatter_add_rows(&mut got, &d_expert_out, &d_index, None, width)?;
    c.compare_device("moe permute backward (scatter-add)".into(), &got, &dx, TIGHT)?;
    let mut got = gpu.zeros(rows)?;
    gpu.gathered_row_dots(&mut got, &d_dy, &d_expert_out, &d_index, width)?;
    c.compare_device("moe unpermute backward: gates".into(), &got, &dgates, TIGHT)
}

fn attentions(c: &mut Checker) -> Result<()> {
    let nh = 4;
    let slopes = attention::alibi_slopes(nh);
    let buckets = attention::relative_buckets(700, 32, 128);
    let table = c.normal(32 * nh);
    let biases = [
        ("none", ScoreBias::None),
        ("alibi", ScoreBias::Alibi { slopes: &slopes }),
        ("relative", ScoreBias::Relative { table: &table, bucket_of_distance: &buckets }),
    ];
    let shapes = [
        (AttentionShape { b: 2, t: 150, nh, kvh: 2, hs: 16, window: None }, 0),
        (AttentionShape { b: 1, t: 600, nh, kvh: 1, hs: 64, window: None }, 1),
        (AttentionShape { b: 1, t: 333, nh, kvh: 4, hs: 200, window: Some(40) }, 2),
        (AttentionShape { b: 2, t: 97, nh, kvh: 2, hs: 8, window: Some(1) }, 0),
        (AttentionShape { b: 1, t: 300, nh, kvh: 2, hs: 128, window: Some(130) }, 1),
    ];
    for (s, bias_index) in shapes {
        let (bias_name, bias) = biases[bias_index];
        let qkv = c.normal(s.b * s.t * s.qkv_width());
        let dout = c.normal(s.b * s.t * s.nh * s.hs);
        let (mut out, mut lse, mut dqkv) =
            (vec![0.0; dout.len()], vec![0.0; s.b * s.nh * s.t], vec![0.0; qkv.len()]);
        attention::attention_forward(&mut out, &mut lse, &qkv, s, bias);
        attention::attention_backward(&mut dqkv, None, &dout, &qkv, &out, &lse, s, bias);

        let gpu = c.gpu;
        let d_bias = gpu.bias(bias, s.nh)?;
        let (d_qkv, d_dout) = (gpu.upload(&qkv)?, gpu.upload(&dout)?);
        let (mut d_out, mut d_lse, mut d_dqkv, mut d_delta) = (
            gpu.zeros(out.len())?,
            gpu.zeros(lse.len())?,
            gpu.upload(&vec![f32::NAN; qkv.len()])?,
            gpu.zeros(lse.len())?,
        );
        gpu.attention_forward(&mut d_out, &mut d_lse, &d_qkv, s, &d_bias)?;
        gpu.attention_backward(&mut d_dqkv, &mut d_delta, &d_dout, &d_qkv, &d_out, &d_lse, s, &d_bias)?;
        let name = format!(
            "attention B{} T{} NH{} KVH{} HS{} window {:?} bias {bias_name}",
            s.b, s.t, s.nh, s.kvh, s.hs, s.window
        );
        c.compare_device(format!("{name}: out"), &d_out, &out, LOOSE)?;
        c.compare_device(format!("{name}: lse"), &d_lse, &lse, LOOSE)?;
        // dqkv starts as NaN on the device: an element the backward misses shows.
        c.compare_device(format!("{name}: dqkv"), &d_dqkv, &dqkv, LOOSE)?;
    }
    Ok(())
}
