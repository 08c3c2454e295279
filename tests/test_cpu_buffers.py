"""The CPU backend's allocated buffers start every tensor on a cache line (patches/0015).

The threads of a matrix product write neighbouring 64-byte blocks of each row of its output. With
ggml's TENSOR_ALIGNMENT of 32 bytes, an output could start halfway into a cache line, and then
every block straddled two lines, each shared with another thread's block. On a 2-core VM that
made exact mode's prompt run at one of two speeds, minutes apart (docs/exact-storage.md, "The two
speeds"). Buffers mapped from a model file keep TENSOR_ALIGNMENT: their tensors sit at the file's
offsets, which GGUF aligns to 32 bytes.
"""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

from graph_ops import Node, collect_ops, ggml_library, loaded_model
from tiny_models import write_tiny_model

F16 = 1


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    # head_dim 64, as SmolLM2's
    return write_tiny_model(tmp_path_factory.mktemp("buffers") / "qwen2.gguf", arch="qwen2", n_embd=128, n_head=2,
                            n_head_kv=1, seed=5)


def test_allocated_buffers_align_to_the_cache_line_and_mapped_ones_to_32(lc):
    """The CPU buffer type reports 64 bytes; a buffer over memory it did not allocate (a mapped
    model file) reports TENSOR_ALIGNMENT, which is all its tensors at the file's offsets have."""
    base = ggml_library(str(Path(lc.llama_cpp._base_path)), "ggml-base")
    vp = ctypes.c_void_p
    base.ggml_backend_cpu_buffer_type.restype = vp
    base.ggml_backend_buft_get_alignment.restype, base.ggml_backend_buft_get_alignment.argtypes = ctypes.c_size_t, [vp]
    base.ggml_backend_cpu_buffer_from_ptr.restype = vp
    base.ggml_backend_cpu_buffer_from_ptr.argtypes = [vp, ctypes.c_size_t]
    base.ggml_backend_buffer_get_alignment.restype = ctypes.c_size_t
    base.ggml_backend_buffer_get_alignment.argtypes = [vp]
    base.ggml_backend_buffer_free.argtypes = [vp]
    assert base.ggml_backend_buft_get_alignment(base.ggml_backend_cpu_buffer_type()) == 64
    memory = np.zeros(1024, dtype=np.uint8)
    address = memory.ctypes.data
    mapped = base.ggml_backend_cpu_buffer_from_ptr(address + (-address) % 32, 512)
    try:
        assert base.ggml_backend_buffer_get_alignment(mapped) == 32
    finally:
        base.ggml_backend_buffer_free(mapped)


@pytest.mark.parametrize("flash_attn", [False, True], ids=["unfused", "flash"])
def test_graph_tensors_start_on_a_cache_line(lc, model_path, flash_attn):
    """Every tensor the CPU backend allocates for exact mode's graph starts on a 64-byte line.
    Views (the KV cache's rows, parts of the scores) sit where their tensor puts them and are not
    counted. Before patches/0015, 1 (unfused) and 59 (flash attention) of these tensors started
    at a 32-byte offset."""
    window = 20
    toks = [int(t) for t in np.random.default_rng(0).integers(3, 280, 70)]
    nodes: list[Node] = []
    with loaded_model(lc, model_path) as model_ptr:
        # ubatches of 16 (unfused) or 2 (flash attention: 2 n_gqa n scratch cells fit in the window)
        collect_ops(lc, model_ptr, [toks], self_extend=(1, 4, window), type_k=F16, type_v=F16,
                    flash_attn=flash_attn, n_ubatch=2 if flash_attn else 16, nodes=nodes)
    owned = [n for n in nodes if n.data is not None]
    assert len(owned) > 200, f"only {len(owned)} tensors of their own in the graph"
    off_line = sorted({(n.name, n.data % 64) for n in owned if n.data % 64})
    assert not off_line, f"{len(off_line)} tensors not on a cache line, e.g. {off_line[:5]}"


@pytest.mark.skipif(sys.platform == "win32", reason="opens the FILE * with the C library's fopen")
def test_embedded_gguf_off_the_cache_line_still_maps(lc, model_path, tmp_path):
    """llama_model_load_from_file_ptr maps an embedded GGUF whose data section is 32-byte but not
    64-byte aligned in the file, as llama.h promises (32 bytes): the loader checks the alignment a
    mapped buffer needs, not the cache line the allocated buffers now use."""
    data_offset = gguf.GGUFReader(model_path).data_offset
    assert data_offset % 32 == 0
    prefix = 32 if data_offset % 64 == 0 else 64  # puts the data section at 32 modulo 64 in the file
    embedded = tmp_path / "embedded.bin"
    embedded.write_bytes(b"\0" * prefix + model_path.read_bytes())
    assert (prefix + data_offset) % 64 == 32

    libc = ctypes.CDLL(None)
    libc.fopen.restype, libc.fopen.argtypes = ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_char_p]
    libc.fseek.argtypes = [ctypes.c_void_p, ctypes.c_long, ctypes.c_int]
    libc.fclose.argtypes = [ctypes.c_void_p]
    params = lc.llama_model_default_params()
    params.use_mmap = True
    f = libc.fopen(str(embedded).encode(), b"rb")
    assert f, f"cannot open {embedded}"
    try:
        assert libc.fseek(f, prefix, 0) == 0
        model = lc.llama_model_load_from_file_ptr(f, params)
        try:
            assert model, "the loader refused to map a GGUF whose data section is 32-byte aligned"
            assert lc.llama_model_n_layer(model) == 2
        finally:
            if model:
                lc.llama_model_free(model)
    finally:
        libc.fclose(f)
