"""Sliding-window attention (SWA): the paper's rule, what each mode does, and what is refused.

The rule (SelfExtend paper; patch 0005): sliding-window layers stay local and stock, SelfExtend
applies to the full-attention layers.

- Gemma-style interleaved SWA (tiny ``gemma3``): exact mode changes the full-attention layers
  only. Seen without an oracle by zeroing the attention output of one kind of layer: with the
  full-attention layers' attention zeroed, exact mode is bit-identical to stock (the SWA layers
  are untouched); with the SWA layers' zeroed it is not (the full-attention layers extend).
  Shift mode is refused: ``llama_memory_seq_div`` moves the cached keys of every layer, SWA
  layers included (LongLlama._check_sliding_window).
- A model whose layers are all SWA is refused in both modes (nothing to extend; and the pinned
  llama.cpp aborts in ``set_input_k_shift`` when such a model's cache is shifted).
- Mistral-style GGUFs: the pinned llama.cpp runs arch ``llama`` with full attention and ignores
  ``llama.attention.sliding_window`` (``llama_model_n_swa`` is 0), so they are llama models here
  and both modes apply to every layer (checked against the oracle).
- Gemma 3 270M (slow): identical to stock below W, passkey found at about 4k tokens with G=4,
  W=512 (within its trained 32k: outputs may differ from stock but must stay right).
"""

from __future__ import annotations

import numpy as np
import pytest

import numpy_oracle as no
from selfextend_gguf import LongLlama, UnsupportedModelError, load_llama_cpp, max_context
from tiny_models import write_tiny_gemma3, write_tiny_model

F32 = 0
N_LAYER, FULL_LAYERS, SWA_LAYERS = 4, (1, 3), (0, 2)  # swa_pattern 2: layer il is SWA unless il % 2 == 1

lc = load_llama_cpp()


def _tokens(n: int, seed: int) -> list:
    return [int(t) for t in np.random.default_rng(seed).integers(3, 259, size=n)]


def _kw(n_ctx: int, **extra) -> dict:
    # one ubatch size for both: exact mode's own default (128) would split the prompt differently from stock's
    kw = dict(n_ctx=n_ctx, n_batch=512, n_ubatch=512, logits_all=True, type_k=F32, type_v=F32, flash_attn=False,
              n_threads=1, n_threads_batch=1, verbose=False)
    kw.update(extra)
    return kw


def _logits(llm, toks) -> np.ndarray:
    llm.eval(toks)
    out = np.array(llm.scores[: len(toks)], dtype=np.float64)
    llm.close()
    return out


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    d = tmp_path_factory.mktemp("swa")
    return {
        "plain": write_tiny_gemma3(d / "g.gguf", n_layer=N_LAYER, rope_theta_swa=1000.0),
        "full_attn_zero": write_tiny_gemma3(d / "gf0.gguf", n_layer=N_LAYER, rope_theta_swa=1000.0,
                                            zero_attn_out=FULL_LAYERS),
        "swa_attn_zero": write_tiny_gemma3(d / "gs0.gguf", n_layer=N_LAYER, rope_theta_swa=1000.0,
                                           zero_attn_out=SWA_LAYERS),
        "pure_swa": write_tiny_gemma3(d / "pure.gguf", n_layer=N_LAYER, swa_pattern=[True] * N_LAYER),
    }


@pytest.mark.parametrize("flash_attn", [False, True])
def test_exact_mode_leaves_sliding_window_layers_stock(gemma, flash_attn):
    G, W, n = 4, 8, 160
    toks = _tokens(n, seed=1)
    kw = _kw(max_context(64, G, W), flash_attn=flash_attn)
    if flash_attn:
        kw.update(type_k=1, type_v=1)
    results = {}
    for name in ("full_attn_zero", "swa_attn_zero"):
        exact = _logits(LongLlama(str(gemma[name]), group_size=G, window=W, mode="exact", **kw), toks)
        stock = _logits(lc.Llama(str(gemma[name]), **kw), toks)
        results[name] = (exact, stock)
    exact, stock = results["full_attn_zero"]
    assert np.array_equal(exact, stock), "exact mode changed a sliding-window layer"
    exact, stock = results["swa_attn_zero"]
    assert no.rel_max_err(exact, stock) > 1e-3, "exact mode did not change the full-attention layers"
    assert np.isfinite(exact).all()


def test_exact_mode_below_window_is_stock(gemma):
    toks = _tokens(60, seed=2)
    exact = _logits(LongLlama(str(gemma["plain"]), group_size=4, window=60, mode="exact", **_kw(max_context(64, 4, 60))),
                    toks)
    stock = _logits(lc.Llama(str(gemma["plain"]), **_kw(max_context(64, 4, 60))), toks)
    assert np.array_equal(exact, stock)


def test_shift_mode_is_refused_for_sliding_window_models(gemma):
    with pytest.raises(UnsupportedModelError, match="sliding-window.*mode='exact'"):
        LongLlama(str(gemma["plain"]), group_size=4, window=8, mode="shift", **_kw(200))


@pytest.mark.parametrize("mode", ["exact", "shift"])
def test_pure_sliding_window_model_is_refused(gemma, mode):
    with pytest.raises(UnsupportedModelError, match="every attention layer .* sliding-window.*llama_cpp.Llama"):
        LongLlama(str(gemma["pure_swa"]), group_size=4, window=8, mode=mode, **_kw(200))
    # without extension (n_ctx within the trained length, G = 1) it is simply the stock model
    toks = _tokens(40, seed=3)
    same = _logits(LongLlama(str(gemma["pure_swa"]), mode=mode, **_kw(64)), toks)
    assert np.array_equal(same, _logits(lc.Llama(str(gemma["pure_swa"]), **_kw(64)), toks))


@pytest.mark.parametrize("mode", ["exact", "shift"])
def test_mistral_style_llama_with_sliding_window_key_is_full_attention(tmp_path, mode):
    """arch llama with ``llama.attention.sliding_window`` (how Mistral 7B GGUFs look): llama.cpp
    ignores the key, so both modes treat every layer as full attention and match the oracle."""
    path = write_tiny_model(tmp_path / "mistral.gguf", arch="llama", sliding_window=16, seed=1)
    G, W, n = 4, 16, 160
    toks = _tokens(n, seed=4)
    llm = LongLlama(str(path), group_size=G, window=W, mode=mode, **_kw(max_context(64, G, W)))
    assert lc.llama_model_n_swa(llm._model.model) == 0
    got = _logits(llm, toks)
    positions = no.positions_exact if mode == "exact" else no.positions_shift
    assert no.rel_max_err(got, no.forward(path, toks, *positions(n, G, W))) <= 1e-4


# -- Gemma 3 270M ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gemma3_270m():
    from gemma_model import Unavailable, gemma3_270m_path

    try:
        return str(gemma3_270m_path())
    except Unavailable as e:
        pytest.skip(f"Gemma 3 270M not available: {e}")


@pytest.mark.slow
def test_gemma3_270m_identical_to_stock_below_window(gemma3_270m):
    kw = dict(n_ctx=2048, n_batch=512, logits_all=True, n_threads=2, n_threads_batch=2, verbose=False)
    stock = lc.Llama(gemma3_270m, **kw)
    toks = stock.tokenize(b"The quick brown fox jumps over the lazy dog. " * 20)
    assert 100 < len(toks) < 512
    ref = _logits(stock, toks)
    exact = LongLlama(gemma3_270m, group_size=4, window=512, mode="exact", **kw)
    assert exact.self_extend.enabled
    assert np.array_equal(_logits(exact, toks), ref)
    with pytest.raises(UnsupportedModelError, match="sliding-window"):
        LongLlama(gemma3_270m, group_size=4, window=512, mode="shift", **kw)


@pytest.mark.slow
def test_gemma3_270m_passkey_with_exact_mode(gemma3_270m):
    """About 4k tokens with G=4, W=512: the full-attention layers see every key farther than 512
    at grouped positions; the model still answers the key (stock answers it too at this length;
    both take about 50 s here)."""
    from selfextend_gguf.passkey import found, prompt_for_tokens

    llm = LongLlama(gemma3_270m, group_size=4, window=512, mode="exact", n_ctx=4160, n_batch=512,
                    n_threads=2, n_threads_batch=2, verbose=False)
    prompt = prompt_for_tokens(4000, 0.3, "58291", lambda s: llm.tokenize(s.encode()))
    out = llm.create_completion(prompt.text, max_tokens=8, temperature=0.0, top_k=1)["choices"][0]["text"]
    llm.close()
    assert found(out, prompt.key), out
