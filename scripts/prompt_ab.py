#!/usr/bin/env python3
"""Prompt throughput of two builds of the patched library, in turn, on the same machine.

A patch's speed-up is smaller than the drift of a shared machine between two bench runs, so an
A/B must alternate the builds within minutes: each round evaluates one random-token prompt with
every (library, method) pair, each in a fresh process (a process loads one library). A library is
a directory of ``libllama`` and ``libggml*``: the installed one (``selfextend_gguf/lib``) or a
build directory's ``bin`` in ``~/.cache/selfextend-gguf/build/<key>``.

Usage::

    .venv/bin/python scripts/prompt_ab.py --lib before=~/.cache/selfextend-gguf/build/KEY/bin \\
        --lib after=.venv/lib/python3.11/site-packages/selfextend_gguf/lib \\
        --methods exact@G4W1024 none --n-ctx 4096 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

_CHILD = r"""
import json, sys, time
import numpy as np
from selfextend_gguf import default_model_path
from selfextend_gguf.evaluate.methods import parse_method, resolve_all
from selfextend_gguf.gguf_info import read_model_info
label, n_ctx, threads, fa = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "on"
model = str(default_model_path())
(method,) = resolve_all([parse_method(label)], n_ctx, read_model_info(model).n_ctx_train)
llm = method.build(model, flash_attn=fa, n_threads=threads, n_threads_batch=threads, verbose=False)
tokens = [int(t) for t in np.random.default_rng(0).integers(100, llm.n_vocab() - 1, size=n_ctx - 40)]
t0 = time.perf_counter()
llm.eval(tokens)
print(json.dumps({"tps": len(tokens) / (time.perf_counter() - t0)}))
"""


def measure(lib: Path, label: str, n_ctx: int, threads: int, flash_attn: str) -> float:
    """Prompt tokens/s of one fresh process that loads the library in ``lib``."""
    env = {**os.environ, "SELFEXTEND_GGUF_LIB_DIR": str(lib), "LLAMA_CPP_LIB_PATH": str(lib)}
    out = subprocess.run([sys.executable, "-c", _CHILD, label, str(n_ctx), str(threads), flash_attn],
                         env=env, capture_output=True, text=True, check=True).stdout
    return float(json.loads(out.strip().splitlines()[-1])["tps"])


def main(argv: List[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lib", action="append", required=True, metavar="NAME=DIR",
                    help="a library directory to compare, with a name (repeat the option)")
    ap.add_argument("--methods", nargs="+", default=["exact@G4W1024", "none"])
    ap.add_argument("--n-ctx", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--flash-attn", choices=("on", "off"), default="on")
    args = ap.parse_args(argv)
    libs: Dict[str, Path] = {}
    for item in args.lib:
        name, sep, path = item.partition("=")
        if not sep or not Path(path).expanduser().is_dir():
            ap.error(f"--lib {item!r}: give NAME=DIR with an existing directory")
        libs[name] = Path(path).expanduser().resolve()
    results: Dict[Tuple[str, str], List[float]] = {}
    for r in range(args.rounds):
        for name, lib in libs.items():
            for label in args.methods:
                tps = measure(lib, label, args.n_ctx, args.threads, args.flash_attn)
                results.setdefault((name, label), []).append(tps)
                print(f"round {r + 1}: {name} {label}: {tps:.1f} tok/s", flush=True)
    print("\n| library | method | prompt tok/s per round | median |\n|---|---|---|---|")
    for (name, label), values in results.items():
        print(f"| {name} | {label} | {', '.join(f'{v:.1f}' for v in values)} | {statistics.median(values):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
