#!/usr/bin/env python3
"""Our logits against llama.cpp's on the same GGUF file, at every position of a long text (issue 18).

For each FILE: the text (default: Macbeth from data/shakespeare) is tokenized by llama.cpp with
the file's own tokenizer and cut to --tokens ids; llama.cpp's logits at every position come from
scripts/llamacpp_logits.cpp (one llama_decode of the whole sequence, every position's logits
requested, as llama-cpp-python's logits_all=True), ours from `truthgpt logits --model FILE --ids
...` (the default GGUF load: matrices in their blocks, the integer kernels). Printed per file:

- max |ours - llama.cpp| over every logit of every position;
- that, over the range of llama.cpp's logits (max - min over the whole run);
- the mean |diff|;
- top-1 agreement: positions where both argmaxes are the same token;
- "decisive" top-1: agreement among the positions where llama.cpp's top two differ by more
  than twice the max |diff| (where no difference of that size could swap them).

    /work/venv/bin/python scripts/compare_logits_llamacpp.py FILE.gguf... [--tokens 512]
        [--text PATH] [--threads 2] [--kv f16|f32] [--truthgpt PATH] [--markdown] [--reference]

Needs numpy, g++ and the llama.cpp build of scripts/build_llamacpp.sh ($LLAMACPP_DIR, default
/work/llamacpp: the static libraries in build/, the sources in src/). The dumper is compiled once
into $LLAMACPP_DIR/bin/llamacpp_logits. A benchmark helper, not a CI test:
scripts/make_llamacpp_logit_fixtures.py uses the same functions to write the CI fixtures.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
LLAMACPP_DIR = Path(os.environ.get("LLAMACPP_DIR", "/work/llamacpp"))
DUMPER = LLAMACPP_DIR / "bin" / "llamacpp_logits"


def build_dumper() -> Path:
    """Compiles scripts/llamacpp_logits.cpp against build_llamacpp.sh's static libraries."""
    src = ROOT / "scripts" / "llamacpp_logits.cpp"
    if DUMPER.exists() and DUMPER.stat().st_mtime >= src.stat().st_mtime:
        return DUMPER
    build = LLAMACPP_DIR / "build"
    vendors = sorted((LLAMACPP_DIR / "src").glob("llama_cpp_python-*/vendor/llama.cpp"))
    if not vendors or not (build / "src" / "libllama.a").exists():
        sys.exit(f"no llama.cpp build in {LLAMACPP_DIR}: run scripts/build_llamacpp.sh")
    ll = vendors[-1]
    libs = [build / "src" / "libllama.a"]
    libs += sorted((build / "ggml" / "src").rglob("libggml*.a"), key=lambda p: ("cpu" not in p.name, p.name))
    # ggml.a needs the backends, the backends need ggml-base: list them in that order.
    order = lambda p: {"libggml.a": 0, "libggml-cpu.a": 1, "libggml-base.a": 3}.get(p.name, 2)
    libs = libs[:1] + sorted(libs[1:], key=order)
    DUMPER.parent.mkdir(parents=True, exist_ok=True)
    cmd = ["g++", "-O2", "-std=c++17", f"-I{ll / 'include'}", f"-I{ll / 'ggml' / 'include'}", str(src),
           "-o", str(DUMPER), *map(str, libs), "-fopenmp", "-lpthread", "-ldl", "-lm"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit("building the dumper failed:\n" + " ".join(cmd) + "\n" + r.stderr[-4000:])
    return DUMPER


def llamacpp_tokenize(model: Path, text: str) -> list[int]:
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write(text)
    try:
        r = subprocess.run([str(build_dumper()), "tokenize", str(model), f.name],
                           capture_output=True, text=True, check=True)
    finally:
        os.unlink(f.name)
    return [int(x) for x in r.stdout.strip().split(",")]


def llamacpp_logits(model: Path, ids: list[int], threads: int, kv: str) -> np.ndarray:
    """(T, V) f32: llama.cpp's logits for `ids` as one sequence."""
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "ids").write_text(",".join(map(str, ids)))
        out = Path(d) / "logits.f32"
        r = subprocess.run([str(build_dumper()), "logits", str(model), str(Path(d) / "ids"), str(out),
                            str(threads), kv], capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"llama.cpp on {model} failed:\n{r.stderr[-3000:]}")
        logits = np.fromfile(out, dtype="<f4")
    return logits.reshape(len(ids), -1)


def our_logits(truthgpt: Path, model: Path, ids: list[int], threads: int, f32: bool = False) -> np.ndarray:
    """Ours through the integer kernels, or with `f32` through the reference path."""
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    cmd = [str(truthgpt), "logits", "--model", str(model), "--ids", ",".join(map(str, ids))]
    r = subprocess.run(cmd + (["--f32"] if f32 else []), capture_output=True, text=True, env=env)
    if r.returncode != 0:
        sys.exit(f"truthgpt logits on {model} failed:\n{r.stderr[-3000:]}")
    return np.asarray(json.loads(r.stdout)["logits"], dtype=np.float32)


def compare(ours: np.ndarray, theirs: np.ndarray) -> dict:
    """The figures the docs report; NaN anywhere makes max_abs NaN (np.max propagates it)."""
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    diff = np.abs(ours.astype(np.float64) - theirs.astype(np.float64))
    span = float(theirs.max() - theirs.min())
    top_ours, top_theirs = ours.argmax(axis=1), theirs.argmax(axis=1)
    agree = top_ours == top_theirs
    max_abs = float(diff.max())
    two = np.sort(theirs, axis=1)[:, -2:]
    decisive = (two[:, 1] - two[:, 0]) > 2 * max_abs
    return dict(
        positions=int(ours.shape[0]), vocab=int(ours.shape[1]), max_abs=max_abs, span=span,
        max_rel_span=max_abs / span if span > 0 else float("nan"), mean_abs=float(diff.mean()),
        top1=int(agree.sum()), decisive=int(decisive.sum()), decisive_agree=int((agree & decisive).sum()),
        worst_position=int(diff.max(axis=1).argmax()),
    )


def default_truthgpt() -> Path:
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    return target / "release" / "truthgpt"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--text", type=Path, default=ROOT / "data" / "shakespeare" / "macbeth.txt")
    ap.add_argument("--skip-chars", type=int, default=2000, help="start this far into the text (past the front matter)")
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--kv", choices=["f16", "f32"], default="f16", help="llama.cpp's KV cache type (f16 is its default)")
    ap.add_argument("--truthgpt", type=Path, default=default_truthgpt())
    ap.add_argument("--markdown", action="store_true", help="also print a table row per file")
    ap.add_argument("--reference", action="store_true",
                    help="also our f32 reference path (`logits --f32`): how far each side is from it")
    a = ap.parse_args()
    if not a.truthgpt.exists():
        sys.exit(f"no {a.truthgpt}: cargo build --release -p truthgpt (or --truthgpt PATH)")
    text = a.text.read_text(encoding="utf-8")[a.skip_chars:]
    rows = []
    for f in a.files:
        if not f.is_file():
            sys.exit(f"no such file: {f}")
        ids = llamacpp_tokenize(f, text)
        if len(ids) < a.tokens:
            sys.exit(f"{a.text} gives only {len(ids)} tokens with {f}'s tokenizer")
        ids = ids[: a.tokens]
        theirs = llamacpp_logits(f, ids, a.threads, a.kv)
        ours = our_logits(a.truthgpt, f, ids, a.threads)
        c = compare(ours, theirs)
        rows.append((f, c))
        print(f"{f.name}: {c['positions']} positions x {c['vocab']}: max |ours - llama.cpp| {c['max_abs']:.4g} "
              f"({c['max_rel_span']:.2%} of the logits' range {c['span']:.3g}; worst at position "
              f"{c['worst_position']}), mean {c['mean_abs']:.3g}; top-1 {c['top1']}/{c['positions']}, "
              f"decisive positions {c['decisive_agree']}/{c['decisive']}", flush=True)
        if a.reference:
            ref = our_logits(a.truthgpt, f, ids, a.threads, f32=True)
            to_ref = lambda x: np.abs(x.astype(np.float64) - ref)
            d_ll, d_ours = to_ref(theirs), to_ref(ours)
            print(f"  from our f32 reference path: llama.cpp max {d_ll.max():.4g} mean {d_ll.mean():.3g}; "
                  f"our integer kernels max {d_ours.max():.4g} mean {d_ours.mean():.3g}", flush=True)
    if a.markdown:
        print("\n| file | positions | max abs diff | of the range | mean abs diff | top-1 | top-1, decisive positions |")
        print("|---|---|---|---|---|---|---|")
        for f, c in rows:
            print(f"| {f.name} | {c['positions']} | {c['max_abs']:.3g} | {c['max_rel_span']:.2%} (range {c['span']:.3g}) "
                  f"| {c['mean_abs']:.2g} | {c['top1']}/{c['positions']} | {c['decisive_agree']}/{c['decisive']} |")


if __name__ == "__main__":
    main()
