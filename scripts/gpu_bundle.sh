#!/usr/bin/env bash
# Pack a CUDA build of the patched library, with the Python packages it needs, for scripts/gpu_check.sh on
# a machine that has a GPU but cannot build or install (no compiler time to spare, no package index):
#
#   bash scripts/gpu_bundle.sh BUILD_DIR BUNDLE_DIR
#
# BUILD_DIR is a CMake build of this repository's CMakeLists.txt with -DGGML_CUDA=ON, for example
#
#   cmake -S . -B /tmp/cuda -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON \
#         -DCMAKE_CUDA_ARCHITECTURES=90-real -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
#   ninja -C /tmp/cuda selfextend_all
#
# (GGML_NATIVE=OFF: the CPU backend must run on the other machine's processor too; the target GPU's
# architecture only, to keep the library small). BUNDLE_DIR/site.tar.xz then holds a site-packages folder:
# selfextend_gguf from this checkout with the CUDA libraries (and libcudart) in its lib/, and the pure-Python
# llama_cpp bindings, gguf and diskcache from this checkout's .venv, with their metadata. cuBLAS is not
# packed (hundreds of MB): the GPU machine must have libcublas.so.13.
set -euo pipefail

build=$(cd "$1" && pwd)
out=$(mkdir -p "$2" && cd "$2" && pwd)
root=$(cd "$(dirname "$0")/.." && pwd)
site_packages=$(ls -d "$root"/.venv/lib/python3*/site-packages | head -1)

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/site"
cp -r "$root/selfextend_gguf" "$stage/site/"
rm -rf "$stage/site/selfextend_gguf/lib" "$stage/site/selfextend_gguf/bin"
cmake --install "$build" --component selfextend --prefix "$stage/site" >/dev/null
if [ -f "$stage/site/selfextend_gguf/lib/libggml-cuda.so" ]; then
    cudart=$(ldd "$stage/site/selfextend_gguf/lib/libggml-cuda.so" | awk '/libcudart/ {print $3}')
    cp -L "$cudart" "$stage/site/selfextend_gguf/lib/"
fi
for name in llama_cpp llama_cpp_python-*.dist-info gguf gguf-*.dist-info diskcache diskcache-*.dist-info \
            tqdm tqdm-*.dist-info selfextend_gguf-*.dist-info; do
    cp -r "$site_packages"/$name "$stage/site/"
done
find "$stage/site" -name __pycache__ -prune -exec rm -rf {} +
tar -C "$stage" -cJf "$out/site.tar.xz" site
ls -l "$out/site.tar.xz"
