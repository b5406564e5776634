#!/usr/bin/env bash
# Sparsity against perplexity for `truthgpt prune` (magnitude, Wanda, SparseGPT) on a real model,
# with and without recovery by a LoRA fine-tune over the frozen, still-sparse pruned base.
#
#   scripts/bench_prune.sh            # SmolLM2-135M-Instruct (scripts/fetch_smollm2_gguf.sh)
#
# Calibration: the first CALIB_WINDOWS x CALIB_SEQ_LEN tokens of Hamlet; evaluation: Macbeth
# (EVAL_WINDOWS windows of the model's train.seq_len); recovery: RECOVER_STEPS LoRA steps (rank 8,
# every projection) on four other plays. All text is the repository's data/shakespeare. Prints
# a Markdown table (docs/benchmarks.md has the figures). 2 threads, as every benchmark here.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bench_common.sh
need_model
CALIB_WINDOWS=${CALIB_WINDOWS:-16}
CALIB_SEQ_LEN=${CALIB_SEQ_LEN:-256}
RECOVER_STEPS=${RECOVER_STEPS:-40}
SETTINGS=${SETTINGS-"0.25 0.5 0.7 2:4"}  # empty: none
RECOVER=${RECOVER-"0.5 2:4"}
METHODS=${METHODS-"magnitude wanda sparsegpt"}
mkdir -p "$OUT/recover-data"
cp data/shakespeare/{lear,othello,tempest,twelfth_night}.txt "$OUT/recover-data/"

# The recovery recipe: LoRA over the frozen (sparse) base, on other plays than the evaluation's.
recover() {
  "$BIN" finetune --model "$1" --data "$OUT/recover-data" --out "$1-lora" \
    --steps "$RECOVER_STEPS" --lora-rank 8 --lora-targets q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj \
    --set train.batch_size=4 --set train.seq_len=128 --set train.lr=2e-4 --set train.warmup_steps=4 \
    --set train.eval_every=0 --threads "$THREADS" >"$1-lora.log"
  ppl "$1-lora"
}

# Dense, and dense with the same LoRA steps (in f32: sparsity 0 is the model dequantized), so the
# recovered rows can be told apart from what the LoRA steps on Shakespeare give any model.
"$BIN" prune --model "$MODEL" --method magnitude --sparsity 0 --out "$OUT/dense" 2>"$OUT/dense.log"
echo "dense 0 $(ppl "$OUT/dense") ${RECOVER:+$(recover "$OUT/dense")}" | tee "$OUT/results.txt"
for setting in $SETTINGS; do
  if [[ $setting == *:* ]]; then amount=(--pattern "$setting"); else amount=(--sparsity "$setting"); fi
  for method in $METHODS; do
    name="$method-${setting/:/of}"
    "$BIN" prune --model "$MODEL" --method "$method" "${amount[@]}" --threads "$THREADS" \
      --calib data/shakespeare/hamlet.txt --calib-windows "$CALIB_WINDOWS" --calib-seq-len "$CALIB_SEQ_LEN" \
      --out "$OUT/$name" 2>"$OUT/$name.log"
    line="$method $setting $(ppl "$OUT/$name")"
    if [[ " $RECOVER " == *" $setting "* ]]; then
      line="$line $(recover "$OUT/$name")"
    fi
    echo "$line" | tee -a "$OUT/results.txt"
  done
done
# Structured: whole feed-forward channels removed (model.d_ff shrinks), by Wanda's channel score;
# evaluation time against the dense f32 model, alternating, median of ROUNDS.
ROUNDS=${ROUNDS:-3}
seconds() { local t0 t1; t0=$(date +%s.%N); "$BIN" eval --model "$1" --data data/shakespeare/macbeth.txt \
  --max-windows 64 >/dev/null; t1=$(date +%s.%N); echo "$t1 - $t0" | bc; }
median() { sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
for fraction in ${STRUCTURED-0.25 0.5}; do
  name="channels-$fraction"
  "$BIN" prune --model "$MODEL" --method wanda --structured channels --sparsity "$fraction" --threads "$THREADS" \
    --calib data/shakespeare/hamlet.txt --calib-windows "$CALIB_WINDOWS" --calib-seq-len "$CALIB_SEQ_LEN" \
    --out "$OUT/$name" 2>"$OUT/$name.log"
  dense_times=() pruned_times=()
  for _ in $(seq "$ROUNDS"); do
    dense_times+=("$(seconds "$OUT/dense")")
    pruned_times+=("$(seconds "$OUT/$name")")
  done
  dense_s=$(printf '%s\n' "${dense_times[@]}" | median)
  pruned_s=$(printf '%s\n' "${pruned_times[@]}" | median)
  echo "structured $fraction $(ppl "$OUT/$name") $(grep -oE '[0-9]+ parameters, from [0-9]+' "$OUT/$name.log") \
eval ${pruned_s}s vs dense ${dense_s}s ($(echo "scale=2; $dense_s / $pruned_s" | bc)x)" | tee -a "$OUT/structured.txt"
done

echo "| method | sparsity | perplexity | after ${RECOVER_STEPS} LoRA steps |"
echo "|---|---|---|---|"
awk '{ print "| " $1 " | " $2 " | " $3 " | " ($4 ? $4 : "") " |" }' "$OUT/results.txt"
cat "$OUT/structured.txt"
echo "(runs in $OUT)"
