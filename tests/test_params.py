"""Choice and validation of group_size / window (no library needed)."""

from __future__ import annotations

import pytest

from selfextend_gguf.errors import SelfExtendConfigError
from selfextend_gguf.params import TARGET_FRACTION, choose_parameters, default_window, max_context


@pytest.mark.parametrize("L", [64, 2048, 4096, 8192, 32768])
@pytest.mark.parametrize("factor", [1, 1.5, 2, 3, 4, 8])
@pytest.mark.parametrize("mode", ["exact", "shift"])
def test_automatic_choice_reaches_n_ctx_and_follows_the_rule(L, factor, mode):
    n_ctx = int(L * factor)
    p = choose_parameters(n_ctx, L, mode=mode)
    assert p.window < L
    assert p.reach >= n_ctx
    if n_ctx <= L:
        assert p.group_size == 1
    elif factor <= 4 or mode == "exact":
        # the authors' rule of thumb: W + (n_ctx - W) / G at most ~2/3 of L (at 8x in shift mode
        # G must exceed the automatic W and divide it, so only the reach is promised there)
        assert p.window + (n_ctx - p.window) / p.group_size <= TARGET_FRACTION * L + 1e-9
    if mode == "shift":
        assert p.window % p.group_size == 0


def test_smollm2_choices():
    """What the README documents for SmolLM2 (trained on 8192)."""
    assert default_window(8192) == 1024
    assert [choose_parameters(n, 8192, mode="shift").group_size for n in (8192, 12288, 16384, 32768)] == [1, 4, 4, 8]


def test_given_values_are_kept_and_the_other_filled_in():
    p = choose_parameters(16384, 8192, group_size=4, mode="shift")
    assert (p.group_size, p.window) == (4, 1024)
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
