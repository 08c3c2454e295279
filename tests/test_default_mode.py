"""The default mode: exact mode, and shift mode where exact mode refuses the model.

With no ``mode``, LongLlama runs exact mode. Where the library refuses exact mode for the model
(``llama_set_self_extend`` -4/-6: here grok's soft-capped, scaled attention), it opens the model
again in shift mode, with shift mode's own setting and ubatch, and says so with a
ModeFallbackWarning. An explicit ``mode`` is never replaced; where neither mode runs the model
(tiny gemma2: soft-capping, and sliding-window layers that shift mode cannot divide), or the
user's setting does not suit shift mode, the error names both reasons.

The references are independent instances opened with an explicit mode, and the stock library.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

from selfextend_gguf import (
    DEFAULT_MODE,
    ExactModeUnsupportedError,
    LongLlama,
    ModeFallbackWarning,
    SelfExtendConfigError,
    UnsupportedModelError,
    choose_parameters,
    load_llama_cpp,
)
from selfextend_gguf import _api
from tiny_models import write_tiny_gemma3, write_tiny_grok

lc = load_llama_cpp()

N_CTX = 256  # 4x the tiny models' trained 64 tokens


@pytest.fixture(scope="module")
def grok_path(tmp_path_factory):
    return write_tiny_grok(tmp_path_factory.mktemp("grok") / "grok.gguf")


def _tokens(n: int, seed: int = 5) -> list:
    return [int(t) for t in np.random.default_rng(seed).integers(3, 259, size=n)]


def _last_logits(llm, tokens: list) -> np.ndarray:
    """The last token's logits after a fresh eval of ``tokens`` (``scores`` keeps them only with logits_all)."""
    llm.reset()
    llm.eval(tokens)
    logits = np.ctypeslib.as_array(lc.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),)).copy()
    assert np.isfinite(logits).all() and np.ptp(logits) > 0, "no logits"
    return logits


def _open_quietly(path, **kwargs) -> LongLlama:
    """A LongLlama, with any warning an error: the instance must come up without one."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return LongLlama(str(path), n_ctx=N_CTX, n_threads=2, verbose=False, **kwargs)


def test_the_default_is_exact_mode(tiny_llama_path):
    """No mode: exact mode in the library (llama_get_self_extend), no warning, and the logits of
    an instance opened with mode='exact' past the trained length."""
    assert DEFAULT_MODE == "exact"
    default = _open_quietly(tiny_llama_path)
    explicit = _open_quietly(tiny_llama_path, mode="exact")
    try:
        p = default.self_extend
        assert p.mode == "exact" and p.enabled
        assert _api.get_self_extend(default.ctx) == (_api.SELF_EXTEND_EXACT, p.group_size, p.window)
        assert (p.group_size, p.window) == (explicit.self_extend.group_size, explicit.self_extend.window)
        tokens = _tokens(200)
        assert np.array_equal(_last_logits(default, tokens), _last_logits(explicit, tokens))
    finally:
        default.close()
        explicit.close()


def test_a_model_exact_mode_refuses_runs_in_shift_mode(grok_path):
    """grok: exact mode is refused by the library; with no mode, shift mode runs with shift mode's
    automatic setting and Llama's own ubatch (the context is created again), equal to an instance
    opened with mode='shift', and not the stock model's logits (SelfExtend is on)."""
    with pytest.warns(ModeFallbackWarning, match=r"Grok's output scale.*Running shift mode instead.*mode='shift'"):
        fallback = LongLlama(str(grok_path), n_ctx=N_CTX, n_threads=2, verbose=False)
    shift = _open_quietly(grok_path, mode="shift")
    stock = lc.Llama(str(grok_path), n_ctx=N_CTX, n_threads=2, verbose=False)
    try:
        assert fallback.self_extend == choose_parameters(N_CTX, 64, mode="shift")
        assert fallback._shift is not None
        assert _api.get_self_extend(fallback.ctx)[0] == _api.SELF_EXTEND_NONE
        assert fallback.context_params.n_ubatch == shift.context_params.n_ubatch == min(N_CTX, 512)
        tokens = _tokens(200)
        logits = _last_logits(fallback, tokens)
        assert np.array_equal(logits, _last_logits(shift, tokens))
        assert not np.allclose(logits, _last_logits(stock, tokens), atol=1e-3)
        text = fallback.create_completion(tokens[:150], max_tokens=4, temperature=0.0)["choices"][0]["text"]
        assert isinstance(text, str)
    finally:
        fallback.close()
        shift.close()
        stock.close()


def test_an_explicit_exact_mode_is_never_replaced(grok_path):
    """mode='exact' on grok: the library's refusal, with the way to run the model in shift mode."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ExactModeUnsupportedError, match="Grok's output scale.*pass mode='shift'") as caught:
            LongLlama(str(grok_path), mode="exact", n_ctx=N_CTX, verbose=False)
    assert isinstance(caught.value, UnsupportedModelError)


def test_neither_mode_runs_the_model(tmp_path):
    """Tiny gemma2: exact mode refuses its logit soft-capping, shift mode its sliding-window layers.
    The error names both, sends the user to neither mode (each refused), names the way that works,
    and warns about nothing."""
    path = write_tiny_gemma3(tmp_path / "gemma2.gguf", arch="gemma2", head_dim=32, n_embd=64, n_head=2,
                             n_head_kv=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(UnsupportedModelError) as caught:
            LongLlama(str(path), n_ctx=N_CTX, verbose=False)
    message = str(caught.value)
    assert "neither mode" in message and "soft-capping" in message and "sliding-window" in message, message
    assert not re.search(r"(?i)\b(use|pass) mode=", message), message
    assert "Use llama_cpp.Llama for it, with n_ctx at most its trained 64 tokens" in message, message
    assert isinstance(caught.value.__cause__, ExactModeUnsupportedError)


def test_a_setting_shift_mode_cannot_use_names_both_reasons(grok_path):
    """group_size=5 with window=16 suits exact mode, but shift mode needs G to divide W: the
    setting is the user's, so it is not changed, and the error says why neither mode runs it."""
    with pytest.raises(SelfExtendConfigError) as caught:
        LongLlama(str(grok_path), n_ctx=N_CTX, group_size=5, window=16, verbose=False)
    message = str(caught.value)
    assert "Grok's output scale" in message and "does not suit shift mode" in message, message
    assert "shift mode needs window to be a multiple of group_size" in message, message
    assert "Exact mode cannot run this model" in message, message
    assert isinstance(caught.value.__cause__, ExactModeUnsupportedError)
