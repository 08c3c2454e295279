#!/usr/bin/env bash
# Exact mode's prompt throughput against the stock library, side by side in one process
# (scripts/prompt_interleaved.py), at 16k and 32k tokens with flash attention off and on, into
# docs/results/exact-storage/interleaved (or $1). Each setting is one command: 16k takes about
# 10 minutes on 2 cores, 32k about 25. A setting whose JSON exists is skipped, so an interrupted
# run resumes where it stopped. Run it on an otherwise idle machine: the ratios are what it measures.
#
#   bash scripts/interleaved_results.sh
#   LENGTHS=16384 FLASH="on" bash scripts/interleaved_results.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-docs/results/exact-storage/interleaved}"
mkdir -p "$out"
for n_ctx in ${LENGTHS:-16384 32768}; do
    for fa in ${FLASH:-off on}; do
        name="$out/$((n_ctx / 1024))k-fa-$fa"
        if [ -f "$name.json" ]; then
            echo "skip $name.json (exists)"
            continue
        fi
        # the automatic G and W and each method's own ubatch: what a user gets
        .venv/bin/python scripts/prompt_interleaved.py --n-ctx "$n_ctx" --chunk 2048 --methods none exact \
            --flash-attn "$fa" --threads "${THREADS:-2}" --out "$name.json.part" 2>&1 | grep --line-buffered -v '^llama_context: n_ctx_seq' | tee "$name.log"
        mv "$name.json.part" "$name.json"
    done
done
