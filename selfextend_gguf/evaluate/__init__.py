"""Evaluation and benchmarks: passkey retrieval, long-text perplexity, speed and memory.

The ``selfextend-gguf passkey|perplexity|bench`` commands (:mod:`.commands`) compare, with the
same model and ``n_ctx``, the unmodified model, llama.cpp's linear and YaRN RoPE scaling, and
SelfExtend's shift and exact modes (:mod:`.methods`). Each prints a markdown table and writes a
versioned JSON report and PNG plots (:mod:`.report`).
"""

from .methods import KINDS, Method, MethodSpec, expand_methods, parse_grid, parse_method, resolve

__all__ = ["KINDS", "Method", "MethodSpec", "expand_methods", "parse_grid", "parse_method", "resolve"]
