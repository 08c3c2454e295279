"""Choice and validation of group_size / window (no library needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from selfextend_gguf.errors import SelfExtendConfigError
from selfextend_gguf.params import as_int, choose_parameters, default_window, max_context


@pytest.mark.parametrize("L", [64, 2048, 4096, 8192, 32768])
@pytest.mark.parametrize("factor", [1, 1.5, 2, 3, 4, 8])
@pytest.mark.parametrize("mode", ["exact", "shift"])
def test_automatic_choice_is_the_smallest_group_that_reaches_n_ctx(L, factor, mode):
    n_ctx = int(L * factor)
    p = choose_parameters(n_ctx, L, mode=mode)
    assert p.window < L
    assert p.reach >= n_ctx
    if n_ctx <= L:
        assert p.group_size == 1
        return
    if mode == "exact":
        assert p.window == default_window(L)
        smaller = range(1, p.group_size)
    else:  # shift mode needs G to divide W
        assert p.window % p.group_size == 0
        smaller = [d for d in range(1, p.group_size) if p.window % d == 0]
    assert all(max_context(L, g, p.window) < n_ctx for g in smaller)


def test_smollm2_choices():
    """What the README documents for SmolLM2 (trained on 8192): the smallest G that reaches n_ctx."""
    assert default_window(8192) == 2048
    lengths = (8192, 12288, 16384, 24576, 32768)
    assert [choose_parameters(n, 8192, mode="exact").group_size for n in lengths] == [1, 2, 3, 4, 5]
    assert [choose_parameters(n, 8192, mode="shift").group_size for n in lengths] == [1, 2, 4, 4, 8]
    # the grid's cells: at 24k and 32k with every W it ran, the smallest G is the one chosen
    assert [choose_parameters(24576, 8192, window=w).group_size for w in (512, 1024, 2048)] == [4, 4, 4]
    assert [choose_parameters(32768, 8192, window=w).group_size for w in (512, 1024, 2048)] == [5, 5, 5]


@pytest.mark.parametrize("doc", ["README.md", "docs/usage.md"])
def test_documented_choices_for_smollm2_are_what_choose_parameters_returns(doc):
    """The tables of automatic (G, W) in the README and the usage notes, row by row."""
    root = Path(__file__).resolve().parent.parent
    lines = (root / doc).read_text().splitlines()
    header = next(line for line in lines if line.startswith("| n_ctx | 8k |"))
    lengths = [int(cell.strip().rstrip("k")) * 1024 for cell in header.strip("|").split("|")[1:]]
    for mode in ("exact", "shift"):
        row = next(line for line in lines if line.startswith(f"| {mode} mode: G, W |"))
        documented = [cell.strip() for cell in row.strip("|").split("|")[1:]]
        for n_ctx, cell in zip(lengths, documented, strict=True):
            p = choose_parameters(n_ctx, 8192, mode=mode)
            expected = "off" if p.group_size == 1 else f"{p.group_size}, {p.window}"
            assert cell.replace("1 (off)", "off") == expected, (doc, mode, n_ctx)


def test_given_values_are_kept_and_the_other_filled_in():
    p = choose_parameters(16384, 8192, group_size=4, mode="shift")
    assert (p.group_size, p.window) == (4, 2048)
    p = choose_parameters(16384, 8192, window=512)
    assert p.window == 512 and p.reach >= 16384
    p = choose_parameters(16384, 8192, group_size=3, mode="shift")
    assert p.window % 3 == 0


@pytest.mark.parametrize("kwargs,match", [
    (dict(group_size=0), "group_size must be >= 1"),
    (dict(group_size=2.0), "group_size must be an integer"),
    (dict(group_size=True), "group_size must be an integer"),
    (dict(window=0), "window must be >= 1"),
    (dict(window=-3), "window must be >= 1"),
    (dict(window=8192), "smaller than the model's trained context length 8192"),
    (dict(window=9000, group_size=2), "smaller than the model's trained context length"),
    (dict(group_size=3, window=1000, mode="shift"), "multiple of group_size"),
    (dict(group_size=2, window=1024, n_ctx=20000), r"group_size >= 3"),
    (dict(mode="fast"), "mode='fast' is not one of"),
    (dict(n_ctx=0), "n_ctx must be >= 1"),
])
def test_bad_values_are_refused_with_the_fix(kwargs, match):
    n_ctx = kwargs.pop("n_ctx", 16384)
    with pytest.raises(SelfExtendConfigError, match=match):
        choose_parameters(n_ctx, 8192, **kwargs)


def test_max_context():
    assert max_context(4096, 4, 1024) == (4096 - 1024) * 4 + 1024


# -- integral types (issue 16 A) ----------------------------------------------------------------


def test_numpy_integers_are_accepted_and_returned_as_int():
    np = pytest.importorskip("numpy")
    p = choose_parameters(np.int64(128), np.int64(64), group_size=np.int32(4), window=np.int64(16), mode="shift")
    assert (p.n_ctx, p.n_ctx_train, p.group_size, p.window) == (128, 64, 4, 16)
    assert all(type(v) is int for v in (p.n_ctx, p.n_ctx_train, p.group_size, p.window))
    p = choose_parameters(np.uint32(16384), 8192, mode="shift")
    assert (p.group_size, p.window) == (4, 2048) and type(p.n_ctx) is int


@pytest.mark.parametrize("value", [2.0, "4", True, False, None, [4]])
def test_as_int_refuses_what_is_not_an_integer(value):
    with pytest.raises(SelfExtendConfigError, match="group_size must be an integer"):
        as_int(value, "group_size")


def test_as_int_refuses_numpy_floats_and_bools():
    np = pytest.importorskip("numpy")
    for value in (np.float64(2.0), np.float32(4), np.bool_(True)):
        with pytest.raises(SelfExtendConfigError, match="n_ctx must be an integer"):
            as_int(value, "n_ctx")
    assert as_int(np.int16(-3), "n_ctx") == -3
    with pytest.raises(SelfExtendConfigError, match="n_ctx must be >= 1, got -3"):
        as_int(np.int16(-3), "n_ctx", minimum=1)


# -- values the caller did not pass are never blamed on the caller (issue 16 B) -----------------


@pytest.mark.parametrize("n_ctx,kwargs,needles,absent", [
    # neither given, shift mode on a model trained on 64 tokens: no (G, W) reaches 5000
    (5000, dict(mode="shift"), ["neither was given", "at most 1056", "mode='exact'", "n_ctx <= 1056"],
     ["Try window=", "window=144"]),
    # group_size given, the automatic window rounded up to it reaches the trained length
    (200, dict(group_size=64, mode="shift"), ["group_size=64 is too large for shift mode", "window was not given",
                                              "leave group_size unset (then group_size=4, window=16"],
     ["Try window=", "window=64 must"]),
    (2000, dict(group_size=2, mode="exact"), ["the automatic window=16 (window was not given)", "group_size >= 42",
                                              "leave group_size unset"], []),
    # window given, no divisor of it reaches n_ctx: the automatic group_size is not the caller's
    (600, dict(window=8, mode="shift"), ["group_size was not given", "pass window=12",
                                         "mode='exact' (group_size=11 with window=8)"],
     ["group_size=18)", "Use window=18"]),
    (300, dict(window=63, mode="shift"), ["group_size was not given", "group_size >= 237"], ["Use window=237"]),
])
def test_automatic_values_are_named_as_automatic(n_ctx, kwargs, needles, absent):
    with pytest.raises(SelfExtendConfigError) as e:
        choose_parameters(n_ctx, 64, **kwargs)
    message = str(e.value)
    for needle in needles:
        assert needle in message, message
    for needle in absent:
        assert needle not in message, message


def test_short_trained_length_shift_mode_takes_a_setting_that_works():
    """On L = 64 the rule's G can exceed the automatic window; widening the window to G then
    ate the reach (1056: G = W = 31 reached 1054). Every n_ctx shift mode can reach gets a setting."""
    assert (lambda p: (p.group_size, p.window))(choose_parameters(1056, 64, mode="shift")) == (32, 32)
    for n_ctx in range(1, 1057):
        p = choose_parameters(n_ctx, 64, mode="shift")
        assert p.reach >= n_ctx and p.window < 64 and p.window % p.group_size == 0
    # a given window: the smallest divisor of it that reaches n_ctx when none meets the target
    p = choose_parameters(1000, 64, window=40, mode="shift")
    assert (p.group_size, p.window) == (40, 40)


_FIXES = [  # (pattern, how to apply the advice) for every fix a message can suggest
    (r"leave (\w+) unset \(then group_size=(\d+), window=(\d+)", "leave"),
    (r"[Uu]se group_size >= (\d+)(?!\d)(?! with| \(no divisor| \(in shift mode)", "group"),
    (r"divisor of window=\d+: group_size=(\d+)", "group"),
    (r"use mode='exact' with group_size >= (\d+)", "exact_group"),
    (r"[Uu]se group_size=(\d+) \(its automatic window is (\d+)\)", "group_auto"),
    (r"pass window(?: <= |=)(\d+)", "window"),
    (r"[Uu]se window=(\d+)", "window"),
    (r"use group_size=(\d+) \(it divides window", "group"),
    (r"[Uu]se mode='exact'(?! with| \()", "exact"),
    (r"mode='exact' \(group_size=(\d+) with window=(\d+)\)", "exact_both"),
    (r"n_ctx <= (\d+)", "n_ctx"),
]


def _check_advice(n_ctx, L, kwargs, mode, message):
    import re

    def works(n=n_ctx, m=mode, **kw):
        try:
            p = choose_parameters(n, L, mode=m, **kw)
        except SelfExtendConfigError as e:
            raise AssertionError(f"advice in {message!r} fails: {e}") from None
        return p

    for pattern, kind in _FIXES:
        for m in re.finditer(pattern, message):
            if kind == "leave":
                p = works(**{k: v for k, v in kwargs.items() if k != m[1]})
                assert (p.group_size, p.window) == (int(m[2]), int(m[3])), message
            elif kind == "group":
                works(**{**kwargs, "group_size": int(m[1])})
            elif kind == "exact_group":
                works(m="exact", **{**kwargs, "group_size": int(m[1])})
            elif kind == "group_auto":
                assert works(group_size=int(m[1])).window == int(m[2]), message
            elif kind == "window":
                works(**{**kwargs, "window": int(m[1])})
            elif kind == "exact":
                works(m="exact", **kwargs)
            elif kind == "exact_both":
                works(m="exact", group_size=int(m[1]), window=int(m[2]))
            else:
                works(n=int(m[1]))


@pytest.mark.parametrize("L", [2, 3, 5, 16, 64, 100])
@pytest.mark.parametrize("mode", ["exact", "shift"])
def test_every_message_names_automatic_values_and_every_fix_works(L, mode):
    """Over small trained lengths and every kind of n_ctx: a choice works, or the message names
    each value the caller did not pass as automatic, and each fix it suggests works."""
    import re

    n_values = sorted({1, L - 1, L, L + 1, 2 * L, 5 * L, L * L // 4, L * L // 4 + 1, L * L, 10 * L * L} - {0})
    sizes = sorted({1, 2, 3, 8, L // 2 or 1, L - 1 or 1, L, L + 5})
    for n_ctx in n_values:
        for group_size in [None, *sizes]:
            for window in [None, *sizes]:
                kwargs = {k: v for k, v in (("group_size", group_size), ("window", window)) if v is not None}
                try:
                    p = choose_parameters(n_ctx, L, mode=mode, **kwargs)
                except SelfExtendConfigError as e:
                    message = str(e)
                else:
                    assert p.reach >= n_ctx and p.window < L, (n_ctx, kwargs, p)
                    assert mode == "exact" or p.window % p.group_size == 0, (n_ctx, kwargs, p)
                    assert all(getattr(p, k) == v for k, v in kwargs.items()), (n_ctx, kwargs, p)
                    continue
                problem = message.split(". ")[0]
                for name in ("group_size", "window"):
                    if name in kwargs:
                        continue
                    for m in re.finditer(rf"(the automatic )?\b{name}=\d+", problem):
                        assert m[1] or f"{name} was not given" in message or "neither was given" in message, \
                            (n_ctx, L, kwargs, mode, message)
                _check_advice(n_ctx, L, kwargs, mode, message)
