#!/usr/bin/env bash
# Endpoint pools on real llama.cpp servers (issue 16 §2): throughput of a
# 200-item `for_each` on one endpoint vs two, and the same run with one of
# the two servers killed (SIGKILL) a quarter of the way through.
#
#   bash benches/pool.sh [ITEMS]          # default 200
#
# Needs the model and server of scripts/setup-local.sh (~/.cache/tollgate,
# or $LLAMA_SERVER / $TOLLGATE_MODEL) and a tollgate binary
# ($TOLLGATE_BENCH_BIN, else target/debug/tollgate from `cargo build`;
# the time is the model's, so a debug build measures the same thing).
#
# Workload: Gemma 3 270M (Q4_K_M), every server `-t 1 -c 2048` (one core
# each: "one more box" of the same size), each endpoint `slots: 2`,
# `--concurrency 4`, prompts "Is this a bug or a feature? ticket N",
# `max_output_tokens: 8`, temperature 0, no cache (`--no-cache`).
# Printed: wall time, items answered, calls per second; for the kill row, how
# many items each server finished and that none was lost. The last row lets
# tollgate start and stop the two servers itself (`launch` on the pool):
# its wall time includes loading the model in both and stopping them.
set -euo pipefail
cd "$(dirname "$0")/.."

ITEMS=${1:-200}
CACHE=${TOLLGATE_CACHE:-$HOME/.cache/tollgate}
SERVER=${LLAMA_SERVER:-$CACHE/bin/llama-server}
MODEL=${TOLLGATE_MODEL:-$CACHE/models/gemma-3-270m-q4_k_m.gguf}
BIN=${TOLLGATE_BENCH_BIN:-}
if [ -z "$BIN" ]; then
  BIN=$PWD/target/debug/tollgate
fi
for f in "$SERVER" "$MODEL" "$BIN"; do
  [ -e "$f" ] || { echo "missing $f (run scripts/setup-local.sh and cargo build)" >&2; exit 2; }
done

WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_server PORT → starts llama-server in the background, logs to $WORK/server-PORT.log
start_server() {
  OMP_WAIT_POLICY=passive "$SERVER" -m "$MODEL" --host 127.0.0.1 --port "$1" \
    -c 2048 -t 1 --alias gemma-3-270m >/dev/null 2>"$WORK/server-$1.log" &
  PIDS+=($!)
  echo $!
}
wait_healthy() {
  for _ in $(seq 600); do
    curl -sf "http://127.0.0.1:$1/health" | grep -q ok && return 0
    sleep 0.2
  done
  echo "server on $1 did not start" >&2; exit 1
}
finished() { grep -c "stop processing" "$WORK/server-$1.log" || true; }

mkdir -p "$WORK/p/.git"
python3 - "$ITEMS" > "$WORK/p/wf.yaml" <<'EOF'
import sys
n = int(sys.argv[1])
items = ", ".join(f'"ticket {i}"' for i in range(1, n + 1))
print(f"""version: 1
name: pooled
inputs:
  items: {{ type: array, default: [{items}] }}
steps:
  each:
    task: classify
    for_each: inputs.items
    prompt: "Is this a bug or a feature? {{{{ item }}}}"
    max_output_tokens: 8
    temperature: 0
""")
EOF
policy() { # policy ENDPOINTS...
  local eps=""
  for p in "$@"; do eps+="{ url: \"http://127.0.0.1:$p/v1\", slots: 2 }, "; done
  cat > "$WORK/p/policy.yaml" <<EOF
version: 1
providers:
  llamacpp: { kind: openai-compatible, endpoints: [${eps%, }] }
models:
  local: { provider: llamacpp, model: gemma-3-270m, tier: local, context_window: 2048 }
rules:
  - { name: all, use: local }
EOF
}
# launched_policy PORTS... → the same pool, its servers started by tollgate
launched_policy() {
  local eps=""
  for p in "$@"; do eps+="{ url: \"http://127.0.0.1:$p/v1\", slots: 2 }, "; done
  cat > "$WORK/p/policy.yaml" <<EOF
version: 1
providers:
  llamacpp:
    kind: openai-compatible
    endpoints: [${eps%, }]
    launch: { binary: "$SERVER", model: "$MODEL", context: 2048, threads: 1, args: ["--alias", "gemma-3-270m"] }
models:
  local: { provider: llamacpp, model: gemma-3-270m, tier: local, context_window: 2048 }
rules:
  - { name: all, use: local }
EOF
}
# run [STATE] → prints "wall answered" (the journal in $WORK/STATE)
run() {
  local t0 t1 out
  t0=$(date +%s.%N)
  out=$(cd "$WORK/p" && "$BIN" --color never run wf.yaml --policy policy.yaml --no-cache \
        --concurrency 4 --format json --state "$WORK/${1:-state-$RANDOM}" 2>"$WORK/run.err") || {
    echo "run failed:" >&2; cat "$WORK/run.err" >&2; exit 1; }
  t1=$(date +%s.%N)
  local answered
  answered=$(printf '%s' "$out" | python3 -c 'import json,sys; r=json.load(sys.stdin); s=[s for s in r["steps"] if s["id"]=="each"][0]; print(sum(1 for o in s["output"] if o))')
  echo "$(python3 -c "print(f'{$t1-$t0:.2f}')") $answered"
}
row() { # row NAME WALL ANSWERED
  printf '%-28s %8ss %5s/%s answered %6.2f calls/s\n' "$1" "$2" "$3" "$ITEMS" "$(python3 -c "print($3/$2)")"
}

A=$(free_port); start_server "$A" >/dev/null
B=$(free_port); PB=$(start_server "$B")
wait_healthy "$A"; wait_healthy "$B"
# Warm both (the first request loads weights into the page cache).
for p in "$A" "$B"; do
  curl -sf "http://127.0.0.1:$p/v1/chat/completions" -H 'content-type: application/json' \
    -d '{"model":"gemma-3-270m","messages":[{"role":"user","content":"hi"}],"max_tokens":1}' >/dev/null
done

echo "pool bench: $ITEMS items, Gemma 3 270M, binary $BIN"
policy "$A"; read -r wall ok < <(run); row "1 endpoint" "$wall" "$ok"
policy "$A" "$B"; read -r wall ok < <(run); row "2 endpoints" "$wall" "$ok"

# Kill b a quarter of the way through the run.
policy "$A" "$B"
before_a=$(finished "$A"); before_b=$(finished "$B")
( while [ $(( $(finished "$A") + $(finished "$B") - before_a - before_b )) -lt $((ITEMS / 4)) ]; do sleep 0.05; done
  kill -9 "$PB"; echo "$(date +%s.%N)" > "$WORK/killed" ) &
read -r wall ok < <(run state-kill)
row "2 endpoints, b killed at 1/4" "$wall" "$ok"
echo "  b finished $(( $(finished "$B") - before_b )) before it was killed, a $(( $(finished "$A") - before_a ))"
# Failover time, from the journal (each call's start, end and the server
# that answered): the calls in flight when b died were sent again to a;
# how long after the kill the last of them was answered, against how long
# one call takes. Calls that were on a all along finish within one call
# time of the kill, so a larger figure is the failover's.
python3 - "$WORK/state-kill/state.db" "$(cat "$WORK/killed")" "$B" <<'PY'
import sqlite3, statistics, sys
db, killed, b = sys.argv[1], float(sys.argv[2]) * 1000, sys.argv[3]
rows = sqlite3.connect(db).execute(
    "SELECT started_ms, finished_ms, latency_ms, endpoint FROM calls WHERE outcome IN ('ok', 'truncated')").fetchall()
span = [r for r in rows if r[0] < killed < r[1]]
typical = statistics.median(r[2] for r in rows)
on_b_after = sum(1 for r in rows if r[1] > killed + 1000 and b in (r[3] or ""))
last = max((r[1] - killed for r in span), default=0)
print(f"  failover: {len(span)} calls in flight at the kill, the last answered {last / 1000:.2f} s after it "
      f"(one call takes {typical / 1000:.2f} s, median); answers from b after the kill: {on_b_after}")
PY
[ "$ok" = "$ITEMS" ] || { echo "LOST $(( ITEMS - ok )) items" >&2; exit 1; }

# The pool's servers started and stopped by tollgate (`launch`), on two
# ports nothing listens on.
kill "${PIDS[@]}" 2>/dev/null || true
PIDS=()
C=$(free_port); D=$(free_port)
launched_policy "$C" "$D"
read -r wall ok < <(run)
row "2 endpoints, launched" "$wall" "$ok"
for p in "$C" "$D"; do
  if curl -s "http://127.0.0.1:$p/health" >/dev/null; then echo "server on $p still running" >&2; exit 1; fi
done
