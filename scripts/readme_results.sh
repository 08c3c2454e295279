#!/usr/bin/env bash
# The earlier results of docs/evaluation.md (passkey, perplexity, cost), SmolLM2-135M from 1x to 4x its trained length (8k-32k tokens), into
# docs/results (or $1). About 7 hours on 2 CPU cores, most of it prompts of 24k-32k tokens.
# Every command runs with --resume: cut it off at any point and run it again, and it skips what
# the reports already hold. Passkey at 8k and 16k is one report (depths 0, 0.5 and 1); at 12k, 24k
# and 32k, where one prompt takes 3-25 minutes here, depth 0.5 only, in passkey-depth-0.5/.
#
#   bash scripts/readme_results.sh                 # after python3 scripts/bootstrap.py setup
#   THREADS=8 bash scripts/readme_results.sh       # more threads where there are more cores
set -euo pipefail
cd "$(dirname "$0")/.."
tool=(${SELFEXTEND_GGUF_CLI:-.venv/bin/selfextend-gguf})
out="${1:-docs/results}"
run=(--threads "${THREADS:-2}" --resume)
common=("${run[@]}" --out "$out")
half=("${run[@]}" --out "$out/passkey-depth-0.5")  # the depth-0.5 passkey report

# one length per command, so that a cut-off run keeps whole lengths. At 8k (n_ctx = L) the
# automatic choice turns every extension off, so only the stock model and exact mode forced on run.
"${tool[@]}" passkey --lengths 8192 --depths 0 0.5 1 --keys 1 --methods none exact@G2W1024 "${common[@]}"
"${tool[@]}" passkey --lengths 16384 --depths 0 0.5 1 --keys 1 "${common[@]}"
for length in 12288 24576 32768; do
    "${tool[@]}" passkey --lengths "$length" --depths 0.5 --keys 1 "${half[@]}"
done
# a fixed (G, W) next to the automatic one at 32k, where the automatic G = 8 missed the key
"${tool[@]}" passkey --lengths 32768 --depths 0.5 --keys 1 --methods exact --grid 5:1024 "${half[@]}"
for length in 16384 32768; do
    "${tool[@]}" perplexity --lengths "$length" --bucket 1024 "${common[@]}"
done
# the cost table: at 4k the automatic choice switches self-extend off, so G and W are fixed there;
# bench medians are only meaningful on an otherwise idle machine
"${tool[@]}" bench --lengths 4096 16384 --methods none shift@G4W1024 exact@G4W1024 --decode 32 "${common[@]}"
"${tool[@]}" bench --lengths 32768 --methods none shift exact --decode 32 "${common[@]}"
