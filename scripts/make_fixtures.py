#!/usr/bin/env python3
"""PyTorch reference fixtures for the Rust parity tests (crates/model/tests/parity.rs).

Each case builds the same model as the Rust `Model` in plain PyTorch, with the same parameter
names and layouts, from fixed random weights. It saves into tests/fixtures/<case>.safetensors:
  param.<name>  the weights            grad.<name>  d(loss)/d(weight) from autograd
  tokens, targets (int32, (B, T))      logits (B*T, V), loss, aux_loss, z_loss
and, for the AdamW case, after.<name>: the weights after one optimiser step.
The model config travels as JSON in the safetensors metadata under "config" (and "train").

Run: pip install torch safetensors && python3 scripts/make_fixtures.py
"""
import json
import math
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures")
B, T = 2, 16


def base(**overrides):
    cfg = dict(
        vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=4, d_ff=48, max_seq_len=32,
        bias=True, norm="layernorm", norm_eps=1e-5, norm_position="pre", positional="learned",
        rope_theta=10000.0, rope_scaling=None, relative_buckets=8, relative_max_distance=20,
        ffn="mlp", tie_embeddings=False, share_layers=False, dropout=0.0, init_std=0.2,
        moe=dict(n_experts=4, top_k=2, expert="swiglu", dropless=True, capacity_factor=1.25,
                 aux_loss_coef=0.05, z_loss_coef=0.01, balancing="aux", bias_update_rate=0.001),
    )
    for key, value in overrides.items():
        if key == "moe":
            cfg["moe"].update(value)
        else:
            cfg[key] = value
    return cfg


def param_shapes(cfg):
    """The Rust ParamBuilder's tensors, in declaration order."""
    C, V, H, KV = cfg["d_model"], cfg["vocab_size"], cfg["n_heads"], cfg["n_kv_heads"]
    hs, bias = C // H, cfg["bias"]
    shapes = [("embed.tokens", (V, C))]
    if cfg["positional"] == "learned":
        shapes.append(("embed.positions", (cfg["max_seq_len"], C)))

    def linear(name, i, o, b):
        shapes.append((f"{name}.weight", (o, i)))
        if b:
            shapes.append((f"{name}.bias", (o,)))

    def norm(name):
        shapes.append((f"{name}.weight", (C,)))
        if bias and cfg["norm"] == "layernorm":
            shapes.append((f"{name}.bias", (C,)))

    def ffn(name, kind, width):
        linear(f"{name}.fc1", C, width * (1 if kind == "mlp" else 2), bias)
        linear(f"{name}.fc2", width, C, bias)

    layers = 1 if cfg["share_layers"] else cfg["n_layers"]
    for l in range(layers):
        p = f"blocks.{l}"
        norm(f"{p}.norm1")
        linear(f"{p}.attn.qkv", C, (H + 2 * KV) * hs, bias)
        linear(f"{p}.attn.proj", H * hs, C, bias)
        if cfg["positional"] == "relative":
            shapes.append((f"{p}.attn.relative_bias", (cfg["relative_buckets"], H)))
        norm(f"{p}.norm2")
        if cfg["ffn"] == "moe":
            shapes.append((f"{p}.ffn.router.weight", (cfg["moe"]["n_experts"], C)))
            for e in range(cfg["moe"]["n_experts"]):
                ffn(f"{p}.ffn.experts.{e}", cfg["moe"]["expert"], cfg["d_ff"])
        else:
            ffn(f"{p}.ffn", cfg["ffn"], cfg["d_ff"])
    if cfg["norm_position"] == "pre":
        norm("norm_f")
    if not cfg["tie_embeddings"]:
        shapes.append(("head.weight", (V, C)))
    return shapes


def init_params(cfg, seed):
    g = torch.Generator().manual_seed(seed)
    params = {}
    for name, shape in param_shapes(cfg):
        if name.endswith("norm1.weight") or name.endswith("norm2.weight") or name == "norm_f.weight":
            value = 1.0 + 0.1 * torch.randn(shape, generator=g)
        else:
            value = cfg["init_std"] * torch.randn(shape, generator=g)
        params[name] = value.double().requires_grad_(True)
    return params


def alibi_slopes(n):
    def pow2(n):
        start = 2 ** (-8 / n)
        return [start ** (i + 1) for i in range(n)]
    closest = 2 ** int(math.floor(math.log2(n)))
    slopes = pow2(closest)
    if closest < n:
        slopes += pow2(2 * closest)[0::2][: n - closest]
    return torch.tensor(slopes, dtype=torch.float64)


def relative_bucket(distance, buckets, max_distance):
    """HF T5 `_relative_position_bucket(bidirectional=False)` on distance = i - j >= 0."""
    max_exact = buckets // 2
    large = max_exact + (torch.log(distance.float().clamp(min=1) / max_exact) / math.log(max_distance / max_exact)
                         * (buckets - max_exact)).to(torch.long)
    large = torch.clamp(large, max=buckets - 1)
    return torch.where(distance < max_exact, distance, large)


def rope(x, cfg, t):
    hs = x.shape[-1]
    theta, divisor = cfg["rope_theta"], 1.0
    if cfg["rope_scaling"]:
        kind, factor = cfg["rope_scaling"]["kind"], cfg["rope_scaling"]["factor"]
        if kind == "linear":
            divisor = factor
        else:
            theta = theta * factor ** (hs / (hs - 2))
    inv_freq = theta ** (-torch.arange(0, hs // 2, dtype=torch.float64) * 2 / hs)
    angle = (torch.arange(t, dtype=torch.float64) / divisor)[:, None] * inv_freq[None, :]
    cos, sin = torch.cat([angle.cos()] * 2, -1), torch.cat([angle.sin()] * 2, -1)
    x1, x2 = x[..., : hs // 2], x[..., hs // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def norm(x, p, name, cfg):
    w = p[f"{name}.weight"]
    if cfg["norm"] == "layernorm":
        return F.layer_norm(x, (x.shape[-1],), w, p.get(f"{name}.bias"), cfg["norm_eps"])
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg["norm_eps"]) * w


def linear(x, p, name):
    return F.linear(x, p[f"{name}.weight"], p.get(f"{name}.bias"))


def ffn(x, p, name, kind):
    h = linear(x, p, f"{name}.fc1")
    if kind == "mlp":
        a = F.gelu(h)
    else:
        gate, up = h.chunk(2, -1)
        a = (F.gelu(gate) if kind == "geglu" else F.silu(gate)) * up
    return linear(a, p, f"{name}.fc2")


def moe(x, p, name, cfg):
    m = cfg["moe"]
    E, k = m["n_experts"], m["top_k"]
    x2 = x.reshape(-1, x.shape[-1])
    n = x2.shape[0]
    logits = F.linear(x2, p[f"{name}.router.weight"])
    probs = logits.softmax(-1)
    top_p, top_i = probs.topk(k, -1)
    gates = top_p / top_p.sum(-1, keepdim=True) if k > 1 else top_p
    out = torch.zeros_like(x2)
    for e in range(E):
        rows, rank = (top_i == e).nonzero(as_tuple=True)
        if len(rows):
            out[rows] += gates[rows, rank, None] * ffn(x2[rows], p, f"{name}.experts.{e}", m["expert"])
    counts = torch.bincount(top_i.flatten(), minlength=E).double()
    aux = m["aux_loss_coef"] * E * (counts / n * probs.mean(0)).sum()
    z = m["z_loss_coef"] * torch.logsumexp(logits, -1).pow(2).mean()
    return out.reshape(x.shape), aux, z


def forward(p, cfg, tokens):
    C, H, KV = cfg["d_model"], cfg["n_heads"], cfg["n_kv_heads"]
    hs, (b, t) = C // H, tokens.shape
    x = p["embed.tokens"][tokens]
    if cfg["positional"] == "learned":
        x = x + p["embed.positions"][:t]
    elif cfg["positional"] == "sinusoidal":
        pos = torch.arange(t, dtype=torch.float64)[:, None]
        angle = pos / 10000 ** (torch.arange(0, C, 2, dtype=torch.float64) / C)
        table = torch.stack([angle.sin(), angle.cos()], -1).reshape(t, C)
        x = x + table
    i = torch.arange(t)[:, None]
    j = torch.arange(t)[None, :]
    distance = (i - j).clamp(min=0)
    aux_total = z_total = 0.0
    for layer in range(cfg["n_layers"]):
        pre = f"blocks.{0 if cfg['share_layers'] else layer}"

        def attention(h):
            qkv = linear(h, p, f"{pre}.attn.qkv")
            q, k, v = qkv.split([H * hs, KV * hs, KV * hs], -1)
            q = q.view(b, t, H, hs).transpose(1, 2)
            k = k.view(b, t, KV, hs).transpose(1, 2)
            v = v.view(b, t, KV, hs).transpose(1, 2)
            if cfg["positional"] == "rope":
                q, k = rope(q, cfg, t), rope(k, cfg, t)
            k = k.repeat_interleave(H // KV, 1)
            v = v.repeat_interleave(H // KV, 1)
            scores = q @ k.transpose(-1, -2) / math.sqrt(hs)
            if cfg["positional"] == "alibi":
                scores = scores - alibi_slopes(H)[:, None, None] * distance
            elif cfg["positional"] == "relative":
                bucket = relative_bucket(distance, cfg["relative_buckets"], cfg["relative_max_distance"])
                scores = scores + p[f"{pre}.attn.relative_bias"][bucket].permute(2, 0, 1)
            scores = scores.masked_fill(j > i, float("-inf"))
            out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, H * hs)
            return linear(out, p, f"{pre}.attn.proj")

        def feed_forward(h):
            if cfg["ffn"] == "moe":
                return moe(h, p, f"{pre}.ffn", cfg)
            return ffn(h, p, f"{pre}.ffn", cfg["ffn"]), 0.0, 0.0

        if cfg["norm_position"] == "pre":
            x = x + attention(norm(x, p, f"{pre}.norm1", cfg))
            f, aux, z = feed_forward(norm(x, p, f"{pre}.norm2", cfg))
            x = x + f
        else:
            x = norm(x + attention(x), p, f"{pre}.norm1", cfg)
            f, aux, z = feed_forward(x)
            x = norm(x + f, p, f"{pre}.norm2", cfg)
        aux_total, z_total = aux_total + aux, z_total + z
    if cfg["norm_position"] == "pre":
        x = norm(x, p, "norm_f", cfg)
    head = p["embed.tokens"] if cfg["tie_embeddings"] else p["head.weight"]
    return F.linear(x, head).reshape(b * t, -1), aux_total, z_total


def save(case, cfg, params, tokens, targets, extra, train=None):
    tensors = {"tokens": tokens.int(), "targets": targets.int()}
    for name, value in params.items():
        tensors[f"param.{name}"] = value.detach().float()
        tensors[f"grad.{name}"] = value.grad.detach().float()
    tensors.update({k: v.detach().float().reshape(-1) if v.dim() == 0 else v.detach().float() for k, v in extra.items()})
    metadata = {"config": json.dumps(cfg)}
    if train:
        metadata["train"] = json.dumps(train)
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(OUT, f"{case}.safetensors"), metadata)
    print(f"{case}: loss {extra['loss'].item():.6f}")


def run(case, cfg, seed=0):
    params = init_params(cfg, seed)
    g = torch.Generator().manual_seed(seed + 1)
    tokens = torch.randint(0, cfg["vocab_size"], (B, T), generator=g)
    targets = torch.randint(0, cfg["vocab_size"], (B, T), generator=g)
    logits, aux, z = forward(params, cfg, tokens)
    ce = F.cross_entropy(logits, targets.reshape(-1))
    loss = ce + aux + z
    loss.backward()
    extra = {"logits": logits, "loss": ce, "aux_loss": torch.as_tensor(aux, dtype=torch.float64),
             "z_loss": torch.as_tensor(z, dtype=torch.float64)}
    return params, tokens, targets, extra


def adamw_case():
    """One full AdamW step of the tiny model: clipping, decay on matrices only, bias correction."""
    # No biases: the key bias's gradient is exactly zero in exact arithmetic (softmax ignores a
    # per-row shift), so Adam's g / (|g| + eps) would compare rounding noise, not the optimiser.
    cfg = base(bias=False)
    train = dict(lr=1e-2, min_lr=1e-2, schedule="constant", warmup_steps=0, weight_decay=0.1,
                 betas=[0.9, 0.95], eps=1e-8, grad_clip=0.5, batch_size=B, seq_len=T)
    params, tokens, targets, extra = run("adamw", cfg, seed=5)
    decay = [p for n, p in params.items() if p.dim() >= 2]
    no_decay = [p for n, p in params.items() if p.dim() < 2]
    torch.nn.utils.clip_grad_norm_(params.values(), train["grad_clip"])
    # clip_grad_norm_ scaled the grads in place; save the unclipped ones for the gradient check.
    save_grads = {n: p.grad.clone() for n, p in params.items()}
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": train["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=train["lr"], betas=tuple(train["betas"]), eps=train["eps"])
    before = {n: p.detach().clone() for n, p in params.items()}
    opt.step()
    for name, value in params.items():
        extra[f"after.{name}"] = value.detach().clone()
        value.data.copy_(before[name])
        value.grad = save_grads[name]
    return cfg, params, tokens, targets, extra, train


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.set_default_dtype(torch.float64)
    cases = {
        "block_learned": base(positional="learned"),
        "block_sinusoidal": base(positional="sinusoidal"),
        "block_rope": base(positional="rope", rope_scaling={"kind": "ntk", "factor": 2.0}),
        "block_alibi": base(positional="alibi"),
        "block_relative": base(positional="relative"),
        "gqa": base(positional="rope", n_kv_heads=2, norm="rmsnorm", bias=False),
        "swiglu": base(positional="rope", ffn="swiglu", norm="rmsnorm", bias=False, tie_embeddings=True),
        "moe_top2": base(positional="rope", ffn="moe", norm="rmsnorm", bias=False, moe={"top_k": 2}),
    }
    for case, cfg in cases.items():
        params, tokens, targets, extra = run(case, cfg)
        save(case, cfg, params, tokens, targets, extra)
    cfg, params, tokens, targets, extra, train = adamw_case()
    save("adamw", cfg, params, tokens, targets, extra, train)


if __name__ == "__main__":
    main()
