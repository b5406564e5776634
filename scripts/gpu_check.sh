#!/usr/bin/env bash
# The GPU checks, in two halves, because GPU machines here have no Rust toolchain:
#
#   scripts/gpu_check.sh bundle   # on the build machine: binaries into gpu-bundle/ (git-ignored)
#   scripts/gpu_check.sh run      # on the GPU machine, from the repository root
#
# `run` lists the devices, runs every CUDA kernel against its CPU twin (`truthgpt device
# --check`), the engine's CUDA test binary with its GPU tests included, then times each kernel
# against the CPU at GPT-2 small's sizes (`truthgpt bench kernels`, JSON lines). The NVIDIA driver
# and the CUDA 13 runtime (libnvrtc, libcublas) must be loadable; nothing is built there.
set -euo pipefail

bundle=gpu-bundle
case "${1:-}" in
bundle)
    cargo build --release --bin truthgpt
    test_binary=$(cargo test --release -p truthgpt-engine --test cuda --no-run --message-format=json 2>/dev/null |
        python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "cuda" and m.get("executable"):
        print(m["executable"])')
    mkdir -p "$bundle"
    # Stripped: the device tool carries at most 64 MiB (134 MB with line tables, 21 MB without).
    strip -o "$bundle/truthgpt" target/release/truthgpt
    strip -o "$bundle/cuda-tests" "$test_binary"
    ls -l "$bundle"
    ;;
run)
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
    "$bundle/truthgpt" device
    "$bundle/truthgpt" device --check
    # The test binary reads nothing from the source tree; TRUTHGPT_DEVICE picks the GPU.
    TRUTHGPT_DEVICE="${TRUTHGPT_DEVICE:-cuda:0}" "$bundle/cuda-tests" --include-ignored
    "$bundle/truthgpt" bench kernels --device "${TRUTHGPT_DEVICE:-cuda:0}"
    ;;
*)
    echo "usage: $0 bundle|run" >&2
    exit 2
    ;;
esac
