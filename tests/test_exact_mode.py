"""Exact mode through LongLlama (the binding of patches/0005), against the NumPy oracle.

tests/test_exact_graph.py checks the graph through the raw C API; these check what a
user of LongLlama gets: generation, prefix reuse, state, and the setting read back.
"""

from __future__ import annotations

import numpy as np
import pytest

import numpy_oracle as no
from tiny_models import write_tiny_model
from selfextend_gguf import LongLlama, max_context
from selfextend_gguf import _api
from selfextend_gguf.errors import ContextLengthError

TOL = 1e-4
F32 = 0
F16 = 1


def _tokens(n: int, seed: int) -> list:
    return [int(t) for t in np.random.default_rng(seed).integers(3, 259, size=n)]


def _exact(path, *, G, W, n_ctx=None, n_batch=512, **kwargs) -> LongLlama:
    return LongLlama(str(path), group_size=G, window=W, mode="exact", n_ctx=n_ctx or max_context(64, G, W),
                     n_batch=n_batch, n_ubatch=n_batch, logits_all=True, type_k=F32, type_v=F32,
                     flash_attn=False, n_threads=1, n_threads_batch=1, verbose=False, **kwargs)


@pytest.mark.parametrize("fixture", ["tiny_llama_path", "tiny_qwen2_path"])
@pytest.mark.parametrize("G,W,n_batch", [(2, 8, 512), (4, 16, 7), (3, 5, 32)])
def test_exact_mode_matches_oracle(fixture, G, W, n_batch, request):
    path = request.getfixturevalue(fixture)
    n = min(192, max_context(64, G, W))
    toks = _tokens(n, seed=G + W)
    llm = _exact(path, G=G, W=W, n_batch=n_batch)
    assert _api.get_self_extend(llm.ctx) == (_api.SELF_EXTEND_EXACT, G, W)
    llm.eval(toks)
    model = no.load_model(path)
    lib = np.array(llm.scores[:n], dtype=np.float64)
    assert no.rel_max_err(lib, no.forward(model, toks, *no.positions_exact(n, G, W))) <= TOL
    # and it is neither the stock model nor shift mode
    assert no.rel_max_err(lib, no.forward(model, toks)) > 1e-2
    if W % G == 0:
        assert no.rel_max_err(lib, no.forward(model, toks, *no.positions_shift(n, G, W))) > 1e-2
    llm.close()


@pytest.mark.parametrize("shared", [150, 90, 3])
def test_exact_mode_prefix_reuse_and_generation(tiny_llama_path, shared):
    """A second prompt sharing a prefix, then token-by-token generation: oracle logits throughout."""
    G, W = 4, 16
    first = _tokens(160, seed=1)
    second = first[:shared] + _tokens(170 - shared, seed=2)
    llm = _exact(tiny_llama_path, G=G, W=W, n_batch=32)
    llm.eval(first)
    gen = llm.generate(second, top_k=1, temp=0.0)
    out = [next(gen) for _ in range(5)]
    n = len(second) + 4  # the 5th sampled token is not evaluated yet
    seq = second + out[:4]
    ref = no.forward(no.load_model(tiny_llama_path), seq, *no.positions_exact(n, G, W))
    assert no.rel_max_err(np.array(llm.scores[:n]), ref) <= TOL
    llm.close()


def test_exact_state_round_trip(tiny_qwen2_path):
    toks = _tokens(150, seed=6)
    llm = _exact(tiny_qwen2_path, G=4, W=16)
    llm.eval(toks[:120])
    state = llm.save_state()
    llm.eval(toks[120:])
    after = np.array(llm.scores[:150])
    llm.reset()
    llm.eval(_tokens(40, seed=7))
    llm.load_state(state)
    llm.eval(toks[120:])
    assert np.array_equal(np.array(llm.scores[:150]), after)
    llm.close()


def test_group_size_one_is_bit_identical_to_off(tiny_llama_path):
    toks = _tokens(60, seed=3)
    on = _exact(tiny_llama_path, G=1, W=8, n_ctx=64)
    on.eval(toks)
    assert _api.get_self_extend(on.ctx)[0] == _api.SELF_EXTEND_NONE
    import llama_cpp

    off = llama_cpp.Llama(str(tiny_llama_path), n_ctx=64, logits_all=True, type_k=F32, type_v=F32,
                          flash_attn=False, n_threads=1, n_threads_batch=1, verbose=False)
    off.eval(toks)
    assert np.array_equal(np.array(on.scores[:60]), np.array(off.scores[:60]))
    on.close()
    off.close()


def test_failed_decode_keeps_the_cache_consistent(tiny_llama_path):
    """A decode that fails halfway through the graph (here: aborted by the abort callback after the
    first layer) may have re-stored some keys in their grouped form in some layers and not in
    others. llama.cpp then removes them with the failed batch, LongLlama counts as cached only what
    the cache holds, and continuing gives the logits of a fresh evaluation."""
    import ctypes

    from selfextend_gguf import LongLlama, load_llama_cpp

    lc = load_llama_cpp()
    kw = dict(n_ctx=192, n_batch=32, n_ubatch=32, type_k=0, type_v=0, n_threads=1, n_threads_batch=1,
              logits_all=True, verbose=False)
    tokens = [int(t) for t in np.random.default_rng(71).integers(3, 259, size=150)]
    llm = LongLlama(tiny_llama_path, mode="exact", group_size=4, window=16, **kw)
    try:
        llm.eval(tokens[:100])
        state = {"calls": 0, "armed": True}

        @lc.ggml_abort_callback
        def abort(_data):
            state["calls"] += 1
            return state["armed"] and state["calls"] > 60  # inside the second of the two layers

        lc.llama_set_abort_callback(llm._ctx.ctx, abort, None)
        with pytest.raises(RuntimeError):
            llm.eval(tokens[100:132])
        state["armed"] = False
        held = lc.llama_memory_seq_pos_max(lc.llama_get_memory(llm._ctx.ctx), 0) + 1
        # the failed batch and the keys it was re-storing (positions 84..99 leave the window of 131) are gone
        assert llm.n_tokens == held and held <= 100 - 16 + 1
        llm.eval(tokens[llm.n_tokens:150])
        got = np.array(llm.scores[100:150])
    finally:
        llm.close()
    fresh = LongLlama(tiny_llama_path, mode="exact", group_size=4, window=16, **kw)
    try:
        fresh.eval(tokens[:150])
        expected = np.array(fresh.scores[100:150])
    finally:
        fresh.close()
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()


def test_flash_attention_decodes_up_to_n_ctx(tiny_llama_path):
    """With flash_attn=True, exact mode decodes through flash attention in a cache of the stock
    size, up to its last cell (the rotated neighbours replace their own cells for the step, so
    no room past n_ctx is needed). Token by token up to n_ctx, the logits follow the oracle as
    closely as the stock library's flash attention with the same F16 cache follows the stock
    model, and one token more is refused."""
    import llama_cpp

    G, W, n_ctx = 5, 16, 256  # llama.cpp pads a cache to 256 cells: this one is full at the end
    toks = _tokens(n_ctx, seed=5)
    kw = dict(n_ctx=n_ctx, n_batch=64, n_ubatch=64, logits_all=True, type_k=F16, type_v=F16, flash_attn=True,
              n_threads=1, n_threads_batch=1, verbose=False)
    llm = LongLlama(str(tiny_llama_path), group_size=G, window=W, mode="exact", **kw)
    stock = llama_cpp.Llama(str(tiny_llama_path), **kw)
    try:
        assert llm.n_ctx() == n_ctx
        assert llama_cpp.llama_n_ctx(llm.ctx) == llama_cpp.llama_n_ctx(stock.ctx) == n_ctx
        for llama in (llm, stock):
            llama.eval(toks[:100])
            for t in toks[100:]:
                llama.eval([t])
        model = no.load_model(tiny_llama_path)
        exact_err = no.rel_max_err(np.array(llm.scores[100:n_ctx]),
                                   no.forward(model, toks, *no.positions_exact(n_ctx, G, W))[100:])
        stock_err = no.rel_max_err(np.array(stock.scores[100:n_ctx]), no.forward(model, toks)[100:])
        assert exact_err <= 3 * stock_err + 1e-3, (exact_err, stock_err)
        with pytest.raises(ContextLengthError):
            llm.create_completion(toks[:n_ctx], max_tokens=1)
    finally:
        llm.close()
        stock.close()


def test_flash_attention_prompt_compute_buffer_is_one_mask_more(tmp_path):
    """The flash-attention prompt replaces the F32 score matrix of the whole cache with F16 masks:
    on the CPU (patches/0017) one of the cache and one of the window, shared by the layers; on a
    device without the log-sum-exp (patches/0008) one of n_kv x (n_gqa x n_ubatch) per KV head,
    which one layer holds at a time. On a 16-layer model the compute buffer stays within the stock
    library's plus three of the larger masks; a mask that each layer kept to the end of the graph
    (an unread write into it) would take 16."""
    import llama_cpp

    from selfextend_gguf import LongLlama
    from selfextend_gguf.evaluate.bench import buffer_sizes, capture_llama_log

    path = write_tiny_model(tmp_path / "llama16.gguf", arch="llama", n_layer=16, context_length=512, seed=3)
    n_ctx, n_ubatch, n_head_kv, n_gqa = 1280, 32, 2, 2
    kw = dict(n_ctx=n_ctx, n_batch=n_ubatch, n_ubatch=n_ubatch, flash_attn=True, n_threads=1, verbose=True)
    sizes = {}
    for name, make in (("stock", lambda: llama_cpp.Llama(str(path), **kw)),
                       ("exact", lambda: LongLlama(path, mode="exact", group_size=4, window=256, **kw))):
        with capture_llama_log() as log:
            make().close()
        sizes[name] = buffer_sizes("\n".join(log))[1]
    mask_mib = n_ctx * n_gqa * n_ubatch * n_head_kv * 2 / 2**20
    print(f"\n[fa prompt buffer] stock {sizes['stock']:.2f} MiB, exact {sizes['exact']:.2f} MiB, mask {mask_mib:.2f} MiB")
    assert sizes["exact"] <= sizes["stock"] + 3 * mask_mib


@pytest.mark.parametrize("flash_attn", [False, True])
@pytest.mark.parametrize("n_ubatch", [32, 64])
def test_reserved_compute_buffer_holds_a_prompt_in_position_order(tiny_llama_path, n_ubatch, flash_attn):
    """The graph that llama_set_self_extend reserves is the largest that a prompt in position order
    builds: a ubatch read in place has a window of W + n_tokens cells (from the oldest key still
    stored exact to its last query). A prompt that needs more makes the scheduler grow the compute
    buffer mid-prompt, which on a GPU can fail where the reservation would have failed up front;
    llama.cpp says so when the context is freed ("does not match expectation")."""
    from selfextend_gguf.evaluate.bench import capture_llama_log

    tokens = [int(t) for t in np.random.default_rng(0).integers(3, 250, size=200)]
    with capture_llama_log() as log:
        llm = LongLlama(tiny_llama_path, n_ctx=256, n_batch=256, n_ubatch=n_ubatch, mode="exact", group_size=8,
                        window=16, flash_attn=flash_attn, n_threads=1, verbose=False)
        llm.eval(tokens)
        llm.close()
    checks = [line.strip() for line in "".join(log).splitlines() if "expectation" in line]
    assert checks and all("matches expectation" in line for line in checks), checks


def _abort_after_each_node(lc, llm, tokens, n_held: int, step: int) -> tuple:
    """Evaluate tokens[n_held:n_held + step] with llama.cpp aborting after node 1, 2, ..., 79 of the
    graph in turn (the first layers). After each failure llama.cpp must have removed what the failed
    ubatch may have left written, and LongLlama must count as cached only what the cache holds;
    what was removed is evaluated again, `step` tokens at a time. Returns the number of failures and
    the fewest tokens a failure left."""
    state = {"calls": 0, "at": 0}

    @lc.ggml_abort_callback
    def abort(_data):
        state["calls"] += 1
        return state["calls"] == state["at"]

    llm._test_abort = abort  # kept alive as long as the context holds it
    lc.llama_set_abort_callback(llm._ctx.ctx, abort, None)
    mem = lc.llama_get_memory(llm._ctx.ctx)
    failed, least = 0, n_held
    for at in list(range(1, 80)) + [0]:
        state["at"] = 0
        while llm.n_tokens < n_held:  # what the last failure removed, evaluated again
            llm.eval(tokens[llm.n_tokens:min(n_held, llm.n_tokens + step)])
        if at == 0:
            break
        state.update(calls=0, at=at)
        try:
            llm.eval(tokens[n_held:n_held + step])
        except RuntimeError:
            failed += 1
            held = lc.llama_memory_seq_pos_max(mem, 0) + 1
            assert llm.n_tokens == held <= n_held
            least = min(least, held)
        else:  # the next try evaluates the same tokens again
            llm.n_tokens = n_held
            lc.llama_memory_seq_rm(mem, 0, n_held, -1)
    return failed, least


def test_failed_flash_attention_prompt_keeps_the_cache_consistent(tiny_llama_path):
    """A flash-attention prompt ubatch writes the grouped form of the keys that leave its window
    between the two flash attentions of each layer (on a device without the log-sum-exp it holds
    K = 0 and the window's output in cells of the window instead). Prompt ubatches of 8 tokens aborted after every
    node of the first two layers in turn: each time llama.cpp removes what the failed ubatch may
    have left overwritten (cells older than the ubatch), LongLlama counts as cached only what the
    cache holds, and continuing gives the logits of a fresh evaluation that never failed."""
    from selfextend_gguf import LongLlama, load_llama_cpp

    lc = load_llama_cpp()
    kw = dict(n_ctx=160, n_batch=8, n_ubatch=8, type_k=F32, type_v=F32, flash_attn=True, n_threads=1,
              n_threads_batch=1, logits_all=True, verbose=False)
    tokens = [int(t) for t in np.random.default_rng(73).integers(3, 259, size=160)]
    llm = LongLlama(tiny_llama_path, mode="exact", group_size=4, window=32, **kw)
    try:
        llm.eval(tokens[:96])
        failed, least = _abort_after_each_node(lc, llm, tokens, 96, 8)
        assert failed >= 40 and least < 96  # aborts inside the graph, cells older than the ubatch removed
        while llm.n_tokens < 160:
            llm.eval(tokens[llm.n_tokens:llm.n_tokens + 8])
        got = np.array(llm.scores[96:160])
    finally:
        llm.close()
    fresh = LongLlama(tiny_llama_path, mode="exact", group_size=4, window=32, **kw)
    try:
        fresh.eval(tokens[:160])
        expected = np.array(fresh.scores[96:160])
    finally:
        fresh.close()
    assert np.abs(got - expected).max() <= 3e-3 * np.abs(expected).max()


def test_failed_flash_attention_decode_keeps_the_cache_consistent(tiny_llama_path):
    """A flash-attention decode holds its gathered keys rotated in their own cells between two
    nodes of each layer's graph. Single-token decodes aborted after every node of the first two
    layers in turn: each time llama.cpp removes what the failed step may have left rotated,
    LongLlama counts as cached only what the cache holds, and continuing token by token gives the
    logits of a fresh evaluation that never failed."""
    from selfextend_gguf import LongLlama, load_llama_cpp

    lc = load_llama_cpp()
    kw = dict(n_ctx=192, n_batch=32, n_ubatch=32, type_k=F32, type_v=F32, flash_attn=True, n_threads=1,
              n_threads_batch=1, logits_all=True, verbose=False)
    tokens = [int(t) for t in np.random.default_rng(72).integers(3, 259, size=160)]
    llm = LongLlama(tiny_llama_path, mode="exact", group_size=4, window=16, **kw)
    try:
        llm.eval(tokens[:100])
        failed, least = _abort_after_each_node(lc, llm, tokens, 100, 1)
        assert failed >= 40 and least < 100  # the abort points inside the graph
        while llm.n_tokens < 160:
            llm.eval(tokens[llm.n_tokens:llm.n_tokens + 1])
        got = np.array(llm.scores[100:160])
    finally:
        llm.close()
    fresh = LongLlama(tiny_llama_path, mode="exact", group_size=4, window=16, **kw)
    try:
        fresh.eval(tokens[:100])
        for t in tokens[100:160]:
            fresh.eval([t])
        expected = np.array(fresh.scores[100:160])
    finally:
        fresh.close()
    # the positions that failures removed were decoded again one at a time, with flash attention's F16
    # casts, where the fresh run evaluated them as a prompt: 3e-3. A key left rotated is off by O(1)
    assert np.abs(got - expected).max() <= 3e-3 * np.abs(expected).max()
