#!/usr/bin/env python3
"""The distillation loss's PyTorch reference (crates/model/tests/distillation.rs).

Writes tests/fixtures/distillation.safetensors: student and teacher logits (N, V),
targets (N), and for each (tau, alpha) in the metadata's "cases" the loss as Hinton et al. and
every PyTorch recipe compute it,
    alpha * tau^2 * kl_div(log_softmax(s / tau), log_softmax(t / tau), log_target=True, "batchmean")
      + (1 - alpha) * cross_entropy(s, targets),
with its parts and its gradient with respect to the student's logits, by float64 autograd.

Run: python3 scripts/make_distill_fixture.py (tested with torch 2.15).
"""
import json
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
OUT = os.path.join(ROOT, "tests", "fixtures", "distillation.safetensors")
CASES = [(1.0, 0.5), (2.0, 0.9), (4.0, 0.0), (2.0, 1.0), (0.5, 0.3)]
N, V = 7, 37


def main():
    gen = torch.Generator().manual_seed(0)
    # Spread-out logits (a teacher is sharper than its student), some rows far from zero.
    student = (torch.randn(N, V, generator=gen) * 3 + torch.arange(N)[:, None] * 5).float()
    teacher = (torch.randn(N, V, generator=gen) * 6).float()
    targets = torch.randint(0, V, (N,), generator=gen)
    tensors = {"student": student, "teacher": teacher, "targets": targets.to(torch.int32)}
    for k, (tau, alpha) in enumerate(CASES):
        s = student.double().clone().requires_grad_(True)
        t = teacher.double()
        kl = F.kl_div(F.log_softmax(s / tau, -1), F.log_softmax(t / tau, -1), log_target=True, reduction="batchmean")
        ce = F.cross_entropy(s, targets)
        total = alpha * tau * tau * kl + (1 - alpha) * ce
        total.backward()
        tensors[f"case{k}.loss"] = torch.stack([total, kl, ce]).detach().float()
        tensors[f"case{k}.grad"] = s.grad.float()
        print(f"tau {tau} alpha {alpha}: total {total.item():.6f} kl {kl.item():.6f} ce {ce.item():.6f}")
    save_file({k: v.contiguous() for k, v in tensors.items()}, OUT, {"cases": json.dumps(CASES)})


if __name__ == "__main__":
    main()
