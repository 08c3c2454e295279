"""Shared pytest fixtures."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tiny_models import write_tiny_model  # noqa: E402

#: layers that every model the tests open offloads to a GPU backend (SELFEXTEND_TEST_N_GPU_LAYERS,
#: e.g. -1 for all), for a library built with one (scripts/gpu_check.sh). Unset, the tests run on the
#: CPU, as CI does. Set, the same assertions (the oracle bounds among them) check the GPU's kernels.
TEST_N_GPU_LAYERS = os.environ.get("SELFEXTEND_TEST_N_GPU_LAYERS")


@pytest.fixture(scope="session", autouse=True)
def _offload_to_gpu():
    """With SELFEXTEND_TEST_N_GPU_LAYERS set, make it the default ``n_gpu_layers`` of every
    ``llama_cpp.Llama`` (LongLlama included) that a test opens without choosing one."""
    if not TEST_N_GPU_LAYERS:
        yield
        return
    from selfextend_gguf import load_llama_cpp

    llama = load_llama_cpp().Llama
    original = llama.__init__

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("n_gpu_layers", int(TEST_N_GPU_LAYERS))
        original(self, *args, **kwargs)

    llama.__init__ = __init__
    try:
        yield
    finally:
        llama.__init__ = original


@pytest.fixture(scope="session")
def lc():
    """The patched llama_cpp module (loaded through selfextend_gguf): the C API for graph walks."""
    from selfextend_gguf import load_llama_cpp

    return load_llama_cpp()


@pytest.fixture(scope="session")
def ggml_cpu():
    """libggml-base and libggml-cpu of the library selfextend_gguf loads, typed to build and
    compute one op (graph_ops.ggml_cpu_api): the op tests against NumPy."""
    from graph_ops import ggml_cpu_api
    from selfextend_gguf import load_llama_cpp

    return ggml_cpu_api(str(load_llama_cpp().llama_cpp._base_path))


@pytest.fixture(scope="session")
def tiny_llama_path(tmp_path_factory) -> Path:
    """llama (rope NORM), 2 layers, n_embd 64, 4 heads / 2 kv heads, F32, context_length 64."""
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "llama.gguf", arch="llama", seed=1)


@pytest.fixture(scope="session")
def tiny_qwen2_path(tmp_path_factory) -> Path:
    """qwen2 (rope NEOX, q/k/v biases), 2 layers, n_embd 64, 4 heads / 2 kv heads, F32, ctx 64."""
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "qwen2.gguf", arch="qwen2", seed=2)


@pytest.fixture(scope="session")
def tiny_phi3_path(tmp_path_factory) -> Path:
    """phi3 (rope NEOX, partial rotary n_rot 8 of head_dim 16), MQA (1 kv head), F32, ctx 64."""
    return write_tiny_model(
        tmp_path_factory.mktemp("tiny") / "phi3.gguf", arch="phi3", n_rot=8, n_head_kv=1, seed=3
    )


#: a minimal chat template (plain-text role headers) for the tiny chat model
TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}### {{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}### assistant:{% endif %}"
)


@pytest.fixture(scope="session")
def tiny_chat_path(tmp_path_factory) -> Path:
    """tiny llama (trained context 64) carrying TINY_CHAT_TEMPLATE as tokenizer.chat_template."""
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "chat.gguf", arch="llama",
                            chat_template=TINY_CHAT_TEMPLATE, seed=11)
