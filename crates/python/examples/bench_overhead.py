"""The Python layer's overhead, measured alternately against the engine without it.

1. ``model.logits(ids)`` from Python against the same forward timed inside Rust
   (``Model::forward`` in eval mode: the call ``truthgpt logits`` makes), same model, same ids.
2. A training step through ``model.train([batch])`` against ``truthgpt bench train`` (a separate
   process) on the same config.

Each round runs both, one after the other; the figure is the median over rounds of each side's
median. Two engine threads on both sides.

    python crates/python/examples/bench_overhead.py --truthgpt target/release/truthgpt
"""

import argparse
import json
import statistics
import subprocess
import time

import numpy as np

import optimization_core as oc


def logits_rounds(preset, tokens, rounds, calls):
    model = oc.create_truthgpt_model(preset=preset)
    ids = np.arange(tokens, dtype=np.uint32) % model.config.vocab_size
    model.logits(ids)  # buffers for this shape
    python, rust = [], []
    for _ in range(rounds):
        times = []
        for _ in range(calls):
            started = time.perf_counter()
            model.logits(ids)
            times.append((time.perf_counter() - started) * 1e3)
        python.append(statistics.median(times))
        rust.append(statistics.median(model._native._time_forward(ids.tolist(), calls)))
    return statistics.median(python), statistics.median(rust)


def train_rounds(truthgpt, preset, rounds, steps, warmup):
    model = oc.create_truthgpt_model(preset=preset)
    train = model.config.train
    rng = np.random.default_rng(0)
    batch = rng.integers(0, model.config.vocab_size, size=(train["batch_size"], train["seq_len"] + 1))
    for _ in range(warmup):
        model.train([batch], progress=False)
    python, cli = [], []
    for _ in range(rounds):
        times = []
        for _ in range(steps):
            started = time.perf_counter()
            model.train([batch], progress=False)
            times.append((time.perf_counter() - started) * 1e3)
        python.append(statistics.median(times))
        out = subprocess.run([truthgpt, "bench", "train", "--preset", preset, "--steps", str(steps),
                              "--warmup", str(warmup), "--threads", "2"],
                             check=True, capture_output=True, text=True).stdout
        cli.append(json.loads(out)["ms_per_step"])
    return statistics.median(python), statistics.median(cli)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--truthgpt", required=True, help="the truthgpt binary")
    parser.add_argument("--preset", default="torch-tiny-reference")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    oc.set_threads(2)
    py_logits, rust_logits = logits_rounds(args.preset, args.tokens, args.rounds, args.calls)
    py_step, cli_step = train_rounds(args.truthgpt, args.preset, args.rounds, args.steps, args.warmup)
    print(json.dumps({
        "preset": args.preset, "threads": 2, "rounds": args.rounds,
        "logits_ms_python": py_logits, "logits_ms_rust": rust_logits,
        "logits_overhead": py_logits / rust_logits - 1,
        "train_step_ms_python": py_step, "train_step_ms_cli": cli_step,
        "train_overhead": py_step / cli_step - 1,
    }))


if __name__ == "__main__":
    main()
