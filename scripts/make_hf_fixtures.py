#!/usr/bin/env python3
"""Hugging Face checkpoint fixtures for the interop importer tests (crates/interop/tests).

Each fixture is a tiny randomly initialised transformers model, built from a config (nothing is
downloaded), written with `model.save_pretrained(dir)` into
crates/interop/tests/fixtures/hf/<name>/, plus `expected.safetensors` holding
  ids     int64 [T]        the input token ids (seeded random ints in [0, vocab))
  logits  float32 [T, V]   the model's logits for `ids`: float32, eval(), no_grad(), batch of 1,
                           no attention mask, use_cache=False, attn_implementation="eager"
(and for gpt2 `text_ids`, int64: the tokenizer's ids for "To be, or not to be").

Every parameter is overwritten after construction so that the weight mapping is tested:
matrices/embeddings ~ N(0, 0.15), biases ~ N(0, 0.1), norm weights 1 + N(0, 0.1).
For fixtures saved in bf16/f16 the weights are rounded to that dtype first, and the expected
logits are computed in float32 from the rounded weights.

The expected logits are computed by reloading the saved directory with `from_pretrained`
(float32, eager), so they also prove transformers reads the files back as written; they are
checked against the in-memory model.

Tested with torch 2.15 and transformers 5.24. Run: python3 scripts/make_hf_fixtures.py
"""
import json
import math
import os
import shutil
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    MixtralConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
OUT = os.path.join(ROOT, "crates", "interop", "tests", "fixtures", "hf")

torch.use_deterministic_algorithms(True)
torch.set_num_threads(1)


# ----------------------------------------------------------------------------------------------
# helpers


def build(config, seed):
    """Construct the model for `config` (eager attention) and overwrite every parameter."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32)
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    counts = {"matrix": 0, "bias": 0, "norm": 0}
    with torch.no_grad():
        for name, p in model.named_parameters():  # tied parameters appear once
            if name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
                counts["bias"] += 1
            elif p.ndim == 1:
                p.copy_(1.0 + torch.randn(p.shape, generator=gen) * 0.1)
                counts["norm"] += 1
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.15)
                counts["matrix"] += 1
    return model, counts


def round_params(model, dtype):
    """Round every parameter to `dtype` and back to float32, in place."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(dtype).to(torch.float32))


def make_ids(vocab, t, seed):
    gen = torch.Generator().manual_seed(seed + 1000)
    return torch.randint(0, vocab, (t,), generator=gen, dtype=torch.int64)


def logits_of(model, ids):
    model.eval()
    with torch.no_grad():
        out = model(input_ids=ids[None, :], use_cache=False)
    return out.logits[0].to(torch.float32).contiguous()


def reload(path):
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    return model


def fresh_dir(name):
    path = os.path.join(OUT, name)
    if os.path.exists(path):
        shutil.rmtree(path)
    os.makedirs(path)
    return path


def copy_model(model, **config_changes):
    """A fresh model with the same weights, with config fields changed (e.g. sliding_window)."""
    config = type(model.config).from_dict(model.config.to_dict())
    for key, value in config_changes.items():
        setattr(config, key, value)
    other = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32)
    other.load_state_dict(model.state_dict())
    other.eval()
    return other


def report(name, path, logits, counts, extra=""):
    size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
    print(
        f"{name:18s} T={logits.shape[0]:3d} V={logits.shape[1]:4d}  max|logit|={logits.abs().max().item():6.3f}"
        f"  std={logits.std().item():6.3f}  params(matrix/bias/norm)={counts['matrix']}/{counts['bias']}/"
        f"{counts['norm']}  files={sorted(os.listdir(path))}  {size / 1024:.1f} KiB {extra}"
    )


def finish(name, model, ids, save_dtype=None, save_kwargs=None, extra_tensors=None, counts=None):
    """Save `model`, reload it, check the logits agree, and write expected.safetensors."""
    path = fresh_dir(name)
    if save_dtype is not None:
        round_params(model, save_dtype)
    mem_logits = logits_of(model, ids)
    if save_dtype is not None:
        model = model.to(save_dtype)
    model.save_pretrained(path, **(save_kwargs or {}))
    logits = logits_of(reload(path), ids)
    diff = (logits - mem_logits).abs().max().item()
    assert diff < 1e-5, f"{name}: reloaded logits differ from in-memory logits by {diff}"
    assert torch.isfinite(logits).all()
    std = logits.std().item()
    assert 0.5 < std < 6.0, f"{name}: logits std {std} out of the intended range"
    tensors = {"ids": ids.contiguous(), "logits": logits}
    tensors.update(extra_tensors or {})
    save_file(tensors, os.path.join(path, "expected.safetensors"), metadata={"format": "pt"})
    report(name, path, logits, counts)
    return path, logits


def safetensors_files(path):
    return sorted(f for f in os.listdir(path) if f.endswith(".safetensors") and f != "expected.safetensors")


# ----------------------------------------------------------------------------------------------
# fixtures


def llama():
    config = LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=False,
    )
    model, counts = build(config, seed=1)
    finish("llama", model, make_ids(128, 16, seed=1), counts=counts)


def llama_linear_bf16():
    config = LlamaConfig(
        vocab_size=160, hidden_size=48, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
        rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
        rope_scaling={"rope_type": "linear", "factor": 2.0},
    )
    model, counts = build(config, seed=2)
    ids = make_ids(160, 20, seed=2)
    plain = copy_model(model, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    assert (logits_of(plain, ids) - logits_of(model, ids)).abs().max() > 1e-3, "linear scaling had no effect"
    finish("llama_linear_bf16", model, ids, save_dtype=torch.bfloat16, counts=counts)


def llama_dynamic():
    T, max_pos, factor = 24, 16, 2.0
    config = LlamaConfig(
        vocab_size=112, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_pos,
        rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
        rope_scaling={"rope_type": "dynamic", "factor": factor},
    )
    model, counts = build(config, seed=3)
    ids = make_ids(112, T, seed=3)
    # Dynamic NTK mutates the rotary buffer on a forward pass, so compare on fresh copies.
    plain = copy_model(model, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    dyn = copy_model(model)
    assert (logits_of(plain, ids) - logits_of(dyn, ids)).abs().max() > 1e-3, "dynamic scaling had no effect"
    # Check the base the forward pass used: base * (factor * T / max_pos - (factor - 1)) ** (d / (d - 2)).
    d = 32 // 4
    base = 10000.0 * (factor * T / max_pos - (factor - 1)) ** (d / (d - 2))
    want = 1.0 / (base ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    got = dyn.model.rotary_emb.inv_freq.double()
    assert torch.allclose(got, want, rtol=1e-5), (got, want)
    finish("llama_dynamic", model, ids, counts=counts)


def llama3_f16():
    theta, factor, lo, hi, orig = 10000.0, 8.0, 1.0, 4.0, 32
    config = LlamaConfig(
        vocab_size=200, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, head_dim=16, max_position_embeddings=128,
        rms_norm_eps=1e-5, rope_theta=theta, tie_word_embeddings=True,
        rope_scaling={
            "rope_type": "llama3", "factor": factor, "low_freq_factor": lo, "high_freq_factor": hi,
            "original_max_position_embeddings": orig,
        },
    )
    model, counts = build(config, seed=4)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    # The llama3 inv_freq: all three branches (kept, divided by factor, smoothed) must occur.
    d = 16
    inv = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    wavelen = 2 * math.pi / inv
    low_wl, high_wl = orig / lo, orig / hi
    smooth = (orig / wavelen - lo) / (hi - lo)
    want = torch.where(
        wavelen < high_wl, inv,
        torch.where(wavelen > low_wl, inv / factor, (1 - smooth) * inv / factor + smooth * inv),
    )
    assert (wavelen < high_wl).any() and (wavelen > low_wl).any()
    assert ((wavelen >= high_wl) & (wavelen <= low_wl)).any()
    got = model.model.rotary_emb.inv_freq.double()
    assert torch.allclose(got, want, rtol=1e-5), (got, want)
    finish("llama3_f16", model, make_ids(200, 40, seed=4), save_dtype=torch.float16, counts=counts)


def mistral():
    W, T = 6, 20
    config = MistralConfig(
        vocab_size=144, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        rms_norm_eps=1e-5, rope_theta=10000.0, sliding_window=W, tie_word_embeddings=False,
    )
    model, counts = build(config, seed=5)
    ids = make_ids(144, T, seed=5)
    windowed = logits_of(model, ids)
    full = logits_of(copy_model(model, sliding_window=None), ids)
    diff = (windowed - full).abs().max(dim=-1).values
    # Query i sees keys j with i - W < j <= i (W keys, itself included): the first W positions see
    # their whole prefix and match full attention; position W no longer sees key 0.
    assert diff[:W].max() < 1e-5, diff
    assert diff[W] > 1e-3 and diff.max() > 1e-2, diff
    finish("mistral", model, ids, counts=counts)


def qwen2():
    config = Qwen2Config(
        vocab_size=256, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64,
        rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True,
    )
    model, counts = build(config, seed=6)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    finish("qwen2", model, make_ids(256, 16, seed=6), counts=counts)


def mixtral():
    config = MixtralConfig(
        vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
        max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=1000000.0, tie_word_embeddings=False,
    )
    model, counts = build(config, seed=7)
    ids = make_ids(128, 16, seed=7)
    # The top-2 choice must not hinge on float noise: keep a margin between 2nd and 3rd router logit.
    with torch.no_grad():
        router = model(input_ids=ids[None, :], use_cache=False, output_router_logits=True).router_logits
    for layer, logits in enumerate(router):
        top = logits.float().topk(3, dim=-1).values
        margin = (top[:, 1] - top[:, 2]).min().item()
        assert margin > 1e-3, f"layer {layer}: router margin {margin}"
        print(f"{'':18s} layer {layer}: min router logit gap between expert 2 and 3 = {margin:.4f}")
    path, _ = finish("mixtral", model, ids, counts=counts)
    # transformers 5.24 fuses the experts in memory (mlp.experts.gate_up_proj / down_proj) but its
    # save_pretrained reverts to the published per-expert layout. Make sure that stays true.
    with safe_open(os.path.join(path, "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    for n in range(2):
        assert f"model.layers.{n}.block_sparse_moe.gate.weight" in keys
        for e in range(4):
            for w in ("w1", "w2", "w3"):
                assert f"model.layers.{n}.block_sparse_moe.experts.{e}.{w}.weight" in keys
    assert not any("gate_up_proj" in k or ".mlp." in k for k in keys), sorted(keys)


TEXT = """\
To be, or not to be, that is the question:
Whether 'tis nobler in the mind to suffer
The slings and arrows of outrageous fortune,
Or to take arms against a sea of troubles
And by opposing end them. To die: to sleep;
No more; and by a sleep to say we end
The heart-ache and the thousand natural shocks
That flesh is heir to.

The lighthouse keeper climbed the stairs every evening at the same hour. He counted the steps,
one hundred and twelve of them, and at the top he trimmed the wick, polished the glass, and
watched the ships go by. Some nights the sea was calm and the boats were few; other nights the
wind rose, the waves broke on the rocks, and the light was all that stood between the sailors
and the shore.

A small model learns to predict the next token. It reads the text one piece at a time, and to
each piece it gives a number. The numbers are not words, but the words can be made of them,
and the model can be taught to put them back together in the order that they came.
"""


def gpt2():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    vocab = 300
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([TEXT] * 4, trainer=trainer)
    assert tok.get_vocab_size() == vocab, tok.get_vocab_size()
    eot = tok.token_to_id("<|endoftext|>")

    config = GPT2Config(
        vocab_size=vocab, n_positions=64, n_embd=64, n_layer=2, n_head=4, n_inner=128,
        activation_function="gelu_new", layer_norm_epsilon=1e-5, tie_word_embeddings=True,
        bos_token_id=eot, eos_token_id=eot,
    )
    model, counts = build(config, seed=8)
    assert model.lm_head.weight is model.transformer.wte.weight

    text = "To be, or not to be"
    with tempfile.TemporaryDirectory() as tmp:
        hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
        hf_tok.save_pretrained(tmp)
        text_ids = PreTrainedTokenizerFast.from_pretrained(tmp)(text)["input_ids"]
        assert text_ids == tok.encode(text).ids, (text_ids, tok.encode(text).ids)
        assert tok.decode(text_ids) == text
        path, _ = finish(
            "gpt2", model, make_ids(vocab, 16, seed=8), counts=counts,
            extra_tensors={"text_ids": torch.tensor(text_ids, dtype=torch.int64)},
        )
        for f in os.listdir(tmp):
            shutil.copy(os.path.join(tmp, f), os.path.join(path, f))
    print(f"{'':18s} text_ids({text!r}) = {text_ids}  tokens = {[tok.id_to_token(i) for i in text_ids]}")


def llama_sharded():
    config = LlamaConfig(
        vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
        rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
    )
    model, counts = build(config, seed=9)
    path, _ = finish("llama_sharded", model, make_ids(96, 16, seed=9), counts=counts,
                     save_kwargs={"max_shard_size": "40KB"})
    shards = safetensors_files(path)
    assert 2 <= len(shards) <= 3 and os.path.exists(os.path.join(path, "model.safetensors.index.json")), shards


FIXTURES = [llama, llama_linear_bf16, llama_dynamic, llama3_f16, mistral, qwen2, mixtral, gpt2, llama_sharded]


def main():
    names = set(sys.argv[1:])
    os.makedirs(OUT, exist_ok=True)
    for fixture in FIXTURES:
        if not names or fixture.__name__ in names:
            fixture()
    total = 0
    for dirpath, _, files in os.walk(OUT):
        total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files)
    print(f"total size of {os.path.relpath(OUT, ROOT)}: {total} bytes ({total / 1024:.1f} KiB)")


if __name__ == "__main__":
    main()
