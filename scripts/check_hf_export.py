#!/usr/bin/env python3
"""Exports a TruthGPT model with `truthgpt export hf`, loads the result with `transformers`, and
compares its logits with `truthgpt logits` on the same ids.

    python3 scripts/check_hf_export.py --truthgpt target/release/truthgpt --model runs/quickstart

Needs `pip install torch transformers`. Prints the max |difference| and whether every position's
arg-max agrees; exits 1 if the difference exceeds --tolerance.
"""
import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--truthgpt", default="target/release/truthgpt")
    parser.add_argument("--model", required=True, help="a TruthGPT model or run directory")
    parser.add_argument("--ids", default=None, help="comma-separated ids (default: 32 seeded random ids)")
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "hf"
        subprocess.run([args.truthgpt, "export", "hf", args.model, "--out", str(out)], check=True)
        config = json.loads((out / "config.json").read_text())
        vocab = config["vocab_size"]
        if args.ids:
            ids = [int(i) for i in args.ids.split(",")]
        else:
            ids = torch.randint(0, vocab, (32,), generator=torch.Generator().manual_seed(0)).tolist()
        ours = subprocess.run(
            [args.truthgpt, "logits", "--model", args.model, "--ids", ",".join(map(str, ids))],
            check=True, capture_output=True, text=True,
        ).stdout
        ours = torch.tensor(json.loads(ours)["logits"], dtype=torch.float32)
        model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, attn_implementation="eager").eval()
        with torch.no_grad():
            theirs = model(torch.tensor([ids]), use_cache=False).logits[0]

    diff = (ours - theirs).abs().max().item()
    argmax = (ours.argmax(-1) == theirs.argmax(-1)).float().mean().item()
    print(f"{config['architectures'][0]}: {len(ids)} positions x {vocab} logits, "
          f"max |truthgpt - transformers| = {diff:.2e}, arg-max agreement {argmax:.0%}")
    sys.exit(0 if diff <= args.tolerance else 1)


if __name__ == "__main__":
    main()
