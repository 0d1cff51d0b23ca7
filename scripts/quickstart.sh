#!/usr/bin/env bash
# The README's first command: on a fresh machine with the Rust toolchain,
# install the local model (llama.cpp's llama-server + Gemma 3 270M, into
# ~/.cache/tollgate; a second run takes seconds), build tollgate, show the
# plan of an example workflow, run it on the local model, and replay its
# evaluation suite — no API keys,
# nothing leaves the machine.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup-local.sh >/dev/null
# `cargo run` rather than ./target/release/…: CARGO_TARGET_DIR may point elsewhere.
tollgate() { cargo run --release --quiet -- "$@"; }

ticket="Since the 4.2 update the app freezes every time I save a file larger than 2 GB."
echo "== tollgate plan (dry run: routes and cost, nothing spent)" >&2
tollgate plan workflows/local-triage.yaml --policy policies/local.yaml --input "ticket=$ticket"
echo >&2
echo "== tollgate run (starts llama-server, runs the steps, stops it)" >&2
# --no-cache: show the model answering, even when an earlier quickstart
# already journaled these answers.
tollgate run workflows/local-triage.yaml --policy policies/local.yaml --input "ticket=$ticket" --out .tollgate/quickstart --no-cache
echo >&2
echo "== tollgate test (the example suites, replayed offline from their recordings)" >&2
tollgate test evals/local-triage.yaml --replay --ci
