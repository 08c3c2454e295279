"""ctypes binding of the C API that ``patches/0005-llama-exact-self-extend.patch`` adds to llama.h.

    int32_t llama_set_self_extend(struct llama_context * ctx, enum llama_self_extend_mode mode,
                                  int32_t group_size, int32_t window);
    enum llama_self_extend_mode llama_get_self_extend(const struct llama_context * ctx,
                                                      int32_t * group_size, int32_t * window);
"""

from __future__ import annotations

import ctypes
from functools import lru_cache
from typing import Tuple

from ._native import load_llama_cpp
from .errors import ExactModeUnsupportedError, NativeLibraryError, SelfExtendConfigError, UnsupportedModelError
from .params import SelfExtendParams

SELF_EXTEND_NONE = 0
SELF_EXTEND_EXACT = 1

_ERRORS = {
    -1: (SelfExtendConfigError, "invalid group_size or window"),
    -2: (UnsupportedModelError, "the model has no RoPE attention layers, or recurrent/hybrid memory"),
    -3: (SelfExtendConfigError, "the context already holds tokens; call reset() and clear the cache first"),
    -4: (ExactModeUnsupportedError, "exact mode does not support this model or context configuration (M-RoPE, "
                                    "MLA, a cache that cannot shift, ...: the llama.cpp log names it)"),
    -5: (SelfExtendConfigError, "the compute graph of this setting does not fit in memory; the previous setting "
                                "is kept (try a smaller n_ubatch or n_ctx)"),
    -6: (ExactModeUnsupportedError, "exact mode does not compute this model's attention (ALiBi, logit "
                                    "soft-capping, attention sinks or Grok's output scale: the llama.cpp log names it)"),
}


@lru_cache(maxsize=None)
def _functions() -> Tuple[ctypes._CFuncPtr, ctypes._CFuncPtr]:
    lib = load_llama_cpp().llama_cpp._lib
    try:
        set_fn, get_fn = lib.llama_set_self_extend, lib.llama_get_self_extend
    except AttributeError:
        raise NativeLibraryError(
            "the loaded llama.cpp library has no llama_set_self_extend: it was built without "
            "selfextend-gguf's patches. Reinstall with `python3 scripts/bootstrap.py setup`.") from None
    set_fn.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int32, ctypes.c_int32]
    set_fn.restype = ctypes.c_int32
    get_fn.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_int32), ctypes.POINTER(ctypes.c_int32)]
    get_fn.restype = ctypes.c_int
    return set_fn, get_fn


def available() -> bool:
    """Whether the loaded library has the exact-mode API."""
    try:
        _functions()
    except NativeLibraryError:
        return False
    return True


def set_self_extend(ctx: ctypes.c_void_p, params: SelfExtendParams) -> None:
    """Switch exact SelfExtend on (``params.enabled``) or off for a llama context."""
    set_fn, _ = _functions()
    mode = SELF_EXTEND_EXACT if params.enabled and params.mode == "exact" else SELF_EXTEND_NONE
    rc = set_fn(ctx, mode, params.group_size, params.window)
    if rc != 0:
        cls, why = _ERRORS.get(rc, (SelfExtendConfigError, f"error {rc}"))
        raise cls(f"llama_set_self_extend(mode={params.mode!r}, group_size={params.group_size}, "
                  f"window={params.window}) failed: {why}")


def has_self_extend_layers(ctx: ctypes.c_void_p) -> bool:
    """Whether the model of ``ctx`` has a layer that exact mode would change: a full-attention
    (not sliding-window) RoPE layer. Asks the library (``llama_set_self_extend`` answers -2 when
    there is none) on a context whose cache is empty, and leaves self-extend off."""
    set_fn, _ = _functions()
    rc = set_fn(ctx, SELF_EXTEND_EXACT, 2, 1)
    set_fn(ctx, SELF_EXTEND_NONE, 1, 1)
    return rc != -2


def get_self_extend(ctx: ctypes.c_void_p) -> Tuple[int, int, int]:
    """``(mode, group_size, window)`` as the library reports them."""
    _, get_fn = _functions()
    g, w = ctypes.c_int32(0), ctypes.c_int32(0)
    mode = get_fn(ctx, ctypes.byref(g), ctypes.byref(w))
    return int(mode), g.value, w.value
