"""Passkey retrieval prompts, as in llama.cpp's ``examples/passkey`` and the SelfExtend paper.

A random number is hidden at a chosen depth inside repetitive filler text; the
model is asked to repeat it at the end. Only a model that can attend to the
whole prompt at sensible positions finds it.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Callable, List

PREFIX = ("There is an important info hidden inside a lot of irrelevant text. "
          "Find it and memorize them. I will quiz you about the important information there.")
FILLER = " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
KEY_LINE = " The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = " What is the pass key? The pass key is"


@dataclass(frozen=True)
class PasskeyPrompt:
    """A prompt, the key hidden in it and where."""

    text: str
    key: str
    depth: float
    n_filler: int


def make_prompt(n_filler: int, depth: float, key: str) -> PasskeyPrompt:
    """Prompt with ``n_filler`` filler sentences and ``key`` after a fraction ``depth`` of them."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    before = round(n_filler * depth)
    text = PREFIX + FILLER * before + KEY_LINE.format(key=key) + FILLER * (n_filler - before) + QUESTION
    return PasskeyPrompt(text, key, depth, n_filler)


def prompt_for_tokens(n_tokens: int, depth: float, key: str, tokenize: Callable[[str], List[int]]) -> PasskeyPrompt:
    """A prompt of about ``n_tokens`` tokens (never more), measured with ``tokenize``."""
    per_filler = len(tokenize(FILLER * 10)) / 10
    fixed = len(tokenize(make_prompt(0, 0.0, key).text))
    n_filler = max(0, int((n_tokens - fixed) / per_filler))
    prompt = make_prompt(n_filler, depth, key)
    while n_filler > 0 and len(tokenize(prompt.text)) > n_tokens:
        n_filler -= max(1, n_filler // 100)
        prompt = make_prompt(n_filler, depth, key)
    return prompt


def random_key(rng: random.Random, digits: int = 5) -> str:
    """A random key of ``digits`` digits, without a leading zero."""
    return str(rng.randrange(10 ** (digits - 1), 10 ** digits))


def found(answer: str, key: str) -> bool:
    """Whether the model's answer states the key (as a whole number)."""
    return key in re.findall(r"\d+", answer)
