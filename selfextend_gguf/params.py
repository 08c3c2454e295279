"""Choosing and checking SelfExtend's group size ``G`` and neighbour window ``W``.

SelfExtend keeps exact positions for the ``W`` nearest keys of every query and
maps farther keys to ``j // G``. The largest relative position it produces is
about ``(n - W) // G + W``, so a model trained on ``L`` tokens can reach
``(L - W) * G + W`` tokens. The paper's authors report better results when
``W + (n_ctx - W) / G`` stays between a half and two thirds of ``L``, with
``W`` around an eighth to a third of ``L`` (Llama-2, ``L = 4096``: ``G`` 2..64,
``W`` 512..1536). :func:`choose_parameters` applies that rule.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Optional

from .errors import SelfExtendConfigError

logger = logging.getLogger(__name__)

MODES = ("exact", "shift")

#: largest relative position we aim for, as a fraction of the trained length
TARGET_FRACTION = 2 / 3


@dataclass(frozen=True)
class SelfExtendParams:
    """A validated SelfExtend setting for one model and context size."""

    mode: str
    group_size: int
    window: int
    n_ctx: int
    n_ctx_train: int

    @property
    def reach(self) -> int:
        """The longest sequence this setting keeps inside the trained positions."""
        return max_context(self.n_ctx_train, self.group_size, self.window)

    @property
    def enabled(self) -> bool:
        """False when the setting cannot change anything (``G == 1``)."""
        return self.group_size > 1


def max_context(n_ctx_train: int, group_size: int, window: int) -> int:
    """``(L - W) * G + W``: the usable length for trained length ``L``."""
    return (n_ctx_train - window) * group_size + window


def default_window(n_ctx_train: int) -> int:
    """An eighth of the trained length, rounded down to a power of two, at most 2048."""
    w = 1 << max(0, int(math.log2(max(1, n_ctx_train // 8))))
    return max(1, min(w, 2048))


def _smallest_group(n_ctx: int, n_ctx_train: int, window: int, mode: str) -> int:
    budget = TARGET_FRACTION * n_ctx_train - window
    if n_ctx <= n_ctx_train:
        return 1
    if budget <= 0:
        g = math.ceil((n_ctx - window) / max(1, n_ctx_train - window))
    else:
        g = max(2, math.ceil((n_ctx - window) / budget))
    # the reach must cover n_ctx whatever the target says
    g = max(g, math.ceil((n_ctx - window) / max(1, n_ctx_train - window)))
    if mode == "shift":  # shift mode needs G to divide W: the next divisor, if there is one
        divisor = next((d for d in range(g, window + 1) if window % d == 0), None)
        g = divisor or g
    return g


def choose_parameters(
    n_ctx: int,
    n_ctx_train: int,
    *,
    group_size: Optional[int] = None,
    window: Optional[int] = None,
    mode: str = "exact",
) -> SelfExtendParams:
    """Fill in whichever of ``group_size`` and ``window`` is missing, then validate.

    ``window`` defaults to :func:`default_window` (rounded up to a multiple of
    ``group_size`` in shift mode); ``group_size`` defaults to the smallest ``G``
    for which ``W + (n_ctx - W) / G <= 2/3 * n_ctx_train`` (a power of two when
    ``W`` is one, since shift mode needs ``G`` to divide ``W``), and 1 when
    ``n_ctx`` fits the trained length. The choice is logged.

    Raises :class:`SelfExtendConfigError` naming the problem and the fix.
    """
    _check_int("n_ctx", n_ctx, minimum=1)
    _check_int("n_ctx_train", n_ctx_train, minimum=2)
    if mode not in MODES:
        raise SelfExtendConfigError(f"mode={mode!r} is not one of {MODES}; pass mode='exact' or mode='shift'")
    if group_size is not None:
        _check_int("group_size", group_size, minimum=1)
    if window is not None:
        _check_int("window", window, minimum=1)
    chosen = []
    if window is None:
        window = default_window(n_ctx_train)
        if group_size is not None and mode == "shift":
            window = -(-window // group_size) * group_size
        chosen.append("window")
    if group_size is None:
        group_size = _smallest_group(n_ctx, n_ctx_train, min(window, n_ctx_train - 1), mode)
        chosen.append("group_size")
        if "window" in chosen and mode == "shift" and window % group_size:
            window = -(-window // group_size) * group_size  # G > W: widen the automatic window
    params = SelfExtendParams(mode, group_size, window, n_ctx, n_ctx_train)
    validate(params)
    if chosen:
        logger.info("self-extend: chose %s -> group_size=%d, window=%d for n_ctx=%d (trained on %d, reach %d)",
                    " and ".join(chosen), group_size, window, n_ctx, n_ctx_train, params.reach)
    return params


def validate(params: SelfExtendParams) -> None:
    """Raise :class:`SelfExtendConfigError` if ``params`` cannot work for the model."""
    g, w, n, L = params.group_size, params.window, params.n_ctx, params.n_ctx_train
    if w >= L:
        raise SelfExtendConfigError(
            f"window={w} must be smaller than the model's trained context length {L}; "
            f"neighbour attention already uses exact positions up to W. Try window={default_window(L)}.")
    if params.mode == "shift" and w % g:
        raise SelfExtendConfigError(
            f"shift mode needs window to be a multiple of group_size (window={w}, group_size={g}): "
            f"blocks of W cached positions are divided by G. Use window={-(-w // g) * g} or mode='exact'.")
    reach = max_context(L, g, w)
    if n > reach:
        need = math.ceil((n - w) / (L - w))
        raise SelfExtendConfigError(
            f"n_ctx={n} is beyond what group_size={g}, window={w} can reach on a model trained on {L} tokens: "
            f"(L - W) * G + W = {reach}. Use group_size >= {need}, or a smaller n_ctx.")


def _check_int(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SelfExtendConfigError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise SelfExtendConfigError(f"{name} must be >= {minimum}, got {value}")
