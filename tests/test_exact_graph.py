"""Exact SelfExtend inside the llama.cpp graph (patches/0005) against the NumPy oracle.

Needs the patched library: the one selfextend_gguf installs, or LLAMA_CPP_LIB_PATH=<dir with
libllama.so>. The tests fail (with the reason) when it does not export llama_set_self_extend.

(a) logits with exact mode == numpy_oracle.forward(positions_exact) on tiny F32 models with an
    F32 KV cache, flash attention off, at 2-4x the trained context (64), rel max error <= 1e-4;
(b) the same logits for any batch split: one batch, n_ubatch 1/7/32, several llama_decode calls,
    token by token;
(c) G == 1, mode NONE, or a sequence shorter than W: bit-identical to self-extend off;
(d) F16 and q8_0 KV caches agree with the F32 cache about as well as they do in the stock library.
Run with `pytest -s` to see the measured errors.
"""

from __future__ import annotations

import ctypes
import os
import struct

import numpy as np
import pytest

import numpy_oracle as no
from tiny_models import write_tiny_gemma3, write_tiny_model, write_tiny_openelm

TOL = 1e-4

GGML_TYPE_F32 = 0
GGML_TYPE_F16 = 1
GGML_TYPE_Q8_0 = 8
GGML_TYPE_Q4_0 = 2

SE_NONE = 0
SE_EXACT = 1

N_VOCAB_TOKENS = (3, 280)  # token ids valid for both tiny vocabularies


# ---------------------------------------------------------------------------------------------
# library


@pytest.fixture(scope="module")
def llama_cpp():
    # the patched library that selfextend_gguf installs (or LLAMA_CPP_LIB_PATH's, for a dev build);
    # a missing library or API is a failure, not a skip: skipped exactness tests prove nothing
    try:
        if os.environ.get("LLAMA_CPP_LIB_PATH"):
            import llama_cpp as lc
        else:
            from selfextend_gguf import load_llama_cpp

            lc = load_llama_cpp()
    except Exception as e:  # FileNotFoundError / OSError / NativeLibraryError
        pytest.fail(f"llama_cpp cannot load the patched library: {e}")
    lib = lc.llama_cpp._lib
    try:
        fset = lib.llama_set_self_extend
        fget = lib.llama_get_self_extend
    except AttributeError:
        pytest.fail("the loaded libllama does not export llama_set_self_extend (patches/0005 not applied)")
    fset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int32, ctypes.c_int32]
    fset.restype = ctypes.c_int32
    fget.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_int32), ctypes.POINTER(ctypes.c_int32)]
    fget.restype = ctypes.c_int
    return lc


def _set_se(lc, llm, mode, g, w) -> int:
    return lc.llama_cpp._lib.llama_set_self_extend(llm.ctx, mode, g, w)


def _get_se(lc, llm):
    g, w = ctypes.c_int32(0), ctypes.c_int32(0)
    mode = lc.llama_cpp._lib.llama_get_self_extend(llm.ctx, ctypes.byref(g), ctypes.byref(w))
    return mode, g.value, w.value


def _open(lc, path, *, n_ctx=256, n_batch=256, n_ubatch=None, type_k=GGML_TYPE_F32,
          type_v=GGML_TYPE_F32, flash_attn=False, n_threads=1):
    return lc.Llama(
        model_path=str(path),
        n_ctx=n_ctx,
        n_batch=n_batch,
        n_ubatch=n_ubatch or n_batch,
        logits_all=True,
        type_k=type_k,
        type_v=type_v,
        flash_attn=flash_attn,
        n_threads=n_threads,
        n_threads_batch=n_threads,
        verbose=False,
    )


def _decode(lc, llm, tokens, *, chunk=None, start=0, tail=0) -> np.ndarray:
    """Decode tokens at positions start.. in sequence 0, `chunk` tokens per llama_decode call,
    and the last `tail` tokens one by one."""
    n = len(tokens)
    chunk = chunk or n
    bounds = list(range(0, n - tail, chunk)) + list(range(n - tail, n))
    n_vocab = llm.n_vocab()
    out = []
    batch = lc.llama_batch_init(chunk, 0, 1)
    try:
        for s, e in zip(bounds, bounds[1:] + [n]):
            part = tokens[s:e]
            batch.n_tokens = len(part)
            for i, t in enumerate(part):
                batch.token[i] = int(t)
                batch.pos[i] = start + s + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = 1
            rc = lc.llama_decode(llm.ctx, batch)
            assert rc == 0, f"llama_decode returned {rc}"
            for i in range(len(part)):
                out.append(np.ctypeslib.as_array(lc.llama_get_logits_ith(llm.ctx, i), shape=(n_vocab,)).copy())
    finally:
        lc.llama_batch_free(batch)
    return np.array(out)


def _clear(lc, llm):
    lc.llama_memory_clear(lc.llama_get_memory(llm.ctx), True)


def _run(lc, path, tokens, *, mode=SE_EXACT, g=4, w=8, chunk=None, tail=0, **kw) -> np.ndarray:
    llm = _open(lc, path, **kw)
    try:
        _clear(lc, llm)
        assert _set_se(lc, llm, mode, g, w) == 0
        return _decode(lc, llm, tokens, chunk=chunk, tail=tail)
    finally:
        llm.close()


def _tokens(n, seed=0):
    return np.random.default_rng(seed).integers(*N_VOCAB_TOKENS, n)


# ---------------------------------------------------------------------------------------------
# models (context_length 64)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("exact")
    return {
        # rope NORM, GQA 4/2, head_dim 16
        "llama": write_tiny_model(d / "llama.gguf", arch="llama", seed=1),
        # rope NEOX, q/k/v biases, GQA 4/2
        "qwen2": write_tiny_model(d / "qwen2.gguf", arch="qwen2", seed=2),
        # rope NEOX, partial rotary (8 of 16 dims), MQA
        "phi3": write_tiny_model(d / "phi3.gguf", arch="phi3", n_rot=8, n_head_kv=1, seed=3),
        # head_dim 32: quantized K cache (q8_0 blocks of 32)
        "llama_hd32": write_tiny_model(d / "llama_hd32.gguf", arch="llama", n_embd=128, n_head=4,
                                       n_head_kv=2, seed=4),
        # head_dim 64: a quantized K cache is also Hadamard-rotated (attn_rot_k)
        "qwen2_hd64": write_tiny_model(d / "qwen2_hd64.gguf", arch="qwen2", n_embd=128, n_head=2,
                                       n_head_kv=1, seed=5),
        # linear RoPE scaling (freq_scale 1/2) and llama3-style frequency factors
        "llama_scaled": write_tiny_model(d / "llama_scaled.gguf", arch="llama", rope_scaling_factor=2.0,
                                         rope_freq_factors=[1.0, 1.0, 2.0, 4.0, 8.0, 8.0, 16.0, 32.0],
                                         seed=6),
    }


_oracle_cache: dict = {}


def _oracle(path, tokens, g, w) -> np.ndarray:
    key = (str(path), tokens.tobytes(), g, w)
    if key not in _oracle_cache:
        _oracle_cache[key] = no.forward(path, tokens, *no.positions_exact(len(tokens), g, w))
    return _oracle_cache[key]


# ---------------------------------------------------------------------------------------------
# API


def test_api_arguments_and_state(llama_cpp, models):
    lc = llama_cpp
    llm = _open(lc, models["llama"], n_ctx=128, n_batch=128)
    try:
        _clear(lc, llm)
        assert _get_se(lc, llm) == (SE_NONE, 1, 1)
        assert _set_se(lc, llm, SE_EXACT, 0, 8) == -1
        assert _set_se(lc, llm, SE_EXACT, 4, 0) == -1
        assert _set_se(lc, llm, 7, 4, 8) == -1
        assert _set_se(lc, llm, SE_EXACT, 4, 8) == 0
        assert _get_se(lc, llm) == (SE_EXACT, 4, 8)
        # the same setting again is a no-op, also on a non-empty cache
        _decode(lc, llm, _tokens(10))
        assert _set_se(lc, llm, SE_EXACT, 4, 8) == 0
        # a different one needs an empty cache: the cached keys are stored at grouped positions
        assert _set_se(lc, llm, SE_EXACT, 2, 8) == -3
        assert _set_se(lc, llm, SE_NONE, 1, 1) == -3
        assert _get_se(lc, llm) == (SE_EXACT, 4, 8)
        _clear(lc, llm)
        assert _set_se(lc, llm, SE_NONE, 4, 8) == 0
        assert _get_se(lc, llm) == (SE_NONE, 1, 1)
        lib = lc.llama_cpp._lib
        assert lib.llama_get_self_extend(llm.ctx, None, None) == SE_NONE
    finally:
        llm.close()


# ---------------------------------------------------------------------------------------------
# (a) against the oracle


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_prompt_window_apart_matches_oracle(llama_cpp, models, arch):
    """Without flash attention, a prompt ubatch whose window starts after cell 0 attends the window
    apart and enters its log-sum-exp into the softmax of the cells before it (patches/0010), a block
    padded to 16 cells: W = 20 and ubatches of 24 put the window's first cell at 4 or 12 modulo 16,
    so the padding covers cells of the window, which must stay masked."""
    n, g, w = 240, 4, 20
    tokens = _tokens(n, seed=11)
    got = _run(llama_cpp, models[arch], tokens, g=g, w=w, n_batch=n, n_ubatch=24)
    err = no.rel_max_err(got, _oracle(models[arch], tokens, g, w))
    print(f"\n[window apart] {arch} G={g} W={w} n={n} ubatch 24: rel max err vs oracle {err:.2e}")
    assert err <= TOL


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_decode_window_in_place_matches_oracle(llama_cpp, models, arch):
    """Without flash attention, a decode whose window is in position order reads it in place
    (patches/0013): its scores against the keys as stored replace the grouped query's in the
    columns of the window, and the first cell of the window, which leaves it, is scored grouped.
    160 tokens, the last 120 one by one."""
    n, g, w = 160, 4, 20
    tokens = _tokens(n, seed=12)
    got = _run(llama_cpp, models[arch], tokens, g=g, w=w, tail=120)
    err = no.rel_max_err(got, _oracle(models[arch], tokens, g, w))
    print(f"\n[decode in place] {arch} G={g} W={w} n={n}: rel max err vs oracle {err:.2e}")
    assert err <= TOL


@pytest.mark.parametrize("arch", ["llama", "qwen2", "phi3", "llama_scaled"])
@pytest.mark.parametrize("g,w,n", [(2, 4, 128), (4, 8, 256), (3, 5, 192), (8, 16, 256)])
def test_exact_matches_oracle(llama_cpp, models, arch, g, w, n):
    tokens = _tokens(n, seed=g * 100 + w)
    got = _run(llama_cpp, models[arch], tokens, g=g, w=w)
    ref = _oracle(models[arch], tokens, g, w)
    err = no.rel_max_err(got, ref)
    # and it really is not the stock model past the trained length
    err_stock = no.rel_max_err(got, no.forward(models[arch], tokens))
    print(f"\n[a] {arch} G={g} W={w} n={n}: rel max err vs oracle {err:.2e} (vs stock positions {err_stock:.2e})")
    assert err <= TOL
    assert err_stock > 1e-2


# ---------------------------------------------------------------------------------------------
# (b) batch splits


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_exact_batch_split_invariance(llama_cpp, models, arch):
    lc = llama_cpp
    g, w, n = 4, 8, 256
    tokens = _tokens(n, seed=7)
    ref = _oracle(models[arch], tokens, g, w)
    one = _run(lc, models[arch], tokens, g=g, w=w)
    runs = {
        "n_ubatch=1": _run(lc, models[arch], tokens, g=g, w=w, n_ubatch=1),
        "n_ubatch=7": _run(lc, models[arch], tokens, g=g, w=w, n_ubatch=7),
        "n_ubatch=32": _run(lc, models[arch], tokens, g=g, w=w, n_ubatch=32),
        "decode calls of 29": _run(lc, models[arch], tokens, g=g, w=w, chunk=29),
        "token by token": _run(lc, models[arch], tokens, g=g, w=w, chunk=1),
        "prompt of 200, then token by token": _run(lc, models[arch], tokens, g=g, w=w, tail=56),
    }
    print(f"\n[b] {arch} G={g} W={w} n={n}: one batch vs oracle {no.rel_max_err(one, ref):.2e}")
    for name, got in runs.items():
        e_one, e_ref = no.rel_max_err(got, one), no.rel_max_err(got, ref)
        print(f"[b]   {name}: vs one batch {e_one:.2e}, vs oracle {e_ref:.2e}")
        assert e_ref <= TOL
        # only the summation order of the matrix products differs
        assert e_one <= 1e-5


def test_exact_prefix_reuse(llama_cpp, models):
    """seq_rm of a suffix and re-evaluation (llama-cpp-python's prefix reuse) gives the same logits."""
    lc = llama_cpp
    g, w, n, keep = 4, 8, 200, 150
    tokens = _tokens(n, seed=11)
    llm = _open(lc, models["llama"])
    try:
        _clear(lc, llm)
        assert _set_se(lc, llm, SE_EXACT, g, w) == 0
        full = _decode(lc, llm, tokens)
        assert lc.llama_memory_seq_rm(lc.llama_get_memory(llm.ctx), 0, keep, -1)
        again = _decode(lc, llm, tokens[keep:], start=keep)
    finally:
        llm.close()
    err = no.rel_max_err(again, full[keep:])
    print(f"\n[b] prefix reuse (keep {keep} of {n}): {err:.2e}")
    assert err <= 1e-5


# ---------------------------------------------------------------------------------------------
# (c) bit-identical to the stock graph


@pytest.mark.parametrize("arch", ["llama", "qwen2", "phi3"])
def test_stock_identity(llama_cpp, models, arch):
    lc = llama_cpp
    path = models[arch]
    long_tokens = _tokens(160, seed=3)
    off = _run(lc, path, long_tokens, mode=SE_NONE)
    # G == 1 is the stock graph, whatever W
    assert np.array_equal(_run(lc, path, long_tokens, g=1, w=8), off)
    # mode NONE ignores G and W
    assert np.array_equal(_run(lc, path, long_tokens, mode=SE_NONE, g=4, w=8), off)
    # a sequence shorter than W: every key is a neighbour at its exact position
    assert np.array_equal(_run(lc, path, long_tokens, g=4, w=200), off)
    assert np.array_equal(_run(lc, path, long_tokens[:50], g=4, w=50), off[:50])
    # also token by token
    off_tbt = _run(lc, path, long_tokens[:40], mode=SE_NONE, chunk=1)
    assert np.array_equal(_run(lc, path, long_tokens[:40], g=2, w=40, chunk=1), off_tbt)
    print(f"\n[c] {arch}: G=1, NONE, n < W: bit-identical to self-extend off")


def test_reenable_after_clear(llama_cpp, models):
    """Switching modes on one context (with llama_memory_clear between) gives fresh-context results."""
    lc = llama_cpp
    path = models["llama"]
    tokens = _tokens(128, seed=5)
    llm = _open(lc, path)
    try:
        _clear(lc, llm)
        assert _set_se(lc, llm, SE_EXACT, 4, 8) == 0
        a = _decode(lc, llm, tokens)
        _clear(lc, llm)
        assert _set_se(lc, llm, SE_NONE, 1, 1) == 0
        b = _decode(lc, llm, tokens)
        _clear(lc, llm)
        assert _set_se(lc, llm, SE_EXACT, 2, 4) == 0
        c = _decode(lc, llm, tokens)
    finally:
        llm.close()
    assert np.array_equal(b, _run(lc, path, tokens, mode=SE_NONE))
    assert no.rel_max_err(a, _oracle(path, tokens, 4, 8)) <= TOL
    assert no.rel_max_err(c, _oracle(path, tokens, 2, 4)) <= TOL


# ---------------------------------------------------------------------------------------------
# (d) F16 and quantized caches


CACHES = {
    # name: (type_k, type_v, flash_attn)  flash_attn only decides the V layout (not transposed)
    "f16": (GGML_TYPE_F16, GGML_TYPE_F16, False),
    "f16 V not transposed": (GGML_TYPE_F16, GGML_TYPE_F16, True),
    "q8_0 K": (GGML_TYPE_Q8_0, GGML_TYPE_F16, False),
    "q8_0 K+V": (GGML_TYPE_Q8_0, GGML_TYPE_Q8_0, True),
}


@pytest.mark.parametrize("arch", ["llama_hd32", "qwen2_hd64"])
@pytest.mark.parametrize("cache", list(CACHES))
def test_low_precision_caches(llama_cpp, models, arch, cache):
    """Exact mode with an F16/q8_0 cache deviates from its F32 cache about as much as the stock
    library's F16/q8_0 cache deviates from its F32 cache on the same tokens (the cache rounding is
    the only difference). The bound: 3x the stock deviation, plus 1e-3 for the extra rounding of
    the keys that exact mode re-rotates after reading them (rounded once more than stock)."""
    lc = llama_cpp
    path = models[arch]
    type_k, type_v, fa = CACHES[cache]
    g, w, n = 4, 16, 256
    tokens = _tokens(n, seed=13)
    ref = _oracle(path, tokens, g, w)
    # a prompt, then 24 tokens one by one (the decode path of the graph)
    tail = 24
    exact_f32 = _run(lc, path, tokens, g=g, w=w, tail=tail)
    exact_low = _run(lc, path, tokens, g=g, w=w, tail=tail, type_k=type_k, type_v=type_v, flash_attn=fa)
    # stock deviation of this cache type, same tokens and split
    stock_f32 = _run(lc, path, tokens, mode=SE_NONE, tail=tail)
    stock_low = _run(lc, path, tokens, mode=SE_NONE, tail=tail, type_k=type_k, type_v=type_v, flash_attn=fa)
    e_exact = no.rel_max_err(exact_low, exact_f32)
    e_stock = no.rel_max_err(stock_low, stock_f32)
    print(f"\n[d] {arch} {cache}: exact F32 vs oracle {no.rel_max_err(exact_f32, ref):.2e}; "
          f"{cache} vs F32: exact {e_exact:.2e}, stock {e_stock:.2e}")
    assert no.rel_max_err(exact_f32, ref) <= TOL
    assert e_exact <= 3 * e_stock + 1e-3


FA_CACHES = {"f16": (GGML_TYPE_F16, GGML_TYPE_F16), "f32": (GGML_TYPE_F32, GGML_TYPE_F32),
             "q8_0": (GGML_TYPE_Q8_0, GGML_TYPE_Q8_0), "q4_0": (GGML_TYPE_Q4_0, GGML_TYPE_Q4_0)}


@pytest.mark.parametrize("arch,cache", [
    *[(a, "f16") for a in ("llama", "phi3", "qwen2_hd64", "llama_scaled")],
    ("llama", "f32"),  # cast to F16 for the flash attention, restored from F32
    # q8_0 K takes the flash-attention decode too (patches/0011: restored from F32 to the same bytes,
    # test_flash_attention_decode_restores_the_keys_it_rotates), with its rotated keys quantized for the
    # step; q4_0 decodes unfused: the same bound. These caches need head_dim % 32; hd64 is also
    # Hadamard-rotated
    ("llama_hd32", "q8_0"), ("qwen2_hd64", "q8_0"), ("llama_hd32", "q4_0"), ("qwen2_hd64", "q4_0"),
])
def test_flash_attention_decode(llama_cpp, models, arch, cache):
    """With flash_attn=True exact mode decodes through ggml_flash_attn_ext (F16/F32/q8_0 K):
    for each step the neighbours are rotated by the query's own rotation in their own cells, and restored
    after it (test_backend_audit checks that the graph has the op). The cache is full at the end
    (256 cells). Against the oracle, at every decoded token, it deviates no more than the stock
    library's flash attention with the same cache deviates from its unfused F32 run (3x, plus 1e-3
    for the keys exact mode rounds once more). A neighbour left rotated, or at a wrong position,
    would be off by the order of the logits themselves."""
    lc = llama_cpp
    path = models[arch]
    type_k, type_v = FA_CACHES[cache]
    g, w, n, tail = 4, 16, 256, 64  # 64 decoded tokens: keys leave the window while decoding
    tokens = _tokens(n, seed=23)
    ref = _oracle(path, tokens, g, w)
    kw = dict(n_ctx=256, type_k=type_k, type_v=type_v, flash_attn=True, tail=tail)
    exact_fa = _run(lc, path, tokens, g=g, w=w, **kw)
    stock_fa = _run(lc, path, tokens, mode=SE_NONE, **kw)
    stock_f32 = _run(lc, path, tokens, mode=SE_NONE, n_ctx=256, tail=tail)
    e_exact = no.rel_max_err(exact_fa[-tail:], ref[-tail:])
    e_stock = no.rel_max_err(stock_fa[-tail:], stock_f32[-tail:])
    print(f"\n[fa] {arch} {cache}: exact FA decode vs oracle {e_exact:.2e}; stock FA vs F32 {e_stock:.2e}")
    assert e_exact <= 3 * e_stock + 1e-3


def _state_k_rows(lc, llm, type_k: int, n_cells: int) -> list[list[bytes]]:
    """The K rows of every layer in sequence 0's saved state (n_cells cells), one per cell in cell
    order: the state holds, after the cells' metadata, V's layout flag, the layer count, then per
    layer K's type, its row size and its rows."""
    n = lc.llama_state_seq_get_size(llm.ctx, 0)
    buf = (ctypes.c_uint8 * n)()
    assert lc.llama_state_seq_get_data(llm.ctx, buf, n, 0) == n
    data = bytes(buf)
    n_layer = lc.llama_model_n_layer(llm.model)
    # the row size is the one value not known up front: the first full layer header that fits (the
    # 12 bytes before it alone can occur earlier in the state by chance)
    for row in range(1, 4096):
        at = data.find(struct.pack("<IIiQ", 0, n_layer, type_k, row))
        if at >= 0:
            at += 20
            break
    else:
        raise AssertionError("no K layer header of the expected type in the state")
    layers = []
    for il in range(n_layer):
        if il:
            assert struct.unpack_from("<iQ", data, at) == (type_k, row)
            at += 12
        layers.append([data[at + c * row: at + (c + 1) * row] for c in range(n_cells)])
        at += n_cells * row
    return layers


@pytest.mark.parametrize("arch,cache", [
    ("llama_hd32", "q8_0"), ("qwen2_hd64", "q8_0"), ("llama", "f16"),
])
def test_flash_attention_decode_restores_the_keys_it_rotates(llama_cpp, models, arch, cache):
    """The flash-attention decode rotates the window's keys in their own cells for the step and
    writes them back from an F32 copy. For q8_0 that copy quantizes back to the bytes that were
    there (patches/0011; hd64 caches are Hadamard-rotated as well). After 96 decoded
    tokens, each quantized again at every step while it was in the window, every key of the first
    layer (whose keys depend on the tokens only) still in the window is stored byte for byte as
    the stock library stores it, and the keys before the window (grouped) are not: a restore off
    by one quant in one element, or a key left rotated, fails the first check, a state read at
    the wrong offset the second."""
    lc = llama_cpp
    path = models[arch]
    type_k, type_v = FA_CACHES[cache]
    g, w, n, tail = 4, 16, 128, 96
    tokens = _tokens(n, seed=41)
    rows = {}
    for mode in (SE_EXACT, SE_NONE):
        llm = _open(lc, path, n_ctx=256, n_batch=32, type_k=type_k, type_v=type_v, flash_attn=True)
        try:
            _clear(lc, llm)
            assert _set_se(lc, llm, mode, g, w) == 0
            _decode(lc, llm, tokens, chunk=n - tail, tail=tail)
            rows[mode] = _state_k_rows(lc, llm, type_k, n)
        finally:
            llm.close()
    exact, stock = rows[SE_EXACT][0], rows[SE_NONE][0]
    assert exact[n - w + 1:] == stock[n - w + 1:], "a key in the window differs from the stock library's"
    differ = sum(a != b for a, b in zip(exact[1:n - w], stock[1:n - w]))
    assert differ >= 0.9 * (n - w - 1), f"only {differ} of the grouped keys differ from the stock library's"


@pytest.mark.parametrize("arch,cache", [
    *[(a, "f16") for a in ("llama", "phi3", "qwen2", "llama_scaled")],
    ("qwen2_hd64", "f16"),  # head_dim 64: the size CUDA's flash attention runs (16 it leaves to the CPU)
    ("llama", "f32"),  # cast to F16 for the flash attention
    # quantized caches: the window read in place in its type, the keys that leave it written grouped
    # before the second flash attention reads them (K in a Hadamard basis for the head of 64)
    ("qwen2_hd64", "q8_0"), ("qwen2_hd64", "q4_0"),
])
@pytest.mark.parametrize("n_ubatch", [4, 8])
def test_flash_attention_prompt(llama_cpp, models, arch, cache, n_ubatch):
    """With flash_attn=True a prompt ubatch whose window is in position order runs, on the CPU
    (patches/0016, 0017), two flash attentions that return their log-sum-exp: the exact queries
    against the window read in place, and the grouped queries against the cache (with the keys that
    leave the window written in their grouped form between the two), merged by their weights. The
    whole prompt (256 tokens at 4x the trained context, ubatches of 4 and 8, 2-4 query heads per KV
    head) against the oracle: no further from it than 1.25x the stock library's flash attention with
    the same cache is from its unfused F32 run. A window weight off by 0.1% (a log-sum-exp off by
    1e-3 of itself) triples the error. (A device without the log-sum-exp takes patches/0008's
    scratch cells: test_rpc.py's exact-fa setting, whose RPC servers refuse it, against this path.)"""
    lc = llama_cpp
    path = models[arch]
    type_k, type_v = FA_CACHES[cache]
    g, w, n = 4, 64, 256
    tokens = _tokens(n, seed=29)
    ref = _oracle(path, tokens, g, w)
    kw = dict(n_ctx=256, n_batch=256, n_ubatch=n_ubatch)
    exact_fa = _run(lc, path, tokens, g=g, w=w, type_k=type_k, type_v=type_v, flash_attn=True, **kw)
    stock_fa = _run(lc, path, tokens, mode=SE_NONE, type_k=type_k, type_v=type_v, flash_attn=True, **kw)
    stock_f32 = _run(lc, path, tokens, mode=SE_NONE, **kw)
    e_exact = no.rel_max_err(exact_fa, ref)
    e_stock = no.rel_max_err(stock_fa, stock_f32)
    print(f"\n[fa prompt] {arch} {cache} ubatch {n_ubatch}: exact vs oracle {e_exact:.2e}; stock FA vs F32 {e_stock:.2e}")
    assert e_exact <= 1.25 * e_stock


@pytest.mark.parametrize("n_ubatch", [128, 256])
def test_flash_attention_prompt_ubatch_larger_than_the_window(llama_cpp, models, n_ubatch):
    """On the CPU exact mode's flash-attention prompt takes the stock library's 512 tokens per ubatch
    (selfextend_gguf.ubatch.FLASH_LSE_UBATCH), more than a small window: ubatches of 2 and 4 windows,
    in which keys enter the window and leave it, and are written grouped between the two flash
    attentions, within one ubatch. The graph is the two flash attentions (no softmax); against the
    oracle as test_flash_attention_prompt asks."""
    from graph_ops import Node, collect_ops, loaded_model
    from selfextend_gguf.rpc import has_local_gpu

    lc = llama_cpp
    path = models["llama"]
    g, w, n = 4, 64, 256
    tokens = _tokens(n, seed=37)
    if not has_local_gpu():  # loaded_model offloads every layer to a GPU, whose prompt takes patches/0008
        with loaded_model(lc, path) as model:
            nodes: list[Node] = []
            ops = collect_ops(lc, model, [tokens], self_extend=(1, g, w), n_ctx=n, n_ubatch=n_ubatch,
                              type_k=GGML_TYPE_F16, type_v=GGML_TYPE_F16, flash_attn=True, nodes=nodes)
        assert any(nd.name.startswith("fattn_win") for nd in nodes)
        assert not any(k[0] == "SOFT_MAX" for k in ops)
    ref = _oracle(path, tokens, g, w)
    kw = dict(n_ctx=n, n_batch=n, n_ubatch=n_ubatch, type_k=GGML_TYPE_F16, type_v=GGML_TYPE_F16, flash_attn=True)
    exact_fa = _run(lc, path, tokens, g=g, w=w, **kw)
    stock_fa = _run(lc, path, tokens, mode=SE_NONE, **kw)
    stock_f32 = _run(lc, path, tokens, mode=SE_NONE, n_ctx=n, n_batch=n, n_ubatch=n_ubatch)
    e_exact, e_stock = no.rel_max_err(exact_fa, ref), no.rel_max_err(stock_fa, stock_f32)
    print(f"\n[fa prompt] ubatch {n_ubatch}, window {w}: exact vs oracle {e_exact:.2e}; stock FA vs F32 {e_stock:.2e}")
    assert e_exact <= 1.25 * e_stock


def test_flash_attention_prompt_in_query_tiles(llama_cpp, models):
    """The CPU flash attention runs 64 or more queries per head in tiles of 64 (patches/0009 gives each
    thread whole tiles). A ubatch of 96 tokens gives both of exact mode's flash attentions (the window
    against the exact queries, the cache against the grouped ones) and the stock library's 96
    queries per head: a whole tile and part of one. With 1 to 4 threads (chunk boundaries that would
    cut tiles differently) the logits are identical, the stock flash attention is within 1% of its
    unfused F32 run, and exact mode is as close to the oracle as test_flash_attention_prompt asks. A
    tile skipped, computed for the wrong rows or twice into one output would break one of the three."""
    lc = llama_cpp
    path = models["llama"]
    g, w, n = 4, 128, 384
    tokens = _tokens(n, seed=31)
    ref = _oracle(path, tokens, g, w)
    kw = dict(n_ctx=n, n_batch=n, n_ubatch=96, type_k=GGML_TYPE_F16, type_v=GGML_TYPE_F16, flash_attn=True)
    exact = [_run(lc, path, tokens, g=g, w=w, n_threads=t, **kw) for t in (1, 2, 3, 4)]
    stock = [_run(lc, path, tokens, mode=SE_NONE, n_threads=t, **kw) for t in (1, 2, 3, 4)]
    stock_f32 = _run(lc, path, tokens, mode=SE_NONE, n_ctx=n, n_batch=n, n_ubatch=96)
    for t, (e, s) in enumerate(zip(exact[1:], stock[1:]), start=2):
        assert np.array_equal(e, exact[0]), f"exact mode's logits differ between 1 and {t} threads"
        assert np.array_equal(s, stock[0]), f"the stock library's logits differ between 1 and {t} threads"
    e_stock = no.rel_max_err(stock[0], stock_f32)
    e_exact = no.rel_max_err(exact[0], ref)
    print(f"\n[fa tiles] exact vs oracle {e_exact:.2e}; stock FA vs F32 {e_stock:.2e}")
    assert e_stock < 1e-2
    assert e_exact <= 1.25 * e_stock


# ---------------------------------------------------------------------------------------------
# K-shift (llama_memory_seq_add): the cached keys move between their stored (grouped) positions


def test_flash_attention_prompt_layers_with_other_kv_heads(llama_cpp, tmp_path):
    """OpenELM's layers have 1 and 2 KV heads (2 query heads per KV head in both). The
    flash-attention prompt builds one mask for every layer, with one plane per KV head, so a model
    whose layers differ in KV heads keeps the unfused prompt (llama_kv_cache::self_extend_n_gqa()).
    Before that check the second layer wrote its window weights past the end of the first
    layer's mask: no abort, logits 1.3 off (2% of their range) from the 72nd token on, the first
    ubatch whose keys leave the window. The oracle does not cover OpenELM, so the prompt with
    flash_attn=True is compared with the unfused prompt, as close as the stock library's two are,
    and the unfused prompt with a token-by-token run (the decode path's gather, another graph)."""
    lc = llama_cpp
    path = write_tiny_openelm(tmp_path / "openelm.gguf")
    g, w, n = 4, 64, 256
    tokens = _tokens(n, seed=37)
    kw = dict(n_ctx=n, n_batch=n, n_ubatch=8, type_k=GGML_TYPE_F16, type_v=GGML_TYPE_F16)
    exact_fa = _run(lc, path, tokens, g=g, w=w, flash_attn=True, **kw)
    exact = _run(lc, path, tokens, g=g, w=w, **kw)
    exact_steps = _run(lc, path, tokens, g=g, w=w, chunk=1, **{**kw, "n_batch": 1})
    stock_fa = _run(lc, path, tokens, mode=SE_NONE, flash_attn=True, **kw)
    stock = _run(lc, path, tokens, mode=SE_NONE, **kw)
    e_fa = no.rel_max_err(exact_fa, exact)
    e_stock = no.rel_max_err(stock_fa, stock)
    e_steps = no.rel_max_err(exact, exact_steps)
    print(f"\n[openelm] exact FA vs unfused {e_fa:.2e}, stock FA vs unfused {e_stock:.2e}, "
          f"exact prompt vs token by token {e_steps:.2e}")
    assert e_fa <= 2 * e_stock + 1e-3
    assert e_steps <= 1e-3
    # the window matters: with no self-extend the logits are far from these
    assert no.rel_max_err(stock, exact) > 0.05


def test_exact_kv_shift(llama_cpp, tmp_path):
    """Drop the first k tokens and shift the rest back by k (a context shift), then decode one
    more token: with one layer the cache then holds exactly what a fresh evaluation of the
    shortened text computes, so the logits must agree."""
    lc = llama_cpp
    path = write_tiny_model(tmp_path / "llama1.gguf", arch="llama", n_layer=1, seed=21)
    g, w, n, k = 4, 8, 150, 37
    tokens = _tokens(n + 1, seed=17)
    llm = _open(lc, path)
    try:
        _clear(lc, llm)
        assert _set_se(lc, llm, SE_EXACT, g, w) == 0
        _decode(lc, llm, tokens[:n])
        mem = lc.llama_get_memory(llm.ctx)
        assert lc.llama_memory_seq_rm(mem, 0, 0, k)
        lc.llama_memory_seq_add(mem, 0, k, -1, -k)
        shifted = _decode(lc, llm, tokens[n:], start=n - k)
    finally:
        llm.close()
    fresh = _run(lc, path, tokens[k:], g=g, w=w)[-1:]
    ref = no.forward(path, tokens[k:], *no.positions_exact(n + 1 - k, g, w))[-1:]
    err, err_ref = no.rel_max_err(shifted, fresh), no.rel_max_err(shifted, ref)
    print(f"\n[b] K-shift by {k}: vs fresh evaluation {err:.2e}, vs oracle {err_ref:.2e}")
    assert err_ref <= TOL
    assert err <= 1e-5


@pytest.mark.parametrize("p0", [0, 40])
def test_exact_seq_div(llama_cpp, tmp_path, p0):
    """Divide the positions of cells [p0, n) by 2 (llama_memory_seq_div, what llama.cpp's client-side
    self-extend does), then decode one more token. With one layer the cached K and V depend on the
    tokens only, so the last token's logits are the oracle's for its attention over the cells at
    their new positions, each key exact or grouped by its new distance. The keys stored grouped
    before the division must be moved to the form their new positions need by the K-shift."""
    lc = llama_cpp
    path = write_tiny_model(tmp_path / "llama1.gguf", arch="llama", n_layer=1, seed=23)
    g, w, n, d = 4, 8, 150, 2
    tokens = _tokens(n + 1, seed=19)
    new_pos = np.array([j if j < p0 else j // d for j in range(n)])
    q = int(new_pos.max()) + 1
    llm = _open(lc, path)
    try:
        _clear(lc, llm)
        assert _set_se(lc, llm, SE_EXACT, g, w) == 0
        _decode(lc, llm, tokens[:n])
        lc.llama_memory_seq_div(lc.llama_get_memory(llm.ctx), 0, p0, -1, d)
        divided = _decode(lc, llm, tokens[n:], start=q)
    finally:
        llm.close()
    # the oracle's last row: the new token at q against every cell at its new position
    q_pos, k_pos = no.positions_stock(n + 1)
    for j, pj in enumerate(list(new_pos) + [q]):
        near = q - pj < w
        q_pos[n, j] = q if near else q // g + w - w // g
        k_pos[n, j] = pj if near else pj // g
    ref = no.forward(path, tokens, q_pos, k_pos)[-1:]
    err = no.rel_max_err(divided, ref)
    print(f"\n[b] seq_div from {p0} by {d}: vs oracle {err:.2e}")
    assert err <= TOL


# ---------------------------------------------------------------------------------------------
# iSWA (gemma3): self-extend on the full-attention layers, the sliding-window layers stay stock.
# No oracle for gemma3 here: these check that the iSWA graph runs, is consistent across batch
# splits and is the stock graph where it must be.


def _write_tiny_gemma3(path):
    import gguf
    from tiny_models import _spm_vocab

    rng = np.random.default_rng(31)
    n_embd, n_head, n_head_kv, hd, n_ff, n_layer, n_vocab = 64, 4, 2, 16, 96, 4, 288
    w = gguf.GGUFWriter(str(path), "gemma3")
    w.add_name("selfextend-gguf tiny gemma3 test model")
    w.add_context_length(64)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_sliding_window(8)
    w.add_uint32("gemma3.attention.sliding_window_pattern", 2)  # layers 0, 2 SWA; 1, 3 full
    w.add_file_type(int(gguf.LlamaFileType.ALL_F32))
    tokens, scores, types = _spm_vocab(n_vocab)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)

    def mat(name, rows, cols, std):
        w.add_tensor(name, (rng.standard_normal((rows, cols)) * std).astype(np.float32))

    def vec(name, n, mean=0.0, std=0.1):
        w.add_tensor(name, (mean + rng.standard_normal(n) * std).astype(np.float32))

    mat("token_embd.weight", n_vocab, n_embd, 1.0 / np.sqrt(n_embd))
    vec("output_norm.weight", n_embd)
    for il in range(n_layer):
        p = f"blk.{il}."
        vec(p + "attn_norm.weight", n_embd)
        mat(p + "attn_q.weight", n_head * hd, n_embd, 1.0 / np.sqrt(n_embd))
        mat(p + "attn_k.weight", n_head_kv * hd, n_embd, 1.0 / np.sqrt(n_embd))
        mat(p + "attn_v.weight", n_head_kv * hd, n_embd, 1.0 / np.sqrt(n_embd))
        vec(p + "attn_q_norm.weight", hd, 1.0, 0.3)  # gemma RMS norms scale by (1 + w)
        vec(p + "attn_k_norm.weight", hd, 1.0, 0.3)
        mat(p + "attn_output.weight", n_embd, n_head * hd, 1.0 / np.sqrt(n_head * hd))
        vec(p + "post_attention_norm.weight", n_embd)
        vec(p + "ffn_norm.weight", n_embd)
        mat(p + "ffn_gate.weight", n_ff, n_embd, 1.0 / np.sqrt(n_embd))
        mat(p + "ffn_up.weight", n_ff, n_embd, 1.0 / np.sqrt(n_embd))
        mat(p + "ffn_down.weight", n_embd, n_ff, 1.0 / np.sqrt(n_ff))
        vec(p + "post_ffw_norm.weight", n_embd)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_iswa_gemma3(llama_cpp, tmp_path):
    lc = llama_cpp
    path = _write_tiny_gemma3(tmp_path / "gemma3.gguf")
    g, w, n = 4, 8, 200
    tokens = _tokens(n, seed=23)
    off = _run(lc, path, tokens, mode=SE_NONE)
    one = _run(lc, path, tokens, g=g, w=w)
    tbt = _run(lc, path, tokens, g=g, w=w, chunk=1)
    ub7 = _run(lc, path, tokens, g=g, w=w, n_ubatch=7)
    e_off, e_tbt, e_ub7 = no.rel_max_err(one, off), no.rel_max_err(tbt, one), no.rel_max_err(ub7, one)
    print(f"\n[iswa] gemma3 G={g} W={w} n={n}: vs off {e_off:.2e}; token by token {e_tbt:.2e}, n_ubatch 7 {e_ub7:.2e}")
    assert np.isfinite(one).all()
    assert e_off > 1e-3  # the full-attention layers do self-extend
    assert e_tbt <= 1e-5 and e_ub7 <= 1e-5
    assert np.array_equal(_run(lc, path, tokens, g=1, w=w), off)
    assert np.array_equal(_run(lc, path, tokens[:60], g=g, w=60), off[:60])


# ---------------------------------------------------------------------------------------------
# several sequences


def _context(lc, llm, *, n_seq_max, kv_unified, n_ctx=1024, n_batch=512):
    p = lc.llama_context_default_params()
    p.n_ctx = n_ctx
    p.n_batch = n_batch
    p.n_ubatch = n_batch
    p.n_seq_max = n_seq_max
    p.kv_unified = kv_unified
    p.type_k = GGML_TYPE_F32
    p.type_v = GGML_TYPE_F32
    p.flash_attn_type = 0  # LLAMA_FLASH_ATTN_TYPE_DISABLED
    p.n_threads = 1
    p.n_threads_batch = 1
    ctx = lc.llama_init_from_model(llm.model, p)
    assert ctx
    return ctx


def test_exact_several_sequences(llama_cpp, models):
    """Two sequences in one unified cache, their tokens interleaved in the same batches, give each
    the logits of its own single-sequence evaluation; a cache with one stream per sequence is
    refused (-4)."""
    lc = llama_cpp
    lib = lc.llama_cpp._lib
    path = models["llama"]
    g, w = 4, 8
    seqs = [_tokens(150, seed=41), _tokens(130, seed=42)]
    llm = _open(lc, path, n_ctx=64, n_batch=64)
    try:
        ctx = _context(lc, llm, n_seq_max=2, kv_unified=False)
        assert lib.llama_set_self_extend(ctx, SE_EXACT, g, w) == -4
        lc.llama_free(ctx)

        ctx = _context(lc, llm, n_seq_max=2, kv_unified=True)
        assert lib.llama_set_self_extend(ctx, SE_EXACT, g, w) == 0
        n_vocab = llm.n_vocab()
        out = [[], []]
        batch = lc.llama_batch_init(64, 0, 1)
        pos = [0, 0]
        chunk = 23
        while pos[0] < len(seqs[0]) or pos[1] < len(seqs[1]):
            n = 0
            owners = []
            for s in (0, 1):
                for t in seqs[s][pos[s] : pos[s] + chunk]:
                    batch.token[n] = int(t)
                    batch.pos[n] = pos[s]
                    batch.n_seq_id[n] = 1
                    batch.seq_id[n][0] = s
                    batch.logits[n] = 1
                    owners.append(s)
                    pos[s] += 1
                    n += 1
            batch.n_tokens = n
            assert lc.llama_decode(ctx, batch) == 0
            for i, s in enumerate(owners):
                out[s].append(np.ctypeslib.as_array(lc.llama_get_logits_ith(ctx, i), shape=(n_vocab,)).copy())
        lc.llama_batch_free(batch)
        lc.llama_free(ctx)
    finally:
        llm.close()
    for s in (0, 1):
        got = np.array(out[s])
        ref = _oracle(path, seqs[s], g, w)
        single = _run(lc, path, seqs[s], g=g, w=w)
        e_ref, e_single = no.rel_max_err(got, ref), no.rel_max_err(got, single)
        print(f"\n[seqs] sequence {s}: vs oracle {e_ref:.2e}, vs alone {e_single:.2e}")
        assert e_ref <= TOL
        assert e_single <= 1e-5


# ---------------------------------------------------------------------------------------------
# YaRN: the second rotations must not apply the YaRN magnitude again


def test_exact_yarn(llama_cpp, models):
    lc = llama_cpp
    path = models["qwen2"]
    g, w, n, factor = 2, 8, 192, 2.0
    tokens = _tokens(n, seed=29)
    yarn = dict(rope_scaling_type=2, rope_freq_scale=1.0 / factor, yarn_orig_ctx=64)
    # the oracle model with llama.cpp's YaRN folded in (frequency factors and a query scale)
    oracle = no.fold_yarn(no.load_model(path), factor, 64)
    # the oracle's YaRN model is right: check it against stock llama.cpp with YaRN
    stock = _run_kw(lc, path, tokens, mode=SE_NONE, **yarn)
    e_stock = no.rel_max_err(stock, no.forward(oracle, tokens))
    got = _run_kw(lc, path, tokens, g=g, w=w, **yarn)
    e = no.rel_max_err(got, no.forward(oracle, tokens, *no.positions_exact(n, g, w)))
    print(f"\n[a] YaRN x{factor}: stock vs oracle {e_stock:.2e}; exact G={g} W={w} vs oracle {e:.2e}")
    assert e_stock <= TOL
    assert e <= TOL


def _run_kw(lc, path, tokens, *, mode=SE_EXACT, g=4, w=8, **kw):
    llm = lc.Llama(model_path=str(path), n_ctx=256, n_batch=256, n_ubatch=256, logits_all=True,
                   type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32, flash_attn=False, n_threads=1,
                   n_threads_batch=1, verbose=False, **kw)
    try:
        _clear(lc, llm)
        assert _set_se(lc, llm, mode, g, w) == 0
        return _decode(lc, llm, tokens)
    finally:
        llm.close()


# ---------------------------------------------------------------------------------------------
# storage: a key is stored at its exact position while it is within W of the newest position of
# its sequence, and re-rotated once, in place, to j/G in the ubatch where it leaves that window


@pytest.mark.parametrize("arch,cache", [("llama", "f32"), ("qwen2_hd64", "q8_0 K")])
def test_seq_rm_back_into_the_window_then_continue(llama_cpp, models, arch, cache):
    """Cut a sequence back by less than W: keys that were stored grouped are inside the window of
    the new newest position again and must be un-grouped (the K-shift does it). Continuing then, in
    a chunk and token by token, gives what a fresh evaluation of the same tokens gives; with a
    q8_0 K cache (Hadamard-rotated, head_dim 64) within the rounding that the cache adds."""
    lc = llama_cpp
    path = models[arch]
    g, w, n, keep, more = 4, 16, 140, 130, 30
    tokens = _tokens(keep + more, seed=47)
    kw = {} if cache == "f32" else dict(type_k=CACHES[cache][0], type_v=CACHES[cache][1])
    other = _tokens(n - keep, seed=48)  # what the cut removes
    llm = _open(lc, path, **kw)
    try:
        _clear(lc, llm)
        assert _set_se(lc, llm, SE_EXACT, g, w) == 0
        _decode(lc, llm, np.concatenate([tokens[:keep], other]))
        assert lc.llama_memory_seq_rm(lc.llama_get_memory(llm.ctx), 0, keep, -1)
        again = _decode(lc, llm, tokens[keep:], start=keep, chunk=8, tail=10)
    finally:
        llm.close()
    fresh = _run(lc, path, tokens, g=g, w=w, **kw)[keep:]
    ref = _oracle(path, tokens, g, w)[keep:]
    err, err_ref = no.rel_max_err(again, fresh), no.rel_max_err(again, ref)
    print(f"\n[storage] {arch} {cache}: cut back by {n - keep} < W = {w}, continued: vs fresh {err:.2e}, "
          f"vs oracle {err_ref:.2e}")
    if cache == "f32":
        assert err <= 1e-5 and err_ref <= TOL
    else:
        # the un-grouped keys were rotated in the quantized cache and back: the bound of
        # test_low_precision_caches, against the deviation of the stock library's cache of this type
        stock = no.rel_max_err(_run(lc, path, tokens, mode=SE_NONE, **kw), _run(lc, path, tokens, mode=SE_NONE))
        exact_f32 = _run(lc, path, tokens, g=g, w=w)[keep:]
        e_low = no.rel_max_err(again, exact_f32)
        print(f"[storage] {cache} vs F32: exact after the cut {e_low:.2e}, stock {stock:.2e}")
        assert e_low <= 3 * stock + 1e-3


def _state(lc, llm) -> bytes:
    n = lc.llama_state_get_size(llm.ctx)
    buf = (ctypes.c_uint8 * n)()
    assert lc.llama_state_get_data(llm.ctx, buf, n) == n
    return bytes(buf)


def _seq_state(lc, llm, seq_id=0) -> bytes:
    n = lc.llama_state_seq_get_size(llm.ctx, seq_id)
    buf = (ctypes.c_uint8 * n)()
    assert lc.llama_state_seq_get_data(llm.ctx, buf, n, seq_id) == n
    return bytes(buf)


def test_state_carries_the_setting(llama_cpp, models):
    """A state (whole context or one sequence) saved past W and loaded into a context with the same
    setting continues with the logits the original context gives; loaded into a context with
    another setting (other G, other W, self-extend off) it is refused by llama_state_set_data /
    llama_state_seq_set_data themselves, and the refused context still works."""
    lc = llama_cpp
    path = models["llama"]
    g, w, n = 4, 8, 100
    tokens = _tokens(n + 12, seed=53)
    llm = _open(lc, path)
    try:
        _clear(lc, llm)
        assert _set_se(lc, llm, SE_EXACT, g, w) == 0
        _decode(lc, llm, tokens[:n])
        state, seq_state = _state(lc, llm), _seq_state(lc, llm)
        expected = _decode(lc, llm, tokens[n:], start=n, chunk=1)
    finally:
        llm.close()

    for loader in ("state", "seq"):
        llm = _open(lc, path)
        try:
            _clear(lc, llm)
            assert _set_se(lc, llm, SE_EXACT, g, w) == 0
            if loader == "state":
                buf = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
                assert lc.llama_state_set_data(llm.ctx, buf, len(state)) == len(state)
            else:
                buf = (ctypes.c_uint8 * len(seq_state)).from_buffer_copy(seq_state)
                assert lc.llama_state_seq_set_data(llm.ctx, buf, len(seq_state), 0) == len(seq_state)
            got = _decode(lc, llm, tokens[n:], start=n, chunk=1)
        finally:
            llm.close()
        print(f"\n[state] {loader}: loaded into the same setting, continued: {no.rel_max_err(got, expected):.2e}")
        assert no.rel_max_err(got, expected) <= 1e-6

    for mode, og, ow in ((SE_EXACT, 2, 8), (SE_EXACT, 4, 16), (SE_NONE, 1, 1)):
        llm = _open(lc, path)
        try:
            _clear(lc, llm)
            assert _set_se(lc, llm, mode, og, ow) == 0
            buf = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
            assert lc.llama_state_set_data(llm.ctx, buf, len(state)) == 0
            buf = (ctypes.c_uint8 * len(seq_state)).from_buffer_copy(seq_state)
            assert lc.llama_state_seq_set_data(llm.ctx, buf, len(seq_state), 0) == 0
            # nothing was loaded, and the context works with its own setting
            assert lc.llama_memory_seq_pos_max(lc.llama_get_memory(llm.ctx), 0) == -1
            out = _decode(lc, llm, tokens[:40])
        finally:
            llm.close()
        assert np.array_equal(out, _run(lc, path, tokens[:40], mode=mode, g=og, w=ow))


def test_attention_variants_are_refused(llama_cpp, tmp_path):
    """Logit soft-capping (gemma2) is an attention variant that the oracle does not cover: the C API
    refuses it (-6, and the setting stays off) and LongLlama raises UnsupportedModelError naming it."""
    from selfextend_gguf import LongLlama
    from selfextend_gguf.errors import UnsupportedModelError

    lc = llama_cpp
    path = write_tiny_gemma3(tmp_path / "gemma2.gguf", arch="gemma2", head_dim=32, n_embd=64, n_head=2,
                             n_head_kv=1)
    llm = _open(lc, path)
    try:
        _clear(lc, llm)
        assert _set_se(lc, llm, SE_EXACT, 4, 8) == -6
        assert _get_se(lc, llm)[0] == SE_NONE
        assert _set_se(lc, llm, SE_NONE, 1, 1) == 0
    finally:
        llm.close()
    with pytest.raises(UnsupportedModelError, match="soft-capping"):
        LongLlama(path, mode="exact", group_size=4, window=8, n_ctx=128, verbose=False)


def test_sequence_starting_past_the_window(llama_cpp, models):
    """A sequence whose first tokens are at positions >= W (allowed by llama_decode): two tokens that
    are each other's neighbours give what the same tokens at positions 0 and 1 give (RoPE depends on
    the distance only), and the sequence then continues past W."""
    lc = llama_cpp
    path = models["llama"]
    tokens = _tokens(30, seed=61)
    llm = _open(lc, path)
    try:
        _clear(lc, llm)
        assert _set_se(lc, llm, SE_EXACT, 4, 8) == 0
        late = _decode(lc, llm, tokens[:2], start=100)
        more = _decode(lc, llm, tokens[2:], start=102, chunk=5)
    finally:
        llm.close()
    early = _run(lc, path, tokens[:2], g=4, w=8)
    assert no.rel_max_err(late, early) <= 1e-5
    assert np.isfinite(more).all()


def test_non_causal_decode_is_refused(llama_cpp, models):
    """The self-extend graph is causal; a non-causal decode would read keys stored in their grouped
    form as if exact, so llama_decode refuses it with an error code, and works again once causal."""
    lc = llama_cpp
    path = models["llama"]
    tokens = _tokens(40, seed=62)
    llm = _open(lc, path)
    try:
        _clear(lc, llm)
        assert _set_se(lc, llm, SE_EXACT, 4, 8) == 0
        _decode(lc, llm, tokens[:20])
        lc.llama_set_causal_attn(llm.ctx, False)
        with pytest.raises(AssertionError, match="llama_decode returned -1"):
            _decode(lc, llm, tokens[20:22], start=20)
        lc.llama_set_causal_attn(llm.ctx, True)
        again = _decode(lc, llm, tokens[20:], start=20)
    finally:
        llm.close()
    assert no.rel_max_err(again, _run(lc, path, tokens, g=4, w=8)[20:]) <= 1e-5
