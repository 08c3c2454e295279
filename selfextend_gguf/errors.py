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


class ExactModeUnsupportedError(UnsupportedModelError):
    """Exact mode does not compute this model's attention, or not with this context's memory
    (``llama_set_self_extend`` refused it: an attention variant such as logit soft-capping or
    sinks, multi-dimensional RoPE, MLA, ...). Shift mode may still run the model."""


class SelfExtendConfigError(SelfExtendError, ValueError):
    """``group_size``, ``window``, ``mode`` or ``n_ctx`` are invalid for this model."""


class ContextLengthError(SelfExtendError, ValueError):
    """The tokens to evaluate do not fit in the context (``n_ctx``).

    Its message starts like llama-cpp-python's own ("Requested tokens (N) exceed
    context window of M") where that applies, so the OpenAI-compatible server still
    answers it with a ``context_length_exceeded`` error.
    """


class PromptCancelled(SelfExtendError):
    """The ``progress_callback`` returned ``False``: prompt evaluation stopped between two batches.

    The tokens evaluated so far stay cached and consistent; the next call reuses them.
    """


class MissingExtraError(SelfExtendError, ImportError):
    """An optional feature's dependencies are not installed (e.g. the server's: the ``server`` extra)."""


class InvalidTokenError(SelfExtendError, ValueError):
    """A token id outside the model's vocabulary, or an empty token-list prompt."""


class EvaluationError(SelfExtendError, ValueError):
    """An evaluation command got input it cannot use (a text too short, an empty grid, ...)."""


class StateError(SelfExtendError, ValueError):
    """A saved state cannot be loaded: it has no self-extend record, it was changed since it was
    saved, or the native library refused it. The instance is left empty, never inconsistent."""


class ModelClosedError(SelfExtendError, RuntimeError):
    """The model was used after :meth:`LongLlama.close` freed it."""


class InvalidGrammarError(SelfExtendError, ValueError):
    """A ``grammar`` that llama.cpp cannot parse (a syntax error, an undefined or left-recursive rule)."""


class RpcServerError(SelfExtendError, ConnectionError):
    """An RPC server (``rpc_servers``) cannot be reached, or was lost while the model used it."""


class ModeFallbackWarning(UserWarning):
    """No ``mode`` was given and exact mode, the default, refused the model: shift mode runs instead.

    Pass ``mode="shift"`` to choose shift mode without trying exact mode first, or
    ``mode="exact"`` to make the refusal an error.
    """
