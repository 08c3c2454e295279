"""selfextend-gguf: SelfExtend (arXiv 2401.01325) for GGUF models in llama.cpp, from Python.

    from selfextend_gguf import LongLlama
    llm = LongLlama("model.gguf", n_ctx=32768, group_size=4, window=1024)
    llm.create_completion(long_prompt, max_tokens=64)

Importing this package points llama-cpp-python at the patched llama.cpp built
with it; import it before ``llama_cpp``.
"""

from ._native import NativeLibraryError, load_llama_cpp
from ._pinned import LLAMA_CPP_COMMIT, LLAMA_CPP_PYTHON_VERSION
from .errors import (
    ContextLengthError,
    ExactModeUnsupportedError,
    InvalidGrammarError,
    InvalidTokenError,
    ModelClosedError,
    ModelFileError,
    ModelNotFoundError,
    ModeFallbackWarning,
    PromptCancelled,
    RpcServerError,
    SelfExtendConfigError,
    SelfExtendError,
    StateError,
    UnsupportedModelError,
)
from .params import SelfExtendParams, choose_parameters, max_context

load_llama_cpp()

from .long_llama import DEFAULT_MODE, LongLlama, ProgressCallback  # noqa: E402  (needs the library loaded first)
from .models import default_model_path  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "ContextLengthError",
    "DEFAULT_MODE",
    "ExactModeUnsupportedError",
    "InvalidGrammarError",
    "InvalidTokenError",
    "LLAMA_CPP_COMMIT",
    "LLAMA_CPP_PYTHON_VERSION",
    "LongLlama",
    "ModelClosedError",
    "ModelFileError",
    "ModelNotFoundError",
    "ModeFallbackWarning",
    "ProgressCallback",
    "NativeLibraryError",
    "PromptCancelled",
    "RpcServerError",
    "SelfExtendConfigError",
    "SelfExtendError",
    "SelfExtendParams",
    "StateError",
    "UnsupportedModelError",
    "choose_parameters",
    "default_model_path",
    "max_context",
]
