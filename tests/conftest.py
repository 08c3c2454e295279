"""Shared pytest fixtures."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tiny_models import write_tiny_model  # noqa: E402


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
