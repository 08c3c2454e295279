"""Exceptions raised by selfextend-gguf.

Every one of them subclasses the built-in exception a caller would already catch
for that kind of problem (``ValueError``, ``FileNotFoundError``, ``ImportError``),
and its message names the problem and the fix.
"""

from __future__ import annotations


class SelfExtendError(Exception):
    """Base class of all selfextend-gguf errors."""


class NativeLibraryError(SelfExtendError, ImportError):
    """The patched llama.cpp library is missing, or does not match the bindings."""


class ModelFileError(SelfExtendError, ValueError):
    """The model file is missing, not a GGUF file, or damaged."""


class ModelNotFoundError(ModelFileError, FileNotFoundError):
    """The model file does not exist."""


class UnsupportedModelError(SelfExtendError, ValueError):
    """The model cannot be self-extended (no RoPE attention, recurrent or hybrid memory)."""


class SelfExtendConfigError(SelfExtendError, ValueError):
    """``group_size``, ``window``, ``mode`` or ``n_ctx`` are invalid for this model."""


class EvaluationError(SelfExtendError, ValueError):
    """An evaluation command got input it cannot use (a text too short, an empty grid, ...)."""
