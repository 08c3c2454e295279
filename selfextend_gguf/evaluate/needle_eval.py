"""``selfextend-gguf needle``: many questions per cached context, with confidence intervals.

For each length, each method evaluates each context (:mod:`.haystack`) once, then answers its
``K`` questions one after another greedily. A question is the context's tokens plus its own, so
``Llama.generate`` finds the context as the longest prefix of what the cache holds and evaluates
only the question (in shift mode, from the last block boundary: :class:`~selfextend_gguf.LongLlama`
re-evaluates the tail of its newest block). So ``K`` questions cost one long prompt plus ``K``
short ones, and ``K * contexts`` answers per (method, length) give an interval worth reading.

Methods that are the unmodified model at a length (``none`` always; ``linear``, ``yarn`` and
automatic self-extend at ``n_ctx <= L``) are evaluated once and their rows say so
(``evaluated_as``).
"""

from __future__ import annotations

import math
import re
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .decoding import greedy
from .haystack import Haystack
from .methods import Method, MethodSpec, resolve_all
from .report import markdown_table, pyplot

#: the depth bins of the summary and the depth plot: [0, 0.2), [0.2, 0.4), ... [0.8, 1]
DEPTH_BINS = 5
_Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


def wilson_interval(found: int, total: int, z: float = _Z95) -> Tuple[float, float]:
    """The Wilson score interval of a binomial proportion (95% by default); ``(0, 1)`` for no trials.

    Unlike the normal approximation it stays inside [0, 1] and is not empty at 0/n or n/n.
    """
    if total <= 0:
        return 0.0, 1.0
    p = found / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def found(answer: str, value: str) -> bool:
    """Whether the first number in ``answer`` is ``value``: an answer that lists several needles' numbers
    is not counted as finding the one asked for."""
    numbers = re.findall(r"\d+", answer)
    return bool(numbers) and numbers[0] == value


def ask(llm: Any, haystack: Haystack, *, max_tokens: int, reuse: bool = True,
        progress: Any = None) -> List[Dict[str, Any]]:
    """Every question of ``haystack``, answered greedily by ``llm``: one row per question.

    With ``reuse`` the context is evaluated once and each question reuses it from the cache; without,
    each question's whole prompt is evaluated from an empty cache (the reference the tests compare
    reuse against).
    """
    context_seconds = None
    if reuse:
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(haystack.tokens)
        context_seconds = round(time.perf_counter() - t0, 3)
    rows = []
    for needle, question in haystack.questions:
        if not reuse:
            llm.reset()
        prompt = haystack.tokens + question
        t0 = time.perf_counter()
        out = greedy(llm, prompt, max_tokens)
        secs = time.perf_counter() - t0
        text = llm.detokenize(out, prev_tokens=prompt).decode("utf-8", errors="replace")
        rows.append({"text": haystack.text, "context": haystack.index, "context_tokens": len(haystack.tokens),
                     "needle": needle.label, "value": needle.value, "position": needle.position,
                     "depth": needle.depth, "answer": text, "found": found(text, needle.value),
                     "seconds": round(secs, 3), "context_seconds": context_seconds})
        if progress is not None:
            progress.update(1)
    return rows


def is_stock(method: Method) -> bool:
    """Whether ``method`` at its ``n_ctx`` is the unmodified model: nothing scaled, self-extend off."""
    if method.self_extend is not None:
        return not method.self_extend.enabled
    return not method.llama_kwargs


def run(model: str, specs: Sequence[MethodSpec], haystacks: Dict[int, List[Haystack]], n_ctx_train: int, *,
        max_tokens: int, llama_kwargs: Dict[str, Any], progress: Any = None,
        skip: Callable[[str, int, int], bool] = lambda label, length, context: False,
        on_unit: Callable[[List[Dict[str, Any]], Method], None] = lambda rows, method: None) -> None:
    """Ask every haystack's questions of every method; ``haystacks`` maps a length to its contexts.

    A unit of work is one method, length and context: ``on_unit(rows, method)`` gets its rows as
    soon as they are done, and units that ``skip(label, length, context)`` accepts are not run (both
    serve ``--resume``). Each method is loaded once per length, at ``n_ctx = length``.
    """
    resolved = {n: resolve_all(specs, n, n_ctx_train) for n in sorted(haystacks)}  # fail before loading
    for length, methods in resolved.items():
        groups: Dict[str, List[Method]] = {}
        for m in sorted(methods, key=lambda m: m.kind != "none"):  # the stock library evaluates for the group
            groups.setdefault("stock" if is_stock(m) else m.label, []).append(m)
        for members in groups.values():
            todo = [h for h in haystacks[length] if not all(skip(m.label, length, h.index) for m in members)]
            if progress is not None:
                done = sum(len(h.questions) for h in haystacks[length]) - sum(len(h.questions) for h in todo)
                progress.update(len(members) * done)
            if not todo:
                continue
            llm = members[0].build(model, **llama_kwargs)
            try:
                for h in todo:
                    rows = ask(llm, h, max_tokens=max_tokens, progress=progress)
                    if progress is not None:
                        progress.update((len(members) - 1) * len(rows))
                    for m in members:
                        if not skip(m.label, length, h.index):
                            on_unit([{"method": m.label, "length": length, "n_ctx": length, "setting": m.setting,
                                      "evaluated_as": members[0].label, **r} for r in rows], m)
            finally:
                llm.close()


def depth_bin(depth: float) -> float:
    """The centre of ``depth``'s bin (:data:`DEPTH_BINS` equal bins of [0, 1])."""
    k = min(DEPTH_BINS - 1, int(depth * DEPTH_BINS))
    return round((k + 0.5) / DEPTH_BINS, 3)


def summarize(rows: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Accuracy with a 95% Wilson interval per (method, length) (``depth`` None) and per (method,
    length, depth bin) (``depth`` the bin's centre): ``method``, ``length``, ``depth``,
    ``setting``, ``found``, ``total``, ``accuracy``, ``ci_low``, ``ci_high``."""
    cells: Dict[Tuple[str, int, Optional[float]], List[bool]] = {}
    settings: Dict[Tuple[str, int], str] = {}
    for r in rows:
        settings[r["method"], r["length"]] = r["setting"]
        cells.setdefault((r["method"], r["length"], None), []).append(bool(r["found"]))
        cells.setdefault((r["method"], r["length"], depth_bin(r["depth"])), []).append(bool(r["found"]))
    order = list(dict.fromkeys(r["method"] for r in rows))
    out = []
    for (label, length, depth), hits in sorted(cells.items(), key=lambda kv: (
            kv[0][1], order.index(kv[0][0]), -1.0 if kv[0][2] is None else kv[0][2])):
        low, high = wilson_interval(sum(hits), len(hits))
        out.append({"method": label, "length": length, "depth": depth, "setting": settings[label, length],
                    "found": sum(hits), "total": len(hits), "accuracy": sum(hits) / len(hits),
                    "ci_low": round(low, 4), "ci_high": round(high, 4)})
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.0f}"


def table(summary: Sequence[Dict[str, Any]]) -> str:
    """Markdown: one row per (length, method): found/total, accuracy and its 95% interval, then per depth bin."""
    depths = sorted({s["depth"] for s in summary if s["depth"] is not None})
    by_depth = {(s["method"], s["length"], s["depth"]): s for s in summary}
    rows = []
    for s in (s for s in summary if s["depth"] is None):
        per = [(lambda c: f"{c['found']}/{c['total']}" if c else "-")(by_depth.get((s["method"], s["length"], d)))
               for d in depths]
        rows.append([s["length"], s["method"], s["setting"], f"{s['found']}/{s['total']}",
                     f"{_pct(s['accuracy'])}%", f"{_pct(s['ci_low'])}-{_pct(s['ci_high'])}%", *per])
    heads = ["length", "method", "setting", "found", "accuracy", "95% CI",
             *(f"depth {d - 0.5 / DEPTH_BINS:.1f}-{d + 0.5 / DEPTH_BINS:.1f}" for d in depths)]
    return markdown_table(heads, rows)


def plot(summary: Sequence[Dict[str, Any]], n_ctx_train: int, out_dir: Path, model_name: str) -> List[Path]:
    """Three PNGs: accuracy by length with intervals, accuracy by depth per length, and a heatmap."""
    plt = pyplot()
    if plt is None:
        return []
    totals = [s for s in summary if s["depth"] is None]
    labels = list(dict.fromkeys(s["method"] for s in totals))
    lengths = sorted({s["length"] for s in totals})
    paths = [_plot_by_length(plt, totals, labels, n_ctx_train, out_dir, model_name),
             _plot_by_depth(plt, summary, labels, lengths, out_dir, model_name),
             _plot_heatmap(plt, totals, labels, lengths, out_dir, model_name)]
    return paths


def _save(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _plot_by_length(plt: Any, totals: Sequence[Dict[str, Any]], labels: Sequence[str], n_ctx_train: int,
                    out_dir: Path, model_name: str) -> Path:
    lengths = sorted({s["length"] for s in totals})
    fig, ax = plt.subplots(figsize=(2.5 + 1.5 * len(lengths), 4), dpi=110)
    for i, label in enumerate(labels):
        pts = sorted((s for s in totals if s["method"] == label), key=lambda s: s["length"])
        x = [lengths.index(s["length"]) + 0.07 * (i - (len(labels) - 1) / 2) for s in pts]  # side by side
        y = [s["accuracy"] for s in pts]
        err = [[a - s["ci_low"] for a, s in zip(y, pts)], [s["ci_high"] - a for a, s in zip(y, pts)]]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=label)
    ax.set_xticks(range(len(lengths)))
    ax.set_xticklabels([f"{n} tokens\n{n / n_ctx_train:.1f}x trained" for n in lengths], fontsize=8)
    ax.set_xlim(-0.5, len(lengths) - 0.5)
    ax.set_ylim(-0.03, 1.03)
    ax.set_ylabel("needles found (95% Wilson interval)")
    ax.set_title(f"needle retrieval by context length\n{model_name}", fontsize=9)
    ax.legend(fontsize=8)
    return _save(plt, fig, out_dir / "needle_accuracy.png")


def _plot_by_depth(plt: Any, summary: Sequence[Dict[str, Any]], labels: Sequence[str], lengths: Sequence[int],
                   out_dir: Path, model_name: str) -> Path:
    fig, axes = plt.subplots(1, len(lengths), figsize=(1.5 + 3.2 * len(lengths), 3.6), dpi=110, squeeze=False,
                             sharey=True)
    for ax, length in zip(axes[0], lengths):
        for label in labels:
            pts = sorted((s for s in summary if s["method"] == label and s["length"] == length
                          and s["depth"] is not None), key=lambda s: s["depth"])
            if pts:
                ax.plot([s["depth"] for s in pts], [s["accuracy"] for s in pts], marker=".", label=label)
        ax.set_title(f"{length} tokens", fontsize=9)
        ax.set_xlabel("needle depth", fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_ylim(-0.03, 1.05)
    axes[0][0].set_ylabel("needles found")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(f"needle retrieval by depth\n{model_name}", fontsize=9)
    return _save(plt, fig, out_dir / "needle_depth.png")


def _plot_heatmap(plt: Any, totals: Sequence[Dict[str, Any]], labels: Sequence[str], lengths: Sequence[int],
                  out_dir: Path, model_name: str) -> Path:
    cells = {(s["method"], s["length"]): s for s in totals}
    grid = [[cells[m, n]["accuracy"] if (m, n) in cells else math.nan for n in lengths] for m in labels]
    fig, ax = plt.subplots(figsize=(2.5 + 1.3 * len(lengths), 1.4 + 0.5 * len(labels)), dpi=110)
    im = ax.imshow(grid, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(lengths)))
    ax.set_xticklabels([f"{n // 1024}k" if n % 1024 == 0 else str(n) for n in lengths], fontsize=8)
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(labels, fontsize=8)
    for i, m in enumerate(labels):
        for j, n in enumerate(lengths):
            s = cells.get((m, n))
            if s:
                ax.text(j, i, f"{_pct(s['accuracy'])}%\n[{_pct(s['ci_low'])}, {_pct(s['ci_high'])}]",
                        ha="center", va="center", fontsize=7)
    ax.set_title(f"needles found, 95% intervals\n{model_name}", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return _save(plt, fig, out_dir / "needle_heatmap.png")

