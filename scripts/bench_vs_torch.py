#!/usr/bin/env python3
"""CPU training throughput of `truthgpt bench train` against PyTorch on the same model, same run.

Both sides train the same architecture (read from `truthgpt config show`) on random tokens with
AdamW; runs alternate (torch, ours, torch, ours, ...) so both see the same machine state, and the
reported figure is the median over rounds of each side's median step time.

  pip install torch
  cargo build --release
  python3 scripts/bench_vs_torch.py --preset torch-tiny-reference --threads 2
  python3 scripts/bench_vs_torch.py --preset gpt2-small --set train.seq_len=256 --set train.batch_size=4
"""
import argparse
import json
import math
import statistics
import subprocess
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

BINARY = "target/release/truthgpt"


class Block(nn.Module):
    """Pre-LayerNorm GPT block, as torch users write it (SDPA attention, exact GELU)."""

    def __init__(self, m):
        super().__init__()
        C, bias = m["d_model"], m["bias"]
        self.h = m["n_heads"]
        self.ln1, self.ln2 = nn.LayerNorm(C, bias=bias), nn.LayerNorm(C, bias=bias)
        self.qkv, self.o = nn.Linear(C, 3 * C, bias=bias), nn.Linear(C, C, bias=bias)
        self.f1, self.f2 = nn.Linear(C, m["d_ff"], bias=bias), nn.Linear(m["d_ff"], C, bias=bias)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, -1)
        q, k, v = [t.view(B, T, self.h, C // self.h).transpose(1, 2) for t in (q, k, v)]
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
        x = x + self.o(a)
        return x + self.f2(F.gelu(self.f1(self.ln2(x))))


class GPT(nn.Module):
    def __init__(self, m, t):
        super().__init__()
        C, V = m["d_model"], m["vocab_size"]
        self.emb, self.pos = nn.Embedding(V, C), nn.Embedding(m["max_seq_len"], C)
        self.blocks = nn.ModuleList([Block(m) for _ in range(m["n_layers"])])
        self.ln = nn.LayerNorm(C, bias=m["bias"])
        self.head = nn.Linear(C, V, bias=False)
        if m["tie_embeddings"]:
            self.head.weight = self.emb.weight
        self.t = t

    def forward(self, idx):
        x = self.emb(idx) + self.pos(torch.arange(self.t))
        for b in self.blocks:
            x = b(x)
        return self.head(self.ln(x))


def torch_ms_per_step(config, steps, warmup, bf16):
    m, tr = config["model"], config["train"]
    assert m["positional"] == "learned" and m["ffn"] == "mlp" and m["norm"] == "layernorm", \
        "the torch baseline covers GPT-style models (learned positions, LayerNorm, GELU MLP)"
    B, T, V = tr["batch_size"], tr["seq_len"], m["vocab_size"]
    torch.manual_seed(0)
    model = GPT(m, T)
    opt = torch.optim.AdamW(model.parameters(), lr=tr["lr"], betas=tuple(tr["betas"]),
                            eps=tr["eps"], weight_decay=tr["weight_decay"])
    x, y = torch.randint(0, V, (B, T)), torch.randint(0, V, (B, T))
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        # bf16: PyTorch's CPU mixed precision (linear and matmul in bf16, the loss in f32).
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x).view(-1, V).float(), y.view(-1))
        opt.zero_grad()
        loss.backward()
        if tr["grad_clip"] > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), tr["grad_clip"])
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def ours(args, layers):
    cmd = [BINARY, "bench", "train", *layers, "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--threads", str(args.threads)]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", required=True)
    p.add_argument("--set", action="append", default=[], dest="overrides")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--precision", choices=["f32", "bf16"], default="f32",
                   help="bf16: ours with train.precision=bf16 against PyTorch under torch.autocast")
    args = p.parse_args()
    overrides = args.overrides + ([] if args.precision == "f32" else [f"train.precision={args.precision}"])
    layers = ["--preset", args.preset] + [f"--set={s}" for s in overrides]
    config = json.loads(subprocess.run([BINARY, "config", "show", *layers], check=True, capture_output=True,
                                       text=True).stdout)
    torch.set_num_threads(args.threads)
    B, T = config["train"]["batch_size"], config["train"]["seq_len"]
    torch_ms, our_ms, rss = [], [], []
    for r in range(args.rounds):
        torch_ms.append(torch_ms_per_step(config, args.steps, args.warmup, args.precision == "bf16"))
        line = ours(args, layers)
        our_ms.append(line["ms_per_step"])
        rss.append(line["peak_rss_mb"])
        print(f"round {r + 1}: torch {torch_ms[-1]:.1f} ms/step, truthgpt {our_ms[-1]:.1f} ms/step", file=sys.stderr)
    t_ms, o_ms = statistics.median(torch_ms), statistics.median(our_ms)
    print(json.dumps({
        "preset": args.preset, "precision": args.precision, "overrides": args.overrides, "threads": args.threads, "batch": B, "seq": T,
        "torch_ms_per_step": round(t_ms, 2), "truthgpt_ms_per_step": round(o_ms, 2),
        "torch_tokens_per_sec": round(B * T / t_ms * 1e3), "truthgpt_tokens_per_sec": round(B * T / o_ms * 1e3),
        "ratio": round(t_ms / o_ms, 3), "truthgpt_peak_rss_mb": max(rss), "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
