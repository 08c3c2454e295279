"""Greedy answers for the retrieval evaluations."""

from __future__ import annotations

from typing import Any, List, Sequence


def greedy(llm: Any, tokens: Sequence[int], max_tokens: int) -> List[int]:
    """The greedy continuation of ``tokens``: at most ``max_tokens`` tokens, stopping at end-of-generation.

    ``llm.generate`` reuses the longest prefix of ``tokens`` that the cache already holds, so a
    prompt that extends the previous one costs only its new tokens. Token-level on purpose:
    ``create_completion`` keeps generating while the text so far ends in an incomplete UTF-8
    character, which can overrun ``n_ctx`` on a prompt that fills it.
    """
    from .. import load_llama_cpp

    is_eog = load_llama_cpp().llama_vocab_is_eog
    out: List[int] = []
    if max_tokens <= 0:
        return out
    for token in llm.generate(list(tokens), top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0):
        if is_eog(llm._model.vocab, token):  # as Llama.create_completion checks it
            break
        out.append(token)
        if len(out) >= max_tokens:
            break
    return out
