"""``selfextend-gguf perplexity``: perplexity of a long text as a function of token position.

One pass per method: the whole text (``length`` tokens) is evaluated in chunks of ``n_batch``
tokens with ``logits_all=True`` and the negative log-likelihood of every next token is read from
``llm.scores`` as each chunk is done. So the cost is one long prompt per method, and the
logits matrix (``length x n_vocab`` floats, 6.4 GB at 32k tokens for a 49k vocabulary) never has
to be held: its pages are handed back to the OS chunk by chunk.

Position ``p`` below is the index of the predicted token: it was predicted from ``p`` tokens
of context, so ``p < L`` is "inside the trained length" and ``p >= L`` is "beyond".
"""

from __future__ import annotations

import math
import mmap
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import EvaluationError
from .methods import Method, MethodSpec, resolve_all
from .report import markdown_table, pyplot

_PAGE = mmap.PAGESIZE


class _ReleasableScores:
    """An anonymous-mmap logits matrix that replaces ``llm.scores``; rows already read can be released."""

    def __init__(self, n_rows: int, n_vocab: int):
        self._row_bytes = n_vocab * 4
        size = max(1, n_rows * self._row_bytes)
        # private: on a shared mapping MADV_DONTNEED would neither free nor zero the pages
        self._mm = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE) if hasattr(mmap, "MAP_PRIVATE") else mmap.mmap(-1, size)
        self.array = np.frombuffer(self._mm, dtype=np.float32, count=n_rows * n_vocab).reshape(n_rows, n_vocab)

    def release(self, start_row: int, end_row: int) -> None:
        """Give the whole pages inside rows ``[start_row, end_row)`` back to the OS (they read as 0 after)."""
        if not hasattr(self._mm, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
            return
        lo = -(-start_row * self._row_bytes // _PAGE) * _PAGE
        hi = end_row * self._row_bytes // _PAGE * _PAGE
        if hi > lo:
            self._mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)


def next_token_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """``-log softmax(logits[i])[targets[i]]`` for each row, in float64."""
    logits = np.asarray(logits, dtype=np.float32)
    m = logits.max(axis=1)
    lse = m.astype(np.float64) + np.log(np.exp(logits - m[:, None]).sum(axis=1, dtype=np.float64))
    return lse - logits[np.arange(len(targets)), targets].astype(np.float64)


def token_nlls(llm: Any, tokens: Sequence[int], *, chunk: Optional[int] = None, progress: Any = None) -> np.ndarray:
    """NLL of ``tokens[1:]`` given their prefixes, in one pass over ``tokens`` with ``llm``.

    ``llm`` must have been created with ``logits_all=True`` and ``n_ctx >= len(tokens)``; it is
    reset first. Element ``i`` of the result is the NLL of token ``i + 1``.
    """
    if not getattr(llm, "_logits_all", False):
        raise ValueError("token_nlls needs a model created with logits_all=True")
    tokens = [int(t) for t in tokens]
    n = len(tokens)
    if n < 2 or n > llm.n_ctx():
        raise ValueError(f"need 2 <= len(tokens) <= n_ctx ({llm.n_ctx()}), got {n}")
    chunk = chunk or llm.n_batch
    llm.reset()
    scores = _ReleasableScores(llm.scores.shape[0], llm.scores.shape[1])
    original, llm.scores = llm.scores, scores.array
    out = np.empty(n - 1, dtype=np.float64)
    try:
        for start in range(0, n, chunk):
            end = min(n, start + chunk)
            llm.eval(tokens[start:end])
            last = min(end, n - 1)  # the last token of the text predicts nothing
            if last > start:
                out[start:last] = next_token_nll(llm.scores[start:last], np.asarray(tokens[start + 1 : last + 1]))
            scores.release(start, end)
            if progress is not None:
                progress.update(end - start)
    finally:
        llm.scores = original
        llm.reset()
    return out


def buckets(nll: np.ndarray, bucket_size: int, *, first_position: int = 1) -> List[Dict[str, Any]]:
    """Perplexity per bucket of positions ``[k * bucket_size, (k + 1) * bucket_size)``.

    ``nll[i]`` belongs to position ``first_position + i``. Each bucket reports ``start``, ``end``
    (exclusive), ``tokens`` (how many NLLs fell in it), ``mean_nll`` and ``ppl``.
    """
    if bucket_size < 1:
        raise ValueError(f"bucket_size must be >= 1, got {bucket_size}")
    positions = np.arange(first_position, first_position + len(nll))
    out = []
    if not len(nll):
        return out
    for k in range(positions[0] // bucket_size, positions[-1] // bucket_size + 1):
        sel = (positions >= k * bucket_size) & (positions < (k + 1) * bucket_size)
        if sel.any():
            mean = float(nll[sel].mean())
            out.append({"start": k * bucket_size, "end": (k + 1) * bucket_size, "tokens": int(sel.sum()),
                        "mean_nll": mean, "ppl": math.exp(mean)})
    return out


def split_means(nll: np.ndarray, n_ctx_train: int, *, first_position: int = 1) -> Dict[str, Optional[float]]:
    """Perplexity over all positions, inside (``p < L``) and beyond (``p >= L``) the trained length."""
    positions = np.arange(first_position, first_position + len(nll))

    def ppl(sel):
        return math.exp(float(nll[sel].mean())) if sel.any() else None

    return {"ppl": ppl(positions >= 0), "ppl_inside": ppl(positions < n_ctx_train),
            "ppl_beyond": ppl(positions >= n_ctx_train),
            "tokens_inside": int((positions < n_ctx_train).sum()), "tokens_beyond": int((positions >= n_ctx_train).sum())}


def run(model: str, specs: Sequence[MethodSpec], tokens: Sequence[int], n_ctx_train: int, *,
        lengths: Sequence[int], bucket: int, llama_kwargs: Dict[str, Any], progress: Any = None,
        skip: Callable[[str, int], bool] = lambda label, length: False,
        on_unit: Callable[[List[Dict[str, Any]], Dict[str, Any], Method], None] = lambda rows, summary, method: None,
        ) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]], List[Method]]:
    """``(rows, summary, methods)``: per length, every method evaluates the first ``length`` tokens
    once at ``n_ctx = length``. ``rows`` are the position buckets (``method``, ``length``,
    ``setting``, and :func:`buckets`' keys); ``summary`` one row per (length, method) with
    :func:`split_means`' keys and ``seconds``. ``on_unit(rows, summary_row, method)`` gets each
    (method, length) as soon as it is done; those that ``skip(label, length)`` accepts are not run."""
    for length in lengths:
        if length > len(tokens):
            raise EvaluationError(f"the text has {len(tokens)} tokens, fewer than the length {length} asked for; "
                                  "use a longer --text or smaller --lengths")
    resolved = {n: resolve_all(specs, n, n_ctx_train) for n in sorted(lengths)}  # fail early
    rows, summary, methods = [], [], []
    for length, ms in resolved.items():
        for method in ms:
            methods.append(method)
            if skip(method.label, length):
                if progress is not None:
                    progress.update(length)
                continue
            llm = method.build(model, logits_all=True, **llama_kwargs)
            try:
                t0 = time.perf_counter()
                nll = token_nlls(llm, tokens[:length], progress=progress)
                secs = time.perf_counter() - t0
            finally:
                llm.close()
            tag = {"method": method.label, "length": length, "setting": method.setting}
            unit = [{**tag, **b} for b in buckets(nll, bucket)]
            total = {**tag, **split_means(nll, n_ctx_train), "seconds": secs}
            rows += unit
            summary.append(total)
            on_unit(unit, total, method)
    return rows, summary, methods


def table(summary: Sequence[Dict[str, Any]]) -> str:
    """Markdown: one row per (length, method) with ppl overall, inside and beyond ``L``."""

    def f(x):
        return "-" if x is None else f"{x:.3f}"

    rows = [[s["length"], s["method"], s["setting"], f(s["ppl"]), f(s["ppl_inside"]), f(s["ppl_beyond"]),
             f"{s['seconds']:.1f}"] for s in summary]
    return markdown_table(["tokens", "method", "setting", "ppl", "ppl < L", "ppl >= L", "seconds"], rows)


def plot(rows: Sequence[Dict[str, Any]], summary: Sequence[Dict[str, Any]], n_ctx_train: int, out_dir: Path,
         model_name: str) -> List[Path]:
    """One PNG per length: perplexity per position bucket, one curve per method, a line at ``L``."""
    plt = pyplot()
    if plt is None:
        return []
    paths = []
    for length in sorted({s["length"] for s in summary}):
        fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
        for s in (s for s in summary if s["length"] == length):
            pts = [r for r in rows if r["length"] == length and r["method"] == s["method"]]
            ax.plot([(r["start"] + r["end"]) / 2 for r in pts], [r["ppl"] for r in pts], marker=".",
                    label=f"{s['method']} ({s['setting']})")
        ax.set_yscale("log")
        if n_ctx_train < length:
            ax.axvline(n_ctx_train, color="grey", linestyle="--", linewidth=1)
            ax.text(n_ctx_train, ax.get_ylim()[1], " trained length", va="top", fontsize=8, color="grey")
        ax.set_xlabel("token position")
        ax.set_ylabel("perplexity (per bucket)")
        ax.set_title(f"perplexity vs position, {length} tokens\n{model_name}", fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"perplexity_{length}.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths
