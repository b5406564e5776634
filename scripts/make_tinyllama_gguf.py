#!/usr/bin/env python3
"""Write a TinyLlama-1.1B-shaped `llama` GGUF with random weights, then quantize copies of it.

For issue 18's speed comparison against llama.cpp (scripts/bench_vs_llamacpp.sh): the shape of
TinyLlama-1.1B (hidden 2048, 22 layers, 32 heads, 4 KV heads, FFN 5632, vocabulary 32000,
RoPE theta 10000, RMS eps 1e-5, context 2048), weights ~N(0, 0.02) in F16 (norms F32, all ones),
and a minimal SentencePiece-style (`llama`) tokenizer of 32000 tokens: <unk>, <s>, </s>, the 256
byte-fallback tokens <0x00>..<0xFF>, then made-up pieces. The weights are random: the file is for
speed, not for text.

Tensors are written one at a time (GGUFWriter's header, KV, tensor-info, then write_tensor_data),
so memory stays at about one tensor (~260 MB for the embedding).

    python scripts/make_tinyllama_gguf.py --out-dir /work/gguf-bench [--quantize q8_0,q4_0,q4_k_m]

writes tinyllama-1.1b-random-f16.gguf and, with --quantize, llama-quantize's copies
tinyllama-1.1b-random-<type>.gguf (llama-quantize from $LLAMACPP_DIR/bin, default /work/llamacpp;
build it with scripts/build_llamacpp.sh). Existing files are kept unless --force.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

try:
    import gguf
except ImportError:  # the repository's copy of gguf-py is not assumed; pip install gguf
    sys.exit("needs the gguf package: pip install gguf numpy")

SHAPE = dict(
    hidden=2048, layers=22, heads=32, kv_heads=4, ffn=5632, vocab=32000,
    rope_theta=10000.0, rms_eps=1e-5, context=2048,
)


def tokenizer(vocab: int):
    """Tokens, scores and types of a minimal SentencePiece-style vocabulary of `vocab` pieces."""
    T = gguf.TokenType
    tokens = ["<unk>", "<s>", "</s>"]
    types = [T.UNKNOWN, T.CONTROL, T.CONTROL]
    for b in range(256):
        tokens.append(f"<0x{b:02X}>")
        types.append(T.BYTE)
    seen = set(tokens)
    pieces = ["\u2581"]
    pieces += [chr(c) for c in range(33, 127)]
    pieces += ["\u2581" + chr(c) for c in range(33, 127)]
    letters = "abcdefghijklmnopqrstuvwxyz"
    n = 0
    while len(tokens) + len(pieces) < vocab * 2 and len(pieces) < vocab:
        # base-26 words, with and without the word-start marker
        k, w = n, ""
        while True:
            w = letters[k % 26] + w
            k = k // 26 - 1
            if k < 0:
                break
        pieces += [w, "\u2581" + w]
        n += 1
    for p in pieces:
        if len(tokens) == vocab:
            break
        if p in seen:
            continue
        seen.add(p)
        tokens.append(p)
        types.append(T.NORMAL)
    assert len(tokens) == vocab, len(tokens)
    # SentencePiece scores: log-probability-like, decreasing with the id; special tokens 0
    scores = [0.0] * 259 + [-float(i) for i in range(vocab - 259)]
    return tokens, scores, [int(t) for t in types]


def tensor_plan(s):
    """(name, numpy shape, kind) in llama.cpp's order; numpy shape is (out, in) for a linear."""
    h, f, v = s["hidden"], s["ffn"], s["vocab"]
    kv = h // s["heads"] * s["kv_heads"]
    plan = [("token_embd.weight", (v, h), "w")]
    for i in range(s["layers"]):
        p = f"blk.{i}."
        plan += [
            (p + "attn_norm.weight", (h,), "norm"),
            (p + "attn_q.weight", (h, h), "w"),
            (p + "attn_k.weight", (kv, h), "w"),
            (p + "attn_v.weight", (kv, h), "w"),
            (p + "attn_output.weight", (h, h), "w"),
            (p + "ffn_norm.weight", (h,), "norm"),
            (p + "ffn_gate.weight", (f, h), "w"),
            (p + "ffn_up.weight", (f, h), "w"),
            (p + "ffn_down.weight", (h, f), "w"),
        ]
    plan += [("output_norm.weight", (h,), "norm"), ("output.weight", (v, h), "w")]
    return plan


def make(path: Path, s, seed: int, std: float) -> None:
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tinyllama-1.1b-shaped random (truthgpt bench)")
    w.add_context_length(s["context"])
    w.add_embedding_length(s["hidden"])
    w.add_block_count(s["layers"])
    w.add_feed_forward_length(s["ffn"])
    w.add_head_count(s["heads"])
    w.add_head_count_kv(s["kv_heads"])
    w.add_rope_dimension_count(s["hidden"] // s["heads"])
    w.add_rope_freq_base(s["rope_theta"])
    w.add_layer_norm_rms_eps(s["rms_eps"])
    w.add_vocab_size(s["vocab"])
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    tokens, scores, types = tokenizer(s["vocab"])
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)

    plan = tensor_plan(s)
    for name, shape, kind in plan:
        dt = np.float32 if kind == "norm" else np.float16
        nbytes = int(np.prod(shape)) * np.dtype(dt).itemsize
        w.add_tensor_info(name, shape, np.dtype(dt), nbytes)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    rng = np.random.default_rng(seed)
    t0 = time.time()
    for name, shape, kind in plan:
        if kind == "norm":
            a = np.ones(shape, dtype=np.float32)
        else:
            a = rng.standard_normal(shape, dtype=np.float32)
            a *= std
            a = a.astype(np.float16)
        w.write_tensor_data(a)
        del a
    w.close()
    print(f"wrote {path} ({path.stat().st_size / 1e9:.2f} GB, {len(plan)} tensors, {time.time() - t0:.0f} s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", default="/work/gguf-bench")
    ap.add_argument("--seed", type=int, default=18)
    ap.add_argument("--std", type=float, default=0.02)
    ap.add_argument("--layers", type=int, default=SHAPE["layers"], help="fewer for a quick check")
    ap.add_argument("--quantize", default="", help="comma list of llama-quantize types, e.g. q8_0,q4_0,q4_k_m")
    ap.add_argument("--threads", type=int, default=2, help="llama-quantize threads")
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args()
    s = dict(SHAPE, layers=a.layers)
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = "tinyllama-1.1b-random" if a.layers == SHAPE["layers"] else f"tinyllama-shape-{a.layers}l-random"
    f16 = out / f"{stem}-f16.gguf"
    if f16.exists() and not a.force:
        print(f"kept {f16}")
    else:
        tmp = f16.with_suffix(".gguf.part")
        make(tmp, s, a.seed, a.std)
        os.replace(tmp, f16)
    if a.quantize:
        q = Path(os.environ.get("LLAMACPP_DIR", "/work/llamacpp")) / "bin" / "llama-quantize"
        if not q.exists():
            sys.exit(f"{q} missing: run scripts/build_llamacpp.sh")
        for t in a.quantize.split(","):
            t = t.strip().lower()
            dst = out / f"{stem}-{t}.gguf"
            if dst.exists() and not a.force:
                print(f"kept {dst}")
                continue
            tmp = dst.with_suffix(".gguf.part")
            r = subprocess.run([str(q), str(f16), str(tmp), t.upper(), str(a.threads)],
                               capture_output=True, text=True)
            if r.returncode != 0:
                sys.exit(f"llama-quantize {t.upper()} failed ({r.returncode}):\n" + "\n".join(
                    (r.stdout + r.stderr).splitlines()[-20:]))
            os.replace(tmp, dst)
            print(f"wrote {dst} ({dst.stat().st_size / 1e9:.2f} GB, llama-quantize {t.upper()})")


if __name__ == "__main__":
    main()
