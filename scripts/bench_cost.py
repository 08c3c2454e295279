#!/usr/bin/env python3
"""Cost of self-extend against the stock library, side by side in one run.

For each n_ctx and method (stock llama.cpp, shift mode, exact mode) it evaluates a prompt
that fills the context (random tokens: timing does not depend on content) and then
generates a few tokens, and reports prompt tokens/s, decode tokens/s, the KV cache and
compute buffer sizes that llama.cpp allocates, and the ratios to stock. Prints a markdown
table; ``--json`` also writes the rows.

    .venv/bin/python scripts/bench_cost.py --n-ctx 4096 16384 --threads 2
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import sys
import time

import numpy as np

import selfextend_gguf  # noqa: F401  (loads the patched library first)
from selfextend_gguf import LongLlama, default_model_path, load_llama_cpp

llama_cpp = load_llama_cpp()

_LOG: list = []


@llama_cpp.llama_log_callback
def _log_callback(level, text, user_data):  # keep the messages: buffer sizes are only logged
    _LOG.append(text.decode("utf-8", "replace"))


def _sizes(lines: list) -> tuple[float, float]:
    """(KV cache MiB, compute buffer MiB) from llama.cpp's log of one context creation."""
    text = "".join(lines)
    kv = sum(float(x) for x in re.findall(r"KV buffer size\s*=\s*([\d.]+) MiB", text))
    compute = sum(float(x) for x in re.findall(r"compute buffer size (?:of|=)\s*([\d.]+) MiB", text))
    return kv, compute


def run_one(model: str, method: str, n_ctx: int, n_decode: int, threads: int, group_size, window) -> dict:
    kwargs = dict(n_ctx=n_ctx, n_batch=512, n_ubatch=512, n_threads=threads, n_threads_batch=threads,
                  verbose=True, flash_attn=False)
    _LOG.clear()
    if method == "stock":
        llm = llama_cpp.Llama(model_path=model, **kwargs)
        setting = "-"
    else:
        llm = LongLlama(model, mode=method, group_size=group_size, window=window, **kwargs)
        setting = f"G={llm.self_extend.group_size} W={llm.self_extend.window}"
    kv, compute_reserved = _sizes(_LOG)
    n_prompt = n_ctx - n_decode - 8
    tokens = [int(t) for t in np.random.default_rng(0).integers(100, llm.n_vocab() - 100, size=n_prompt)]
    t0 = time.perf_counter()
    llm.eval(tokens)
    t_prompt = time.perf_counter() - t0
    t0 = time.perf_counter()
    for t in tokens[:n_decode]:  # decode one token at a time, as generation does
        llm.eval([t])
    t_decode = time.perf_counter() - t0
    _LOG.clear()
    llm.close()
    _, compute_final = _sizes(_LOG)  # llama.cpp reports a buffer that grew past its reservation on close
    return dict(method=method, n_ctx=n_ctx, setting=setting, prompt_tokens=n_prompt,
                prompt_tps=n_prompt / t_prompt, decode_tps=n_decode / t_decode,
                kv_mib=kv, compute_mib=max(compute_reserved, compute_final))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="GGUF model (default: the embedded SmolLM2-135M)")
    parser.add_argument("--n-ctx", type=int, nargs="+", default=[4096, 16384, 32768])
    parser.add_argument("--methods", nargs="+", default=["stock", "shift", "exact"],
                        choices=["stock", "shift", "exact"])
    parser.add_argument("--decode", type=int, default=32, help="tokens generated after the prompt")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--group-size", type=int, default=None)
    parser.add_argument("--window", type=int, default=None)
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    args = parser.parse_args(argv)
    model = args.model or str(default_model_path())
    llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))

    rows = []
    for n_ctx in args.n_ctx:
        for method in args.methods:
            row = run_one(model, method, n_ctx, args.decode, args.threads, args.group_size, args.window)
            rows.append(row)
            print(f"# {row}", file=sys.stderr, flush=True)

    stock = {r["n_ctx"]: r for r in rows if r["method"] == "stock"}
    print("| n_ctx | method | G, W | prompt tok/s | decode tok/s | KV MiB | compute MiB | prompt x | decode x | memory x |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        s = stock.get(r["n_ctx"])
        ratio = (lambda k: f"{r[k] / s[k]:.2f}") if s else (lambda k: "-")
        mem = f"{(r['kv_mib'] + r['compute_mib']) / (s['kv_mib'] + s['compute_mib']):.2f}" if s else "-"
        print(f"| {r['n_ctx']} | {r['method']} | {r['setting']} | {r['prompt_tps']:.1f} | {r['decode_tps']:.1f} | "
              f"{r['kv_mib']:.1f} | {r['compute_mib']:.1f} | {ratio('prompt_tps')} | {ratio('decode_tps')} | {mem} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
