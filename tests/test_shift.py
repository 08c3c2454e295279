"""Shift mode (grouped-position KV shifting) through LongLlama, against the NumPy oracle.

The reference is ``numpy_oracle.positions_shift``: an independent forward pass with the
positions llama.cpp's --grp-attn-n/--grp-attn-w loop gives every key at every step
(itself checked against a literal simulation of that loop in test_oracle.py), never the
library's own seq_div.
"""

from __future__ import annotations

import numpy as np
import pytest

import numpy_oracle as no
from selfextend_gguf import LongLlama, load_llama_cpp, max_context
from selfextend_gguf.shift import ShiftSchedule

TOL = 1e-4
F32 = 0


def _tokens(n: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    return [int(t) for t in rng.integers(3, 259, size=n)]


def _long(path, *, G, W, n_ctx=None, n_batch=512, n_ubatch=None, **kwargs) -> LongLlama:
    """LongLlama in shift mode, F32 cache; n_ctx defaults to all that G and W reach (trained: 64)."""
    n_ctx = n_ctx or max_context(64, G, W)
    return LongLlama(str(path), group_size=G, window=W, mode="shift", n_ctx=n_ctx, n_batch=n_batch,
                     n_ubatch=n_ubatch or min(n_batch, 512), logits_all=True, type_k=F32, type_v=F32,
                     flash_attn=False, n_threads=1, n_threads_batch=1, verbose=False, **kwargs)


# -- the schedule itself --------------------------------------------------------------------


@pytest.mark.parametrize("G,W", [(2, 8), (4, 8), (3, 9), (4, 16)])
def test_schedule_matches_llama_cpp_loop(G, W):
    """ShiftSchedule.position gives the positions completion.cpp's loop gives, at every step."""
    n = 70
    q_ref, k_ref = no.simulate_shift_positions(n, G, W)
    s = ShiftSchedule(G, W)
    for t in range(n):
        assert s.position(t, t) == q_ref[t, 0]
        assert [s.position(j, t) for j in range(t + 1)] == list(k_ref[t, : t + 1])


def test_schedule_chunks_stop_at_block_ends():
    s = ShiftSchedule(2, 8)
    assert s.chunk_end(0, 100, 512) == 8
    assert s.chunk_end(8, 100, 3) == 11
    assert s.chunk_end(13, 14, 512) == 14


@pytest.mark.parametrize("keep,n_cached,expected", [(20, 22, 20), (17, 22, 17), (9, 22, 8), (5, 22, 0), (23, 40, 16),
                                                    (16, 16, 16), (15, 16, 8), (30, 22, 22)])
def test_schedule_truncation(keep, n_cached, expected):
    """A prefix inside a block that is compressed now restarts at that block's start."""
    assert ShiftSchedule(2, 8).truncation(keep, n_cached) == expected


# -- LongLlama in shift mode against the oracle ---------------------------------------------


@pytest.mark.parametrize("fixture", ["tiny_llama_path", "tiny_qwen2_path", "tiny_phi3_path"])
@pytest.mark.parametrize("G,W", [(2, 8), (4, 16)])
def test_shift_mode_matches_oracle(fixture, G, W, request):
    """Logits of a sequence 2-3x the trained length (64) equal the oracle's shift schedule."""
    path = request.getfixturevalue(fixture)
    n = min(192, max_context(64, G, W))
    toks = _tokens(n, seed=G * 31 + W)
    llm = _long(path, G=G, W=W)
    llm.eval(toks)
    lib = np.array(llm.scores[:n], dtype=np.float64)
    model = no.load_model(path)
    ref = no.forward(model, toks, *no.positions_shift(n, G, W))
    assert no.rel_max_err(lib, ref) <= TOL
    # sensitivity: stock positions are far from it
    assert no.rel_max_err(lib, no.forward(model, toks)) > 1e-2
    llm.close()


@pytest.mark.parametrize("n_batch,n_ubatch", [(1, 1), (7, 7), (32, 32), (512, 7), (512, 512)])
def test_shift_mode_batch_size_invariance(tiny_llama_path, n_batch, n_ubatch):
    """The same logits whatever n_batch/n_ubatch: batches never cross a compression point."""
    n, G, W = 150, 4, 16
    toks = _tokens(n, seed=5)
    llm = _long(tiny_llama_path, G=G, W=W, n_batch=n_batch, n_ubatch=n_ubatch)
    llm.eval(toks)
    ref = no.forward(no.load_model(tiny_llama_path), toks, *no.positions_shift(n, G, W))
    assert no.rel_max_err(np.array(llm.scores[:n]), ref) <= TOL
    llm.close()


def test_token_by_token_generation_matches_oracle(tiny_qwen2_path):
    """Prompt then one eval per token, as generation does."""
    n, G, W = 120, 2, 8
    toks = _tokens(n, seed=9)
    llm = _long(tiny_qwen2_path, G=G, W=W)
    llm.eval(toks[:50])
    for t in toks[50:]:
        llm.eval([t])
    ref = no.forward(no.load_model(tiny_qwen2_path), toks, *no.positions_shift(n, G, W))
    assert no.rel_max_err(np.array(llm.scores[:n]), ref) <= TOL
    llm.close()


@pytest.mark.parametrize("shared", [100, 97, 83, 40, 5])
def test_prefix_reuse_gives_fresh_logits(tiny_llama_path, shared):
    """A second prompt sharing `shared` tokens with the first gives the logits of a fresh instance.

    Llama.generate truncates the cache to the common prefix; inside a block that is already
    compressed the cache must fall back to the block start (the division cannot be undone).
    """
    G, W = 4, 16
    first = _tokens(110, seed=1)
    second = first[:shared] + _tokens(130 - shared, seed=2)
    llm = _long(tiny_llama_path, G=G, W=W, n_batch=32)
    llm.eval(first)
    next(llm.generate(second, top_k=1, temp=0.0))
    reused = np.array(llm.scores[: len(second)], dtype=np.float64)
    ref = no.forward(no.load_model(tiny_llama_path), second, *no.positions_shift(len(second), G, W))
    assert no.rel_max_err(reused, ref) <= TOL
    llm.close()


def test_reset_and_completion_reuse_are_consistent(tiny_llama_path):
    """create_completion twice (prefix reuse) and after reset() returns the same text."""
    llm = _long(tiny_llama_path, G=4, W=8)
    prompt = "abc " * 40
    a = llm.create_completion(prompt, max_tokens=8, temperature=0.0, top_k=1)["choices"][0]["text"]
    b = llm.create_completion(prompt + "x", max_tokens=8, temperature=0.0, top_k=1)["choices"][0]["text"]
    llm.reset()
    c = llm.create_completion(prompt, max_tokens=8, temperature=0.0, top_k=1)["choices"][0]["text"]
    fresh = _long(tiny_llama_path, G=4, W=8)
    d = fresh.create_completion(prompt + "x", max_tokens=8, temperature=0.0, top_k=1)["choices"][0]["text"]
    assert a == c and b == d
    llm.close()
    fresh.close()


def test_group_size_one_is_the_stock_library(tiny_llama_path):
    """G = 1 leaves everything to Llama: bit-identical logits."""
    llama_cpp = load_llama_cpp()
    toks = _tokens(60, seed=3)
    llm = _long(tiny_llama_path, G=1, W=8, n_ctx=64)
    llm.eval(toks)
    stock = llama_cpp.Llama(str(tiny_llama_path), n_ctx=64, n_batch=512, logits_all=True, type_k=F32, type_v=F32,
                            flash_attn=False, n_threads=1, n_threads_batch=1, verbose=False)
    stock.eval(toks)
    assert np.array_equal(np.array(llm.scores[:60]), np.array(stock.scores[:60]))
    llm.close()
    stock.close()


def test_state_round_trip(tiny_llama_path):
    """save_state/load_state restores the same next-token logits; other settings are refused."""
    G, W = 2, 8
    toks = _tokens(100, seed=4)
    llm = _long(tiny_llama_path, G=G, W=W)
    llm.eval(toks[:90])
    state = llm.save_state()
    llm.eval(toks[90:])
    after = np.array(llm.scores[:100])
    llm.reset()
    llm.eval(_tokens(30, seed=8))  # scribble over the cache
    llm.load_state(state)
    llm.eval(toks[90:])
    assert np.array_equal(np.array(llm.scores[:100]), after)
    other = _long(tiny_llama_path, G=4, W=8, n_ctx=120)
    with pytest.raises(ValueError, match=f"LongLlama created with mode='shift', group_size={G}, window={W} "):
        other.load_state(state)
    llm.close()
    other.close()
