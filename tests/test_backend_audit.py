"""The ops of the exact-mode graph stay inside the audited table of docs/backend-audit.md.

docs/backend-audit.md lists, between its ``ops-table`` markers, every (op, src0, src1, dst)
combination that exact mode may create, with the CPU/CUDA/Metal ``supports_op`` code that accepts
it. These tests parse that table (the one place it lives) and walk the graph that actually runs
on the CPU (tests/graph_ops.py, through the scheduler's eval callback): prompt batches and
token-by-token decoding, F32/F16/q8_0/q4_0 caches, flash attention on and off, rope NORM/NEOX,
partial rotary, frequency factors, YaRN, a Hadamard-rotated quantized K and an iSWA model. A node
that exact mode computes and the stock graph of the same model and cache does not must be in the
table; otherwise the audit is out of date (add the row after checking the three backends).
Run with ``-s`` to see the ops each configuration adds.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import numpy as np
import pytest

from graph_ops import Node, OpKey, collect_ops, format_keys, loaded_model
from tiny_models import write_tiny_gemma3, write_tiny_model

DOC = Path(__file__).resolve().parents[1] / "docs" / "backend-audit.md"

F32, F16, Q4_0, Q8_0 = 0, 1, 2, 8

SE_EXACT = (1, 4, 8)  # llama_set_self_extend(mode EXACT, G 4, W 8)
SE_OFF = (0, 1, 1)


def audited_ops() -> set:
    """The (op, dst, src0, src1) keys of the table in docs/backend-audit.md (lower-case type names,
    None for a missing source), the product of the listed types of each row."""
    text = DOC.read_text()
    m = re.search(r"<!-- ops-table:start -->(.*?)<!-- ops-table:end -->", text, re.S)
    assert m, f"{DOC} has no ops-table markers"
    keys = set()
    rows = [r for r in m.group(1).strip().splitlines() if r.startswith("|")][2:]  # header, rule
    assert rows, "the audit table is empty"
    for row in rows:
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        assert len(cells) == 8, f"malformed audit row: {row}"
        op, src0, src1, dst = cells[:4]

        def types(cell):
            return [None] if cell == "-" else [t.strip() for t in cell.split(",")]

        for s0, s1 in itertools.product(types(src0), types(src1)):
            for d in ([s0] if dst == "=" else types(dst)):
                keys.add((op, d, s0, s1))
    return keys


def test_audit_table_parses():
    keys = audited_ops()
    ops = {k[0] for k in keys}
    # the ops the lead asked to have audited for the next graph, and the ones in use
    for op in ("ROPE", "GET_ROWS", "SET_ROWS", "MUL_MAT", "CONCAT", "CPY", "CONT", "SOFT_MAX", "ADD",
               "SUB", "MUL", "NEG", "SCALE", "TANH", "VIEW", "RESHAPE", "PERMUTE", "TRANSPOSE"):
        assert op in ops, op
    assert ("GET_ROWS", "f32", "q4_0", "i32") in keys
    assert ("VIEW", "f16", "f16", None) in keys and ("VIEW", "f32", "f16", None) not in keys


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("audit")
    return {
        "llama": write_tiny_model(d / "llama.gguf", arch="llama", seed=1),
        "phi3": write_tiny_model(d / "phi3.gguf", arch="phi3", n_rot=8, n_head_kv=1, seed=3),
        "llama_scaled": write_tiny_model(d / "llama_scaled.gguf", arch="llama", rope_scaling_factor=2.0,
                                         rope_freq_factors=[1.0, 1.0, 2.0, 4.0, 8.0, 8.0, 16.0, 32.0], seed=6),
        "llama_hd32": write_tiny_model(d / "llama_hd32.gguf", arch="llama", n_embd=128, n_head=4, n_head_kv=2,
                                       seed=4),
        # head_dim 64: a quantized K cache is Hadamard-rotated
        "qwen2_hd64": write_tiny_model(d / "qwen2_hd64.gguf", arch="qwen2", n_embd=128, n_head=2, n_head_kv=1,
                                       seed=5),
        "gemma3_iswa": write_tiny_gemma3(d / "gemma3.gguf", head_dim=32, n_embd=64, n_head=2, n_head_kv=1),
    }


CACHES = {  # name: (type_k, type_v, flash_attn)
    "f32": (F32, F32, False),
    "f16": (F16, F16, False),
    "f16 flash": (F16, F16, True),
    "f16 flash prompt": (F16, F16, True),  # ubatches of 2 tokens
    "q8_0 K": (Q8_0, F16, False),
    "q8_0 flash": (Q8_0, Q8_0, True),
    "q4_0 flash": (Q4_0, Q4_0, True),
}

CONFIGS = [
    *[("llama", c) for c in ("f32", "f16", "f16 flash", "f16 flash prompt")],
    ("phi3", "f32"),
    ("llama_scaled", "f32"),
    ("llama_scaled", "yarn"),
    *[("llama_hd32", c) for c in ("q8_0 K", "q4_0 flash")],
    # head_dim 64, which CUDA's flash attention supports (16 and 32 it leaves to the CPU)
    *[("qwen2_hd64", c) for c in ("f16", "f16 flash", "f16 flash prompt", "q8_0 K", "q8_0 flash", "q4_0 flash")],
    *[("gemma3_iswa", c) for c in ("f32", "f16 flash", "f16 flash prompt", "q8_0 flash")],
]


@pytest.mark.parametrize("model,cache", CONFIGS)
def test_exact_graph_ops_are_audited(lc, models, model, cache):
    path = models[model]
    extra = {}
    if cache == "yarn":
        type_k, type_v, fa = F32, F32, False
        extra = dict(rope_scaling_type=2, rope_freq_scale=0.5, yarn_orig_ctx=64)
    else:
        type_k, type_v, fa = CACHES[cache]
    toks = [int(t) for t in np.random.default_rng(0).integers(3, 280, 80)]
    # a prompt past W (two ubatches), then two single-token decodes
    batches = [toks[:70], toks[70:71], toks[71:72]]
    with loaded_model(lc, path) as model_ptr:
        n_ubatch = 2 if cache == "f16 flash prompt" else 64
        kw = dict(type_k=type_k, type_v=type_v, flash_attn=fa, n_ubatch=n_ubatch, **extra)
        placed_exact, placed_stock = {}, {}
        nodes: list[Node] = []
        exact = collect_ops(lc, model_ptr, batches, self_extend=SE_EXACT, placement=placed_exact, nodes=nodes, **kw)
        stock = collect_ops(lc, model_ptr, batches, self_extend=SE_OFF, placement=placed_stock, **kw)
        decode_ops = {nd.op for nd in nodes if nd.batch > 0}
        if fa:
            # on the CPU, whose flash attention returns the log-sum-exp (patches/0016), the prompt ubatches read
            # in place run two flash attentions per self-extend layer whatever the cache (0017): nothing of the
            # window is attended unfused, so no LOG of its log-sum-exp
            assert any(k[0] == "FLASH_ATTN_EXT" for k in exact)
            assert not any(k[0] == "LOG" for k in exact)
        if fa and model != "gemma3_iswa":  # whose sliding-window layers are stock, with flash attention
            # the two single-token decodes use flash attention, in a cache whose 256 cells are all read (no room
            # past the used ones is needed), also with a q8_0 K, whose rotated keys are restored from F32 to the
            # same bytes (patches/0011). q4_0 decodes unfused: Metal reads its scale for the second nibble in
            # half precision, so a restore from F32 could change it
            assert ("FLASH_ATTN_EXT" in decode_ops) == (type_k in (F32, F16, Q8_0))
    added = exact - stock
    print(f"\n[audit] {model} {cache}: ops exact mode adds to the stock graph:\n{format_keys(added)}")
    # the self-extend graph was really built: a gather, and the write-back of the keys that leave the window
    # (I32 cell indices; the stock KV store uses I64)
    assert any(k[0] == "GET_ROWS" for k in exact) and any(k[0] == "SET_ROWS" and k[3] == "i32" for k in added)
    missing: set[OpKey] = added - audited_ops()
    assert not missing, (
        f"exact mode computes ops that docs/backend-audit.md does not list (check the CPU, CUDA and Metal "
        f"supports_op for them and add rows):\n{format_keys(missing)}")
    if any(_on_gpu(names) for names in placed_stock.values()):
        # a GPU build (the model loads with llama.cpp's default: every layer offloaded): every op exact mode
        # runs on the GPU where the stock graph does; one the GPU backend refused would run on the CPU
        stock_on_cpu = _cpu_only(placed_stock)
        left = _cpu_only(placed_exact) - stock_on_cpu
        print(f"[audit] {model} {cache}: {sum(map(_on_gpu, placed_exact.values()))} of {len(placed_exact)} "
              f"node kinds on the GPU; the stock graph leaves these to the CPU:\n{format_keys(stock_on_cpu)}")
        assert not left, f"exact mode runs these ops on the CPU, not the GPU:\n{format_keys(left)}"


def _on_gpu(buffers: set) -> bool:
    """Whether a node ran in a GPU backend's buffer (not "CPU", nor a GPU's pinned host buffer "*_Host")."""
    return any(b != "CPU" and not b.endswith("_Host") for b in buffers)


def _cpu_only(placed: dict) -> set:
    return {k for k, buffers in placed.items() if not _on_gpu(buffers)}


def test_cpu_backend_is_built_without_amx():
    """CMakeLists.txt turns AMX off (SELFEXTEND_CPU_AMX): with -march=native on a CPU that has it,
    the pinned ggml's AMX matmul segfaults on SmolLM2's Q4_1 weights. The CPU backend lists
    ``AMX_INT8 = 1`` among its features exactly when that code is compiled in."""
    from selfextend_gguf.long_llama import llama_cpp

    info = llama_cpp.llama_print_system_info().decode()
    assert "CPU :" in info, info
    assert "AMX_INT8 = 1" not in info, f"the CPU backend was built with AMX: {info}"


@pytest.mark.parametrize("cache", ["f16", "q8_0 K"])
def test_unfused_decode_reads_its_window_in_place(lc, models, cache):
    """Without flash attention, a decode whose window is in position order in the cache scores its
    neighbours against the keys as stored, in place, as a prompt ubatch does (patches/0013): from
    the K cache it gathers only the key that leaves the window, not its W neighbours as well. It
    writes the window's scores into the columns of the whole cache's; unlike a prompt ubatch it
    does not attend the window apart (``kq_before``: W = 20 puts the window's first cell at 0 or
    11-15 modulo 16 in 6 of the 16 decodes, where a prompt ubatch would). The flash-attention
    decode still gathers the window, whose keys it moves to the grouped query."""
    type_k, type_v, _ = CACHES[cache]
    window, n_prompt, n_decode = 20, 70, 16
    toks = [int(t) for t in np.random.default_rng(0).integers(3, 280, n_prompt + n_decode)]
    batches = [toks[:n_prompt]] + [[t] for t in toks[n_prompt:]]

    def decode_nodes(model_ptr: int, flash_attn: bool) -> list:
        nodes: list[Node] = []
        collect_ops(lc, model_ptr, batches, self_extend=(1, 4, window), type_k=type_k, type_v=type_v,
                    flash_attn=flash_attn, nodes=nodes)
        return [n for n in nodes if n.batch > 0]

    def k_gathers(nodes: list) -> list:
        # GET_ROWS of the first layer's K cache: [n_embd_k_gqa, rows]
        return [n.ne[1] for n in nodes if n.op == "GET_ROWS" and (n.src0 or "").startswith("cache_k_l0")]

    with loaded_model(lc, models["qwen2_hd64"]) as model_ptr:
        nodes = decode_nodes(model_ptr, flash_attn=False)
        assert k_gathers(nodes) == [1] * n_decode
        assert not any(n.name == "kq_before-0" for n in nodes)
        if type_k == F16:
            # per decode: the window and the key that leaves it, and the copy they are restored from
            assert k_gathers(decode_nodes(model_ptr, flash_attn=True)) == [window + 1] * (2 * n_decode)


def test_prompt_window_is_scaled_by_its_softmax(lc, models):
    """A prompt ubatch that attends its window apart without flash attention (patches/0010) lets
    the window's softmax scale the scores as it reads them: no SCALE node makes a pass of its own
    over the window's ``[W + n, n, n_head]`` scores (the log-sum-exp scales the one score per row
    that it takes). (With flash attention the CPU attends the window with a flash attention,
    test_flash_attention_prompt_is_two_flash_attentions.)"""
    window = 20
    toks = [int(t) for t in np.random.default_rng(0).integers(3, 280, 70)]
    nodes: list[Node] = []
    with loaded_model(lc, models["qwen2_hd64"]) as model_ptr:
        collect_ops(lc, model_ptr, [toks], self_extend=(1, 4, window), type_k=F16, type_v=F16,
                    n_ubatch=16, nodes=nodes)
    softmax = [n for n in nodes if n.op == "SOFT_MAX" and n.name.startswith("kq_win_soft_max")]
    assert softmax, "no prompt ubatch attended its window apart"
    scaled = {n.ne for n in nodes if n.op == "SCALE"}
    assert not [n.ne for n in softmax if n.ne in scaled]


@pytest.mark.parametrize("cache", ["f16", "q8_0"])
def test_flash_attention_prompt_is_two_flash_attentions(lc, models, cache):
    """On the CPU, whose flash attention returns the log-sum-exp of its rows (patches/0016), a
    prompt ubatch that reads its window in place (patches/0017) runs two flash attentions per
    self-extend layer: the exact queries against the ``W + n`` cells of the window, and the grouped
    queries against the ``n_kv`` cells of the cache, both with rows one longer than the head (the
    log-sum-exp that merges them). Nothing is attended unfused: no softmax, and no product of the
    cache's K with the queries. A q8_0 cache takes the same path (its K in a Hadamard basis)."""
    type_k, type_v = {"f16": (F16, F16), "q8_0": (Q8_0, Q8_0)}[cache]
    window, n_ubatch, n = 20, 16, 70
    toks = [int(t) for t in np.random.default_rng(0).integers(3, 280, n)]
    nodes: list[Node] = []
    with loaded_model(lc, models["qwen2_hd64"]) as model_ptr:
        collect_ops(lc, model_ptr, [toks], self_extend=(1, 4, window), type_k=type_k, type_v=type_v,
                    flash_attn=True, n_ubatch=n_ubatch, nodes=nodes)
    head = 64
    # the first ubatch (positions 0-15) is below W: stock. The other four read their window in place
    n_se = len(range(n_ubatch, n, n_ubatch))
    for layer in (0, 1):
        win = [nd for nd in nodes if nd.op == "FLASH_ATTN_EXT" and nd.name == f"fattn_win-{layer}"]
        grp = [nd for nd in nodes if nd.op == "FLASH_ATTN_EXT" and nd.name == f"fattn_grp-{layer}"]
        assert len(win) == len(grp) == n_se, f"layer {layer}: {len(win)} window and {len(grp)} cache attentions"
        # [head + 1, n_head, n_tokens]
        assert {nd.ne[0] for nd in win + grp} == {head + 1}
        assert all(nd.ne[2] == min(n_ubatch, n - i * n_ubatch) for i, nd in enumerate(win, start=1))
    assert not [nd for nd in nodes if nd.op == "SOFT_MAX"], "a prompt ubatch attended something unfused"
    assert not [nd for nd in nodes if nd.op == "MUL_MAT" and (nd.src0 or "").startswith("cache_k")]
