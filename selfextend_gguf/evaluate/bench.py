"""``selfextend-gguf bench``: speed and memory of each method against the stock library, side by side.

For each ``n_ctx`` and method it loads the model, evaluates a prompt that fills the context
(random tokens: the cost does not depend on the content) minus ``decode + 8`` tokens, then
decodes ``decode`` tokens one at a time as generation does. The decode is timed ``decode_passes``
times from the same cache (:func:`time_decode_passes`): a pass costs seconds where the prompt costs
minutes, and its speed varies with the machine's load as much as the prompt's. It reports prompt
and decode tokens/s, the KV cache and compute buffer sizes that llama.cpp allocates (read from its log,
the only place it reports them), the process's peak resident memory during the run, and the
ratios to the ``none`` method (the unmodified model) at the same ``n_ctx``. With ``repeat > 1``
every (method, n_ctx) runs several times, interleaved, and the table shows medians: on a
shared machine a burst of load from another process can slow one run several-fold.

Peak RSS is per run on Linux (the high-water mark is reset through ``/proc/self/clear_refs``
before each one); elsewhere it is the process's peak so far, and ``rss_scope`` says which.
"""

from __future__ import annotations

import contextlib
import ctypes
import re
import resource
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Sequence, Tuple

import numpy as np

from .methods import Method, MethodSpec, resolve_all
from .report import markdown_table, pyplot

_KV = re.compile(r"KV buffer size\s*=\s*([\d.]+) MiB")
_COMPUTE = re.compile(r"compute buffer size (?:of|=)\s*([\d.]+) MiB")


def buffer_sizes(log: str) -> tuple:
    """(KV cache MiB, compute buffer MiB) summed over backends from llama.cpp's log of a context.

    The compute buffers are reserved again when the graph changes (``llama_set_self_extend`` on an
    exact-mode context re-reserves at the next decode): each reservation, which starts with
    "reserving", is summed over its backends, and the largest one is the size.
    """
    kv = sum(float(x) for x in _KV.findall(log))
    compute = max((sum(float(x) for x in _COMPUTE.findall(part)) for part in log.split("reserving")), default=0.0)
    return kv, compute


@contextlib.contextmanager
def capture_llama_log() -> Iterator[List[str]]:
    """Collect llama.cpp's log messages in a list while the block runs (and print none of them).

    llama-cpp-python's own callback is put back afterwards.
    """
    from .. import load_llama_cpp

    llama_cpp = load_llama_cpp()
    lines: List[str] = []

    @llama_cpp.llama_log_callback
    def _callback(level, text, user_data):
        lines.append(text.decode("utf-8", "replace"))

    llama_cpp.llama_log_set(_callback, ctypes.c_void_p(0))
    try:
        yield lines
    finally:
        from llama_cpp._logger import llama_log_callback as default

        llama_cpp.llama_log_set(default, ctypes.c_void_p(0))


def reset_peak_rss() -> bool:
    """Reset the process's resident-memory high-water mark (Linux); False where that is impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float:
    """The process's peak resident memory in MiB (since :func:`reset_peak_rss` on Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def last_logits(llm: Any) -> np.ndarray:
    """A copy of the logits of the last token ``llm`` evaluated (``Llama.scores`` keeps them only
    with ``logits_all``)."""
    from .. import load_llama_cpp

    llama_cpp = load_llama_cpp()
    ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).copy()


def time_decode_passes(llm: Any, tokens: Sequence[int], *, passes: int = 1) -> Tuple[List[float], List[np.ndarray]]:
    """Seconds of each pass that decodes ``tokens`` one at a time after the cached prompt, and the
    logits of each pass's last token.

    Between passes the decoded tokens are removed from the cache, and the prompt's last token is
    evaluated again, untimed: a removal that reaches back into exact mode's window is caught up
    by a K-shift at the next evaluation, and shift mode re-evaluates back to its block's start,
    neither of which is the decode's cost. Every pass then starts from the same cache, so equal
    logits across passes show that the cache was restored.
    """
    if passes < 1:
        raise ValueError(f"decode_passes must be >= 1, got {passes}")
    n_prompt = llm.n_tokens
    if n_prompt < 1:
        raise ValueError("decode_passes needs a cached prompt of at least one token")
    last = int(llm.input_ids[n_prompt - 1])
    seconds, logits = [], []
    for i in range(passes):
        if i:
            llm.n_tokens = n_prompt - 1
            llm.eval([last])
        t0 = time.perf_counter()
        for t in tokens:  # one token at a time, as generation does
            llm.eval([t])
        seconds.append(time.perf_counter() - t0)
        logits.append(last_logits(llm))
    return seconds, logits


def random_tokens(n_vocab: int, n: int, seed: int = 0) -> List[int]:
    """``n`` random token ids for timing a prompt: its cost does not depend on the content.

    The lowest ids (control and byte tokens in most vocabularies) are left out, so that no
    end-of-text or special token is among them.
    """
    rng = np.random.default_rng(seed)
    return [int(t) for t in rng.integers(min(100, n_vocab // 4), n_vocab - 1, size=n)]


def run_one(model: str, method: Method, *, decode: int, llama_kwargs: Dict[str, Any], seed: int = 0,
            decode_passes: int = 1) -> Dict[str, Any]:
    """Measure one (method, n_ctx): build, evaluate the prompt, decode ``decode_passes`` times; one row
    whose decode time is the median pass."""
    n_ctx = method.n_ctx
    n_prompt = n_ctx - decode - 8
    if n_prompt < 1:
        raise ValueError(f"n_ctx={n_ctx} leaves no room for a prompt before {decode} decoded tokens")
    per_run = reset_peak_rss()
    with capture_llama_log() as log:
        llm = method.build(model, **llama_kwargs)
        try:
            n_ubatch = int(llm.context_params.n_ubatch)
            tokens = random_tokens(llm.n_vocab(), n_prompt + decode, seed)
            t0 = time.perf_counter()
            llm.eval(tokens[:n_prompt])
            t_prompt = time.perf_counter() - t0
            # after the first decode: its reservation is in the log too
            kv, compute_reserved = buffer_sizes("".join(log))
            passes = time_decode_passes(llm, tokens[n_prompt:], passes=decode_passes)[0]
            t_decode = float(np.median(passes))
            rss = peak_rss_mib()
        finally:
            del log[:]
            llm.close()
        # llama.cpp logs a compute buffer that grew past its reservation when the context is freed
        _, compute_final = buffer_sizes("".join(log))
    return {"method": method.label, "kind": method.kind, "setting": method.setting, "n_ctx": n_ctx,
            "flash_attn": bool(llama_kwargs.get("flash_attn", False)), "n_ubatch": n_ubatch,
            "prompt_tokens": n_prompt, "decode_tokens": decode, "decode_passes": len(passes),
            "decode_pass_seconds": passes, "prompt_seconds": t_prompt,
            "decode_seconds": t_decode, "prompt_tps": n_prompt / t_prompt, "decode_tps": decode / t_decode if decode else None,
            "kv_mib": kv, "compute_mib": max(compute_reserved, compute_final), "peak_rss_mib": rss,
            "rss_scope": "run" if per_run else "process"}


def run(model: str, specs: Sequence[MethodSpec], n_ctx_train: int, *, lengths: Sequence[int], decode: int,
        llama_kwargs: Dict[str, Any], repeat: int = 1, decode_passes: int = 1, flash_attn: Sequence[bool] = (False,),
        progress: Any = None,
        skip: Callable[[str, int, int, bool], bool] = lambda label, n_ctx, trial, fa: False,
        on_unit: Callable[[Dict[str, Any], Method], None] = lambda row, method: None,
        ) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    """``(trials, summary)``: every method at every ``n_ctx`` in ``lengths``, with each of the
    ``flash_attn`` settings, ``repeat`` times, each timing its decode ``decode_passes`` times.

    Trials are interleaved (all methods once, then all again) so that a burst of load from
    other processes hits every method alike; ``summary`` has one row per (n_ctx, flash_attn,
    method) with the median throughputs and ratios to ``none`` with the same flash-attention
    setting (:func:`summarize`). Settings are resolved, and bad ones rejected, before anything
    runs. ``on_unit(row, method)`` gets each run as soon as it is done; runs that
    ``skip(label, n_ctx, trial, flash_attn)`` accepts are not repeated.
    """
    if repeat < 1 or decode_passes < 1:
        raise ValueError(f"repeat and decode_passes must be >= 1, got {repeat} and {decode_passes}")
    if not flash_attn:
        raise ValueError("flash_attn needs at least one setting")
    resolved = {n: resolve_all(specs, n, n_ctx_train) for n in sorted(lengths)}
    trials = []
    for methods in resolved.values():
        for trial in range(repeat):
            for fa in flash_attn:
                for method in methods:
                    if not skip(method.label, method.n_ctx, trial, fa):
                        kwargs = {**llama_kwargs, "flash_attn": fa}
                        row = {**run_one(model, method, decode=decode, llama_kwargs=kwargs, decode_passes=decode_passes), "trial": trial}
                        trials.append(row)
                        on_unit(row, method)
                    if progress is not None:
                        progress.update(1)
    return trials, summarize(trials)


def summarize(trials: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One row per (n_ctx, flash_attn, method): median times and throughputs over its trials, the
    largest memory figures, ``trials`` = how many, and the ratios of :func:`add_ratios`."""
    groups: Dict[tuple, List[Dict[str, Any]]] = {}
    for t in trials:
        t = {"flash_attn": False, **t}  # reports written before the setting was recorded
        groups.setdefault((t["n_ctx"], t["flash_attn"], t["method"]), []).append(t)
    rows = []
    for group in groups.values():
        row = {k: v for k, v in group[0].items() if k not in ("trial", "decode_pass_seconds")}  # one trial's
        for key in ("prompt_seconds", "decode_seconds", "prompt_tps", "decode_tps"):
            values = [t[key] for t in group if t[key] is not None]
            row[key] = float(np.median(values)) if values else None
        for key in ("kv_mib", "compute_mib", "peak_rss_mib"):
            row[key] = max(t[key] for t in group)
        row["trials"] = len(group)
        rows.append(row)
    return add_ratios(rows)


def add_ratios(rows: Sequence[Dict[str, Any]], baseline: str = "none") -> List[Dict[str, Any]]:
    """Each row with ``prompt_x``, ``decode_x``, ``memory_x`` (KV + compute) and ``rss_x`` relative to
    the ``baseline`` method's row at the same ``n_ctx`` and flash-attention setting (``None``
    without one)."""
    base = {(r["n_ctx"], r.get("flash_attn", False)): r for r in rows if r["method"] == baseline}
    out = []
    for r in rows:
        b = base.get((r["n_ctx"], r.get("flash_attn", False)))

        def ratio(a, c):
            return a / c if b is not None and a is not None and c else None

        mem = r["kv_mib"] + r["compute_mib"]
        out.append({**r, "prompt_x": ratio(r["prompt_tps"], b and b["prompt_tps"]),
                    "decode_x": ratio(r["decode_tps"], b and b["decode_tps"]),
                    "memory_x": ratio(mem, b and b["kv_mib"] + b["compute_mib"]),
                    "rss_x": ratio(r["peak_rss_mib"], b and b["peak_rss_mib"])})
    return out


def table(rows: Sequence[Dict[str, Any]]) -> str:
    """Markdown: one row per (n_ctx, method)."""

    def f(x, fmt):
        return "-" if x is None else format(x, fmt)

    body = [[r["n_ctx"], "on" if r.get("flash_attn") else "off", r["method"], r["setting"], f(r.get("n_ubatch"), "d"),
             f(r["prompt_tps"], ".1f"), f(r["decode_tps"], ".1f"),
             f(r["kv_mib"], ".1f"), f(r["compute_mib"], ".1f"), f(r["peak_rss_mib"], ".0f"),
             f(r["prompt_x"], ".2f"), f(r["decode_x"], ".2f"), f(r["memory_x"], ".2f")] for r in rows]
    return markdown_table(["n_ctx", "flash attn", "method", "setting", "ubatch", "prompt tok/s", "decode tok/s", "KV MiB",
                           "compute MiB", "peak RSS MiB", "prompt x", "decode x", "memory x"], body)


def plot(rows: Sequence[Dict[str, Any]], out_dir: Path, model_name: str) -> List[Path]:
    """One PNG: prompt tok/s, decode tok/s and KV + compute MiB against n_ctx, one line per method."""
    plt = pyplot()
    if plt is None:
        return []
    both = len({bool(r.get("flash_attn")) for r in rows}) > 1

    def label(r: Dict[str, Any]) -> str:
        return r["method"] + (" (FA)" if both and r.get("flash_attn") else "")

    methods = list(dict.fromkeys(label(r) for r in rows))
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8), dpi=110)
    panels = [("prompt_tps", "prompt tokens/s"), ("decode_tps", "decode tokens/s"), (None, "KV + compute MiB")]
    for ax, (key, title) in zip(axes, panels):
        for m in methods:
            pts = sorted((r for r in rows if label(r) == m), key=lambda r: r["n_ctx"])
            ys = [(r["kv_mib"] + r["compute_mib"]) if key is None else r[key] for r in pts]
            ax.plot([r["n_ctx"] for r in pts], ys, marker="o", label=m)
        ax.set_xlabel("n_ctx (tokens)")
        ax.set_ylim(bottom=0)  # from zero, so that heights compare as ratios
        ax.set_title(title, fontsize=9)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"cost per method: {model_name}", fontsize=9)
    fig.tight_layout()
    path = out_dir / "bench.png"
    fig.savefig(path)
    plt.close(fig)
    return [path]
