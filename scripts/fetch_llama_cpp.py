#!/usr/bin/env python3
"""Obtain the pinned llama.cpp source and apply ``patches/series`` to it.

The source is the ``vendor/llama.cpp`` tree inside the ``llama-cpp-python`` sdist
of the pinned version (``selfextend_gguf/_pinned.py``), downloaded once with pip
and kept in a user cache directory. The patched tree is cached too, keyed by the
pinned version and a hash of the patch series, so a rebuild with the same patches
reuses it and a changed patch gives a fresh tree.

Offline use: set ``SELFEXTEND_LLAMA_CPP_SOURCE`` to an unpatched llama.cpp tree at
the pinned commit, or to the ``llama_cpp_python-<version>.tar.gz`` sdist. It is
copied, never modified.

Usage::

    python scripts/fetch_llama_cpp.py            # prints the patched source directory
    python scripts/fetch_llama_cpp.py --sdist    # prints the cached sdist path

Exit status 1 with a message naming the patch if one does not apply.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PATCH_DIR = ROOT / "patches"
SOURCE_ENV = "SELFEXTEND_LLAMA_CPP_SOURCE"


class FetchError(RuntimeError):
    """The pinned source could not be obtained or patched."""


def _pinned() -> tuple[str, str]:
    spec = importlib.util.spec_from_file_location("_pinned", ROOT / "selfextend_gguf" / "_pinned.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.LLAMA_CPP_PYTHON_VERSION, module.LLAMA_CPP_COMMIT


def cache_dir() -> Path:
    """The user cache directory (``SELFEXTEND_GGUF_CACHE``, else XDG, else ``~/.cache``)."""
    if os.environ.get("SELFEXTEND_GGUF_CACHE"):
        return Path(os.environ["SELFEXTEND_GGUF_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "selfextend-gguf"


def patch_series() -> list[Path]:
    """The patches named in ``patches/series``, in order (``#`` starts a comment)."""
    series = PATCH_DIR / "series"
    names = []
    for line in series.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(line.split()[0])
    patches = [PATCH_DIR / name for name in names]
    for patch in patches:
        if not patch.is_file():
            raise FetchError(f"patches/series names {patch.name}, which does not exist in {PATCH_DIR}")
    return patches


def source_key() -> str:
    """A key that changes whenever the pinned version or any patch changes."""
    version, commit = _pinned()
    h = hashlib.sha256(f"{version}\n{commit}\n".encode())
    for patch in patch_series():
        h.update(patch.name.encode() + b"\n" + patch.read_bytes())
    return f"{version}-{h.hexdigest()[:16]}"


def fetch_sdist() -> Path:
    """Return the pinned llama-cpp-python sdist, downloading it with pip if needed."""
    version, _ = _pinned()
    override = os.environ.get(SOURCE_ENV)
    if override and override.endswith((".tar.gz", ".tgz")):
        path = Path(override).expanduser()
        if not path.is_file():
            raise FetchError(f"{SOURCE_ENV}={override} does not exist")
        return path
    dest = cache_dir() / "sdist"
    sdist = dest / f"llama_cpp_python-{version}.tar.gz"
    if sdist.is_file():
        return sdist
    dest.mkdir(parents=True, exist_ok=True)
    print(f"fetch_llama_cpp: downloading the llama-cpp-python {version} sdist with pip", file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--dest", tmp, f"llama-cpp-python=={version}"]
        result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        found = list(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if result.returncode != 0 or not found:
            raise FetchError(
                f"pip could not download llama-cpp-python=={version}:\n{result.stdout[-2000:]}\n"
                f"Offline? Set {SOURCE_ENV} to an unpatched llama.cpp tree at the pinned commit "
                f"or to llama_cpp_python-{version}.tar.gz."
            )
        found[0].replace(sdist)
    return sdist


def _extract_vendor_tree(sdist: Path, dest: Path) -> None:
    prefix = None
    with tarfile.open(sdist) as tar:
        members = []
        for member in tar.getmembers():
            parts = Path(member.name).parts
            if len(parts) >= 3 and parts[1:3] == ("vendor", "llama.cpp"):
                prefix = Path(*parts[:3])
                member.name = str(Path(*parts[3:])) if len(parts) > 3 else "."
                members.append(member)
        if prefix is None:
            raise FetchError(f"{sdist} has no vendor/llama.cpp directory; is it a llama-cpp-python sdist?")
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, members=members, filter="data")
        else:  # Python < 3.11.4
            tar.extractall(dest, members=members)


def _apply(patch: Path, tree: Path) -> None:
    """Apply one patch with ``git apply`` (or ``patch`` where git is missing)."""
    attempts = []
    if shutil.which("git"):
        attempts.append(["git", "apply", "--whitespace=nowarn", "-p1", str(patch)])
    if shutil.which("patch"):
        attempts.append(["patch", "-p1", "--forward", "--batch", "-i", str(patch)])
    if not attempts:
        raise FetchError("neither git nor patch is installed; install one of them to apply patches/")
    cmd = attempts[0]
    # git apply refuses to work inside an unrelated repository's subdirectory; run it from the tree
    result = subprocess.run(cmd, cwd=tree, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "GIT_DIR": os.devnull})
    if result.returncode != 0:
        raise FetchError(
            f"patch {patch.name} does not apply to llama.cpp at the pinned commit:\n{result.stdout.strip()}\n"
            f"Fix or refresh patches/{patch.name} (series order: patches/series)."
        )


def patched_source() -> Path:
    """Return a patched source tree, creating it in the cache if needed."""
    root = cache_dir() / "src"
    dest = root / f"llama.cpp-{source_key()}"
    if (dest / ".selfextend-patched").is_file():
        return dest
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    try:
        tree = tmp / "llama.cpp"
        override = os.environ.get(SOURCE_ENV)
        if override and Path(override).expanduser().is_dir():
            src = Path(override).expanduser()
            if not (src / "src" / "llama-graph.cpp").is_file():
                raise FetchError(f"{SOURCE_ENV}={override} is not a llama.cpp source tree")
            shutil.copytree(src, tree, ignore=shutil.ignore_patterns(".git", "build*"))
        else:
            tree.mkdir()
            _extract_vendor_tree(fetch_sdist(), tree)
        for patch in patch_series():
            _apply(patch, tree)
        (tree / ".selfextend-patched").write_text("".join(p.name + "\n" for p in patch_series()))
        if dest.exists():  # a concurrent run finished first
            return dest
        tree.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--sdist", action="store_true", help="print the cached sdist path")
    group.add_argument("--key", action="store_true", help="print the source key (version + patch hash)")
    args = parser.parse_args(argv)
    try:
        if args.sdist:
            print(fetch_sdist())
        elif args.key:
            print(source_key())
        else:
            print(patched_source())
    except FetchError as e:
        print(f"fetch_llama_cpp: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
