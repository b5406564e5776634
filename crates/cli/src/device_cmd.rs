//! `truthgpt device`: what this machine can run on, and `--check`, the GPU-vs-CPU kernel parity
//! suite, for GPU machines that have the binary but no Rust toolchain.

use anyhow::{bail, Context};
use truthgpt_engine::cuda::{self, check, Gpu};
use truthgpt_engine::device::Device;

use crate::args::DeviceArgs;

pub fn run(args: &DeviceArgs) -> anyhow::Result<()> {
    println!("cpu: {} threads", rayon::current_num_threads());
    let libraries = cuda::libraries();
    let found = |present: bool| if present { "found" } else { "not found" };
    println!(
        "cuda libraries: driver (libcuda) {}, NVRTC (libnvrtc) {}, cuBLAS (libcublas) {}",
        found(libraries.driver),
        found(libraries.nvrtc),
        found(libraries.cublas)
    );
    if !args.check {
        if libraries.driver {
            for ordinal in 0..cuda::device_count()? {
                match Gpu::open(ordinal) {
                    Ok(gpu) => println!(
                        "cuda:{ordinal}: {}, {:.1} GiB, kernels compiled for {}",
                        gpu.name()?,
                        gpu.total_memory()? as f64 / (1u64 << 30) as f64,
                        gpu.arch()
                    ),
                    Err(e) => println!("cuda:{ordinal}: {e}"),
                }
            }
        }
        return Ok(());
    }
    let Device::Cuda(ordinal) = args.device else {
        bail!("--check compares the CUDA kernels with the CPU ones: pick --device cuda[:N]")
    };
    let gpu = Gpu::open(ordinal).with_context(|| format!("opening cuda:{ordinal}"))?;
    println!("cuda:{ordinal}: {} ({})", gpu.name()?, gpu.arch());
    let checks = check::run(&gpu)?;
    for c in &checks {
        let verdict = if c.passed() { "ok" } else { "FAIL" };
        println!("{verdict:>4}  {:.2e} (bound {:.0e})  {}", c.max_error, c.tolerance, c.name);
    }
    let failed = checks.iter().filter(|c| !c.passed()).count();
    if failed > 0 {
        bail!("{failed} of {} kernel checks failed", checks.len());
    }
    println!("all {} kernel checks passed", checks.len());
    Ok(())
}
