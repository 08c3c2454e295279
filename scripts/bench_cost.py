#!/usr/bin/env python3
"""Cost of self-extend against the stock library: a thin wrapper around ``selfextend-gguf bench``.

Kept so that existing command lines work; the implementation is
``selfextend_gguf/evaluate/bench.py``. Old options map onto the new command:
``--n-ctx`` -> ``--lengths``, method ``stock`` -> ``none``, ``--group-size G --window W`` ->
``shift@GgWw``/``exact@GgWw``, ``--json FILE`` -> the JSON that ``--out`` holds, copied to FILE.

    .venv/bin/python scripts/bench_cost.py --n-ctx 4096 16384 --threads 2
    # the same as: selfextend-gguf bench --lengths 4096 16384 --methods none shift exact --threads 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

from selfextend_gguf.cli import main as cli_main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--n-ctx", type=int, nargs="+", default=[4096, 16384, 32768])
    parser.add_argument("--methods", nargs="+", default=["stock", "shift", "exact"], choices=["stock", "shift", "exact"])
    parser.add_argument("--decode", type=int, default=32)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--group-size", type=int, default=None)
    parser.add_argument("--window", type=int, default=None)
    parser.add_argument("--json", default=None, help="also copy the JSON report to this file")
    args = parser.parse_args(argv)
    if (args.group_size is None) != (args.window is None):
        parser.error("give both --group-size and --window, or neither (then both are automatic)")
    setting = f"@G{args.group_size}W{args.window}" if args.group_size else ""
    methods = ["none" if m == "stock" else m + setting for m in args.methods]
    out = tempfile.mkdtemp(prefix="bench_cost-") if args.json else "selfextend-eval"
    cli = ["bench", "--lengths", *map(str, args.n_ctx), "--methods", *methods, "--decode", str(args.decode),
           "--threads", str(args.threads), "--out", out] + (["--model", args.model] if args.model else [])
    rc = cli_main(cli)
    if args.json and rc == 0:
        shutil.copy(os.path.join(out, "bench.json"), args.json)
    return rc


if __name__ == "__main__":
    sys.exit(main())
