#!/usr/bin/env python3
"""Side-by-side prompt runs (``scripts/prompt_interleaved.py`` JSON reports) as one Markdown table:
per context length and flash-attention setting, every run's ratio, their median and range.

On a shared machine one side-by-side run can land anywhere in a range of about 0.15 (the same
build's 16k prompt has given 0.88x and 1.01x of stock an hour apart). A target is judged on the
median of repeated runs, with the range beside it, not on any single run; this table is that.
Each method is compared with the run's first method (the stock library, ``none``), and a run's
ratio is its total: prompt tokens per second of the method over the stock library's. The median
has three decimals: 0.899 and 0.900 are one side and the other of a 0.9x target, and both 0.90 at two.

Usage (reports or folders of them; the ``.json.part`` files of unfinished runs are skipped)::

    .venv/bin/python scripts/interleaved_table.py docs/results/exact-storage/interleaved/repeat \\
        docs/results/exact-storage/interleaved/argmax
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Dict, Iterable, List, NamedTuple, Sequence, Tuple


class Run(NamedTuple):
    """One side-by-side run of one method against the stock library."""

    n_ctx: int
    flash_attn: str
    threads: int
    method: str
    n_ubatch: int
    stock_tps: float
    ratio: float  # the report's own: the method's prompt tokens/s over the stock library's


def report_paths(args: Iterable[str]) -> List[Path]:
    """The JSON reports named, or found (not recursively) in the folders named, sorted."""
    paths: List[Path] = []
    for arg in args:
        p = Path(arg)
        if p.is_dir():
            paths.extend(sorted(p.glob("*.json")))
        elif p.suffix == ".json":
            paths.append(p)
        else:
            raise ValueError(f"{arg}: give a prompt_interleaved.py JSON report or a folder of them")
    return paths


def load_runs(paths: Sequence[Path]) -> List[Run]:
    """The runs of every report: each method after the first against the first (the baseline)."""
    runs: List[Run] = []
    for path in paths:
        report = json.loads(path.read_text())
        if report.get("from_state"):
            raise ValueError(f"{path}: a run of --from-state times one chunk from a saved state, not a whole "
                             "prompt; its ratio is not pooled with whole prompts")
        summary = report["summary"]
        ubatch: Dict[str, int] = report["n_ubatch"]
        base, *others = list(ubatch)
        for method in others:
            runs.append(Run(int(report["n_ctx"]), str(report["flash_attn"]), int(report["threads"]), method,
                            int(ubatch[method]), float(summary["tps"][base]), float(summary["x"][method])))
    return runs


def _setting(method: str) -> str:
    """``exact@G4W1024:128`` -> ``exact@G4W1024``: a ubatch of the label is the same setting."""
    return method.partition(":")[0]


def table(runs: Sequence[Run]) -> str:
    """Markdown: one row per (length, flash attention, threads, method, its ubatch), the runs in the
    order given."""
    groups: Dict[Tuple[int, str, int, str, int], List[Run]] = {}
    for run in runs:
        key = (run.n_ctx, run.flash_attn, run.threads, _setting(run.method), run.n_ubatch)
        groups.setdefault(key, []).append(run)

    lines = ["| n_ctx | flash attn | threads | method | n_ubatch | runs | each run (x stock) | median | range | "
             "stock tok/s (median) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for (n_ctx, fa, threads, method, n_ubatch), group in sorted(groups.items()):
        ratios = [r.ratio for r in group]
        each = ", ".join(f"{x:.2f}" for x in ratios)
        stock = statistics.median(r.stock_tps for r in group)
        lines.append(f"| {n_ctx} | {fa} | {threads} | {method} | {n_ubatch} | {len(group)} | {each} | "
                     f"**{statistics.median(ratios):.3f}** | "
                     f"{min(ratios):.2f}-{max(ratios):.2f} | {stock:.1f} |")
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    runs = load_runs(report_paths(argv))
    if not runs:
        print("no prompt_interleaved.py reports found", file=sys.stderr)
        return 1
    print(table(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
