"""Choosing and checking SelfExtend's group size ``G`` and neighbour window ``W``.

SelfExtend keeps exact positions for the ``W`` nearest keys of every query and
maps farther keys to ``j // G``. The largest relative position it produces is
about ``(n - W) // G + W``, so a model trained on ``L`` tokens can reach
``(L - W) * G + W`` tokens. :func:`choose_parameters` takes ``W = L / 4`` and
the smallest ``G`` that reaches ``n_ctx``: on SmolLM2 at 3x and 4x ``L``, every
step of ``G`` above that one raised the perplexity beyond ``L``, and
``W = L / 4`` did better than ``L / 8`` and ``L / 16`` (docs/evaluation.md).
The paper's authors suggest keeping ``W + (n_ctx - W) / G`` within a half to
two thirds of ``L``, which takes a larger ``G``; our grid did not bear that out
for exact mode.
"""

from __future__ import annotations

import logging
import math
import operator
from dataclasses import dataclass
from typing import Optional, Tuple

from .errors import SelfExtendConfigError

logger = logging.getLogger(__name__)

MODES = ("exact", "shift")

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
    """A quarter of the trained length, rounded down to a power of two, at most 2048.

    A quarter, because on SmolLM2 (``L = 8192``) ``W = 2048`` gave exact mode a lower perplexity
    beyond ``L`` than 1024 and 512 at 3x and 4x ``L`` (shift mode too, at 3x), for 1-2% of exact
    mode's prompt speed; with flash attention on it cost exact mode's decode 12% on one 2-core VM
    and 3% on another, one run each (docs/evaluation.md, docs/exact-storage.md). At most 2048, the
    widest window measured: exact mode's prompt path attends the window unfused, apart from the
    rest of the cache, so a much wider one costs more.
    """
    w = 1 << max(0, int(math.log2(max(1, n_ctx_train // 4))))
    return max(1, min(w, 2048))


def as_int(value: object, name: str, *, minimum: Optional[int] = None) -> int:
    """``value`` as a plain ``int``, or :class:`SelfExtendConfigError` naming ``name``.

    Any integral type is accepted (``int``, ``numpy.int64``, ...: what ``operator.index``
    takes, as ``llama_cpp.Llama`` does); ``bool``, floats (even ``2.0``) and strings are not.
    """
    if isinstance(value, bool) or getattr(getattr(value, "dtype", None), "kind", None) == "b":
        raise SelfExtendConfigError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    try:
        number = int(operator.index(value))  # type: ignore[arg-type]
    except TypeError:
        raise SelfExtendConfigError(f"{name} must be an integer, got {value!r} ({type(value).__name__})") from None
    if minimum is not None and number < minimum:
        raise SelfExtendConfigError(f"{name} must be >= {minimum}, got {number}")
    return number


def _needed_group(n_ctx: int, n_ctx_train: int, window: int) -> int:
    """The smallest ``G`` with ``(L - W) * G + W >= n_ctx`` (``W < L``)."""
    return max(1, math.ceil((n_ctx - window) / (n_ctx_train - window)))


def _shift_window(window: int, group_size: int) -> int:
    """``window`` rounded up to a multiple of ``group_size`` (shift mode's automatic window)."""
    return -(-window // group_size) * group_size


def _works(n_ctx: int, n_ctx_train: int, group_size: int, window: int, mode: str) -> bool:
    return (window < n_ctx_train and max_context(n_ctx_train, group_size, window) >= n_ctx
            and (mode != "shift" or window % group_size == 0))


def _shift_divisor(n_ctx: int, n_ctx_train: int, window: int) -> Optional[int]:
    """Shift mode with a given ``window``: its smallest divisor that reaches ``n_ctx``, if any."""
    need = _needed_group(n_ctx, n_ctx_train, window)
    return next((d for d in range(need, window + 1) if window % d == 0), None)


def _shift_group_for_automatic_window(n_ctx: int, n_ctx_train: int) -> Optional[int]:
    """Shift mode, automatic window: the smallest ``G`` whose window (the default one rounded
    up to a multiple of ``G``) stays below ``L`` and reaches ``n_ctx``; None if there is none."""
    w0 = default_window(n_ctx_train)
    for g in range(_needed_group(n_ctx, n_ctx_train, w0), n_ctx_train):
        if _works(n_ctx, n_ctx_train, g, _shift_window(w0, g), "shift"):
            return g
        if g >= w0 and 2 * g > n_ctx_train + 1:  # the window is G from here on: G * (L + 1 - G) only falls
            break
    return None


def _nearest_shift_window(n_ctx: int, n_ctx_train: int, window: int) -> Optional[int]:
    """Shift mode: the window nearest ``window`` that has a divisor reaching ``n_ctx``.

    The best divisor of ``W`` is ``W`` itself, reaching ``W * (L + 1 - W)``."""
    for d in range(n_ctx_train):
        for w in (window - d, window + d):
            if 1 <= w < n_ctx_train and w * (n_ctx_train + 1 - w) >= n_ctx:
                return w
    return None


def _max_shift_context(n_ctx_train: int) -> Tuple[int, int]:
    """The longest ``n_ctx`` shift mode reaches on a model trained on ``L`` tokens, and its ``G``.

    ``W`` must be a multiple of ``G`` below ``L``; ``(L - W) * G + W`` is largest at ``W = G``
    near ``(L + 1) / 2``. Returns ``(reach, group_size)`` (the window is ``group_size``).
    """
    g = min(max(1, (n_ctx_train + 1) // 2), n_ctx_train - 1)
    return max_context(n_ctx_train, g, g), g


def _smallest_group(n_ctx: int, n_ctx_train: int, window: int, mode: str) -> int:
    """The automatic ``G`` for ``window``: the smallest that reaches ``n_ctx``, 1 when ``n_ctx`` fits ``L``.

    In shift mode, the smallest divisor of ``W`` that reaches it; where ``W`` has none, the smallest
    ``G`` that reaches it (the caller then widens or refuses the window). The smallest, because on
    SmolLM2 at 3x and 4x ``L`` perplexity beyond ``L`` rose with every step of ``G`` above it
    (docs/evaluation.md, exact mode's G x W grid).
    """
    if n_ctx <= n_ctx_train:
        return 1
    group_size = _needed_group(n_ctx, n_ctx_train, window)
    if mode == "shift":
        group_size = _shift_divisor(n_ctx, n_ctx_train, window) or group_size
    return group_size


def _automatic_both(n_ctx: int, n_ctx_train: int, mode: str) -> Optional[tuple]:
    """``(group_size, window)`` chosen when neither is given; None when no setting reaches ``n_ctx``."""
    window = default_window(n_ctx_train)
    group_size = _smallest_group(n_ctx, n_ctx_train, window, mode)
    if mode == "shift" and window % group_size:
        window = _shift_window(window, group_size)  # G > W: widen the automatic window
    if _works(n_ctx, n_ctx_train, group_size, window, mode):
        return group_size, window
    if mode == "shift":  # on a short trained length the widened window can eat the reach: the smallest G that works
        g = _shift_group_for_automatic_window(n_ctx, n_ctx_train)
        if g is not None:
            return g, _shift_window(default_window(n_ctx_train), g)
    return None


def _leave_unset(n_ctx: int, n_ctx_train: int, mode: str, name: str) -> Optional[str]:
    """Advice to leave ``name`` unset, when the automatic choice of both works."""
    auto = _automatic_both(n_ctx, n_ctx_train, mode)
    if auto is None:
        return None
    return f"leave {name} unset (then group_size={auto[0]}, window={auto[1]} are chosen)"


def _largest_window(n_ctx: int, n_ctx_train: int, group_size: int, mode: str) -> Optional[int]:
    """The largest ``W`` (a multiple of ``G`` in shift mode) with which ``G`` reaches ``n_ctx``; None if none."""
    if group_size < 2:
        return None
    w = min(n_ctx_train - 1, (n_ctx_train * group_size - n_ctx) // (group_size - 1))
    if mode == "shift":
        w = w // group_size * group_size
    return w if w >= 1 and _works(n_ctx, n_ctx_train, group_size, w, mode) else None


def _exact_advice(n_ctx: int, n_ctx_train: int, group_size: Optional[int], window: Optional[int]) -> str:
    """Advice to switch to exact mode, with the group size exact mode would need (``None``: automatic)."""
    w = default_window(n_ctx_train) if window is None else window
    if group_size is None or max_context(n_ctx_train, group_size, w) >= n_ctx:
        return "use mode='exact'"
    return f"use mode='exact' with group_size >= {_needed_group(n_ctx, n_ctx_train, w)}"


def _either(*clauses: Optional[str]) -> str:
    """``"A, B, or C."`` from the clauses that are not None, capitalized."""
    kept = [c for c in clauses if c]
    text = kept[0] if len(kept) == 1 else ", ".join(kept[:-1]) + ", or " + kept[-1]
    return text[:1].upper() + text[1:] + "."


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
    that reaches ``n_ctx``, ``(n_ctx_train - W) * G + W >= n_ctx`` (in shift mode
    the smallest such divisor of ``W``), and to 1 when ``n_ctx`` fits the trained
    length. On a short trained length, where shift
    mode's window would have to grow past what reaches ``n_ctx``, the smallest
    ``G`` that reaches it is taken instead. The choice is logged. Integral
    values of any type (``numpy.int64``, ...) are accepted and returned as ``int``.

    Raises :class:`SelfExtendConfigError` naming the problem and the fix; a value
    that was chosen automatically is named as such, never blamed on the caller.
    """
    n_ctx = as_int(n_ctx, "n_ctx", minimum=1)
    n_ctx_train = as_int(n_ctx_train, "n_ctx_train", minimum=2)
    if mode not in MODES:
        raise SelfExtendConfigError(f"mode={mode!r} is not one of {MODES}; pass mode='exact' or mode='shift'")
    if group_size is not None:
        group_size = as_int(group_size, "group_size", minimum=1)
    if window is not None:
        window = as_int(window, "window", minimum=1)
    n, L = n_ctx, n_ctx_train
    chosen: tuple = ()
    if window is None and group_size is None:
        chosen = ("window", "group_size")
        auto = _automatic_both(n, L, mode)
        if auto is None:  # only shift mode has a limit
            reach, g = _max_shift_context(L)
            raise SelfExtendConfigError(
                f"shift mode cannot reach n_ctx={n} on a model trained on {L} tokens, whatever group_size and "
                f"window (neither was given, and no automatic choice works): window must be a multiple of "
                f"group_size and smaller than {L}, so (L - W) * G + W is at most {reach} (group_size={g}, "
                f"window={g}). Use mode='exact', which has no such limit, or n_ctx <= {reach}.")
        group_size, window = auto
    elif window is None:
        assert group_size is not None
        chosen = ("window",)
        window = default_window(L)
        if mode == "shift":
            if group_size >= L:
                raise SelfExtendConfigError(
                    f"group_size={group_size} is too large for shift mode on a model trained on {L} tokens: "
                    f"shift mode needs window to be a multiple of group_size, and window must be smaller than {L} "
                    f"(window was not given; the automatic one, {window}, rounded up to a multiple of "
                    f"group_size would be {_shift_window(window, group_size)}). "
                    + _either(f"pass a group_size below {L}", _leave_unset(n, L, mode, "group_size"),
                              _exact_advice(n, L, group_size, None)))
            window = _shift_window(window, group_size)
    elif group_size is None:
        chosen = ("group_size",)
        if window < L:
            group_size = _smallest_group(n, L, window, mode)
            if mode == "shift" and window % group_size:
                need = _needed_group(n, L, window)
                limit = _max_shift_context(L)[0]
                raise SelfExtendConfigError(
                    f"no group_size works with window={window} in shift mode for n_ctx={n} on a model trained on "
                    f"{L} tokens (group_size was not given): (L - W) * G + W >= {n} needs group_size >= {need}, "
                    f"and shift mode needs group_size to divide window, but the largest divisor of {window}, "
                    f"{window} itself, reaches only {max_context(L, window, window)}. "
                    + (_either(_leave_unset(n, L, mode, "window"),
                               f"pass window={_nearest_shift_window(n, L, window)} (the nearest window one of "
                               "whose divisors reaches n_ctx)",
                               f"use mode='exact' (group_size={need} with window={window})")
                       if n <= limit else
                       f"Shift mode reaches at most {limit} tokens on this model: use mode='exact' "
                       f"(group_size={need} with window={window}), or n_ctx <= {limit}."))
        else:
            group_size = 1  # validate() refuses the window
    params = SelfExtendParams(mode, group_size, window, n, L)
    validate(params, chosen=chosen)
    if chosen:
        logger.info("self-extend: chose %s -> group_size=%d, window=%d for n_ctx=%d (trained on %d, reach %d)",
                    " and ".join(chosen), group_size, window, n, L, params.reach)
    return params


def _label(name: str, value: int, chosen: tuple) -> str:
    return f"the automatic {name}={value} ({name} was not given)" if name in chosen else f"{name}={value}"


def validate(params: SelfExtendParams, *, chosen: tuple = ()) -> None:
    """Raise :class:`SelfExtendConfigError` if ``params`` cannot work for the model.

    ``chosen`` names the fields (``"group_size"``, ``"window"``) that were filled in
    automatically: the message then says so instead of blaming the caller for them.
    """
    g, w, n, L = params.group_size, params.window, params.n_ctx, params.n_ctx_train
    G, W = _label("group_size", g, chosen), _label("window", w, chosen)
    if w >= L:
        fix = (f"Try window={default_window(L)}." if "window" not in chosen
               else f"Pass a window below {L} (e.g. window={default_window(L)}) with a group_size it is a multiple of.")
        raise SelfExtendConfigError(
            f"{W} must be smaller than the model's trained context length {L}; "
            f"neighbour attention already uses exact positions up to W. {fix}")
    if params.mode == "shift" and w % g:
        fits = [c for c in (_shift_window(w, g), w // g * g) if c and _works(n, L, g, c, "shift")]
        divisor = _shift_divisor(n, L, w)
        fix = _either(f"use window={fits[0]}" if fits else None,
                      f"use group_size={divisor} (it divides window={w} and reaches n_ctx={n})" if divisor else None,
                      _exact_advice(n, L, g, w))
        raise SelfExtendConfigError(
            f"shift mode needs window to be a multiple of group_size ({W}, {G}): "
            f"blocks of W cached positions are divided by G. {fix}")
    reach = max_context(L, g, w)
    if n > reach:
        need = _needed_group(n, L, w)
        shift_limit = _max_shift_context(L)[0]
        if params.mode == "shift" and n > shift_limit:
            exact_need = _needed_group(n, L, default_window(L) if "window" in chosen else w)
            fix = (f"Shift mode reaches at most {shift_limit} tokens on this model (window must be a multiple "
                   f"of group_size and below {L}): use mode='exact' with group_size >= {exact_need}, "
                   f"or n_ctx <= {shift_limit}.")
        else:
            if params.mode == "shift" and "window" in chosen:
                better = _shift_group_for_automatic_window(n, L)
                group_fix = better and f"use group_size={better} (its automatic window is " \
                                       f"{_shift_window(default_window(L), better)})"
            elif params.mode == "shift":
                divisor = _shift_divisor(n, L, w)
                group_fix = (f"use group_size >= {need} (in shift mode a divisor of window={w}: group_size={divisor})"
                             if divisor else f"use mode='exact' with group_size >= {need} (no divisor of "
                                             f"window={w} reaches it)")
            else:
                group_fix = f"use group_size >= {need}"
            leave = window_fix = None
            if "window" in chosen:
                leave = _leave_unset(n, L, params.mode, "group_size")
                largest = _largest_window(n, L, g, params.mode)
                window_fix = largest and (f"pass window={largest}" if params.mode == "shift"
                                          else f"pass window <= {largest}")
            fix = _either(group_fix, leave, window_fix, "a smaller n_ctx")
        raise SelfExtendConfigError(
            f"n_ctx={n} is beyond what {G}{' and ' if chosen else ', '}{W} can reach on a model trained on "
            f"{L} tokens: (L - W) * G + W = {reach}. {fix}")
