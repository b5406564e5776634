#!/usr/bin/env bash
# Peak memory and quality of full fine-tuning, LoRA and QLoRA of one real model, same data, same
# steps, same batch:
#
#   scripts/bench_finetune.sh         # SmolLM2-135M-Instruct (scripts/fetch_smollm2_gguf.sh)
#
# - full: every weight in f32 (the GGUF dequantized), AdamW on all of them;
# - LoRA: rank R adapters on every projection over the f32 base (its HF export), base frozen;
# - QLoRA: the same adapters over the GGUF file itself, its Q4_1/Q8_0 blocks kept quantized.
# Peak RSS is /usr/bin/time's maximum resident set of the whole `finetune` process (base loading,
# STEPS steps, the final evaluation and checkpoint). Perplexity: Macbeth, which no run trains on
# (they train on four other plays). 2 threads.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bench_common.sh
need_model
STEPS=${STEPS:-30}
RANK=${RANK:-16}
mkdir -p "$OUT/data"
cp data/shakespeare/{lear,othello,tempest,twelfth_night}.txt "$OUT/data/"
"$BIN" export hf "$MODEL" --out "$OUT/base-f32" 2>/dev/null

common=(--data "$OUT/data" --steps "$STEPS" --threads "$THREADS" --set train.batch_size=4
  --set train.seq_len=128 --set train.warmup_steps=3 --set train.eval_every=0 --set train.checkpoint_every=0)
lora=(--lora-rank "$RANK" --lora-alpha $((2 * RANK)) --lora-targets q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj)

run() { # name, then finetune's arguments
  local name=$1
  shift
  /usr/bin/time -f "%M" -o "$OUT/$name.rss" "$BIN" finetune --out "$OUT/$name" "${common[@]}" "$@" >"$OUT/$name.log"
  local rss_mb=$(( $(cat "$OUT/$name.rss") / 1024 ))
  local step_s
  step_s=$(awk -F'"elapsed_secs":' '/"kind":"train"/ { split($2, a, /[,}]/); last = a[1]; n++ }
    END { printf "%.2f", last / n }' "$OUT/$name/metrics.jsonl")
  local trainable
  trainable=$(grep -oE '[0-9]+ of [0-9]+ parameters train \([0-9.]+%\)' "$OUT/$name.log")
  echo "| $name | $trainable | $rss_mb | $step_s | $(ppl "$OUT/$name") |"
}

echo "| run | trainable | peak RSS (MB) | s/step | Macbeth perplexity after $STEPS steps |"
echo "|---|---|---|---|---|"
echo "| base | (none) | | | $(ppl "$OUT/base-f32") |"
run full --model "$OUT/base-f32" --full --set train.lr=5e-5
run lora --model "$OUT/base-f32" "${lora[@]}" --set train.lr=5e-4
run qlora --model "$MODEL" "${lora[@]}" --set train.lr=5e-4
echo "(runs in $OUT)"
