#!/usr/bin/env bash
# Fuzzes the server's OpenAPI document with schemathesis (pip install schemathesis): every route,
# generated and mutated bodies, with an admin key so no route is skipped. Usage:
#   scripts/schemathesis.sh [MODEL_DIR] [EXAMPLES] [EXTRA SCHEMATHESIS ARGS...]
#   (default: runs/quickstart, 100; the port is $PORT, default 8931)
# Starts `truthgpt serve` with the cache on and limits off, and stops it after.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-runs/quickstart}
examples=${2:-100}
shift $(( $# < 2 ? $# : 2 ))
port=${PORT:-8931}
config=$(mktemp --suffix=.yaml)
trap 'kill $server 2>/dev/null; rm -f "$config"' EXIT
cat > "$config" <<YAML
port: $port
limits: {requests_per_minute: 0, tokens_per_minute: 0}
keys: [{name: fuzz, key: sk-fuzz, tenant: fuzz, role: admin}]
YAML
RUST_LOG=warn target/release/truthgpt serve --model "$model" --config "$config" </dev/null &
server=$!
for _ in $(seq 50); do curl -sf localhost:$port/health >/dev/null && break; sleep 0.2; done
# All checks. Excluded: /admin/reload (a fuzzed path must not replace the model) and /v1/stream
# (a WebSocket upgrade, which OpenAPI cannot describe; crates/cli/tests/serve.rs covers it).
# positive_data_acceptance is left out (ALL_CHECKS=1 keeps it): it flags deliberate 400s that a
# schema cannot express, e.g. a prompt longer than the model's context (docs/serving.md lists them).
exclude=(--exclude-checks positive_data_acceptance)
[[ ${ALL_CHECKS:-0} == 1 ]] && exclude=()
schemathesis run "http://127.0.0.1:$port/openapi.json" \
  --header "Authorization: Bearer sk-fuzz" \
  --checks all \
  "${exclude[@]}" \
  --exclude-path /admin/reload \
  --exclude-path /v1/stream \
  --max-examples "$examples" \
  --phases examples,coverage,fuzzing \
  "$@"
