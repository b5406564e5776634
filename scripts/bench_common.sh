# Shared by the compression benchmarks (bench_prune.sh, bench_finetune.sh, bench_distill.sh):
# sourced after `cd` to the repository root. Settings from the environment, with defaults.
MODEL=${MODEL:-/work/gguf-real/SmolLM2-135M-Instruct.Q4_1.gguf}
BIN=${BIN:-target/release/truthgpt}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
THREADS=${THREADS:-2}
EVAL_WINDOWS=${EVAL_WINDOWS:-256}
export RAYON_NUM_THREADS=$THREADS
[[ -x $BIN ]] || cargo build --release -p truthgpt

need_model() {
  [[ -f $MODEL ]] || { echo "no $MODEL: run scripts/fetch_smollm2_gguf.sh" >&2; exit 1; }
}

# Perplexity of a model on Macbeth, which no benchmark trains or calibrates on.
ppl() {
  "$BIN" eval --model "$1" --data data/shakespeare/macbeth.txt --max-windows "$EVAL_WINDOWS" |
    sed -E 's/.*perplexity ([0-9.]+).*/\1/'
}
