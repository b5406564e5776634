#!/usr/bin/env python3
"""CI fixtures for issue 18's "logits against llama.cpp, per format": small `llama` GGUF files and
llama.cpp's own logits for them, so crates/interop/tests/gguf_llamacpp.rs compares our integer
kernels with llama.cpp without llama.cpp at test time.

One random model (make_tinyllama_gguf.py's writer and tokenizer at a small shape: hidden 256 so
every row is whole 256-element super-blocks and the vector kernels run, 1 layer (to keep the
files small: F16 is 1.1 MB, the others 0.3-0.6 MB), 4 heads of 64,
2 KV heads, FFN 256, vocabulary 320; weights ~N(0, 1/16) so the logits spread over several units
and the top-1 is mostly clear) written in F16, then llama-quantize's Q8_0, Q4_0, Q4_1 and Q4_K_M
copies (Q4_K_M mixes in Q6_K). For each, under crates/interop/tests/fixtures/gguf/llamacpp/<type>/:
- model.gguf;
- expected.safetensors: `ids` (i64, the first TOKENS ids of Macbeth through the file's tokenizer,
  BOS first) and `logits` (f32, T x V): llama.cpp's at every position, one llama_decode of the
  whole sequence, KV cache f16 (its default), 2 threads.

    /work/venv/bin/python scripts/make_llamacpp_logit_fixtures.py

Needs numpy, gguf, safetensors, g++, and scripts/build_llamacpp.sh's build (LLAMACPP_DIR).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare_logits_llamacpp as cmp  # noqa: E402
import make_tinyllama_gguf as tiny  # noqa: E402

OUT = cmp.ROOT / "crates" / "interop" / "tests" / "fixtures" / "gguf" / "llamacpp"
SHAPE = dict(hidden=256, layers=1, heads=4, kv_heads=2, ffn=256, vocab=320,
             rope_theta=10000.0, rms_eps=1e-5, context=128)
QUANTIZED = ["q8_0", "q4_0", "q4_1", "q4_k_m"]
TOKENS = 64
SEED = 18
STD = 1 / 16


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    f16 = OUT / "f16" / "model.gguf"
    f16.parent.mkdir(exist_ok=True)
    tiny.make(f16, SHAPE, SEED, STD)
    quantize = cmp.LLAMACPP_DIR / "bin" / "llama-quantize"
    files = {"f16": f16}
    for t in QUANTIZED:
        dst = OUT / t / "model.gguf"
        dst.parent.mkdir(exist_ok=True)
        subprocess.run([str(quantize), str(f16), str(dst), t.upper(), "2"], check=True, capture_output=True)
        files[t] = dst
    text = (cmp.ROOT / "data" / "shakespeare" / "macbeth.txt").read_text(encoding="utf-8")[2000:6000]
    for t, path in files.items():
        ids = cmp.llamacpp_tokenize(path, text)[:TOKENS]
        assert len(ids) == TOKENS, len(ids)
        logits = cmp.llamacpp_logits(path, ids, threads=2, kv="f16")
        save_file({"ids": np.asarray(ids, dtype=np.int64), "logits": np.ascontiguousarray(logits)},
                  str(path.parent / "expected.safetensors"))
        span = logits.max() - logits.min()
        print(f"{t:>7}: {path.stat().st_size / 1e3:.0f} kB, logits {logits.shape}, range {span:.2f}")


if __name__ == "__main__":
    os.chdir(cmp.ROOT)
    main()
