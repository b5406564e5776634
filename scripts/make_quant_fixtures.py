#!/usr/bin/env python3
"""Exactness fixtures for crates/quant: ggml block bytes and gguf-py's dequantization of them.

For each type of truthgpt-quant it writes crates/quant/tests/fixtures/<TYPE>.safetensors with

- `random.bytes` (u8) and `random.values` (f32): a few blocks of random bytes (f16 scales drawn
  finite, every other bit random) and `gguf.quants.dequantize` of them, which covers every bit
  pattern of the packed fields;
- `input` (f32, shape (6, 256)): rows chosen to reach the quantizers' edge cases;
  `quantized` (u8): `input` quantized by `gguf.quants.quantize` where gguf-py can, else (the
  K-quants) by ggml's own `quantize_row_*_ref`; `quantized.values` (f32): gguf-py's
  dequantization of `quantized`.

ggml's reference quantizers come from ggml-quants.c of a ggml checkout (--ggml, e.g. a clone of
github.com/ggml-org/ggml), compiled here with `cc -O2 -ffp-contract=off`: without contraction, so
its f32 arithmetic is the plain sequence our Rust port performs.

Usage: /work/venv/bin/python scripts/make_quant_fixtures.py --ggml PATH/TO/ggml
Needs: pip install gguf numpy safetensors. The Rust tests read only the committed outputs.
"""

import argparse
import ctypes
import pathlib
import subprocess
import tempfile

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants
from safetensors.numpy import save_file

OUT = pathlib.Path(__file__).resolve().parent.parent / "crates/quant/tests/fixtures"

# Byte offsets of the f16 fields in each block (ggml-common.h); everything else is random bits.
F16_FIELDS = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
}
GGUF_QUANTIZES = {T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0}
K_QUANTS = {T.Q2_K: "q2_K", T.Q3_K: "q3_K", T.Q4_K: "q4_K", T.Q5_K: "q5_K", T.Q6_K: "q6_K"}
STUBS = """
#include <stdlib.h>
void ggml_abort(void) { abort(); }
void ggml_row_size(void) { abort(); }
void ggml_type_name(void) { abort(); }
void ggml_type_size(void) { abort(); }
"""


def ggml_reference(ggml: pathlib.Path, tmp: pathlib.Path) -> ctypes.CDLL:
    """ggml-quants.c as a shared library; the few ggml symbols it names but the reference
    quantizers never call are stubs."""
    (tmp / "stubs.c").write_text(STUBS)
    lib = tmp / "libggml_quants.so"
    src = ggml / "src"
    subprocess.run(
        ["cc", "-O2", "-ffp-contract=off", "-fPIC", "-shared", f"-I{ggml / 'include'}", f"-I{src}",
         str(src / "ggml-quants.c"), str(tmp / "stubs.c"), "-o", str(lib), "-lm"],
        check=True,
    )
    return ctypes.CDLL(str(lib))


def ggml_quantize(lib: ctypes.CDLL, qtype: T, x: np.ndarray) -> np.ndarray:
    block, size = quants.GGML_QUANT_SIZES[qtype]
    x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    out = np.zeros(x.size // block * size, dtype=np.uint8)
    fn = getattr(lib, f"quantize_row_{K_QUANTS[qtype]}_ref")
    fn(x.ctypes.data_as(ctypes.c_void_p), out.ctypes.data_as(ctypes.c_void_p), ctypes.c_int64(x.size))
    return out


def inputs(rng: np.random.Generator) -> np.ndarray:
    n = 256
    rows = [
        rng.standard_normal(n),
        0.5 + 1e-3 * rng.standard_normal(n),  # all positive: the K-quants' min is clamped to 0
        # exact multiples of 1/8: halves land on rounding ties; the first block is all zero
        np.concatenate([np.zeros(32), rng.integers(-16, 17, n - 32) / 8]),
        rng.standard_normal(n) ** 3,  # heavy tails: one value dominates each block
        np.full(n, -0.75),  # constant: max == min
        # block scales from 1e-3 to 1e3 within one row
        (rng.standard_normal((8, 32)) * 10.0 ** rng.integers(-3, 4, (8, 1))).reshape(-1),
    ]
    return np.stack(rows).astype(np.float32)


def random_blocks(rng: np.random.Generator, qtype: T, count: int) -> np.ndarray:
    if qtype == T.F32:
        return rng.integers(0, 256, 4 * 64, dtype=np.uint8)  # any bits, NaNs included
    if qtype == T.BF16:
        return rng.integers(0, 256, 2 * 64, dtype=np.uint8)
    if qtype == T.F16:
        # every finite half, subnormals, zeros and infinities; no NaN (conversions differ in
        # whether they quiet it, and a NaN weight is no weight)
        bits = rng.integers(0, 1 << 16, 64, dtype=np.uint16)
        bits = bits[(bits & 0x7C00) != 0x7C00][:56]
        special = np.array([0x0000, 0x8000, 0x0001, 0x83FF, 0x7C00, 0xFC00, 0x3C00, 0xBC00], dtype=np.uint16)
        return np.concatenate([bits, special]).view(np.uint8)
    _, size = quants.GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, (count, size), dtype=np.uint8)
    for at in F16_FIELDS[qtype]:
        scale = (rng.standard_normal(count) * 0.05).astype(np.float16)
        blocks[:, at:at + 2] = scale.view(np.uint8).reshape(count, 2)
    return blocks.reshape(-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ggml", type=pathlib.Path, required=True, help="a ggml checkout")
    args = parser.parse_args()
    rng = np.random.default_rng(18)
    x = inputs(rng)
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        lib = ggml_reference(args.ggml, pathlib.Path(tmp))
        types = [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, *K_QUANTS]
        for qtype in types:
            raw = random_blocks(rng, qtype, 4)
            if qtype in GGUF_QUANTIZES:
                q = np.asarray(quants.quantize(x, qtype)).view(np.uint8).reshape(-1)
            else:
                q = ggml_quantize(lib, qtype, x)
            tensors = {
                "random.bytes": raw,
                "random.values": quants.dequantize(raw, qtype).astype(np.float32).reshape(-1),
                "input": x,
                "quantized": q,
                "quantized.values": quants.dequantize(q, qtype).astype(np.float32).reshape(-1),
            }
            path = OUT / f"{qtype.name}.safetensors"
            save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path))
            print(f"{path.relative_to(OUT.parent.parent.parent.parent)}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
