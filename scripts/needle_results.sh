#!/usr/bin/env bash
# The needle evaluation of docs/evaluation.md: SmolLM2-135M at 1x to 4x its trained length
# (8k-32k tokens), 40 needles per context, all five methods, then exact mode's G x W grid at 3x
# and 4x (needles and perplexity), into docs/results/needle (or $1).
#
# Each command is one unit that fits well under an hour on 2 CPU cores (a 32k-token prompt takes
# 35-40 minutes there), and runs with --resume: cut it off at any point and run it again, and it
# skips what the report already holds. Pick a part with $PART:
#
#   bash scripts/needle_results.sh                 # everything (about 30 hours on 2 cores)
#   PART=lengths bash scripts/needle_results.sh    # the five methods at 8k-32k (about 6 hours)
#   PART=grid bash scripts/needle_results.sh       # the G x W grid at 24k and 32k, perplexity then needles
#   PART=grid-perplexity bash scripts/needle_results.sh   # only its perplexity (PART=grid-needle: needles)
#   THREADS=8 bash scripts/needle_results.sh       # more threads where there are more cores
set -euo pipefail
cd "$(dirname "$0")/.."
tool=(${SELFEXTEND_GGUF_CLI:-.venv/bin/selfextend-gguf})
out="${1:-docs/results/needle}"
run=(--threads "${THREADS:-2}" --no-progress --resume)
needle=(needle --needles 40 --contexts 1 "${run[@]}")
part="${PART:-all}"

if [ "$part" = all ] || [ "$part" = lengths ]; then
    # at 8k (n_ctx = L) every method is the stock model: evaluated once, recorded for all five
    "${tool[@]}" "${needle[@]}" --lengths 8192 --methods exact shift none yarn linear --out "$out"
    for length in 16384 24576 32768; do
        for method in exact shift none yarn linear; do  # the paper's method first
            "${tool[@]}" "${needle[@]}" --lengths "$length" --methods "$method" --out "$out"
        done
    done
fi

# exact mode's G x W grid, in the order that gives the rule its data soonest: the smallest G that
# reaches n_ctx for every W and length first, then that G + 1, and so on. (L - W) * G + W must reach
# n_ctx: G >= 4 at 24k and G >= 5 at 32k for every W here.
grid_cells() {
    for step in 0 1 2 3 4; do
        for w in 1024 512 2048; do
            for length in 24576 32768; do
                if [ "$length" = 24576 ]; then g=$((4 + step)); else g=$((5 + step)); fi
                if [ "$g" -le 8 ]; then echo "$length exact@G${g}W${w}"; fi
            done
        done
        if [ "$step" = 0 ]; then
            # the rule at 2x L as well: G = 3, the smallest that reaches 16k with W = 1024, and 4
            echo "16384 exact@G3W1024"
            echo "16384 exact@G4W1024"
        fi
    done
}

# perplexity beyond L first: it separates the settings, where the needles at 3x-4x L find 2 of 40
# for every method (docs/evaluation.md), so their grid comes second
if [ "$part" = all ] || [ "$part" = grid ] || [ "$part" = grid-perplexity ]; then
    grid_cells | while read -r length method; do
        "${tool[@]}" perplexity --lengths "$length" --bucket 1024 --methods "$method" "${run[@]}" --out "$out/grid" < /dev/null
    done
fi

if [ "$part" = all ] || [ "$part" = grid ] || [ "$part" = grid-needle ]; then
    grid_cells | while read -r length method; do
        "${tool[@]}" "${needle[@]}" --lengths "$length" --methods "$method" --out "$out/grid" < /dev/null
    done
fi
