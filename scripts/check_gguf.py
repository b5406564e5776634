#!/usr/bin/env python3
"""Checks a GGUF export against our own forward pass: the same token ids through `truthgpt logits`
and through llama.cpp (llama-cpp-python), compared position by position.

    python3 scripts/check_gguf.py --truthgpt target/release/truthgpt --model MODEL_DIR --gguf FILE \
        [--ids 1,5,9,...] [--text "ROMEO."] [--export f32|f16|q8_0] [--kv-cache f32|f16] [--tolerance X]

--model is what `truthgpt logits --model` takes (a model, run or Hugging Face directory).
--export writes FILE first with `truthgpt export gguf MODEL --out FILE --dtype D` (FILE must not
exist). --text tokenises with llama.cpp's tokenizer from the GGUF file (and, when the Python
`tokenizers` package and the model's tokenizer.json are at hand, checks both give the same ids);
otherwise --ids, or a default spread of ids. Prints the largest |ours - llama.cpp| per position and
overall, and whether the argmax agrees at every position; exits 1 if --tolerance is given and
exceeded, or if an argmax differs under --require-argmax.
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np


def our_logits(truthgpt: str, model: str, ids: list[int]) -> np.ndarray:
    cmd = [truthgpt, "logits", "--model", model, "--ids", ",".join(map(str, ids))]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"`{' '.join(cmd)}` failed ({run.returncode}):\n{run.stderr}")
    logits = np.asarray(json.loads(run.stdout)["logits"], dtype=np.float32)
    if logits.shape[0] != len(ids):
        sys.exit(f"truthgpt logits gave {logits.shape[0]} rows for {len(ids)} ids")
    return logits


def load_llama(gguf: str, n_ctx: int, kv_cache: str):
    try:
        import llama_cpp
        from llama_cpp import Llama
    except ImportError as e:
        sys.exit(f"llama-cpp-python is not installed ({e}); pip install llama-cpp-python")
    threads = max(1, min(os.cpu_count() or 1, 8))
    return Llama(
        model_path=gguf,
        n_ctx=n_ctx,
        n_batch=n_ctx,
        n_ubatch=n_ctx,
        n_threads=threads,
        n_threads_batch=threads,
        logits_all=True,
        # llama.cpp keeps keys and values in f16 by default; f32 measures the export alone.
        type_k=llama_cpp.GGML_TYPE_F32 if kv_cache == "f32" else llama_cpp.GGML_TYPE_F16,
        type_v=llama_cpp.GGML_TYPE_F32 if kv_cache == "f32" else llama_cpp.GGML_TYPE_F16,
        verbose=False,
    )


def llama_logits(llm, ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    scores = np.asarray(llm.scores[: llm.n_tokens], dtype=np.float32)
    if scores.shape[0] != len(ids):
        sys.exit(f"llama.cpp gave {scores.shape[0]} rows for {len(ids)} ids")
    return scores


def find_tokenizer_json(model: Path) -> Path | None:
    """tokenizer.json of a model directory, or of a run directory's latest checkpoint."""
    if (model / "tokenizer.json").is_file():
        return model / "tokenizer.json"
    latest = model / "latest"
    if latest.is_file():
        target = latest.read_text().strip()
        for candidate in (model / target, model / "checkpoints" / target):
            if (candidate / "tokenizer.json").is_file():
                return candidate / "tokenizer.json"
    found = sorted(model.glob("checkpoints/*/tokenizer.json"))
    return found[-1] if found else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--truthgpt", default="target/release/truthgpt")
    ap.add_argument("--model", required=True)
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--ids", help="comma-separated token ids")
    ap.add_argument("--text", help="text to tokenise with the GGUF's tokenizer instead of --ids")
    ap.add_argument("--export", choices=["f32", "f16", "q8_0"], help="write --gguf first with this dtype")
    ap.add_argument("--kv-cache", choices=["f32", "f16"], default="f32",
                    help="llama.cpp's key/value cache type (its default is f16; f32 isolates the export)")
    ap.add_argument("--tolerance", type=float, help="fail if the max abs logit difference exceeds this")
    ap.add_argument("--require-argmax", action="store_true", help="fail if any position's argmax differs")
    args = ap.parse_args()

    if args.export:
        cmd = [args.truthgpt, "export", "gguf", args.model, "--out", args.gguf, "--dtype", args.export]
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode != 0:
            sys.exit(f"`{' '.join(cmd)}` failed ({run.returncode}):\n{run.stderr}")
        print(run.stderr.strip())

    if args.ids:
        ids = [int(x) for x in args.ids.split(",") if x.strip()]
    else:
        ids = None

    # Enough context for the ids; the text's length is known only after tokenising.
    probe_len = len(ids) if ids else 512
    llm = load_llama(args.gguf, n_ctx=max(probe_len, 8), kv_cache=args.kv_cache)
    n_vocab = llm.n_vocab()

    if args.text is not None:
        ids = llm.tokenize(args.text.encode("utf-8"), add_bos=False, special=False)
        print(f"llama.cpp tokenises {args.text!r} as {ids}")
        tok_path = find_tokenizer_json(Path(args.model))
        try:
            from tokenizers import Tokenizer
        except ImportError:
            Tokenizer = None
        if Tokenizer and tok_path:
            ours = Tokenizer.from_file(str(tok_path)).encode(args.text, add_special_tokens=False).ids
            same = ours == ids
            print(f"tokenizers ({tok_path}) gives {'the same ids' if same else ours}")
            if not same:
                sys.exit("tokenisation differs")
    elif ids is None:
        ids = [(7 + 131 * i) % n_vocab for i in range(24)]
    if not ids:
        sys.exit("no token ids")
    if max(ids) >= n_vocab:
        sys.exit(f"id {max(ids)} is past the GGUF vocabulary ({n_vocab})")

    ours = our_logits(args.truthgpt, args.model, ids)
    theirs = llama_logits(llm, ids)
    if ours.shape != theirs.shape:
        sys.exit(f"shapes differ: ours {ours.shape}, llama.cpp {theirs.shape}")

    diff = np.abs(ours - theirs)
    scale = float(np.abs(ours).max())
    print(f"{os.path.basename(args.gguf)}: {len(ids)} positions x {n_vocab} logits (max |logit| {scale:.3f})")
    print(" pos     id  max|diff|  argmax ours/llama.cpp")
    agree = 0
    for t, i in enumerate(ids):
        a, b = int(ours[t].argmax()), int(theirs[t].argmax())
        agree += a == b
        print(f"{t:4d} {i:6d}  {diff[t].max():.3e}  {a:6d} {b:6d}{'' if a == b else '  <-- differs'}")
    overall = float(diff.max())
    print(f"overall max |ours - llama.cpp| = {overall:.3e}; mean {float(diff.mean()):.3e}")
    print(f"argmax agrees at {agree}/{len(ids)} positions")
    failed = False
    if args.tolerance is not None and overall > args.tolerance:
        print(f"FAIL: {overall:.3e} > tolerance {args.tolerance:g}")
        failed = True
    if args.require_argmax and agree != len(ids):
        print("FAIL: argmax differs")
        failed = True
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
