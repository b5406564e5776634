#!/usr/bin/env bash
# Prefill and decode speed of `truthgpt bench decode` against llama.cpp's llama-bench on the same
# GGUF files, in one run, rounds alternated (issue 18). A benchmark, not a CI test.
#
#   scripts/bench_vs_llamacpp.sh FILE.gguf...
#
# Each round runs, for each file, `llama-bench -m FILE -t T -p P -n N -r 1 -o json` and
# `truthgpt bench decode --model FILE --prompt-tokens P --tokens N --threads T --rounds 1`,
# the order swapped every round (ABBA) so drift in the machine falls on both sides alike.
# Then it prints per file the medians of llama.cpp's pp/tg tok/s (avg_ts of the test with
# n_prompt=P, n_gen=0 and of n_prompt=0, n_gen=N) and of ours (prefill_tok_per_s,
# decode_tok_per_s from the JSON line our command prints), and the ratios ours / llama.cpp.
# If our command is missing or fails, it says so and still prints llama.cpp's numbers.
#
#   ROUNDS (5)  THREADS (2)  PROMPT (128)  GEN (64)
#   LLAMACPP_DIR (/work/llamacpp; llama-bench in bin/, built by scripts/build_llamacpp.sh)
#   TRUTHGPT ($CARGO_TARGET_DIR or the repository's target/, then release/truthgpt)
#   OUT (a directory kept with every round's raw output; default a temporary one)
#   ONLY_LLAMACPP=1 skips our side.
#
# On a shared machine hold the CPU lock for the whole run, e.g.
#   flock /work/cpu.lock nice -n 10 scripts/bench_vs_llamacpp.sh /work/gguf-bench/*.gguf
set -uo pipefail

ROUNDS=${ROUNDS:-5}
THREADS=${THREADS:-2}
PROMPT=${PROMPT:-128}
GEN=${GEN:-64}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
LLAMACPP_DIR=${LLAMACPP_DIR:-/work/llamacpp}
LB="$LLAMACPP_DIR/bin/llama-bench"
TRUTHGPT=${TRUTHGPT:-${CARGO_TARGET_DIR:-$ROOT/target}/release/truthgpt}
PY=${PYTHON:-$( [[ -x /work/venv/bin/python ]] && echo /work/venv/bin/python || echo python3 )}

[[ $# -ge 1 ]] || { echo "usage: $0 FILE.gguf..." >&2; exit 2; }
[[ -x "$LB" ]] || { echo "no $LB: run scripts/build_llamacpp.sh (LLAMACPP_DIR=$LLAMACPP_DIR)" >&2; exit 2; }
for f in "$@"; do [[ -f "$f" ]] || { echo "no such file: $f" >&2; exit 2; }; done
if [[ -n "${OUT:-}" ]]; then mkdir -p "$OUT"; else OUT=$(mktemp -d /tmp/bench_vs_llamacpp.XXXXXX); fi

ours_ok=1
ours_why=""
if [[ "${ONLY_LLAMACPP:-0}" == 1 ]]; then
  ours_ok=0; ours_why="ONLY_LLAMACPP=1"
elif [[ ! -x "$TRUTHGPT" ]]; then
  ours_ok=0; ours_why="$TRUTHGPT not built (cargo build --release -p truthgpt)"
elif ! "$TRUTHGPT" bench decode --help >/dev/null 2>&1; then
  ours_ok=0; ours_why="'truthgpt bench decode' is not a command of $TRUTHGPT"
fi
[[ $ours_ok == 1 ]] || echo "OUR SIDE NOT MEASURED: $ours_why; llama.cpp's numbers only." >&2

echo "llama.cpp: $LB ($("$LB" --version 2>&1 | head -1)); threads $THREADS, pp$PROMPT, tg$GEN, $ROUNDS rounds; raw output in $OUT" >&2

run_llama() { # file idx round
  "$LB" -m "$1" -t "$THREADS" -p "$PROMPT" -n "$GEN" -r 1 -o json \
    > "$OUT/llama.$2.$3.json" 2> "$OUT/llama.$2.$3.err" \
    || echo "llama-bench failed on $1 (round $3): $(tail -3 "$OUT/llama.$2.$3.err")" >&2
}
declare -A ours_failed
run_ours() { # file idx round
  [[ $ours_ok == 1 && -z "${ours_failed[$2]:-}" ]] || return 0
  if ! "$TRUTHGPT" bench decode --model "$1" --prompt-tokens "$PROMPT" --tokens "$GEN" \
      --threads "$THREADS" --rounds 1 > "$OUT/ours.$2.$3.json" 2> "$OUT/ours.$2.$3.err"; then
    ours_failed[$2]=1
    tail -5 "$OUT/ours.$2.$3.err" > "$OUT/ours.$2.failed"
    echo "OUR SIDE FAILED on $1 (round $3; not retried for this file): $(tail -3 "$OUT/ours.$2.$3.err")" >&2
  fi
}

for ((r = 1; r <= ROUNDS; r++)); do
  i=0
  for f in "$@"; do
    if (( r % 2 )); then run_llama "$f" $i $r; run_ours "$f" $i $r
    else run_ours "$f" $i $r; run_llama "$f" $i $r; fi
    echo "round $r/$ROUNDS done: $(basename "$f")" >&2
    i=$((i + 1))
  done
done

"$PY" - "$OUT" "$ROUNDS" "$PROMPT" "$GEN" "$THREADS" "$ours_why" "$@" <<'PYEOF'
import json, os, statistics, sys
out, rounds, P, N, T, why = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
files = sys.argv[7:]

def llama(i, r):
    try:
        rows = json.load(open(os.path.join(out, f"llama.{i}.{r}.json")))
    except (OSError, ValueError):
        return None, None, None
    pp = [x["avg_ts"] for x in rows if x.get("n_prompt") == P and x.get("n_gen") == 0]
    tg = [x["avg_ts"] for x in rows if x.get("n_prompt") == 0 and x.get("n_gen") == N]
    build = rows[0].get("build_commit", "?") + f" ({rows[0].get('build_number', '?')})" if rows else None
    return (pp[0] if pp else None), (tg[0] if tg else None), build

def ours(i, r):
    try:
        lines = open(os.path.join(out, f"ours.{i}.{r}.json")).read().splitlines()
    except OSError:
        return None, None
    for line in reversed(lines):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            d = json.loads(line)
        except ValueError:
            continue
        if "decode_tok_per_s" in d or "prefill_tok_per_s" in d:
            return d.get("prefill_tok_per_s"), d.get("decode_tok_per_s")
    return None, None

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None

def fmt(x, w=8, p=2):
    return f"{x:{w}.{p}f}" if x is not None else f"{'-':>{w}}"

builds = set()
summary = []
print(f"threads {T}, pp{P} / tg{N}, {rounds} rounds alternated; medians in tok/s")
print(f"{'file':44} {'llama pp':>9} {'ours pp':>9} {'ratio':>6} {'llama tg':>9} {'ours tg':>9} {'ratio':>6}  size")
for i, f in enumerate(files):
    L = [llama(i, r) for r in range(1, rounds + 1)]
    O = [ours(i, r) for r in range(1, rounds + 1)]
    builds |= {b for _, _, b in L if b}
    lpp, ltg = med([x[0] for x in L]), med([x[1] for x in L])
    opp, otg = med([x[0] for x in O]), med([x[1] for x in O])
    rpp = opp / lpp if opp and lpp else None
    rtg = otg / ltg if otg and ltg else None
    size = os.path.getsize(f)
    print(f"{os.path.basename(f)[:44]:44} {fmt(lpp, 9)} {fmt(opp, 9)} {fmt(rpp, 6)} {fmt(ltg, 9)} {fmt(otg, 9)} {fmt(rtg, 6)}  {size / 1e9:.2f} GB")
    summary.append(dict(file=f, size_bytes=size, threads=T, prompt_tokens=P, gen_tokens=N, rounds=rounds,
                        llamacpp_pp_tok_per_s=lpp, llamacpp_tg_tok_per_s=ltg,
                        llamacpp_pp_all=[x[0] for x in L], llamacpp_tg_all=[x[1] for x in L],
                        ours_prefill_tok_per_s=opp, ours_decode_tok_per_s=otg,
                        ours_prefill_all=[x[0] for x in O], ours_decode_all=[x[1] for x in O],
                        ratio_prefill=rpp, ratio_decode=rtg))
for i, f in enumerate(files):
    if why:
        break
    failed = os.path.join(out, f"ours.{i}.failed")
    if os.path.exists(failed):
        err = " | ".join(l.strip() for l in open(failed).read().splitlines() if l.strip())
        print(f"OUR SIDE FAILED on {os.path.basename(f)}: {err or 'no message'}")
    elif all(v is None for v in summary[i]["ours_decode_all"] + summary[i]["ours_prefill_all"]):
        print(f"OUR SIDE printed no JSON line with prefill_tok_per_s/decode_tok_per_s on {os.path.basename(f)}")
if why:
    print(f"OUR SIDE NOT MEASURED: {why}")
print("llama.cpp build:", ", ".join(sorted(builds)) or "?")
with open(os.path.join(out, "summary.json"), "w") as fh:
    json.dump(dict(llamacpp_build=sorted(builds), results=summary), fh, indent=1)
print(f"summary: {os.path.join(out, 'summary.json')}")
PYEOF
