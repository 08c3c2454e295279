#!/usr/bin/env bash
# The GPU checks of exact mode, on a machine with an NVIDIA GPU (CUDA 13 driver, libcublas.so.13), numpy
# and pytest, against the bundle that scripts/gpu_bundle.sh makes:
#
#   bash scripts/gpu_check.sh BUNDLE_DIR OUT_DIR [tests|bench|all] [SECONDS]
#
# tests: the fast suites that compare both modes' graphs with the NumPy oracle and the stock library
#        (exact mode, shift mode, RoPE variants, caches and sequences, iSWA) and the backend audit, with
#        every layer of every model offloaded (SELFEXTEND_TEST_N_GPU_LAYERS=-1); the audit then also
#        asserts that each op exact mode adds runs on the GPU wherever the stock graph's ops do.
# bench: `selfextend-gguf bench` of stock, shift and exact mode, flash attention off and on, at 4k, 16k and
#        32k, on a model of SmolLM2-135M's shape with random Q8_0 weights (speed does not depend on the
#        weights), every layer on the GPU. Resumable: the report is rewritten after every run.
# SECONDS (default 540) bounds the whole run: each step gets what is left, the bench stops where the time
# runs out (its report keeps every finished run). The logs and the bench report go to OUT_DIR.
set -uo pipefail

bundle=$(cd "$1" && pwd)
out=$(mkdir -p "$2" && cd "$2" && pwd)
what=${3:-all}
deadline=$((SECONDS + ${4:-540}))
left() { echo $((deadline - SECONDS)); }
root=$(cd "$(dirname "$0")/.." && pwd)

site=/tmp/selfextend-gpu-site
rm -rf "$site" && mkdir -p "$site" && tar -C "$site" -xJf "$bundle/site.tar.xz" || exit 1
export PYTHONPATH="$site/site${PYTHONPATH:+:$PYTHONPATH}"
export LLAMA_CPP_LIB_PATH="$site/site/selfextend_gguf/lib"
# cuBLAS from wherever the machine has it (the CUDA toolkit, or a Python wheel's nvidia/ folder)
cublas=$(find /usr/local /usr/lib /opt -name 'libcublas.so.13*' 2>/dev/null | head -1)
[ -n "$cublas" ] && export LD_LIBRARY_PATH="$(dirname "$cublas")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
python3 -P - <<'EOF' 2>&1 | tee -a "$out/gpu.txt" || exit 1
import selfextend_gguf, llama_cpp
print("llama_cpp loaded from", llama_cpp.llama_cpp._base_path, "; GPU offload:", llama_cpp.llama_supports_gpu_offload())
EOF

status=0
if [ "$what" = tests ] || [ "$what" = all ]; then
    echo "== tests (every layer on the GPU)"
    ( cd "$root" && SELFEXTEND_TEST_N_GPU_LAYERS=-1 timeout $(( $(left) < 240 ? $(left) : 240 )) python3 -P -m pytest -p no:cacheprovider -q -rA \
        -m "not slow" tests/test_exact_graph.py tests/test_backend_audit.py \
        tests/test_exact_mode.py tests/test_shift.py tests/test_rope_variants.py tests/test_sliding_window.py \
        tests/test_caches_and_seqs.py tests/test_oracle.py > "$out/tests.log" 2>&1 )
    status=$?
    # the measured errors (exact mode against the oracle, the stock library's flash attention against
    # its F32 run) and the audit's placements, from the passed tests' output
    grep -E "^\[(fa|audit)|^  [A-Z_]+: " "$out/tests.log" > "$out/tests-summary.txt"
    grep -E "^(FAILED|ERROR) " "$out/tests.log" | head -40
    tail -1 "$out/tests.log"
fi
if [ "$what" = bench ] || [ "$what" = all ]; then
    echo "== bench (every layer on the GPU)"
    model=/tmp/smollm2-shape-q8_0.gguf
    [ -f "$model" ] || (cd "$root" && python3 -P - "$model") <<'EOF' || exit 1
import sys
sys.path.insert(0, "tests")
from tiny_models import write_tiny_model
# SmolLM2-135M's shape: llama, 30 layers, n_embd 576, 9 heads / 3 KV heads, n_ff 1536, vocab 49152, 8k trained
write_tiny_model(sys.argv[1], arch="llama", n_layer=30, n_embd=576, n_head=9, n_head_kv=3, n_ff=1536,
                 n_vocab=49152, context_length=8192, rope_theta=100000.0, dtype="q8_0", seed=1)
EOF
    # G = 4 reaches (8192 - 1024) * 4 + 1024 = 29696 tokens; 32k takes G = 8
    for n in 4096 16384 32768; do
        [ "$(left)" -gt 20 ] || break
        g=$([ $n -le 29696 ] && echo 4 || echo 8)
        ( cd "$root" && timeout $(($(left) - 10)) python3 -P -m selfextend_gguf.cli bench --model "$model" --lengths $n \
            --methods none shift@G${g}W1024 exact@G${g}W1024 --flash-attn both --n-gpu-layers -1 --threads 8 \
            --decode 64 --repeat 3 --no-progress --resume --out "$out/bench" >> "$out/bench.log" 2>&1 )
        tail -9 "$out/bench.log"
    done
fi
exit $status
