"""Decode speed against Hugging Face transformers on the same CPU, alternating rounds.

Greedy decoding with a KV cache, random weights, same shapes: `truthgpt bench generate` against
`model.generate(use_cache=True)` of the matching transformers class (GPT2LMHeadModel for the
gpt2-small preset, MixtralForCausalLM for the quickstart preset). Prints each side's median
tokens/s and the ratio (ours / HF).

    pip install torch transformers
    cargo build --release
    python3 scripts/bench_decode_vs_hf.py --preset quickstart --tokens 200 --rounds 5
    python3 scripts/bench_decode_vs_hf.py --preset gpt2-small --tokens 64 --rounds 3
"""

import argparse
import json
import statistics
import subprocess
import time

import torch
import transformers


def hf_model(preset):
    if preset == "gpt2-small":
        config = transformers.GPT2Config(n_positions=1024, n_embd=768, n_layer=12, n_head=12, vocab_size=50257)
        return transformers.GPT2LMHeadModel(config), 50257
    if preset == "quickstart":
        config = transformers.MixtralConfig(
            vocab_size=2048, hidden_size=128, intermediate_size=256, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
            num_local_experts=4, num_experts_per_tok=2, tie_word_embeddings=True,
        )
        return transformers.MixtralForCausalLM(config), 2048
    raise SystemExit(f"no transformers twin for preset {preset}")


def hf_tokens_per_sec(model, vocab, prompt_tokens, tokens):
    ids = torch.randint(0, vocab, (1, prompt_tokens))
    with torch.inference_mode():
        start = time.perf_counter()
        model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, use_cache=True,
                       pad_token_id=0)
        return tokens / (time.perf_counter() - start)


def ours_tokens_per_sec(preset, prompt_tokens, tokens, threads):
    out = subprocess.run(
        ["target/release/truthgpt", "bench", "generate", "--preset", preset, "--prompt-tokens", str(prompt_tokens),
         "--tokens", str(tokens), "--threads", str(threads)],
        check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out)["cached_tokens_per_sec"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="quickstart")
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, vocab = hf_model(args.preset)
    model.eval()
    hf_tokens_per_sec(model, vocab, args.prompt_tokens, 8)  # warm-up
    hf, ours = [], []
    for _ in range(args.rounds):
        hf.append(hf_tokens_per_sec(model, vocab, args.prompt_tokens, args.tokens))
        ours.append(ours_tokens_per_sec(args.preset, args.prompt_tokens, args.tokens, args.threads))
    hf_median, ours_median = statistics.median(hf), statistics.median(ours)
    print(json.dumps({
        "preset": args.preset, "tokens": args.tokens, "threads": args.threads, "rounds": args.rounds,
        "transformers": transformers.__version__, "torch": torch.__version__,
        "hf_tokens_per_sec": round(hf_median, 1), "ours_tokens_per_sec": round(ours_median, 1),
        "ratio": round(ours_median / hf_median, 2),
    }))


if __name__ == "__main__":
    main()
