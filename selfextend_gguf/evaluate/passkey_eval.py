"""``selfextend-gguf passkey``: passkey retrieval over a grid of lengths x depths, per method.

Each cell (length, depth) hides ``keys`` different random 5-digit keys (the same keys for every
method) in filler text of about ``length - max_tokens`` tokens, so that prompt plus answer fit
``n_ctx`` (by default ``n_ctx = length``). Each method is loaded once per ``n_ctx`` and
answers every prompt greedily;
prompts are ordered so that consecutive ones share their longest prefix, which
``Llama.generate`` reuses from the cache.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..errors import EvaluationError
from ..passkey import PasskeyPrompt, found, prompt_for_tokens, random_key
from .decoding import greedy
from .methods import Method, MethodSpec, resolve_all
from .report import markdown_table, pyplot, safe_name


@dataclass(frozen=True)
class PasskeyCase:
    """One prompt of the grid."""

    length: int
    depth: float
    key_index: int
    prompt: PasskeyPrompt
    n_tokens: int


def make_cases(tokenize: Callable[[str], List[int]], lengths: Sequence[int], depths: Sequence[float],
               keys: int, *, max_tokens: int, seed: int) -> List[PasskeyCase]:
    """The prompts of the grid (each ``length - max_tokens`` tokens at most), in an order that maximises prefix reuse between consecutive ones.

    The key of (length, depth, k) depends only on ``seed`` and the cell, so every method, and a
    rerun with more lengths, sees the same keys.
    """
    if not lengths or not depths or keys < 1:
        raise EvaluationError("passkey needs at least one length, one depth and --keys >= 1")
    for d in depths:
        if not 0.0 <= d <= 1.0:
            raise EvaluationError(f"depth {d} is outside [0, 1]; depths are fractions of the prompt, e.g. 0.5")
    cases = []
    for length in sorted(lengths):
        budget = length - max_tokens
        if budget < 64:
            raise EvaluationError(f"length {length} is too short for a passkey prompt plus {max_tokens} answer "
                                  f"tokens; use lengths >= {64 + max_tokens}")
        for depth in sorted(depths, reverse=True):  # deeper keys first: the next prompt shares more
            for k in range(keys):
                rng = random.Random(f"{seed}/{length}/{depth}/{k}")
                prompt = prompt_for_tokens(budget, depth, random_key(rng), tokenize)
                n = len(tokenize(prompt.text))
                if n > budget:  # even without filler: the instructions alone are longer
                    raise EvaluationError(f"length {length} is too short: the passkey instructions alone take {n} "
                                          f"tokens, plus {max_tokens} for the answer; use longer --lengths")
                cases.append(PasskeyCase(length, depth, k, prompt, n))
    return cases


def answer(llm: Any, text: str, max_tokens: int) -> str:
    """Greedy continuation of ``text``: at most ``max_tokens`` tokens, stopping at end-of-text."""
    tokens = llm.tokenize(text.encode("utf-8"), add_bos=True)
    return llm.detokenize(greedy(llm, tokens, max_tokens), prev_tokens=tokens).decode("utf-8", errors="replace")


def run_method(llm: Any, method: Method, cases: Sequence[PasskeyCase], *, max_tokens: int,
               progress: Any = None) -> List[Dict[str, Any]]:
    """Answer every case with ``llm`` (greedy decoding); one row per case."""
    rows = []
    for case in cases:
        t0 = time.perf_counter()
        text = answer(llm, case.prompt.text, max_tokens)
        secs = time.perf_counter() - t0
        rows.append({"method": method.label, "length": case.length, "depth": case.depth,
                     "key_index": case.key_index, "key": case.prompt.key, "prompt_tokens": case.n_tokens,
                     "answer": text, "found": found(text, case.prompt.key), "seconds": round(secs, 3)})
        if progress is not None:
            progress.update(1)
            progress.set_postfix_str(f"{method.label} {case.length} tok")
    return rows


def run_grid(model: str, specs: Sequence[MethodSpec], cases: Sequence[PasskeyCase], n_ctx_train: int, *,
             n_ctx: Optional[int], max_tokens: int, llama_kwargs: Dict[str, Any], progress: Any = None,
             skip: Callable[[str, int], bool] = lambda label, length: False,
             on_unit: Callable[[List[Dict[str, Any]], Method], None] = lambda rows, method: None,
             ) -> Tuple[List[Dict[str, Any]], List[Method]]:
    """Every case with every method: ``(rows, methods)``.

    One unit of work is a method at one ``n_ctx`` (one model instance); ``on_unit(rows, method)``
    gets each unit's rows as soon as it is done, and units whose every length
    ``skip(label, length)`` accepts are not run (both serve ``--resume``).

    With ``n_ctx=None`` each length runs at ``n_ctx = length`` (automatic G/W and RoPE scaling are
    chosen for that length); with a number, every length runs at that ``n_ctx`` (one setting for
    all, as in the paper's figure). Settings are resolved, and bad ones rejected, before any
    model is loaded.
    """
    lengths = sorted({c.length for c in cases})
    if n_ctx is not None and n_ctx < lengths[-1]:
        raise EvaluationError(f"--n-ctx {n_ctx} is smaller than the longest length {lengths[-1]}; "
                              "raise it or leave it out (then each length runs at n_ctx = length)")
    groups = {n_ctx: lengths} if n_ctx is not None else {n: [n] for n in lengths}
    resolved = {ctx: resolve_all(specs, ctx, n_ctx_train) for ctx in groups}
    rows: List[Dict[str, Any]] = []
    methods: List[Method] = []
    for ctx, ls in groups.items():
        group = [c for c in cases if c.length in ls]
        for method in resolved[ctx]:
            methods.append(method)
            if all(skip(method.label, length) for length in ls):
                if progress is not None:
                    progress.update(len(group))
                continue
            llm = method.build(model, **llama_kwargs)
            try:
                unit = [{**row, "n_ctx": ctx, "setting": method.setting}
                        for row in run_method(llm, method, group, max_tokens=max_tokens, progress=progress)]
            finally:
                llm.close()
            rows += unit
            on_unit(unit, method)
    return rows, methods


def summarize(rows: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Accuracy per (method, length, depth) cell, per (method, length) (``depth`` None) and per
    method over everything (``length`` and ``depth`` None). Each summary row has ``method``,
    ``length``, ``depth``, ``setting``, ``found``, ``total`` and ``accuracy``."""
    labels = list(dict.fromkeys(r["method"] for r in rows))
    lengths = sorted({r["length"] for r in rows})
    depths = sorted({r["depth"] for r in rows})
    settings = {(r["method"], r["length"]): r["setting"] for r in rows}
    out = []

    def add(label, length, depth):
        sel = [r for r in rows if r["method"] == label and (length is None or r["length"] == length)
               and (depth is None or r["depth"] == depth)]
        n_found = sum(r["found"] for r in sel)
        setting = settings.get((label, length)) if length is not None else None
        out.append({"method": label, "length": length, "depth": depth, "setting": setting, "found": n_found,
                    "total": len(sel), "accuracy": n_found / len(sel) if sel else None})

    for label in labels:
        for length in lengths:
            if (label, length) not in settings:
                continue  # e.g. a resumed report where this method ran at other lengths only
            for depth in depths:
                add(label, length, depth)
            add(label, length, None)
        add(label, None, None)
    return out


def table(summary: Sequence[Dict[str, Any]]) -> str:
    """Markdown: one row per (length, method); accuracy per depth and over all depths."""
    depths = sorted({s["depth"] for s in summary if s["depth"] is not None})
    cells = {(s["method"], s["length"], s["depth"]): s for s in summary}

    def cell(s):
        return f"{s['found']}/{s['total']}"

    rows = []
    order = list(dict.fromkeys(s["method"] for s in summary))
    per_length = [s for s in summary if s["length"] is not None and s["depth"] is None]
    for s in sorted(per_length, key=lambda s: (s["length"], order.index(s["method"]))):
        per_depth = [cell(cells[s["method"], s["length"], d]) for d in depths]
        rows.append([s["length"], s["method"], s["setting"], *per_depth, f"{s['accuracy']:.0%}"])
    return markdown_table(["length", "method", "setting", *(f"depth {d:g}" for d in depths), "accuracy"], rows)


def _short(setting: str) -> str:
    return "off" if setting.startswith("off") else setting.replace(" (auto)", "")


def plot(summary: Sequence[Dict[str, Any]], out_dir: Path, model_name: str) -> List[Path]:
    """One heatmap per method (depth x length, colour = accuracy), as in the SelfExtend paper.

    Each method's columns are the lengths it ran at: a resumed report may hold a method (a
    ``--grid`` setting, say) at some of its lengths only."""
    plt = pyplot()
    if plt is None:
        return []
    labels = list(dict.fromkeys(s["method"] for s in summary))
    depths = sorted({s["depth"] for s in summary if s["depth"] is not None})
    cells = {(s["method"], s["length"], s["depth"]): s for s in summary}
    paths = []
    for label in labels:
        lengths = sorted(n for (m, n, d) in cells if m == label and n is not None and d is None)
        grid = [[cells[label, n, d]["accuracy"] for n in lengths] for d in depths]
        fig, ax = plt.subplots(figsize=(2.2 + 1.1 * len(lengths), 1.6 + 0.45 * len(depths)), dpi=110)
        im = ax.imshow(grid, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
        xt = [(f"{n // 1024}k" if n % 1024 == 0 else str(n)) + "\n" + _short(cells[label, n, None]["setting"])
              for n in lengths]
        ax.set_xticks(range(len(lengths)))
        ax.set_xticklabels(xt, fontsize=7)
        ax.set_yticks(range(len(depths)))
        ax.set_yticklabels([f"{d:.0%}" for d in depths], fontsize=8)
        ax.set_xlabel("prompt length (tokens)", fontsize=8)
        ax.set_ylabel("key depth", fontsize=8)
        for i, row in enumerate(grid):
            for j, v in enumerate(row):
                ax.text(j, i, f"{v:.0%}", ha="center", va="center", fontsize=7)
        total = cells[label, None, None]
        ax.set_title(f"passkey: {label}, {total['found']}/{total['total']} found\n{model_name}", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        fig.tight_layout()
        path = out_dir / f"passkey_{safe_name(label)}.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths
