#!/usr/bin/env python3
"""PEFT LoRA fixtures for the adapter import tests (crates/interop/tests/peft.rs).

For each base among the committed HF fixtures (crates/interop/tests/fixtures/hf/<base>), a LoRA
adapter is made with `peft.get_peft_model`, every lora_A and lora_B overwritten with N(0, 0.1)
(a fresh B is zero, which would test nothing), and saved with `save_pretrained` into
crates/interop/tests/fixtures/peft/<name>/, beside `expected.safetensors`:
  ids, targets  int64 [T]       input ids and next-token targets (seeded)
  logits        float32 [T, V]  the PeftModel's logits for `ids` (eval, dropout 0, eager, batch 1)
  loss          float32 [1]     mean cross-entropy of `logits` against `targets`
  grad.<name>   float32         d loss / d each adapter tensor, under the name the adapter file uses
The logits are recomputed after `PeftModel.from_pretrained` on the saved adapter, which proves
PEFT reads the files back as written.

Run: python3 scripts/make_peft_fixtures.py (tested with torch 2.15, transformers 5.24, peft 0.21.2).
"""
import json
import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
HF = os.path.join(ROOT, "crates", "interop", "tests", "fixtures", "hf")
OUT = os.path.join(ROOT, "crates", "interop", "tests", "fixtures", "peft")

torch.use_deterministic_algorithms(True)
torch.set_num_threads(1)

# name: (base fixture, LoraConfig arguments). gpt2's Conv1D layers need fan_in_fan_out; its
# `c_proj` matches both the attention's and the MLP's output projection, as PEFT's suffix rule
# does. The llama adapter targets every projection; gpt2 uses rsLoRA's alpha / sqrt(r).
FIXTURES = {
    "llama": (
        "llama",
        dict(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
    ),
    "llama_qv": ("llama", dict(r=2, lora_alpha=16, target_modules=["q_proj", "v_proj"])),
    "gpt2": (
        "gpt2",
        dict(r=3, lora_alpha=6, target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True, use_rslora=True),
    ),
}
T = 12


def load_base(name):
    model = AutoModelForCausalLM.from_pretrained(os.path.join(HF, name), dtype=torch.float32, attn_implementation="eager")
    model.eval()
    return model


def main():
    for name, (base, args) in FIXTURES.items():
        torch.manual_seed(0)
        config = LoraConfig(lora_dropout=0.0, bias="none", task_type="CAUSAL_LM", **args)
        model = get_peft_model(load_base(base), config)
        gen = torch.Generator().manual_seed(len(name))
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if "lora_" in pname:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
        model.eval()
        vocab = model.config.vocab_size
        ids = torch.randint(0, vocab, (T,), generator=gen, dtype=torch.int64)
        targets = torch.randint(0, vocab, (T,), generator=gen, dtype=torch.int64)
        logits = model(input_ids=ids[None, :], use_cache=False).logits[0]
        loss = torch.nn.functional.cross_entropy(logits, targets)
        model.zero_grad()
        loss.backward()

        out = os.path.join(OUT, name)
        if os.path.exists(out):
            shutil.rmtree(out)
        model.save_pretrained(out)
        # The names the adapter file uses: PEFT drops the adapter's name ("default").
        grads = {}
        for pname, p in model.named_parameters():
            if p.grad is not None:
                grads["grad." + pname.replace(".default", "")] = p.grad.detach().clone().contiguous()
        reloaded = PeftModel.from_pretrained(load_base(base), out)
        reloaded.eval()
        with torch.no_grad():
            again = reloaded(input_ids=ids[None, :], use_cache=False).logits[0]
        diff = (again - logits).abs().max().item()
        assert diff <= 1e-6, f"{name}: reloaded adapter gives logits {diff} away"
        tensors = {"ids": ids, "targets": targets, "logits": logits.detach().contiguous(), "loss": loss.detach().reshape(1)}
        save_file({**tensors, **grads}, os.path.join(out, "expected.safetensors"))
        os.remove(os.path.join(out, "README.md"))
        # PEFT records the absolute path it loaded the base from; the repository's is what holds.
        config_path = os.path.join(out, "adapter_config.json")
        with open(config_path) as f:
            config = json.load(f)
        config["base_model_name_or_path"] = f"crates/interop/tests/fixtures/hf/{base}"
        with open(config_path, "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)
        print(f"{name}: {len(grads)} adapter tensors, loss {loss.item():.4f}, reload diff {diff:.1e}")


if __name__ == "__main__":
    main()
