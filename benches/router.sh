#!/usr/bin/env bash
# The learned router, measured (issue 13, "Measured, honestly"): Gemma 3
# 270M through llama.cpp (weak) against a perfect stand-in priced as
# gpt-5.4 (strong, crates/fake-llm/examples/oracle.rs), and a cascade
# between them, on benches/router's 240 cases.
#
#   benches/router.sh          the figures from the recordings (offline)
#   benches/router.sh --live   record again first (needs scripts/setup-local.sh)
#
# Prints: the comparison table (always weak / always strong / cascade, all
# cases), the router trained from it (checked byte for byte against the
# committed benches/router/router.json), and `router eval` on the held-out
# test split: the quality/cost curve against random routing, APGR,
# calibration error, the cascade beside the router at the cascade's own
# strong share, and training and scoring times (these vary run to run).
set -euo pipefail
cd "$(dirname "$0")/.."
B=benches/router
T="${CARGO_TARGET_DIR:-target}"
cargo build -q --bin tollgate
TG="$(realpath "$T/debug/tollgate")"
TMP="$(mktemp -d)"
ORACLE_PID=""
cleanup() {
  if [ -n "$ORACLE_PID" ]; then kill "$ORACLE_PID" 2>/dev/null || true; fi
  rm -rf "$TMP"
}
trap cleanup EXIT

if [ "${1:-}" = "--live" ]; then
  cargo build -q -p fake-llm --example oracle
  # shellcheck disable=SC1090
  [ -f ~/.cache/tollgate/env ] && set -a && . ~/.cache/tollgate/env && set +a
  (cd "$B" && python3 gen_cases.py >/dev/null)
  "$T/debug/examples/oracle" "$B/answers.jsonl" 18931 >"$TMP/oracle.log" 2>&1 &
  ORACLE_PID=$!
  sleep 1
  rm -rf "$B/cassettes"
  (cd "$B" && ROUTER_BENCH_KEY=stand-in "$TG" compare suite.yaml \
    --policy weak.yaml --policy strong.yaml --policy cascade.yaml --record -q >/dev/null)
fi

echo "== compare (all 240 cases, replayed)"
(cd "$B" && "$TG" compare suite.yaml --policy weak.yaml --policy strong.yaml \
  --policy cascade.yaml --replay -q --out "$TMP/comparison.json")

echo
echo "== router train"
start=$(date +%s%N)
"$TG" router train "$TMP/comparison.json" --weak weak --strong strong \
  --target-strong-share 0.3 -o "$TMP/router.json"
end=$(date +%s%N)
echo "(the whole command: $(( (end - start) / 1000000 )) ms)"
if [ "${1:-}" = "--live" ]; then
  cp "$TMP/router.json" "$B/router.json"
elif cmp -s "$TMP/router.json" "$B/router.json"; then
  echo "router file reproduced byte for byte: $B/router.json"
else
  echo "router file differs from $B/router.json" >&2
  exit 1
fi

echo
echo "== router eval (held-out test split)"
"$TG" router eval "$B/router.json" "$TMP/comparison.json" --versus cascade --timing

echo
echo "== plan under the routed policy (the router's score per step)"
"$TG" plan "$B/workflow.yaml" --policy "$B/routed.yaml" \
  --input "prompt=What is 487 times 23? Answer with the number only." | grep -E "^  answer|router|model"
