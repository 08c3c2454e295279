"""The pinned llama.cpp that selfextend-gguf patches and builds.

The source is the ``vendor/llama.cpp`` tree of the ``llama-cpp-python`` sdist of
this version, so the ctypes bindings and the native library always match. Bump
both constants together, deliberately, and re-check that ``patches/series``
still applies.

This file is also read by ``scripts/fetch_llama_cpp.py`` before the package is
installed, so it must stay importable on its own (no package-relative imports).
"""

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
LLAMA_CPP_COMMIT = "0c1e57098"
