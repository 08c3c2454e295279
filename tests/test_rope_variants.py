"""Both modes against the NumPy oracle, across the RoPE layouts and scalings users meet.

One matrix, LongLlama in ``mode="exact"`` and ``mode="shift"``, F32 weights and cache, at about
3x the trained context (64): rope NORM (llama) and NEOX (qwen2), partial rotary (phi3, the only
tiny-writable arch llama.cpp lets rotate n_rot < head_dim: the phi2 layout), GQA, MQA and MHA,
and GGUFs carrying rope-scaling metadata (linear, llama3 frequency factors, YaRN). The reference
is numpy_oracle.forward with positions_exact / positions_shift; the oracle reads the scaling from
the GGUF itself (YaRN folded in by numpy_oracle.fold_yarn, itself checked against stock llama.cpp
here). Tolerance 1e-4 relative max error (SPEC section 4; measured ~1e-6).
"""

from __future__ import annotations

import numpy as np
import pytest

import numpy_oracle as no
from selfextend_gguf import LongLlama, load_llama_cpp, max_context
from tiny_models import write_tiny_model

TOL = 1e-4
F32 = 0
G, W = 4, 16
N = 176

VARIANTS = {
    # name: write_tiny_model arguments
    "norm-gqa": dict(arch="llama", n_head=4, n_head_kv=2, seed=11),
    "norm-mqa": dict(arch="llama", n_head=4, n_head_kv=1, seed=12),
    "norm-mha": dict(arch="llama", n_head=4, n_head_kv=4, seed=13),
    "neox-gqa": dict(arch="qwen2", n_head=4, n_head_kv=2, seed=14),
    "neox-partial-mqa": dict(arch="phi3", n_rot=8, n_head_kv=1, seed=15),
    "neox-partial-gqa": dict(arch="phi3", n_rot=4, n_head_kv=2, seed=16),
    "linear-x2": dict(arch="llama", rope_scaling_factor=2.0, seed=17),
    "llama3-freq-factors": dict(arch="llama", rope_freq_factors=[1.0, 1.0, 2.0, 4.0, 8.0, 8.0, 16.0, 32.0], seed=18),
    "yarn-x2-norm": dict(arch="llama", rope_scaling_factor=2.0, rope_scaling_type="yarn", seed=19),
    "yarn-x4-neox": dict(arch="qwen2", rope_scaling_factor=4.0, rope_scaling_type="yarn", seed=20),
}

# stock llama.cpp's K-shift re-applied the YaRN magnitude (fixed by
# patches/0004-kv-cache-k-shift-pure-rotation.patch, see test_k_shift_with_yarn_matches_oracle)
YARN = {"yarn-x2-norm", "yarn-x4-neox"}


@pytest.fixture(scope="module")
def variant_paths(tmp_path_factory):
    d = tmp_path_factory.mktemp("rope")
    return {name: write_tiny_model(d / f"{name}.gguf", **kw) for name, kw in VARIANTS.items()}


def _tokens(n: int, seed: int) -> list:
    return [int(t) for t in np.random.default_rng(seed).integers(3, 259, size=n)]


def _logits(llm, toks) -> np.ndarray:
    llm.eval(toks)
    out = np.array(llm.scores[: len(toks)], dtype=np.float64)
    llm.close()
    return out


def _kw(n_ctx: int) -> dict:
    return dict(n_ctx=n_ctx, n_batch=64, logits_all=True, type_k=F32, type_v=F32, flash_attn=False,
                n_threads=1, n_threads_batch=1, verbose=False)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_stock_matches_oracle(variant_paths, variant):
    """The oracle reads every variant's RoPE from the GGUF as llama.cpp does (the premise)."""
    path = variant_paths[variant]
    toks = _tokens(48, seed=1)
    got = _logits(load_llama_cpp().Llama(str(path), **_kw(64)), toks)
    assert no.rel_max_err(got, no.forward(path, toks)) <= TOL


@pytest.mark.parametrize("mode", ["exact", "shift"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_mode_matches_oracle(variant_paths, variant, mode):
    path = variant_paths[variant]
    toks = _tokens(N, seed=2)
    got = _logits(LongLlama(str(path), group_size=G, window=W, mode=mode, **_kw(max_context(64, G, W))), toks)
    positions = no.positions_exact if mode == "exact" else no.positions_shift
    ref = no.forward(path, toks, *positions(N, G, W))
    err = no.rel_max_err(got, ref)
    print(f"\n[rope] {variant} {mode}: rel max err {err:.1e}")
    assert err <= TOL
    # sensitivity: the stock positions are far from it
    assert no.rel_max_err(got, no.forward(path, toks)) > 1e-2


@pytest.mark.parametrize("variant", sorted(YARN))
def test_k_shift_with_yarn_matches_oracle(variant_paths, variant):
    """Stock llama.cpp's build_rope_shift re-rotated cached K with the model's yarn_attn_factor,
    and ggml multiplies every YaRN rotation by 1 + 0.1 ln(1/freq_scale), so a shifted key carried
    that magnitude twice (measured before the fix: 0.69 / 0.77 relative error for x2 / x4).
    patches/0004 makes the shift a pure rotation. Checked on the library alone: the shift schedule
    run by hand with llama_memory_seq_add/seq_div on a stock Llama, against the oracle, for a YaRN
    GGUF and (where the K-shift was always right) a linear one; YaRN asked for through the context
    parameters is accepted by shift mode too."""
    path = variant_paths[variant]
    toks = _tokens(N, seed=2)
    linear = variant_paths["linear-x2"]
    assert no.rel_max_err(_shift_by_hand(linear, toks), no.forward(linear, toks, *no.positions_shift(N, G, W))) <= TOL
    err = no.rel_max_err(np.array(_shift_by_hand(path, toks)), no.forward(path, toks, *no.positions_shift(N, G, W)))
    print(f"\n[rope] {variant}: llama.cpp K-shift schedule vs oracle {err:.1e}")
    assert err <= TOL
    LongLlama(str(variant_paths["norm-gqa"]), group_size=G, window=W, mode="shift", rope_scaling_type=2,
              rope_freq_scale=0.5, yarn_orig_ctx=64, **_kw(max_context(64, G, W))).close()


def _shift_by_hand(path, toks) -> np.ndarray:
    """Logits of the shift schedule run on a stock Llama, token by token, with seq_add/seq_div."""
    from selfextend_gguf.shift import ShiftSchedule

    lc = load_llama_cpp()
    llm = lc.Llama(str(path), **_kw(max_context(64, G, W)))
    mem = llm._ctx.memory
    s = ShiftSchedule(G, W)
    rows = []
    for t, tok in enumerate(toks):
        if t and t % W == 0:  # the block that just filled: back to token indices, then divided
            first = t - W
            lc.llama_memory_seq_add(mem, 0, first // G, first // G + W, first - first // G)
            lc.llama_memory_seq_div(mem, 0, first, first + W, G)
        llm._batch.set_batch(batch=[tok], n_past=s.position(t, t), logits_all=True)
        llm._ctx.decode(llm._batch)
        rows.append(np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),)).copy())
    llm.close()
    return np.array(rows)
