//! The CUDA backend. On a machine without a GPU (CI), the tests that need one are listed as
//! ignored, with what they need; on a GPU machine run them all with
//! `cargo test -p truthgpt-engine --test cuda -- --include-ignored` (`TRUTHGPT_DEVICE=cuda:N`
//! picks the device).

use truthgpt_engine::cuda::{self, check, Gpu, GpuError, KERNELS};
use truthgpt_engine::device::Device;

/// Without the driver, NVRTC or cuBLAS, opening a device is an error that names what is missing;
/// with them, an ordinal past the last device is one too. Never a panic.
#[test]
fn opening_a_device_that_is_not_there_is_a_clear_error() {
    let libraries = cuda::libraries();
    let error = Gpu::open(usize::MAX).err().expect("no machine has usize::MAX devices");
    let message = error.to_string();
    match error {
        GpuError::NoDriver => assert!(!libraries.driver && message.contains("libcuda"), "{message}"),
        GpuError::NoNvrtc => assert!(libraries.driver && !libraries.nvrtc && message.contains("libnvrtc")),
        GpuError::NoCublas => assert!(libraries.nvrtc && !libraries.cublas && message.contains("libcublas")),
        GpuError::NoSuchDevice { ordinal, .. } => assert_eq!(ordinal, usize::MAX),
        other => panic!("unexpected error: {other}"),
    }
}

#[test]
#[ignore = "needs libnvrtc from the CUDA 13 runtime (no GPU): run with --ignored"]
fn kernels_compile_with_nvrtc_for_every_target_architecture() {
    for arch in ["compute_80", "compute_90", "compute_100"] {
        let ptx = cuda::compile(arch).unwrap_or_else(|e| panic!("{e}"));
        for kernel in KERNELS {
            assert!(ptx.contains(&format!(".entry {kernel}(")), "{arch}: no kernel {kernel} in the PTX");
        }
        // The process cache hands back the same PTX.
        assert!(std::sync::Arc::ptr_eq(&ptx, &cuda::compile(arch).unwrap()));
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU: run with --ignored (TRUTHGPT_DEVICE=cuda:N picks one)"]
fn every_kernel_matches_its_cpu_twin_forward_and_backward() {
    let device: Device = std::env::var("TRUTHGPT_DEVICE").unwrap_or("cuda".into()).parse().unwrap();
    let Device::Cuda(ordinal) = device else { panic!("TRUTHGPT_DEVICE={device} is not a CUDA device") };
    let gpu = Gpu::open(ordinal).unwrap_or_else(|e| panic!("{e}"));
    let checks = check::run(&gpu).unwrap_or_else(|e| panic!("{e}"));
    for c in &checks {
        eprintln!(
            "{:>4} {:.2e} (bound {:.0e})  {}",
            if c.passed() { "ok" } else { "FAIL" },
            c.max_error,
            c.tolerance,
            c.name
        );
    }
    let failed: Vec<_> = checks.iter().filter(|c| !c.passed()).map(|c| &c.name).collect();
    assert!(failed.is_empty(), "{} of {} checks failed: {failed:?}", failed.len(), checks.len());
    assert!(checks.len() > 60, "only {} checks ran", checks.len());
}
