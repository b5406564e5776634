#!/usr/bin/env python3
"""Tokenizer fixtures from llama.cpp's own tokenizer tests: for the byte-level BPE vocabularies we
read (gpt-2, llama-bpe, qwen2 and the SentencePiece-style llama-spm), the texts of `models/ggml-vocab-<name>.gguf.inp` and llama.cpp's
token ids for them (`.gguf.out`), with just enough of the vocabulary to tokenize those texts.

The vocabularies are megabytes; a fixture keeps only the tokens that occur as substrings of some
text (in GPT-2's byte-to-character encoding, or SentencePiece's `▁` for spaces), every control,
user-defined and byte token, and the merges
(byte-level BPE) or scores (SentencePiece-style) of kept tokens, in their original order and with
their original ids. That changes no result
on these texts: a merge applied while tokenizing one produces a substring of it, so every merge
that fires is kept, and dropping merges that never fire cannot change which one fires first.

Usage: /work/venv/bin/python scripts/make_vocab_fixtures.py LLAMA_CPP/models
(`pip download --no-deps --no-binary :all: llama-cpp-python` holds llama.cpp as
vendor/llama.cpp.) Writes crates/interop/tests/fixtures/vocab/<name>.json; the Rust test builds a
GGUF file from each and compares our ids with llama.cpp's.
"""

import json
import pathlib
import sys

from gguf import GGUFReader

OUT = pathlib.Path(__file__).resolve().parent.parent / "crates/interop/tests/fixtures/vocab"
NAMES = ["gpt-2", "llama-bpe", "qwen2", "llama-spm"]
SEPARATOR = "\n__ggml_vocab_test__\n"


def byte_chars() -> dict[int, str]:
    """GPT-2's bytes_to_unicode: printable bytes stand for themselves, the rest shift past 255."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, n = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + n)
            n += 1
    return chars


def field(reader: GGUFReader, key: str):
    f = reader.fields[key]
    if len(f.types) > 1:  # an array: its items, decoded
        return [bytes(f.parts[i]).decode() if f.types[1].name == "STRING" else int(f.parts[i][0]) for i in f.data]
    value = f.parts[f.data[0]]
    return bytes(value).decode() if f.types[0].name == "STRING" else int(value[0])


def main(models: pathlib.Path) -> None:
    chars = byte_chars()
    OUT.mkdir(parents=True, exist_ok=True)
    for name in NAMES:
        path = models / f"ggml-vocab-{name}.gguf"
        texts = (models / f"ggml-vocab-{name}.gguf.inp").read_text(encoding="utf-8").split(SEPARATOR)
        ids = [[int(t) for t in line.split()] for line in (models / f"ggml-vocab-{name}.gguf.out").read_text().splitlines()]
        texts = texts[: len(ids)]  # the input ends with a separator
        r = GGUFReader(str(path))
        spm = field(r, "tokenizer.ggml.model") == "llama"
        if spm:  # SentencePiece pieces: spaces as U+2581, one in front
            encoded = ["\u2581" + t.replace(" ", "\u2581") for t in texts]
        else:
            encoded = ["".join(chars[b] for b in t.encode("utf-8")) for t in texts]
        tokens, types = field(r, "tokenizer.ggml.tokens"), field(r, "tokenizer.ggml.token_type")
        # Control, user-defined and (SPM) byte tokens all stay: a text may need any byte.
        kept = {
            i: (tok, ty) for i, (tok, ty) in enumerate(zip(tokens, types))
            if ty in (2, 3, 4, 6) or any(tok in e for e in encoded)
        }
        kept_tokens = {tok for tok, _ in kept.values()}
        merges = [] if spm else field(r, "tokenizer.ggml.merges")
        kept_merges = [m for m in merges if all(p in kept_tokens for p in m.split(" ")) and m.replace(" ", "") in kept_tokens]
        scores = r.fields["tokenizer.ggml.scores"] if spm else None
        fixture = {
            "source": f"llama.cpp models/ggml-vocab-{name}.gguf(.inp, .out), trimmed by scripts/make_vocab_fixtures.py",
            "model": field(r, "tokenizer.ggml.model"),
            "pre": field(r, "tokenizer.ggml.pre"),
            "n_tokens": len(tokens),
            # [id, token, type] and, for SPM, the score
            "tokens": [
                [i, tok, ty] + ([float(scores.parts[scores.data[i]][0])] if spm else [])
                for i, (tok, ty) in sorted(kept.items())
            ],
            "merges": kept_merges,
            "eos": field(r, "tokenizer.ggml.eos_token_id"),
            "unk": field(r, "tokenizer.ggml.unknown_token_id") if spm else None,
            "tests": [[t, i] for t, i in zip(texts, ids)],
        }
        out = OUT / f"{name}.json"
        out.write_text(json.dumps(fixture, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
        print(f"{out.name}: {len(kept)} of {len(tokens)} tokens, {len(kept_merges)} of {len(merges)} merges, "
              f"{len(texts)} texts, {out.stat().st_size} bytes")


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]))
