#!/usr/bin/env python3
"""Exact mode's G x W grid as Markdown: perplexity beyond the trained length, each setting against
the best at its length, and the needles found where they have been run.

Every setting reads the same text, so two settings are compared bucket by bucket (1024 tokens
each, beyond ``L``): the difference of their mean negative log-likelihoods, with a 95% interval
over the buckets (a t interval; neighbouring buckets are not independent, so read it as a guide).
An interval above 0 says the setting is worse than the best one on this text.

Usage (further needle reports fill cells the grid's own lacks, the automatic ``exact`` rows
under their setting's label)::

    .venv/bin/python scripts/grid_table.py docs/results/needle/grid docs/results/needle/needle.json
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

# two-sided 95% t quantiles by degrees of freedom (1-30); beyond that the Cornish-Fisher expansion
_Z95 = 1.959964
_T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def t95(df: int) -> float:
    """The two-sided 95% quantile of Student's t with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError(f"an interval needs at least 2 buckets, got {df + 1}")
    if df <= len(_T95):
        return _T95[df - 1]
    z = _Z95
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def paired_interval(a: Sequence[float], b: Sequence[float]) -> Tuple[float, float, float]:
    """Mean of ``a - b`` and its 95% t interval, pair by pair."""
    if len(a) != len(b):
        raise ValueError(f"paired values need equal lengths, got {len(a)} and {len(b)}")
    d = [x - y for x, y in zip(a, b)]
    n = len(d)
    mean = sum(d) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1)) if n > 1 else float("nan")
    half = t95(n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def beyond_buckets(report: dict, n_ctx_train: int) -> Dict[Tuple[int, str], Dict[int, float]]:
    """Per (length, method): the mean NLL of each bucket that starts at or beyond ``L``, by start."""
    out: Dict[Tuple[int, str], Dict[int, float]] = {}
    for r in report["rows"]:
        if r["start"] >= n_ctx_train:
            out.setdefault((r["length"], r["method"]), {})[r["start"]] = r["mean_nll"]
    return out


def grid_label(summary_row: dict) -> str:
    """The grid's label of a needle summary row: ``exact@G3W2048`` for the automatic ``exact`` whose
    setting was ``G=3 W=2048 (auto)``, so that a main report's automatic cell fills its grid cell;
    every other label as it is."""
    m = re.fullmatch(r"G=(\d+) W=(\d+) \(auto\)", summary_row.get("setting", ""))
    if summary_row["method"] == "exact" and m:
        return f"exact@G{m[1]}W{m[2]}"
    return summary_row["method"]


def table(perplexity: dict, *needles: dict) -> str:
    """One Markdown row per (length, setting), best perplexity beyond L first at each length.

    ``needles``: needle reports whose cells fill the last column (the first report that has a
    cell wins)."""
    n_ctx_train = perplexity["settings"]["n_ctx_train"]
    buckets = beyond_buckets(perplexity, n_ctx_train)
    found: Dict[Tuple[int, str], dict] = {}
    for needle in needles:
        for s in needle.get("summary", []):
            if s.get("depth") is None:
                found.setdefault((s["length"], grid_label(s)), s)
    lines = ["| length | setting | ppl beyond L | NLL - best's (95% CI) | needles found (95% CI) |",
             "|---|---|---|---|---|"]
    by_length: Dict[int, List[dict]] = {}
    for s in perplexity["summary"]:
        by_length.setdefault(s["length"], []).append(s)
    for length in sorted(by_length):
        cells = sorted(by_length[length], key=lambda s: s["ppl_beyond"])
        best = buckets[(length, cells[0]["method"])]
        for s in cells:
            mine = buckets[(length, s["method"])]
            starts = sorted(set(best) & set(mine))
            if s is cells[0]:
                diff = "best"
            else:
                mean, lo, hi = paired_interval([mine[k] for k in starts], [best[k] for k in starts])
                diff = f"{mean:+.4f} ({lo:+.4f}, {hi:+.4f})"
            n = found.get((length, s["method"]))
            needles = f"{n['found']}/{n['total']} ({n['ci_low']:.2f}-{n['ci_high']:.2f})" if n else "-"
            lines.append(f"| {length} | {s['setting']} | {s['ppl_beyond']:.3f} | {diff} | {needles} |")
    return "\n".join(lines)


def main(argv: List[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    folder = Path(argv[0])
    perplexity = json.loads((folder / "perplexity.json").read_text())
    needle_paths = [folder / "needle.json", *map(Path, argv[1:])]
    print(table(perplexity, *(json.loads(p.read_text()) for p in needle_paths if p.exists())))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
