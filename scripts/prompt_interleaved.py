#!/usr/bin/env python3
"""Prompt throughput of several methods on one prompt, chunk by chunk in turn, in one process,
and then, with ``--decode N``, their decode throughput, N tokens each in turn.

``selfextend-gguf bench`` evaluates each method's whole prompt in turn: at 32k tokens that is 12
minutes per method on 2 cores, and a shared machine's speed drifts by 10-15% over such spans (the
same stock prompt has taken 690 s in one run and 954 s in another). So a ratio between two
sequential runs carries that drift. Here every method has its own context, all in one process, and
the prompt is fed to them in chunks, in rotating order: each chunk's ratios come from timings a few
seconds apart, and the per-chunk rows show how the ratio changes with the position in the context.

A decode costs seconds where its prompt costs minutes, so one burst of load on the machine moves a
decode's ratio between two runs by 20% and more. ``--decode N --rounds R`` has the models decode
the same N tokens one by one, each in turn, R times: the ratio of each round comes from timings a
few seconds apart, and the median over the rounds is what is reported.

The contexts are independent (:func:`interleave` checks nothing is shared); the last token's logits
of each are returned so a caller can compare them with a run of that method alone.

``--from-state N --rounds R`` times one chunk at a fixed place instead: every model evaluates the
first N tokens once and saves its state, then, R times and each model in turn, loads that state and
evaluates the same next ``--chunk`` tokens. Every round computes the same thing, so what moves
between rounds is the machine; this is how exact mode's two speeds were traced to false sharing
between the threads (``patches/0015``).

Usage::

    .venv/bin/python scripts/prompt_interleaved.py --n-ctx 32768 --chunk 2048 \\
        --methods none exact@G8W1024 exact@G8W1024:128 --flash-attn off --out /tmp/ab32.json
    .venv/bin/python scripts/prompt_interleaved.py --n-ctx 16384 --methods none exact \\
        --decode 32 --rounds 8 --out /tmp/decode16.json
    .venv/bin/python scripts/prompt_interleaved.py --n-ctx 16384 --methods none none:128 exact:128 \\
        --from-state 12288 --chunk 512 --rounds 10 --out /tmp/at12k.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np


def build(model: str, labels: Sequence[str], n_ctx: int, n_ctx_train: int, *, flash_attn: bool, threads: int,
          n_ubatch: Optional[int] = None, **llama_kwargs: Any) -> Dict[str, Any]:
    """One fresh model instance per method label, each with its own context of ``n_ctx``;
    ``llama_kwargs`` go to every instance.

    A label is a method as ``selfextend-gguf bench`` takes it, optionally with its own physical
    batch after a colon (``exact@G8W1024:128``); ``n_ubatch`` sets the others'.
    """
    from selfextend_gguf.evaluate.methods import parse_method, resolve_all

    names, ubatches = [], []
    for label in labels:
        name, sep, ub = label.partition(":")
        if sep and not ub.isdigit():
            raise ValueError(f"{label!r}: give the physical batch as METHOD:N, e.g. exact@G8W1024:128")
        names.append(name)
        ubatches.append(int(ub) if sep else n_ubatch)
    methods = resolve_all([parse_method(name) for name in names], n_ctx, n_ctx_train)
    kwargs: Dict[str, Any] = {"flash_attn": flash_attn, "n_threads": threads, "n_threads_batch": threads,
                              "verbose": False, **llama_kwargs}
    llms = {}
    for label, method, ub in zip(labels, methods, ubatches):
        llms[label] = method.build(model, **kwargs, **({"n_ubatch": ub} if ub else {}))
    return llms


def _in_turn(labels: List[str], i: int) -> List[str]:
    """The labels in the order of turn ``i``: each starts one turn in ``len(labels)``."""
    k = i % len(labels)
    return labels[k:] + labels[:k]


def _require_fresh(llms: Dict[str, Any]) -> None:
    """Refuse a context that already holds tokens: its chunks would be timed at the wrong positions."""
    for label, llm in llms.items():
        if llm.n_tokens:
            raise ValueError(f"{label}: the context already holds {llm.n_tokens} tokens; give fresh instances")


def interleave(llms: Dict[str, Any], tokens: Sequence[int], chunk: int,
               n_chunks: Optional[int] = None) -> Tuple[List[Dict[str, Any]], Dict[str, np.ndarray]]:
    """Evaluate ``tokens`` in every model, ``chunk`` tokens at a time, the models in rotating order.

    Returns one row per chunk (``c0``, ``n`` and each label's seconds) and each model's last logits.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    labels = list(llms)
    _require_fresh(llms)
    rows = []
    starts = range(0, len(tokens), chunk)
    for i, c0 in enumerate(starts if n_chunks is None else list(starts)[:n_chunks]):
        part = list(tokens[c0:c0 + chunk])
        row: Dict[str, Any] = {"c0": c0, "n": len(part)}
        for label in _in_turn(labels, i):
            t0 = time.perf_counter()
            llms[label].eval(part)
            row[label] = time.perf_counter() - t0
        rows.append(row)
    from selfextend_gguf.evaluate.bench import last_logits

    return rows, {label: last_logits(llm) for label, llm in llms.items()}


def repeat_from_state(llms: Dict[str, Any], tokens: Sequence[int], n_fill: int, chunk: int,
                      rounds: int) -> Tuple[List[Dict[str, Any]], Dict[str, List[np.ndarray]]]:
    """Every model evaluates ``tokens[:n_fill]`` and saves its state; then, ``rounds`` times and the
    models in rotating order, each loads its state and evaluates ``tokens[n_fill:n_fill + chunk]``.

    Returns one row per round (``c0`` = ``n_fill``, ``n`` and each label's seconds for the chunk)
    and each model's last logits after every round (the same in every round when the state is
    restored exactly).
    """
    if n_fill < 1 or chunk < 1 or rounds < 1 or n_fill + chunk > len(tokens):
        raise ValueError(f"give n_fill >= 1, chunk >= 1 and rounds >= 1 within the {len(tokens)} tokens, "
                         f"got n_fill {n_fill}, chunk {chunk}, rounds {rounds}")
    from selfextend_gguf.evaluate.bench import last_logits

    labels = list(llms)
    _require_fresh(llms)
    states = {}
    for label, llm in llms.items():
        llm.eval(list(tokens[:n_fill]))
        states[label] = llm.save_state()
    part = list(tokens[n_fill:n_fill + chunk])
    rows, logits = [], {label: [] for label in labels}
    for i in range(rounds):
        row: Dict[str, Any] = {"c0": n_fill, "n": chunk}
        for label in _in_turn(labels, i):
            llms[label].load_state(states[label])
            t0 = time.perf_counter()
            llms[label].eval(part)
            row[label] = time.perf_counter() - t0
            logits[label].append(last_logits(llms[label]))
        rows.append(row)
    return rows, logits


def decode_interleaved(llms: Dict[str, Any], tokens: Sequence[int], rounds: int) -> List[Dict[str, Any]]:
    """After the prompt, every model decodes ``tokens`` one by one, the models in rotating order, and
    this ``rounds`` times, each round continuing the sequence (every model ends with the same tokens).

    Returns one row per round: its first position ``p0``, ``n`` and each label's seconds.
    """
    if rounds < 1 or not tokens:
        raise ValueError(f"give at least one round of at least one token, got {rounds} rounds of {len(tokens)}")
    labels = list(llms)
    n_ctx = {label: llm.n_ctx() - llm.n_tokens for label, llm in llms.items()}
    if min(n_ctx.values()) < rounds * len(tokens):
        raise ValueError(f"{rounds} rounds of {len(tokens)} tokens do not fit in the context left: {n_ctx}")
    rows = []
    for i in range(rounds):
        row: Dict[str, Any] = {"p0": llms[labels[0]].n_tokens, "n": len(tokens)}
        for label in _in_turn(labels, i):
            llm = llms[label]
            t0 = time.perf_counter()
            for token in tokens:
                llm.eval([token])
            row[label] = time.perf_counter() - t0
        rows.append(row)
    return rows


def summarize(rows: Sequence[Dict[str, Any]], labels: Sequence[str]) -> Dict[str, Any]:
    """Tokens/s of each label over all chunks, and each label's ratio to the first one (> 1: faster)."""
    n = sum(r["n"] for r in rows)
    seconds = {label: sum(r[label] for r in rows) for label in labels}
    base = labels[0]
    x_chunks = [{label: r[base] / r[label] for label in labels[1:]} for r in rows]
    return {"tokens": n, "seconds": seconds, "tps": {label: n / s for label, s in seconds.items()},
            "x": {label: seconds[base] / seconds[label] for label in labels[1:]},
            "x_chunks": x_chunks,
            "x_median": {label: float(np.median([x[label] for x in x_chunks])) for label in labels[1:]}}


def main(argv: List[str]) -> int:
    from selfextend_gguf import default_model_path
    from selfextend_gguf.evaluate.bench import random_tokens
    from selfextend_gguf.gguf_info import read_model_info

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="GGUF model (default: the embedded SmolLM2-135M-Instruct)")
    ap.add_argument("--methods", nargs="+", default=["none", "exact"],
                    help="the first is the baseline of the ratios; METHOD:N gives one its own n_ubatch "
                         "(default: none exact)")
    ap.add_argument("--n-ctx", type=int, default=32768)
    ap.add_argument("--chunk", type=int, default=2048, help="tokens per chunk (default: 2048)")
    ap.add_argument("--chunks", type=int, default=None, help="stop after this many chunks (default: the whole prompt)")
    ap.add_argument("--n-ubatch", type=int, default=None, help="physical batch for every method (default: each its own)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--flash-attn", choices=("on", "off"), default="off")
    ap.add_argument("--decode", type=int, default=0, help="then decode this many tokens per round (default: 0)")
    ap.add_argument("--rounds", type=int, default=8,
                    help="rounds of --decode tokens, or of the chunk after --from-state (default: 8)")
    ap.add_argument("--from-state", type=int, default=0, metavar="N",
                    help="time the chunk after the first N tokens, --rounds times from a saved state")
    ap.add_argument("--out", type=Path, default=None, help="write the rows and summary to this JSON file")
    args = ap.parse_args(argv)
    if len(args.methods) < 2 or len(set(args.methods)) != len(args.methods):
        ap.error("--methods needs at least two different methods")
    if args.decode < 0 or args.rounds < 1:
        ap.error("--decode must be >= 0 and --rounds >= 1")
    if args.from_state < 0:
        ap.error("--from-state must be >= 0")
    if args.from_state and (args.decode or args.chunks):
        ap.error("--from-state times one chunk: it takes neither --decode nor --chunks")
    model = args.model or str(default_model_path())
    llms = build(model, args.methods, args.n_ctx, read_model_info(model).n_ctx_train,
                 flash_attn=args.flash_attn == "on", threads=args.threads, n_ubatch=args.n_ubatch)
    n_vocab = next(iter(llms.values())).n_vocab()
    tokens = random_tokens(n_vocab, args.n_ctx - 40 - args.decode * args.rounds)
    if args.from_state:
        rows, _ = repeat_from_state(llms, tokens, args.from_state, args.chunk, args.rounds)
    else:
        rows, _ = interleave(llms, tokens, args.chunk, args.chunks)
    summary = summarize(rows, args.methods)
    for row, x in zip(rows, summary["x_chunks"]):
        print(f"tokens {row['c0']:6d}-{row['c0'] + row['n']:6d}: "
              + ", ".join(f"{label} {row[label]:.2f} s" for label in args.methods)
              + " | x " + ", ".join(f"{label} {v:.3f}" for label, v in x.items()), flush=True)
    print("total: " + ", ".join(f"{label} {tps:.1f} tok/s" for label, tps in summary["tps"].items())
          + " | x " + ", ".join(f"{label} {v:.3f}" for label, v in summary["x"].items()))
    decode_rows, decode_summary = [], None
    if args.decode:
        decode_rows = decode_interleaved(llms, random_tokens(n_vocab, args.decode, seed=1), args.rounds)
        decode_summary = summarize(decode_rows, args.methods)
        for row, x in zip(decode_rows, decode_summary["x_chunks"]):
            print(f"decode {row['p0']:6d}+{row['n']}: "
                  + ", ".join(f"{label} {row['n'] / row[label]:.2f} tok/s" for label in args.methods)
                  + " | x " + ", ".join(f"{label} {v:.3f}" for label, v in x.items()), flush=True)
        print("decode median x: " + ", ".join(f"{label} {v:.3f}" for label, v in decode_summary["x_median"].items()))
    n_ubatch = {label: int(llm.context_params.n_ubatch) for label, llm in llms.items()}
    for llm in llms.values():
        llm.close()
    if args.out:
        args.out.write_text(json.dumps({"command": "scripts/prompt_interleaved.py " + " ".join(argv),
                                        "n_ctx": args.n_ctx, "chunk": args.chunk, "from_state": args.from_state,
                                        "flash_attn": args.flash_attn,
                                        "threads": args.threads, "n_ubatch": n_ubatch, "rows": rows,
                                        "summary": summary, "decode_rows": decode_rows,
                                        "decode_summary": decode_summary}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
