"""Integration on the embedded default model, SmolLM2-135M-Instruct (trained on 8192 tokens)."""

from __future__ import annotations

import random

import pytest

from selfextend_gguf import LongLlama, default_model_path
from selfextend_gguf.passkey import found, prompt_for_tokens, random_key

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2() -> str:
    return str(default_model_path())


def _passkey(llm, n_tokens: int, depth: float, seed: int) -> tuple[bool, str]:
    key = random_key(random.Random(seed))
    prompt = prompt_for_tokens(n_tokens, depth, key, lambda s: llm.tokenize(s.encode(), add_bos=True))
    out = llm.create_completion(prompt.text, max_tokens=8, temperature=0.0, top_k=1)["choices"][0]["text"]
    return found(out, key), out


def test_passkey_12k_shift_mode(smollm2):
    """1.5x the trained length: the key is found with self-extend in shift mode (automatic G/W)."""
    llm = LongLlama(smollm2, mode="shift", n_ctx=12288 + 64, n_batch=512, n_threads=2, verbose=False)
    assert (llm.self_extend.group_size, llm.self_extend.window) == (4, 1024)
    ok, answer = _passkey(llm, 12288, 0.5, seed=1)
    assert ok, answer
    llm.close()


def test_short_prompt_is_unchanged(smollm2):
    """Inside the trained window self-extend with G=1 (automatic for n_ctx <= 8192) is the stock model."""
    import llama_cpp

    kwargs = dict(n_ctx=2048, n_threads=2, verbose=False)
    stock = llama_cpp.Llama(smollm2, **kwargs)
    llm = LongLlama(smollm2, **kwargs)
    assert llm.self_extend.group_size == 1
    prompt = "The capital of France is"
    a = stock.create_completion(prompt, max_tokens=12, temperature=0.0, top_k=1)["choices"][0]["text"]
    b = llm.create_completion(prompt, max_tokens=12, temperature=0.0, top_k=1)["choices"][0]["text"]
    assert a == b


def test_passkey_16k_exact_mode(smollm2):
    """2x the trained length: the paper's method finds the key (SPEC: issue 3, test (e))."""
    llm = LongLlama(smollm2, mode="exact", n_ctx=16384 + 64, n_batch=512, n_threads=2, verbose=False)
    p = llm.self_extend
    assert (p.group_size, p.window) == (4, 1024)
    ok, answer = _passkey(llm, 16384, 0.5, seed=2)
    assert ok, answer
    llm.close()
