#!/usr/bin/env python3
"""Fine-tunes a base with `truthgpt finetune` (LoRA), exports the base with `export hf` and the
adapters with `export peft`, loads them with `peft.PeftModel.from_pretrained`, and compares its
logits with `truthgpt logits` on the LoRA run; then compares PEFT's `merge_and_unload()` with
our `export hf` of the run (adapters merged).

    python3 scripts/check_peft_export.py --truthgpt target/release/truthgpt

Without --base it first trains a small Llama-shaped base (RoPE, RMSNorm, SwiGLU, GQA) on a
generated corpus, so it needs nothing but the binary. With --fixture DIR it also writes what the
Rust test `crates/interop/tests/peft.rs` checks: the base's HF export (`base/`), our adapter
(`adapter/`) and PEFT's logits, loss and adapter gradients for seeded ids
(`adapter/expected.safetensors`).

Needs `pip install torch transformers peft`. Exits 1 if a difference exceeds --tolerance.
"""
import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from peft import PeftModel
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

BASE_CONFIG = """
model:
  vocab_size: 320
  d_model: 48
  n_layers: 2
  n_heads: 4
  n_kv_heads: 2
  d_ff: 96
  max_seq_len: 64
  bias: false
  norm: rmsnorm
  norm_eps: 1.0e-6
  positional: rope
  ffn: swiglu
  tie_embeddings: false
train:
  batch_size: 8
  seq_len: 32
  steps: 60
  lr: 3.0e-3
  eval_every: 60
  eval_batches: 2
"""
BIRDS = ["owl", "hen", "jay", "emu", "kite", "wren"]


def sh(*args, **kwargs):
    return subprocess.run([str(a) for a in args], check=True, **kwargs)


def hf_model(path):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()


def our_logits(truthgpt, model, ids):
    out = sh(truthgpt, "logits", "--model", model, "--ids", ",".join(map(str, ids)), capture_output=True, text=True)
    return torch.tensor(json.loads(out.stdout)["logits"], dtype=torch.float32)


def report(what, ours, theirs):
    diff = (ours - theirs).abs().max().item()
    argmax = (ours.argmax(-1) == theirs.argmax(-1)).float().mean().item()
    print(f"{what}: {ours.shape[0]} positions x {ours.shape[1]} logits, max |diff| = {diff:.2e}, "
          f"arg-max agreement {argmax:.0%}")
    return diff


def write_fixture(out, base_hf, adapter, ids, targets):
    """PEFT's logits, loss and adapter gradients on our files, in make_peft_fixtures.py's layout."""
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(base_hf, out / "base")
    shutil.copytree(adapter, out / "adapter")
    model = PeftModel.from_pretrained(hf_model(out / "base"), out / "adapter", is_trainable=True)
    model.eval()
    logits = model(input_ids=ids[None, :], use_cache=False).logits[0]
    loss = torch.nn.functional.cross_entropy(logits, targets)
    loss.backward()
    grads = {"grad." + n.replace(".default", ""): p.grad.detach().contiguous()
             for n, p in model.named_parameters() if p.grad is not None}
    tensors = {"ids": ids, "targets": targets, "logits": logits.detach().contiguous(), "loss": loss.detach().reshape(1)}
    save_file({**tensors, **grads}, out / "adapter" / "expected.safetensors")
    config_path = out / "adapter" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = "base"
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True))
    print(f"wrote {out}: {len(grads)} adapter gradients, loss {loss.item():.4f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--truthgpt", default="target/release/truthgpt")
    parser.add_argument("--base", help="the base: a model, run or HF directory (default: train a small one)")
    parser.add_argument("--data", help="fine-tuning data (default: a generated corpus)")
    parser.add_argument("--targets", default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj")
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--tolerance", type=float, default=1e-4)
    parser.add_argument("--fixture", help="also write the Rust test's fixture into this directory")
    args = parser.parse_args()
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = args.data
        if data is None:
            data = tmp / "corpus.txt"
            lines = (f"The {BIRDS[i % 6]} number {i} watches the quiet {BIRDS[i * 5 % 6]}.\n" for i in range(3000))
            data.write_text("".join(lines))
        base = args.base
        if base is None:
            (tmp / "base.yaml").write_text(BASE_CONFIG)
            sh(args.truthgpt, "train", "--config", tmp / "base.yaml", "--data", data, "--out", tmp / "base",
               stdout=subprocess.DEVNULL)
            base = tmp / "base"
        run = tmp / "lora"
        sh(args.truthgpt, "finetune", "--model", base, "--data", data, "--out", run, "--steps", args.steps,
           "--lora-rank", args.rank, "--lora-targets", args.targets, "--set", "train.lr=1e-2",
           "--set", "train.eval_every=0", stdout=subprocess.DEVNULL)
        base_hf, adapter, merged = tmp / "base_hf", tmp / "adapter", tmp / "merged_hf"
        sh(args.truthgpt, "export", "hf", base, "--out", base_hf)
        sh(args.truthgpt, "export", "peft", run, "--out", adapter, "--base", base_hf)
        sh(args.truthgpt, "export", "hf", run, "--out", merged)

        vocab = json.loads((base_hf / "config.json").read_text())["vocab_size"]
        gen = torch.Generator().manual_seed(0)
        ids = torch.randint(0, vocab, (24,), generator=gen, dtype=torch.int64)
        targets = torch.randint(0, vocab, (24,), generator=gen, dtype=torch.int64)
        ours = our_logits(args.truthgpt, run, ids.tolist())
        peft_model = PeftModel.from_pretrained(hf_model(base_hf), adapter).eval()
        with torch.no_grad():
            theirs = peft_model(input_ids=ids[None, :], use_cache=False).logits[0]
            unadapted = hf_model(base_hf)(input_ids=ids[None, :], use_cache=False).logits[0]
            merged_theirs = peft_model.merge_and_unload()(input_ids=ids[None, :], use_cache=False).logits[0]
            merged_ours = hf_model(merged)(input_ids=ids[None, :], use_cache=False).logits[0]
        moved = (theirs - unadapted).abs().max().item()
        print(f"the adapters move the base's logits by up to {moved:.3f}")
        diffs = [
            report("PeftModel over export hf vs truthgpt logits on the LoRA run", ours, theirs),
            report("PEFT merge_and_unload vs our export hf of the LoRA run", merged_ours, merged_theirs),
        ]
        if args.fixture:
            write_fixture(args.fixture, base_hf, adapter, ids, targets)
    ok = all(d <= args.tolerance for d in diffs) and moved > 10 * args.tolerance
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
