"""Point llama-cpp-python at this package's patched llama.cpp, and check the pairing.

llama-cpp-python loads its native library once, when ``llama_cpp`` is first
imported, from ``LLAMA_CPP_LIB_PATH`` if set. This module sets that variable to
the libraries built with this package (or to ``SELFEXTEND_GGUF_LIB_DIR`` for a
development build) *before* that import, and turns every way the pairing can go
wrong into a :class:`NativeLibraryError` that says what to do. The wheel also
installs ``selfextend_gguf.pth`` into site-packages, which sets the same variable
(unless already set) when the interpreter starts, so that ``llama_cpp`` imported
first, or without this package, loads the patched library too.
"""

from __future__ import annotations

import json
import os
import sys
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from types import ModuleType

from ._pinned import LLAMA_CPP_PYTHON_VERSION
from .errors import NativeLibraryError

LIB_DIR_ENV = "SELFEXTEND_GGUF_LIB_DIR"
_PACKAGE_LIB_DIR = Path(__file__).resolve().parent / "lib"
_REINSTALL = "Reinstall with `python3 scripts/bootstrap.py setup` from the selfextend-gguf checkout."


def library_dir() -> Path:
    """The directory holding the patched ``libllama`` that selfextend-gguf uses."""
    override = os.environ.get(LIB_DIR_ENV)
    return Path(override).expanduser().resolve() if override else _PACKAGE_LIB_DIR


def _library_file(directory: Path) -> Path | None:
    for name in ("libllama.so", "libllama.dylib", "llama.dll", "libllama.dll"):
        if (directory / name).is_file():
            return directory / name
    return None


def build_info() -> dict:
    """What the build recorded about itself (``source_key``: pinned version + patch hash)."""
    path = library_dir() / "build_info.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _check_bindings_version() -> None:
    try:
        version = metadata.version("llama_cpp_python")
    except metadata.PackageNotFoundError:
        raise NativeLibraryError(
            "llama-cpp-python is not installed. selfextend-gguf needs its Python bindings only: "
            f'CMAKE_ARGS="-DLLAMA_BUILD=OFF" pip install llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION} '
            f"(or {_REINSTALL})"
        ) from None
    if version != LLAMA_CPP_PYTHON_VERSION:
        raise NativeLibraryError(
            f"llama-cpp-python {version} is installed, but selfextend-gguf's library is built from the "
            f"llama.cpp vendored in llama-cpp-python {LLAMA_CPP_PYTHON_VERSION}; mismatched bindings and "
            "library can crash. Install the matching bindings: "
            f'CMAKE_ARGS="-DLLAMA_BUILD=OFF" pip install llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}'
        )
    key = build_info().get("source_key", "")
    if key and not key.startswith(LLAMA_CPP_PYTHON_VERSION + "-"):
        raise NativeLibraryError(
            f"the library in {library_dir()} was built from llama-cpp-python {key.split('-')[0]}'s "
            f"llama.cpp, but the bindings are {LLAMA_CPP_PYTHON_VERSION}. {_REINSTALL}"
        )


@lru_cache(maxsize=None)
def load_llama_cpp() -> ModuleType:
    """Import ``llama_cpp`` bound to the patched library and return it.

    Raises :class:`NativeLibraryError` if the library is missing, if the bindings
    do not match it, or if ``llama_cpp`` was already imported with another
    library (it cannot be reloaded in the same process).
    """
    directory = library_dir()
    if "llama_cpp.llama_cpp" in sys.modules:
        # imported first: fine if it loaded the patched library (selfextend_gguf.pth points
        # LLAMA_CPP_LIB_PATH at it when the interpreter starts); it cannot be reloaded otherwise
        loaded = Path(getattr(sys.modules["llama_cpp.llama_cpp"], "_base_path", "")).resolve()
        if loaded != directory:
            user_path = os.environ.get("LLAMA_CPP_LIB_PATH")
            chosen = user_path and Path(user_path).expanduser().resolve() != directory
            raise NativeLibraryError(
                f"llama_cpp was imported before selfextend_gguf and loaded the library in {loaded}"
                f"{f' (from LLAMA_CPP_LIB_PATH={user_path})' if chosen else ''}, not the patched one in "
                f"{directory}. Import selfextend_gguf before llama_cpp"
                f"{' and unset LLAMA_CPP_LIB_PATH' if chosen else ''} "
                f"(or start Python with LLAMA_CPP_LIB_PATH={directory})."
            )
        _check_bindings_version()
        return sys.modules["llama_cpp"]
    if _library_file(directory) is None:
        raise NativeLibraryError(
            f"the patched llama.cpp library is not built: no libllama in {directory}. {_REINSTALL}"
        )
    _check_bindings_version()
    user_path = os.environ.get("LLAMA_CPP_LIB_PATH")
    if user_path and Path(user_path).expanduser().resolve() != directory:
        other = Path(user_path).expanduser()
        if other.parent.name == "selfextend_gguf" and (other.parent.parent / "selfextend_gguf.pth").is_file():
            # not the user's choice: the .pth of a selfextend-gguf installed in site-packages set it
            fix = (f"It is the library of the selfextend-gguf installed in {other.parent.parent} (its "
                   f"selfextend_gguf.pth sets LLAMA_CPP_LIB_PATH at start-up), not of this one in "
                   f"{Path(__file__).resolve().parent}: set {LIB_DIR_ENV}={directory} to use this one.")
        else:
            fix = f"Unset LLAMA_CPP_LIB_PATH (or set {LIB_DIR_ENV})."
        raise NativeLibraryError(
            f"LLAMA_CPP_LIB_PATH={user_path} points at another llama.cpp build; selfextend-gguf needs "
            f"its patched library in {directory}. {fix}"
        )
    os.environ["LLAMA_CPP_LIB_PATH"] = str(directory)
    try:
        import llama_cpp
    except (OSError, AttributeError) as e:  # dlopen failure, or a symbol the bindings expect is missing
        raise NativeLibraryError(f"could not load the patched llama.cpp from {directory}: {e}. {_REINSTALL}") from e
    return llama_cpp
