#!/usr/bin/env python3
"""Compares two GGUF files tensor by tensor: type and data bytes. For checking `truthgpt quantize`
against llama-quantize on the same f32 input (without an importance matrix llama-quantize uses
ggml's `quantize_row_*_ref`, as we do, so the bytes should be equal).

Usage: /work/venv/bin/python scripts/compare_quantize_llamacpp.py OURS.gguf THEIRS.gguf
Needs: pip install gguf numpy.
"""

import sys
from collections import Counter

from gguf import GGUFReader


def main() -> None:
    ours, theirs = (GGUFReader(p) for p in sys.argv[1:3])
    theirs_by_name = {t.name: t for t in theirs.tensors}
    same, differ = Counter(), []
    for t in ours.tensors:
        other = theirs_by_name.pop(t.name, None)
        if other is None:
            differ.append(f"{t.name}: only in ours")
        elif t.tensor_type != other.tensor_type:
            differ.append(f"{t.name}: {t.tensor_type.name} here, {other.tensor_type.name} there")
        elif t.data.tobytes() != other.data.tobytes():
            differ.append(f"{t.name}: {t.tensor_type.name}, bytes differ")
        else:
            same[t.tensor_type.name] += 1
    differ += [f"{name}: only in theirs" for name in theirs_by_name]
    print(f"identical: {sum(same.values())} tensors ({dict(same)}); different: {len(differ)}")
    for line in differ[:20]:
        print("  " + line)
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
