#!/usr/bin/env bash
# Build llama.cpp's CPU tools (llama-bench, llama-quantize, llama-perplexity, llama-tokenize)
# from the llama-cpp-python sdist on PyPI (its vendor/llama.cpp). A benchmark helper for issue 18,
# not part of CI. Idempotent: does nothing if the four binaries already exist.
#
#   LLAMACPP_DIR      where the tools go (default /work/llamacpp; bin/ holds the binaries)
#   LLAMACPP_VERSION  llama-cpp-python version (default 0.3.36)
#   PYTHON            a Python with pip (default /work/venv/bin/python, else python3)
#   JOBS              parallel build jobs (default 2)
#   LOCK              if set, heavy steps run under `flock $LOCK nice -n 10` (shared machines)
# CPU only, Release, GGML_NATIVE=ON, no CURL (LLAMA_CURL is deprecated in 0.3.36's llama.cpp and
# OFF by default; LLAMA_OPENSSL, which replaced it for downloads, is turned off), GGML_OPENMP as it
# defaults, static libraries.
set -euo pipefail

LLAMACPP_DIR=${LLAMACPP_DIR:-/work/llamacpp}
LLAMACPP_VERSION=${LLAMACPP_VERSION:-0.3.36}
JOBS=${JOBS:-2}
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x /work/venv/bin/python ]]; then PYTHON=/work/venv/bin/python; else PYTHON=python3; fi
fi
heavy() { if [[ -n "${LOCK:-}" ]]; then flock "$LOCK" nice -n 10 "$@"; else "$@"; fi; }

BIN="$LLAMACPP_DIR/bin"
TOOLS=(llama-bench llama-quantize llama-perplexity llama-tokenize)
have_all=1
for t in "${TOOLS[@]}"; do [[ -x "$BIN/$t" ]] || have_all=0; done
if [[ $have_all == 1 ]]; then
  echo "llama.cpp tools already in $BIN"; cat "$LLAMACPP_DIR/VERSION" 2>/dev/null || true
  exit 0
fi

mkdir -p "$LLAMACPP_DIR/src"
cd "$LLAMACPP_DIR/src"
SDIST="llama_cpp_python-$LLAMACPP_VERSION.tar.gz"
if [[ ! -f "$SDIST" ]]; then
  # Only the sdist from PyPI. Build isolation is off so pip prepares the metadata with the
  # scikit-build-core installed here instead of compiling cmake from source for a build env.
  "$PYTHON" -m pip install -q cmake ninja scikit-build-core
  "$PYTHON" -m pip download --no-deps --no-build-isolation --no-binary llama-cpp-python \
    "llama-cpp-python==$LLAMACPP_VERSION" -d .
fi
SRC="llama_cpp_python-$LLAMACPP_VERSION"
[[ -d "$SRC" ]] || tar xzf "$SDIST"
LL="$SRC/vendor/llama.cpp"
[[ -f "$LL/CMakeLists.txt" ]] || { echo "no vendor/llama.cpp in $SDIST" >&2; exit 1; }

CMAKE=$(command -v cmake || true)
[[ -n "$CMAKE" ]] || CMAKE="$(dirname "$PYTHON")/cmake"
GEN=()
if command -v ninja >/dev/null || [[ -x "$(dirname "$PYTHON")/ninja" ]]; then
  GEN=(-G Ninja -DCMAKE_MAKE_PROGRAM="$(command -v ninja || echo "$(dirname "$PYTHON")/ninja")")
fi

BUILD="$LLAMACPP_DIR/build"
heavy "$CMAKE" -S "$LL" -B "$BUILD" "${GEN[@]}" \
  -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
  -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=OFF \
  -DBUILD_SHARED_LIBS=OFF
heavy "$CMAKE" --build "$BUILD" --config Release -j"$JOBS" --target "${TOOLS[@]}"

mkdir -p "$BIN"
for t in "${TOOLS[@]}"; do cp "$BUILD/bin/$t" "$BIN/"; done
{
  echo "llama-cpp-python $LLAMACPP_VERSION (sdist, PyPI)"
  "$BIN/llama-bench" --version 2>&1 | head -3 || true
} > "$LLAMACPP_DIR/VERSION"
cat "$LLAMACPP_DIR/VERSION"
