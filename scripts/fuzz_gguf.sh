#!/usr/bin/env bash
# Coverage-guided fuzzing of the GGUF reader and importer with libFuzzer (issue 18): the targets
# in fuzz/ (its own workspace, outside the default build), built the way `cargo fuzz build` builds
# them (SanitizerCoverage, AddressSanitizer, debug assertions and overflow checks) with plain
# `cargo +nightly`, so nothing but a nightly toolchain is needed (no `cargo install cargo-fuzz`;
# with cargo-fuzz installed, `cd fuzz && cargo +nightly fuzz run gguf_read` does the same).
#
#   scripts/fuzz_gguf.sh [TARGET...]     (default: gguf_read gguf_import)
#
#   SECONDS_PER_TARGET (300)  RSS_LIMIT_MB (2048)  MAX_LEN (1048576)  CARGO_TARGET_DIR (fuzz/target)
# The corpus starts from the committed GGUF fixtures and grows in fuzz/corpus/TARGET (ignored by
# git); crashes land in fuzz/artifacts/TARGET. Each target's last libFuzzer lines are printed
# (executions, coverage, corpus size). Not a CI step: it runs for minutes on one core.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SECS=${SECONDS_PER_TARGET:-300}
RSS=${RSS_LIMIT_MB:-2048}
MAX_LEN=${MAX_LEN:-1048576}
TARGETS=("$@")
[[ ${#TARGETS[@]} -gt 0 ]] || TARGETS=(gguf_read gguf_import)
TRIPLE=x86_64-unknown-linux-gnu
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/fuzz/target}
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Zsanitizer=address \
-Cdebug-assertions -Coverflow-checks -Ctarget-cpu=x86-64-v3"
export RUSTDOCFLAGS=$RUSTFLAGS
cd "$ROOT/fuzz"
cargo +nightly build --release --target "$TRIPLE" --bins
for t in "${TARGETS[@]}"; do
  corpus="$ROOT/fuzz/corpus/$t"
  mkdir -p "$corpus" "$ROOT/fuzz/artifacts/$t"
  # Seeds: every committed GGUF fixture small enough to mutate quickly (most are model.gguf, so
  # each is named by its hash).
  while IFS= read -r f; do
    cp "$f" "$corpus/seed-$(sha1sum "$f" | cut -c1-12)"
  done < <(find "$ROOT/crates" -name '*.gguf' -size -400k)
  echo "== $t: ${SECS}s, corpus $(ls "$corpus" | wc -l) files"
  TMPDIR=/dev/shm "$CARGO_TARGET_DIR/$TRIPLE/release/$t" "$corpus" \
    -max_total_time="$SECS" -rss_limit_mb="$RSS" -max_len="$MAX_LEN" -timeout=20 -print_final_stats=1 \
    -artifact_prefix="$ROOT/fuzz/artifacts/$t/" > "$ROOT/fuzz/artifacts/$t.log" 2>&1 || status=$?
  grep -aE '^#[0-9]+[[:space:]]+(INITED|DONE)|^stat::|^==[0-9]+==|panicked|SUMMARY' "$ROOT/fuzz/artifacts/$t.log" | tail -n 12
  [[ -z "${status:-}" ]] || { echo "$t: libFuzzer exited with ${status}: see fuzz/artifacts/$t.log"; exit 1; }
done
