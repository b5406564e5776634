#!/usr/bin/env python3
"""GGUF import fixtures: the tiny random Hugging Face models of crates/interop/tests/fixtures/hf
(llama, qwen2, gpt2) written as GGUF files the way llama.cpp's convert_hf_to_gguf.py lays them
out, with their matrices in a mix of ggml types, and transformers' logits for the GGUF file.

For each model it writes crates/interop/tests/fixtures/gguf/<name>/
- model.gguf: written with gguf.GGUFWriter; llama q/k rows permuted to llama.cpp's interleaved
  RoPE pairs, GPT-2's Conv1D weights transposed to (out, in), norms and biases f32, each 2-D
  weight in the next type of TYPES (quantized by gguf.quants);
- expected.safetensors: `ids` (the HF fixture's) and `logits`, from
  `AutoModelForCausalLM.from_pretrained(dir, gguf_file="model.gguf")`, which dequantizes with
  gguf-py: the reference our f32 import must match.

Usage: /work/venv/bin/python scripts/make_gguf_fixtures.py
Needs: pip install gguf numpy safetensors torch transformers. The Rust tests read only the outputs.
"""

import json
import pathlib

import numpy as np
import torch
from gguf import GGMLQuantizationType as T
from gguf import GGUFWriter, quants
from safetensors.numpy import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM

ROOT = pathlib.Path(__file__).resolve().parent.parent / "crates/interop/tests/fixtures"
TYPES = [T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.F16, T.BF16]
LLAMA_NAMES = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
GPT2_NAMES = {
    "ln_1": "attn_norm", "ln_2": "ffn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output",
    "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down",
}


def permute(w: np.ndarray, heads: int) -> np.ndarray:
    """convert_hf_to_gguf's LlamaModel.permute: rotate-half rows to interleaved pairs."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_name(hf: str) -> str | None:
    fixed = {
        "model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight", "transformer.wte.weight": "token_embd.weight",
        "transformer.wpe.weight": "position_embd.weight", "transformer.ln_f.weight": "output_norm.weight",
        "transformer.ln_f.bias": "output_norm.bias",
    }
    if hf in fixed:
        return fixed[hf]
    for prefix, names in (("model.layers.", LLAMA_NAMES), ("transformer.h.", GPT2_NAMES)):
        if hf.startswith(prefix):
            layer, rest = hf[len(prefix):].split(".", 1)
            module, param = rest.rsplit(".", 1)
            return f"blk.{layer}.{names[module]}.{param}" if module in names else None
    raise ValueError(hf)


def tensors(name: str, config: dict) -> dict[str, np.ndarray]:
    weights = load_file(str(ROOT / "hf" / name / "model.safetensors"))
    out = {}
    for hf, w in weights.items():
        gg = gguf_name(hf)
        if gg is None:  # GPT-2's attention mask buffers
            continue
        if name == "llama" and ".q_proj." in hf:
            w = permute(w, config["num_attention_heads"])
        if name == "llama" and ".k_proj." in hf:
            w = permute(w, config["num_key_value_heads"])
        if name == "gpt2" and any(f".{m}.weight" in hf for m in ("c_attn", "c_proj", "c_fc")):
            w = w.T
        out[gg] = np.ascontiguousarray(w, dtype=np.float32)
    return out


def metadata(w: GGUFWriter, arch: str, c: dict) -> None:
    if arch == "gpt2":
        keys = {"context_length": c["n_positions"], "embedding_length": c["n_embd"],
                "feed_forward_length": c["n_inner"], "block_count": c["n_layer"],
                "attention.head_count": c["n_head"]}
        w.add_float32("gpt2.attention.layer_norm_epsilon", c["layer_norm_epsilon"])
    else:
        keys = {"context_length": c["max_position_embeddings"], "embedding_length": c["hidden_size"],
                "feed_forward_length": c["intermediate_size"], "block_count": c["num_hidden_layers"],
                "attention.head_count": c["num_attention_heads"],
                "attention.head_count_kv": c["num_key_value_heads"],
                "rope.dimension_count": c["hidden_size"] // c["num_attention_heads"]}
        w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", c["rms_norm_eps"])
        theta = c.get("rope_parameters", {}).get("rope_theta", c.get("rope_theta", 10000.0))
        w.add_float32(f"{arch}.rope.freq_base", theta)
    keys["vocab_size"] = c["vocab_size"]
    for k, v in keys.items():
        w.add_uint32(f"{arch}.{k}", v)


def write(name: str) -> None:
    config = json.loads((ROOT / "hf" / name / "config.json").read_text())
    arch = config["model_type"]
    out = ROOT / "gguf" / name
    out.mkdir(parents=True, exist_ok=True)
    path = out / "model.gguf"
    w = GGUFWriter(str(path), arch)
    w.add_name(f"tiny random {name}")
    metadata(w, arch, config)
    n = 0
    for gg, t in tensors(name, config).items():
        if t.ndim == 2 and t.shape[-1] % 32 == 0:
            qtype = TYPES[n % len(TYPES)]
            n += 1
            w.add_tensor(gg, quants.quantize(t, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(gg, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    expected = load_file(str(ROOT / "hf" / name / "expected.safetensors"))
    # transformers maps too few GGUF keys for these tiny shapes (GPT-2's n_inner and n_positions,
    # the vocabulary without tokenizer metadata), so it gets the HF config; the weights are the
    # GGUF file's, dequantized by gguf-py. Reading the config from metadata is what our test checks.
    hf_config = AutoConfig.from_pretrained(str(ROOT / "hf" / name))
    model = AutoModelForCausalLM.from_pretrained(
        str(out), gguf_file="model.gguf", config=hf_config, dtype=torch.float32
    )
    with torch.no_grad():
        logits = model(torch.from_numpy(expected["ids"]).unsqueeze(0)).logits[0].numpy()
    save_file({"ids": expected["ids"], "logits": np.ascontiguousarray(logits)}, str(out / "expected.safetensors"))
    print(f"{path.relative_to(ROOT.parent.parent.parent.parent)}: {path.stat().st_size} bytes, "
          f"{n} quantized matrices, max |logits - HF f32| = {np.abs(logits - expected['logits']).max():.3g}")


if __name__ == "__main__":
    for name in ["llama", "qwen2", "gpt2"]:
        write(name)
