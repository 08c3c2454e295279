#!/usr/bin/env bash
# The README's Results, SmolLM2-135M from 1x to 4x its trained length (8k-32k tokens), into
# docs/results (or $1). About 12 hours on 2 CPU cores, most of it passkey prompts at 24k-32k.
# Every command runs with --resume: cut it off at any point and run it again, and it skips what
# the reports already hold (docs/results has passkey at 16k and perplexity at 16k and 32k so far;
# docs/results/32k has passkey at 32k, depth 0.5 only, a separate report as its depths differ).
#
#   bash scripts/readme_results.sh                 # after python3 scripts/bootstrap.py setup
#   THREADS=8 bash scripts/readme_results.sh       # more threads where there are more cores
set -euo pipefail
cd "$(dirname "$0")/.."
tool=(${SELFEXTEND_GGUF_CLI:-.venv/bin/selfextend-gguf})
out="${1:-docs/results}"
common=(--threads "${THREADS:-2}" --out "$out" --resume)

# one length per command, shortest first after 16k, so that a cut-off run keeps whole lengths
for length in 16384 8192 12288 24576 32768; do
    "${tool[@]}" passkey --lengths "$length" --depths 0 0.5 1 --keys 1 "${common[@]}"
done
for length in 16384 32768; do
    "${tool[@]}" perplexity --lengths "$length" --bucket 1024 "${common[@]}"
done
# the cost table: at 4k the automatic choice switches self-extend off, so G and W are fixed there;
# bench medians are only meaningful on an otherwise idle machine
"${tool[@]}" bench --lengths 4096 16384 --methods none shift@G4W1024 exact@G4W1024 --decode 32 "${common[@]}"
"${tool[@]}" bench --lengths 32768 --methods none shift exact --decode 32 "${common[@]}"
