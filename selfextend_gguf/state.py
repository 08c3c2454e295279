"""The record a :class:`LongLlama` state carries: its self-extend setting and a checksum.

``llama_cpp.LlamaState`` is plain data: the token ids, the logits and llama.cpp's native bytes.
Nothing in it says how the cached keys were positioned, so a state saved under another
self-extend setting (or by a plain ``llama_cpp.Llama``), or one changed since it was saved,
would load without complaint and give wrong output. :func:`seal` attaches the setting and a
digest of every field; :func:`check` refuses a state whose record is missing or does not match.
"""

from __future__ import annotations

import hashlib
from typing import Any, Tuple

import numpy as np

from .errors import SelfExtendConfigError, StateError

#: the setting of a LongLlama: (mode, group_size, window), or ("off", 1, 0)
Setting = Tuple[str, int, int]


def digest(state: Any) -> str:
    """SHA-256 of everything ``Llama.load_state`` reads from ``state``, and of its setting."""
    h = hashlib.sha256()
    h.update(repr((getattr(state, "self_extend", None), int(state.n_tokens), int(state.llama_state_size),
                   state.seed)).encode())
    for array in (state.input_ids, state.scores):
        h.update(np.ascontiguousarray(array).tobytes())
    h.update(bytes(state.llama_state))
    return h.hexdigest()


def seal(state: Any, setting: Setting) -> Any:
    """Attach ``setting`` and the checksum to a state just saved; return it."""
    state.self_extend = setting
    state.checksum = digest(state)
    return state


def check(state: Any, setting: Setting) -> None:
    """Raise unless ``state`` was saved by a LongLlama with ``setting`` and is unchanged since.

    Raises:
        StateError: no record (a plain ``llama_cpp.Llama`` state), or the data changed.
        SelfExtendConfigError: saved under another self-extend setting.
    """
    saved = getattr(state, "self_extend", None)
    if saved is None or getattr(state, "checksum", None) is None:
        raise StateError(
            "this state carries no self-extend record (it was saved by a plain llama_cpp.Llama, or by an "
            "older selfextend-gguf), so nothing says how its cached positions were grouped. "
            "Save it again with LongLlama.save_state().")
    if tuple(saved) != tuple(setting):
        mode, group_size, window = saved
        same = (f"mode={mode!r}, group_size={group_size}, window={window}" if mode != "off"
                else "an n_ctx within the model's trained length")
        raise SelfExtendConfigError(
            f"this state was saved with self-extend {tuple(saved)} but this LongLlama uses {tuple(setting)}; "
            f"the cached positions would be wrong. Load it into a LongLlama created with {same} (a state saved "
            "with no mode given before exact mode became the default is shift mode's).")
    try:
        actual = digest(state)
    except (AttributeError, TypeError, ValueError) as e:
        raise StateError(f"this state is damaged ({e}); save it again with LongLlama.save_state().") from e
    if actual != state.checksum:
        raise StateError(
            "this state was changed since it was saved (its checksum does not match its data), so its cache "
            "cannot be trusted. Save it again with LongLlama.save_state().")
