#!/usr/bin/env bash
# Context management, measured on the real Gemma 3 270M (issue 14,
# "Measured"): pass rate, tokens sent and cost with and without each
# strategy, from benches/context/eval's recordings.
#
#   benches/context-eval.sh          the figures from the recordings (offline)
#   benches/context-eval.sh --live   record again first (needs scripts/setup-local.sh)
#
# Six suites, one per strategy, one command: 20 questions about Moby-Dick
# chapters 4-10 (tests/data/moby-dick, ~13,300 tokens; each answer in one
# passage) with the book trimmed to the window / retrieved / map-reduced,
# and 10 recall questions about a 30-turn support chat (the fact early or
# late) with the whole history / the last 4 turns / the last 4 and a
# summary. Every call is Gemma's (benches/context/eval/policies/local.yaml),
# so cost is $0: the second part prices the same requests on the default
# policy's cloud routes with `plan`.
set -euo pipefail
cd "$(dirname "$0")/.."
E=benches/context/eval
T="${CARGO_TARGET_DIR:-target}"
if [ -n "${TOLLGATE_BIN:-}" ]; then
  TG="$(realpath "$TOLLGATE_BIN")"   # a binary already built (no cargo run)
else
  cargo build -q --bin tollgate
  TG="$(realpath "$T/debug/tollgate")"
fi

if [ "${1:-}" = "--live" ]; then
  # shellcheck disable=SC1090
  [ -f ~/.cache/tollgate/env ] && set -a && . ~/.cache/tollgate/env && set +a
  (cd "$E" && python3 gen.py)
  rm -rf "$E/cassettes"
  "$TG" compare "$E" --policy "$E/policies/local.yaml" --record -q >/dev/null || true
fi

echo "== pass rate and tokens per strategy (Gemma 3 270M, replayed)"
"$TG" compare "$E" --policy "$E/policies/local.yaml" --replay -q | grep -v "^  *task \|^    \|^  [*] \|^$" || true

echo
echo "== the same requests priced on policies/default.yaml (plan, one question)"
Q="question=How many dollars in silver did Queequeg divide into two equal portions?"
for w in trimmed retrieved mapped; do
  args=(--input "$Q")
  [ "$w" = retrieved ] || args+=(--input "doc=@tests/data/moby-dick/chapters-4-10.txt")
  printf '%-10s ' "$w"
  "$TG" plan "$E/workflows/$w.yaml" --policy policies/default.yaml "${args[@]}" 2>/dev/null \
    | grep -E "^  (calls|cost|context) " | tr -s ' ' | tr '\n' ' '
  echo
done
