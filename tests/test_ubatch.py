"""Exact mode's default ``n_ubatch``: the rule, the head count it reads, and what LongLlama passes on."""

from __future__ import annotations

import gguf
import pytest

from selfextend_gguf.gguf_info import read_model_info
from selfextend_gguf.ubatch import (
    FLASH_LSE_UBATCH,
    SCORE_BUFFER_BYTES,
    exact_ubatch,
    flash_lse_expected,
    flash_prompt_fits,
    score_buffer_bytes,
)
from tiny_models import write_tiny_model


@pytest.mark.parametrize("n_ctx, n_head, n_batch, expected", [
    (4096, 9, 512, 128),       # SmolLM2: 18 MiB of scores, the speed optimum
    (16384, 9, 512, 128),      # 72 MiB
    (32768, 9, 512, 64),       # 144 MiB at 128 is over 128 MiB: halved
    (65536, 9, 512, 32),
    (1 << 20, 9, 512, 32),     # never below 32, whatever it costs
    (32768, 32, 512, 32),      # Llama-2-7B-shaped: 512 MiB at 128
    (4096, 32, 512, 128),      # 64 MiB
    (16384, 16, 512, 128),     # exactly 128 MiB: kept
    (16384, 17, 512, 64),      # just over
    (4096, 9, 64, 64),         # never above n_batch
    (4096, 9, 8, 8),
    (1 << 20, 0, 512, 128),    # head count unknown: no bound applied
])
def test_exact_ubatch(n_ctx, n_head, n_batch, expected):
    assert exact_ubatch(n_ctx, n_head, n_batch) == expected


@pytest.mark.parametrize("n_ctx, n_head, n_gqa, window, flash_attn, expected", [
    (16384, 9, 3, 1024, True, 128),     # SmolLM2: 768 scratch cells in a window of 1025
    (16384, 4, 4, 1024, True, 128),     # Gemma 3 270M: 1024, exactly
    (4096, 32, 8, 1024, True, 64),     # 8 query heads per KV head: 2048 cells at 128
    (4096, 32, 8, 1024, False, 128),   # no flash attention: no scratch
    (4096, 28, 7, 512, True, 32),      # 7 x 2 x 32 = 448 <= 513
    (4096, 64, 16, 512, True, 32),     # never below 32, even where the prompt stays unfused
    (65536, 9, 3, 1024, True, 32),      # the score bound still applies
    (4096, 32, 0, 1024, True, 128),    # n_gqa unknown: no flash-attention bound
])
def test_exact_ubatch_with_flash_attention(n_ctx, n_head, n_gqa, window, flash_attn, expected):
    assert exact_ubatch(n_ctx, n_head, 512, n_gqa=n_gqa, window=window, flash_attn=flash_attn) == expected


@pytest.mark.parametrize("n_ctx, n_head, n_gqa, window, flash_attn, n_batch, expected", [
    (32768, 9, 3, 2048, True, 512, 512),     # SmolLM2 at 32k: no score matrix to bound
    (1 << 20, 32, 8, 512, True, 512, 512),   # nor scratch cells to fit in the window
    (4096, 9, 3, 1024, True, 256, 256),      # never above n_batch
    (4096, 9, 3, 1024, True, 2048, 512),     # the stock library's 512, as llama.cpp's default
    (32768, 9, 3, 2048, False, 512, 64),     # flash attention off: the score matrix is there
])
def test_exact_ubatch_with_the_log_sum_exp(n_ctx, n_head, n_gqa, window, flash_attn, n_batch, expected):
    assert exact_ubatch(n_ctx, n_head, n_batch, n_gqa=n_gqa, window=window, flash_attn=flash_attn,
                        flash_lse=True) == expected
    if flash_attn:  # and without the log-sum-exp the bounds apply
        assert exact_ubatch(n_ctx, n_head, n_batch, n_gqa=n_gqa, window=window, flash_attn=True) < expected


@pytest.mark.parametrize("n_gpu_layers, rpc_servers, local_gpu, expected", [
    (0, False, False, True),    # the CPU
    (0, False, True, True),     # a GPU build that offloads nothing: the caches stay on the CPU
    (-1, False, False, True),   # all layers asked for, but no GPU to take them
    (-1, False, True, False),   # a GPU takes the layers and their caches
    (5, False, True, False),
    (0, True, False, False),    # RPC servers take every layer (n_gpu_layers 0 means all of them there)
    (-1, True, True, False),
])
def test_flash_lse_expected(n_gpu_layers, rpc_servers, local_gpu, expected):
    assert flash_lse_expected(n_gpu_layers, rpc_servers, local_gpu) is expected
    # offload_kqv=False keeps every cache on the CPU, whatever takes the layers; RPC servers still refuse
    assert flash_lse_expected(n_gpu_layers, rpc_servers, local_gpu, offload_kqv=False) is (not rpc_servers)


class _FakeGgml:
    """ggml's device registry with the devices ``kinds`` (enum ggml_backend_dev_type), of which ``rpc`` are RPC's."""

    def __init__(self, kinds, rpc=()):
        self.kinds, self.rpc = kinds, set(rpc)

    def ggml_backend_dev_count(self):
        return len(self.kinds)

    def ggml_backend_dev_get(self, i):
        return i

    def ggml_backend_dev_type(self, d):
        return self.kinds[d]

    def is_rpc(self, d):
        return d in self.rpc


@pytest.mark.parametrize("kinds, rpc, expected", [
    ([0], (), False),            # the CPU only
    ([0, 1], (), True),          # a discrete GPU
    ([0, 2], (), True),          # an integrated one (Apple Silicon's Metal)
    ([0, 1], (1,), False),       # an RPC server's GPU is not local
    ([0, 3], (), False),         # an accelerator (BLAS): takes no layers
])
def test_has_local_gpu(monkeypatch, kinds, rpc, expected):
    import selfextend_gguf.rpc as rpc_module

    monkeypatch.setattr(rpc_module, "_lib", lambda: _FakeGgml(kinds, rpc))
    assert rpc_module.has_local_gpu() is expected


def test_has_local_gpu_without_the_rpc_backend_asks_llama_cpp(monkeypatch):
    import selfextend_gguf.rpc as rpc_module
    from selfextend_gguf.errors import RpcServerError

    def no_rpc():
        raise RpcServerError("this build has no RPC backend")

    monkeypatch.setattr(rpc_module, "_lib", no_rpc)
    for answer in (True, False):
        monkeypatch.setattr(rpc_module.llama_cpp, "llama_supports_gpu_offload", lambda answer=answer: answer)
        assert rpc_module.has_local_gpu() is answer


def test_flash_prompt_fits_the_smallest_window():
    assert flash_prompt_fits(128, 4, 1023) and not flash_prompt_fits(128, 4, 1022)
    assert flash_prompt_fits(2, 2, 7) and not flash_prompt_fits(3, 2, 8)


def test_score_buffer_bytes_is_one_layers_f32_score_matrix():
    # SmolLM2 at 16k with llama.cpp's default ubatch: the 288 MiB docs/exact-storage.md measures
    assert score_buffer_bytes(16384, 512, 9) == 288 << 20
    assert score_buffer_bytes(16384, 128, 16) == SCORE_BUFFER_BYTES


def _metadata_only(path, head_count, head_count_kv=None):
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(64)
    w.add_head_count(head_count)
    if head_count_kv is not None:
        w.add_head_count_kv(head_count_kv)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_model_info_reads_the_head_count(tmp_path, tiny_llama_path):
    assert read_model_info(tiny_llama_path).n_head == 4
    # one count per layer (OpenELM's form): the largest
    assert read_model_info(_metadata_only(tmp_path / "per_layer.gguf", [3, 12, 6])).n_head == 12
    assert read_model_info(_metadata_only(tmp_path / "scalar.gguf", 7)).n_head == 7


@pytest.mark.parametrize("heads, heads_kv, n_gqa", [
    (4, 2, 2),
    (9, 3, 3),
    (7, None, 1),                    # no KV count: llama.cpp's default of one KV head per query head
    ([3, 12, 6], [1, 3, 3], 4),      # per layer: the largest ratio
    ([8, 0, 8], [2, 0, 4], 4),       # a layer without attention is skipped
    (12, [3, 4, 6], 4),              # one query count, KV counts per layer
    (9, 2, 0),                       # counts that do not divide: unknown
    ([8, 8], [2, 2, 2], 0),          # lists of different lengths: unknown
])
def test_model_info_reads_the_query_heads_per_kv_head(tmp_path, heads, heads_kv, n_gqa):
    assert read_model_info(_metadata_only(tmp_path / "gqa.gguf", heads, heads_kv)).n_gqa == n_gqa


@pytest.fixture(scope="module")
def sixteen_heads(tmp_path_factory):
    """Tiny llama with 16 query heads (head size 4): at n_ctx 32768, a ubatch of 64 holds exactly 128 MiB of scores."""
    return write_tiny_model(tmp_path_factory.mktemp("heads") / "h16.gguf", n_head=16, n_head_kv=2, seed=5)


def _n_ubatch(path, **kwargs) -> int:
    from selfextend_gguf import LongLlama

    llm = LongLlama(str(path), verbose=False, **kwargs)
    try:
        return int(llm.context_params.n_ubatch)
    finally:
        llm.close()


def test_long_llama_uses_the_rule_in_exact_mode_only(tiny_llama_path, sixteen_heads):
    assert _n_ubatch(tiny_llama_path, mode="exact", n_ctx=256) == 128
    assert _n_ubatch(sixteen_heads, mode="exact", n_ctx=32768) == 64  # 128 would hold 256 MiB
    # what the caller sets is kept, in both modes; None means unset, as the server's settings pass it
    assert _n_ubatch(tiny_llama_path, mode="exact", n_ctx=256, n_ubatch=256) == 256
    assert _n_ubatch(tiny_llama_path, mode="exact", n_ctx=256, n_ubatch=None) == 128
    assert _n_ubatch(tiny_llama_path, mode="exact", n_ctx=256, n_batch=48) == 48
    # stock graph: llama.cpp's default (n_ubatch = n_batch = 512, capped at n_ctx by llama_cpp.Llama's n_batch)
    assert _n_ubatch(tiny_llama_path, mode="shift", n_ctx=1024) == 512
    assert _n_ubatch(tiny_llama_path, mode="shift", n_ctx=1024, n_ubatch=None) == 512


def test_server_settings_leave_the_ubatch_to_long_llama(tiny_llama_path):
    pytest.importorskip("fastapi", reason="the server extra is not installed: pip install '.[server]'")
    from selfextend_gguf.server import LongLlamaProxy, LongModelSettings

    def loaded(**kwargs) -> int:
        llm = LongLlamaProxy.load_llama_from_model_settings(
            LongModelSettings(model=str(tiny_llama_path), n_ctx=256, verbose=False, **kwargs))
        try:
            return int(llm.context_params.n_ubatch)
        finally:
            llm.close()

    assert loaded(mode="exact") == 128
    assert loaded(mode="exact", n_ubatch=64) == 64
    assert loaded(mode="shift") == 256  # llama.cpp's 512, at most n_batch (512, capped at n_ctx)


@pytest.fixture(scope="module")
def eight_per_kv_head(tmp_path_factory):
    """Tiny llama with 8 query heads per KV head (16 on 2, head size 8), trained on 2048 tokens."""
    return write_tiny_model(tmp_path_factory.mktemp("gqa8") / "gqa8.gguf", n_embd=128, n_head=16, n_head_kv=2,
                            context_length=2048, seed=6)


def test_long_llama_leaves_room_for_the_flash_attention_prompt(eight_per_kv_head, monkeypatch):
    """On a GPU (simulated here: the caches' device is told from has_local_gpu() and n_gpu_layers)."""
    import selfextend_gguf.long_llama as long_llama

    monkeypatch.setattr(long_llama, "has_local_gpu", lambda: True)
    kw = dict(mode="exact", n_ctx=4096, group_size=4, n_gpu_layers=-1)
    assert _n_ubatch(eight_per_kv_head, window=1023, flash_attn=True, **kw) == 64  # 2 x 8 x 64 = 1024 cells
    assert _n_ubatch(eight_per_kv_head, window=511, flash_attn=True, **kw) == 32
    assert _n_ubatch(eight_per_kv_head, window=1023, **kw) == 128
    assert _n_ubatch(eight_per_kv_head, window=1023, flash_attn=True, n_ubatch=128, **kw) == 128  # the caller's


def test_long_llama_takes_the_stock_ubatch_for_the_flash_attention_prompt_on_the_cpu(eight_per_kv_head, monkeypatch):
    """No layer offloaded, or no GPU to offload to, and no RPC server: the caches are on the CPU,
    whose flash-attention prompt builds neither a score matrix nor scratch cells."""
    import selfextend_gguf.long_llama as long_llama

    kw = dict(mode="exact", n_ctx=4096, group_size=4, window=1023)
    monkeypatch.setattr(long_llama, "has_local_gpu", lambda: False)
    assert _n_ubatch(eight_per_kv_head, flash_attn=True, **kw) == 512
    assert _n_ubatch(eight_per_kv_head, flash_attn=True, n_gpu_layers=-1, **kw) == 512  # nothing takes them
    assert _n_ubatch(eight_per_kv_head, flash_attn=True, n_batch=256, **kw) == 256
    assert _n_ubatch(eight_per_kv_head, **kw) == 128  # flash attention off: the score matrix
    monkeypatch.setattr(long_llama, "has_local_gpu", lambda: True)
    assert _n_ubatch(eight_per_kv_head, flash_attn=True, **kw) == 512  # a GPU build that offloads nothing
    assert _n_ubatch(eight_per_kv_head, flash_attn=True, n_gpu_layers=-1, offload_kqv=False, **kw) == 512
    assert _n_ubatch(eight_per_kv_head, flash_attn=True, n_gpu_layers=-1, **kw) == 64  # the caches on the GPU


def test_the_rule_is_for_devices_without_the_log_sum_exp(eight_per_kv_head):
    """The rule leaves room for patches/0008's scratch cells, which a device whose flash attention
    returns no log-sum-exp needs. The CPU's returns it (patches/0016), so on the CPU the prompt runs
    two flash attentions per self-extend layer (patches/0017) at the ubatch the rule picks and at
    twice that, whose scratch the window could not hold, and at the stock 512 that LongLlama takes
    there (flash_lse_expected): no softmax (nothing unfused) in any of these graphs, and no LOG
    (0008's log-sum-exp of the unfused window)."""
    import numpy as np

    from graph_ops import Node, collect_ops, loaded_model
    from selfextend_gguf import load_llama_cpp

    lc = load_llama_cpp()
    window = 1023
    n_ubatch = exact_ubatch(4096, 16, n_gqa=8, window=window, flash_attn=True)
    assert n_ubatch == 64
    toks = [int(t) for t in np.random.default_rng(0).integers(3, 280, 1280)]
    from selfextend_gguf.rpc import has_local_gpu

    if has_local_gpu():  # loaded_model offloads every layer, and a GPU returns no log-sum-exp
        pytest.skip("a local GPU takes the layers and their caches: patches/0008's path")
    assert exact_ubatch(4096, 16, n_gqa=8, window=window, flash_attn=True, flash_lse=True) == FLASH_LSE_UBATCH
    with loaded_model(lc, eight_per_kv_head) as model:
        for n in (n_ubatch, 2 * n_ubatch, FLASH_LSE_UBATCH):
            nodes: list[Node] = []
            ops = collect_ops(lc, model, [toks], self_extend=(1, 4, window), n_ctx=2048, n_ubatch=n,
                              type_k=1, type_v=1, flash_attn=True, nodes=nodes)
            assert any(nd.name.startswith("fattn_win") for nd in nodes), f"ubatch {n}"
            assert not any(k[0] in ("SOFT_MAX", "LOG") for k in ops), f"ubatch {n}"
