#!/usr/bin/env bash
# The `test` rows of `cargo bench --bench scale`, run through promptfoo
# 0.123.1 against the same loopback fake, for a side-by-side comparison.
# Not part of CI; needs node/npx (promptfoo is fetched by npx on first use)
# and GNU time.
#
#   bash benches/promptfoo.sh [CASES] [instant|slow]    # default: 10000 instant
#
# Same workload as the bench: CASES tickets, one prompt ("Label as bug or
# feature: …", at most 5 output tokens), assertions `equals: bug` and
# `contains: bu`, 16 calls in flight, no cache, answers at once (instant) or
# after 50 ms (slow). Prints promptfoo's wall time (s) and peak RSS (KB).
set -euo pipefail
cd "$(dirname "$0")/.."

cases=${1:-10000}
which=${2:-instant}
work=$(mktemp -d)
fake_out="$work/fake.txt"
cleanup() {
    [[ -n ${fake_pid:-} ]] && kill "$fake_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# The fakes of the scale bench, in the background.
cargo bench --quiet --bench scale -- --serve >"$fake_out" &
fake_pid=$!
for _ in $(seq 600); do
    grep -q "^$which " "$fake_out" 2>/dev/null && break
    sleep 0.5
done
base=$(awk -v w="$which" '$1 == w { print $2 }' "$fake_out")
[[ -n $base ]] || { echo "the fake did not start" >&2; exit 1; }

{
    for ((i = 0; i < cases; i++)); do
        echo "- vars: { ticket: \"The app crashes when I open file number $i.\" }"
        echo "  assert: [{ type: equals, value: bug }, { type: contains, value: bu }]"
    done
} >"$work/tests.yaml"
cat >"$work/promptfooconfig.yaml" <<EOF
description: tollgate scale bench, promptfoo side
prompts:
  - "Label as bug or feature: {{ticket}}"
providers:
  - id: openai:chat:bench
    config:
      apiBaseUrl: $base/v1
      apiKey: not-a-key
      max_tokens: 5
tests: file://tests.yaml
EOF

export PROMPTFOO_DISABLE_TELEMETRY=1 PROMPTFOO_DISABLE_UPDATE=1 PROMPTFOO_CONFIG_DIR="$work/home"
/usr/bin/time -f "promptfoo 0.123.1, $cases cases, $which: %e s wall, %M KB peak RSS" \
    npx -y promptfoo@0.123.1 eval -c "$work/promptfooconfig.yaml" \
    --max-concurrency 16 --no-cache --no-progress-bar --no-table --no-write >/dev/null
