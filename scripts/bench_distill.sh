#!/usr/bin/env bash
# Distillation against no teacher, same student, same steps, same data, same tokenizer:
#
#   scripts/bench_distill.sh          # writes docs/distill.png
#
# The teacher is the quickstart's model (3-layer MoE, d_model 128, trained by `quickstart`);
# the student a 2-layer dense model a quarter of its width. Both students are `distill` runs
# from the same seed: alpha 0 (the teacher's term weighs nothing: plain cross-entropy on the
# data, but the same tokenizer and batches) against ALPHA at temperature TAU. Prints the final
# validation losses and draws both runs' curves into one plot. 2 threads.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bench_common.sh
STEPS=${STEPS:-400}
ALPHA=${ALPHA:-0.7}
TAU=${TAU:-2}
PLOT=${PLOT:-docs/distill.png}
TEACHER=${TEACHER:-$OUT/teacher}
[[ -e $TEACHER ]] || "$BIN" quickstart --out "$TEACHER" >"$OUT/teacher.log"
student=(--data data/shakespeare --steps "$STEPS" --threads "$THREADS" --temperature "$TAU"
  --set model.d_model=32 --set model.n_layers=2 --set model.n_heads=2 --set model.n_kv_heads=2
  --set model.d_ff=128 --set model.max_seq_len=128 --set model.positional=rope --set model.norm=rmsnorm
  --set model.ffn=swiglu --set model.bias=false --set model.tie_embeddings=true
  --set train.batch_size=16 --set train.seq_len=128 --set train.lr=3e-3 --set train.warmup_steps=40
  --set train.eval_every=50 --set train.eval_batches=8)
"$BIN" distill --teacher "$TEACHER" --alpha 0 --out "$OUT/no-teacher" "${student[@]}" >"$OUT/no-teacher.log"
"$BIN" distill --teacher "$TEACHER" --alpha "$ALPHA" --out "$OUT/distilled" "${student[@]}" >"$OUT/distilled.log"
"$BIN" plot "$OUT/no-teacher" "$OUT/distilled" --out "$PLOT"
echo "teacher: $(grep -oE 'validation loss [0-9.]+' "$OUT/teacher.log" 2>/dev/null | tail -1)"
for run in no-teacher distilled; do
  echo "$run: $(grep -oE 'finished at step [0-9]+: validation loss [0-9.]+, perplexity [0-9.]+' "$OUT/$run.log")"
done
echo "(runs in $OUT; plot in $PLOT)"
