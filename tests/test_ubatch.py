"""Exact mode's default ``n_ubatch``: the rule, the head count it reads, and what LongLlama passes on."""

from __future__ import annotations

import gguf
import pytest

from selfextend_gguf.gguf_info import read_model_info
from selfextend_gguf.ubatch import SCORE_BUFFER_BYTES, exact_ubatch, score_buffer_bytes
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


def test_score_buffer_bytes_is_one_layers_f32_score_matrix():
    # SmolLM2 at 16k with llama.cpp's default ubatch: the 288 MiB docs/exact-storage.md measures
    assert score_buffer_bytes(16384, 512, 9) == 288 << 20
    assert score_buffer_bytes(16384, 128, 16) == SCORE_BUFFER_BYTES


def _metadata_only(path, head_count):
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(64)
    w.add_head_count(head_count)
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
