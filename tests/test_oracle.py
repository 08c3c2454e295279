"""The NumPy oracle against itself and against stock llama.cpp (through llama-cpp-python).

Library tests need the patched library: run with LLAMA_CPP_LIB_PATH=<dir with libllama.so>
(or a built selfextend_gguf); they fail when llama_cpp cannot be imported.
All comparisons use F32 weights and an F32 KV cache, flash attention off.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import numpy_oracle as no
from tiny_models import MIN_VOCAB, write_tiny_model

TOL = 1e-4
GGML_TYPE_F32 = 0


# ---------------------------------------------------------------------------------------------
# helpers


def _import_llama_cpp():
    if not os.environ.get("LLAMA_CPP_LIB_PATH"):
        try:
            from selfextend_gguf._native import load_llama_cpp

            return load_llama_cpp()
        except Exception:  # not built / not importable: try the bindings' own lookup
            pass
    import llama_cpp

    return llama_cpp


@pytest.fixture(scope="module")
def llama_cpp_lib():
    try:
        return _import_llama_cpp()
    except Exception as e:  # FileNotFoundError / OSError / NativeLibraryError
        # a failure, not a skip: a suite that silently skips its library tests proves nothing
        pytest.fail(f"llama_cpp not loadable (build with scripts/bootstrap.py or set LLAMA_CPP_LIB_PATH): {e}")


def _open(llama_cpp, path, *, n_ctx=64, n_batch=64, n_ubatch=None):
    return llama_cpp.Llama(
        model_path=str(path),
        n_ctx=n_ctx,
        n_batch=n_batch,
        n_ubatch=n_ubatch or n_batch,
        logits_all=True,
        type_k=GGML_TYPE_F32,
        type_v=GGML_TYPE_F32,
        flash_attn=False,
        n_threads=1,
        n_threads_batch=1,
        verbose=False,
    )


def _decode_at(llama_cpp, llm, tokens, positions) -> np.ndarray:
    """Decode `tokens` at explicit `positions` in sequence 0; logits [n, n_vocab] for all."""
    n = len(tokens)
    n_vocab = llm.n_vocab()
    batch = llama_cpp.llama_batch_init(n, 0, 1)
    try:
        batch.n_tokens = n
        for i, (t, p) in enumerate(zip(tokens, positions)):
            batch.token[i] = int(t)
            batch.pos[i] = int(p)
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = 1
        rc = llama_cpp.llama_decode(llm.ctx, batch)
        assert rc == 0, f"llama_decode returned {rc}"
        return np.array(
            [np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, i), shape=(n_vocab,))
             for i in range(n)],
            dtype=np.float64,
        )
    finally:
        llama_cpp.llama_batch_free(batch)


def _tokens(n, n_vocab=MIN_VOCAB, seed=0):
    return [int(t) for t in np.random.default_rng(seed).integers(0, n_vocab, n)]


# ---------------------------------------------------------------------------------------------
# oracle self-checks (no library)


def test_relative_rope_scores_equal_absolute_rotation(tiny_llama_path, tiny_phi3_path):
    rng = np.random.default_rng(0)
    for path in (tiny_llama_path, tiny_phi3_path):
        m = no.load_model(path)
        q = rng.standard_normal((5, m.head_dim))
        k = rng.standard_normal((7, m.head_dim))
        qp = rng.integers(0, 100, (5, 7))
        kp = rng.integers(0, 100, (5, 7))
        theta = no.rope_thetas(m)
        fast = no._attention_scores(m, q, k, kp - qp, theta)
        slow = np.einsum("ijd,ijd->ij", no.apply_rope(m, q[:, None, :], qp),
                         no.apply_rope(m, k[None, :, :], kp))
        np.testing.assert_allclose(fast, slow, rtol=1e-12, atol=1e-12)


def test_rope_layouts(tiny_llama_path, tiny_qwen2_path, tiny_phi3_path):
    norm, neox, part = (no.load_model(p) for p in (tiny_llama_path, tiny_qwen2_path, tiny_phi3_path))
    assert (norm.rope_type, neox.rope_type, part.rope_type) == ("norm", "neox", "neox")
    assert part.n_rot == 8 < part.head_dim == 16 and part.n_head_kv == 1
    x = np.arange(16, dtype=np.float64) + 1
    # NORM rotates (0,1), NEOX rotates (0,8); partial rotary leaves dims >= n_rot alone
    y = no.apply_rope(norm, x, 1)
    assert not np.allclose(y[:2], x[:2]) and np.isclose(np.hypot(*y[:2]), np.hypot(*x[:2]))
    y = no.apply_rope(neox, x, 1)
    assert np.isclose(np.hypot(y[0], y[8]), np.hypot(x[0], x[8]))
    y = no.apply_rope(part, x, 3)
    np.testing.assert_array_equal(y[8:], x[8:])
    assert np.isclose(np.hypot(y[0], y[4]), np.hypot(x[0], x[4]))


def test_positions_exact_reduces_to_stock():
    n = 40
    stock = no.positions_stock(n)
    for G, W in [(1, 4), (1, 64), (4, 40), (3, 50)]:  # G = 1, or sequence not longer than W
        q, k = no.positions_exact(n, G, W)
        tri = np.tril(np.ones((n, n), dtype=bool))
        assert np.array_equal(q[tri], stock[0][tri]) and np.array_equal(k[tri], stock[1][tri])


def test_positions_exact_formula():
    q, k = no.positions_exact(30, 4, 8)
    assert (q[20, 13], k[20, 13]) == (20, 13)  # d = 7 < W: neighbour
    assert (q[20, 12], k[20, 12]) == (20 // 4 + 8 - 2, 3)  # d = 8: grouped


@pytest.mark.parametrize("G,W", [(2, 4), (2, 8), (4, 8), (3, 9), (4, 4), (1, 5)])
def test_positions_shift_matches_completion_loop(G, W):
    n = 70
    tri = np.tril(np.ones((n, n), dtype=bool))
    a = no.positions_shift(n, G, W)
    b = no.simulate_shift_positions(n, G, W)
    assert np.array_equal(a[0][tri], b[0][tri]) and np.array_equal(a[1][tri], b[1][tri])


@pytest.mark.parametrize("fixture", ["tiny_llama_path", "tiny_qwen2_path", "tiny_phi3_path"])
def test_models_are_position_sensitive(fixture, request):
    """An off-by-one in the key positions must change the logits a lot (else tests are blind)."""
    m = no.load_model(request.getfixturevalue(fixture))
    n = 40
    toks = _tokens(n, m.n_vocab)
    q, k = no.positions_stock(n)
    ref = no.forward(m, toks, q, k)
    assert 1.0 < np.abs(ref).max() < 30.0
    off = k.copy()
    off[n - 1, : n // 2] += 1  # last row only, half of its keys one position off
    err = no.rel_max_err(no.forward(m, toks, q, off)[n - 1], ref[n - 1])
    assert err > 1e-2, err
    # attention far from uniform: in layer 0, head 0, the largest softmax weight of a row is
    # on average many times 1/n
    x = m.tensors["token_embd.weight"][toks]
    h = no._rms_norm(x, m.tensors["blk.0.attn_norm.weight"], m.eps)
    qh = no._linear(m, h, "blk.0.attn_q").reshape(n, m.n_head, m.head_dim)[:, 0]
    kh = no._linear(m, h, "blk.0.attn_k").reshape(n, m.n_head_kv, m.head_dim)[:, 0]
    s = no._attention_scores(m, qh, kh, k - q, no.rope_thetas(m)) / np.sqrt(m.head_dim)
    s = np.where(np.tril(np.ones((n, n), dtype=bool)), s, -np.inf)
    p = np.exp(s - s.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    assert p[n // 2:].max(axis=1).mean() > 5.0 / n


def test_tiny_model_arguments_are_checked(tmp_path):
    with pytest.raises(ValueError, match="n_vocab"):
        write_tiny_model(tmp_path / "a.gguf", n_vocab=128)
    with pytest.raises(ValueError, match="n_rot"):
        write_tiny_model(tmp_path / "b.gguf", arch="llama", n_rot=8)


# ---------------------------------------------------------------------------------------------
# oracle vs stock llama.cpp


@pytest.mark.parametrize("fixture", ["tiny_llama_path", "tiny_qwen2_path", "tiny_phi3_path"])
@pytest.mark.parametrize("n_batch", [64, 7])
def test_stock_logits_match_oracle(llama_cpp_lib, fixture, n_batch, request):
    path = request.getfixturevalue(fixture)
    n = 40
    llm = _open(llama_cpp_lib, path, n_batch=n_batch)
    toks = _tokens(n, llm.n_vocab(), seed=n_batch)
    llm.eval(toks)
    lib = np.array(llm.scores[:n], dtype=np.float64)
    ref = no.forward(no.load_model(path), toks)
    err = no.rel_max_err(lib, ref)
    assert err <= TOL, err


def test_tokenizers_load_and_round_trip(llama_cpp_lib, tiny_llama_path, tiny_qwen2_path):
    text = "Hello, wörld! 123 \u2603".encode()
    for path, bos in ((tiny_llama_path, True), (tiny_qwen2_path, False)):
        llm = _open(llama_cpp_lib, path)
        ids = llm.tokenize(text)
        assert all(0 <= t < llm.n_vocab() for t in ids)
        assert (ids[0] == llm.token_bos()) == bos
        assert llm.detokenize(ids).strip() == text


def _seq_div_case(llama_cpp, path, n, p0, p1, d):
    """Eval n tokens at 0..n-1, seq_div [p0, p1) by d, seq_add the rest to close the gap,
    then eval one token right after. Returns (library logits of that token, oracle model,
    tokens, old positions, new positions)."""
    llm = _open(llama_cpp, path)
    toks = _tokens(n + 1, llm.n_vocab(), seed=n + p0 + d)
    llm.eval(toks[:n])
    first = np.array(llm.scores[:n], dtype=np.float64)

    old = np.arange(n)
    new = old.copy()
    inside = (old >= p0) & (old < p1)
    new[inside] = old[inside] // d
    delta = (p1 - 1) // d + 1 - p1  # the token after the range follows the divided range
    new[old >= p1] += delta

    mem = llama_cpp.llama_get_memory(llm.ctx)
    llama_cpp.llama_memory_seq_div(mem, 0, p0, p1, d)
    if p1 < n:
        llama_cpp.llama_memory_seq_add(mem, 0, p1, n, delta)
    assert llama_cpp.llama_memory_seq_pos_max(mem, 0) == new.max()
    p_next = int(new.max()) + 1
    last = _decode_at(llama_cpp, llm, [toks[n]], [p_next])[0]
    return first, last, toks, old, new, p_next, inside


@pytest.mark.parametrize("fixture", ["tiny_llama_path", "tiny_qwen2_path", "tiny_phi3_path"])
@pytest.mark.parametrize("n,p0,p1,d", [(16, 0, 16, 2), (40, 8, 24, 4), (37, 5, 29, 3)])
def test_seq_div_matches_oracle(llama_cpp_lib, fixture, n, p0, p1, d, request):
    """llama_memory_seq_div must re-rotate cached keys *to* their new positions (patch 0001)."""
    path = request.getfixturevalue(fixture)
    first, last, toks, old, new, p_next, inside = _seq_div_case(llama_cpp_lib, path, n, p0, p1, d)
    m = no.load_model(path)

    q_pos, k_pos = no.positions_stock(n + 1)
    q_pos[n, :] = p_next
    k_pos[n, :n] = new
    k_pos[n, n] = p_next
    ref = no.forward(m, toks, q_pos, k_pos)
    assert no.rel_max_err(first, ref[:n]) <= TOL
    err = no.rel_max_err(last, ref[n])
    assert err <= TOL, err

    # the unpatched library shifts the divided keys by old - new instead of new - old,
    # i.e. to 2*old - new: that must be far from the library's answer (the test is sensitive)
    k_wrong = k_pos.copy()
    k_wrong[n, :n] = np.where(inside, 2 * old - new, new)
    wrong = no.forward(m, toks, q_pos, k_wrong)[n]
    assert no.rel_max_err(last, wrong) > 0.05


@pytest.mark.parametrize("fixture", ["tiny_llama_path", "tiny_qwen2_path", "tiny_phi3_path"])
@pytest.mark.parametrize("G,W", [(2, 8), (4, 8)])
def test_grp_attn_shift_token_by_token_matches_oracle(llama_cpp_lib, fixture, G, W, request):
    """completion.cpp's --grp-attn-n/--grp-attn-w loop, one token per decode, vs positions_shift."""
    lc = llama_cpp_lib
    path = request.getfixturevalue(fixture)
    n = 48
    llm = _open(lc, path)
    mem = lc.llama_get_memory(llm.ctx)
    toks = _tokens(n, llm.n_vocab(), seed=G * 100 + W)
    n_past, ga_i, rows = 0, 0, []
    for t in toks:
        while n_past >= ga_i + W:
            ib = (G * ga_i) // W
            bd = (W // G) * (G - 1)
            dd = (W // G) - ib * bd - W
            lc.llama_memory_seq_add(mem, 0, ga_i, n_past, ib * bd)
            lc.llama_memory_seq_div(mem, 0, ga_i + ib * bd, ga_i + ib * bd + W, G)
            lc.llama_memory_seq_add(mem, 0, ga_i + ib * bd + W, n_past + ib * bd, dd)
            n_past -= bd
            ga_i += W // G
        rows.append(_decode_at(lc, llm, [t], [n_past])[0])
        n_past += 1
    lib = np.array(rows)
    m = no.load_model(path)
    ref = no.forward(m, toks, *no.positions_shift(n, G, W))
    err = no.rel_max_err(lib, ref)
    assert err <= TOL, err
    # and it is not the stock model (the schedule really changed positions)
    assert no.rel_max_err(lib, no.forward(m, toks)) > 1e-2
