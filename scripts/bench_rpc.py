"""What RPC costs: `selfextend-gguf bench` locally and against two rpc-server processes on loopback.

Starts two ``selfextend-gguf rpc-server`` processes on 127.0.0.1 (``--server-threads`` each),
runs the same ``bench`` (stock ``none`` and ``exact`` by default) once locally and once with
``--rpc`` and every layer split evenly across the servers, and records the bytes that crossed the
loopback interface during the RPC run (``/proc/net/dev``: llama.cpp reports none, and
``/proc/PID/io`` does not count socket traffic; on an otherwise idle machine this is the RPC
traffic, each byte counted once). Writes
``OUT/local/bench.json``, ``OUT/rpc/bench.json``, ``OUT/rpc_io.json`` and prints the table.
Resumable: each bench continues its report (``--resume``), skipping the (method, length) rows it
has; the bytes of each RPC invocation are appended to ``rpc_io.json``.

    python scripts/bench_rpc.py --lengths 16384 --out docs/results/rpc-bench
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import List


def _loopback_bytes() -> int:
    """Bytes sent over the loopback interface since boot (Linux)."""
    for line in Path("/proc/net/dev").read_text().splitlines():
        name, _, counters = line.partition(":")
        if name.strip() == "lo":
            return int(counters.split()[8])  # transmit bytes (on lo, equal to receive bytes)
    raise SystemExit("no loopback interface in /proc/net/dev")


def _start_server(threads: int, port: int) -> tuple:
    proc = subprocess.Popen([sys.executable, "-m", "selfextend_gguf.cli", "rpc-server", "--port", str(port),
                             "--threads", str(threads)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("rpc-server did not start")


def _complete(args: argparse.Namespace, out: Path) -> bool:
    """Whether ``out/bench.json`` has a row for every (method, length)."""
    if not (out / "bench.json").is_file():
        return False
    rows = json.loads((out / "bench.json").read_text())["rows"]
    return len({(r["method"], r["n_ctx"]) for r in rows}) >= len(args.methods) * len(args.lengths)


def _bench(args: argparse.Namespace, out: Path, extra: List[str]) -> None:
    if (out / "bench.json").is_file():
        extra = [*extra, "--resume"]
    command = [sys.executable, "-m", "selfextend_gguf.cli", "bench", "--methods", *args.methods,
               "--lengths", *map(str, args.lengths), "--decode", str(args.decode), "--threads", str(args.threads),
               "--no-progress", "--out", str(out), *(["--model", args.model] if args.model else []), *extra]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def _table(out: Path) -> str:
    rows = ["| where | n_ctx | method | prompt tok/s | decode tok/s |", "|---|---|---|---|---|"]
    local = {(r["method"], r["n_ctx"]): r for r in json.loads((out / "local" / "bench.json").read_text())["rows"]}
    for where in ("local", "rpc"):
        report = out / where / "bench.json"
        for r in json.loads(report.read_text())["rows"] if report.is_file() else []:
            ref = local.get((r["method"], r["n_ctx"]))
            ratio = (lambda key: f" ({r[key] / ref[key]:.2f}x)" if where == "rpc" and ref and r[key] else "")
            decode = f"{r['decode_tps']:.1f}{ratio('decode_tps')}" if r["decode_tps"] else "-"
            rows.append(f"| {'2 loopback servers' if where == 'rpc' else 'local'} | {r['n_ctx']} | {r['method']} | "
                        f"{r['prompt_tps']:.1f}{ratio('prompt_tps')} | {decode} |")
    return "\n".join(rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", nargs="+", type=int, default=[16384])
    p.add_argument("--methods", nargs="+", default=["none", "exact"])
    p.add_argument("--decode", type=int, default=32)
    p.add_argument("--model", default=None, help="GGUF model (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads of the local run")
    p.add_argument("--server-threads", type=int, default=max(1, (os.cpu_count() or 2) // 2),
                   help="threads of each rpc-server (default: half the cores, so both together use all)")
    p.add_argument("--ports", nargs=2, type=int, default=[50152, 50153],
                   help="ports of the two servers; fixed, so that a resumed bench has the same --rpc")
    p.add_argument("--out", type=Path, default=Path("rpc-bench"))
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if not _complete(args, args.out / "local"):
        _bench(args, args.out / "local", [])
    io_file = args.out / "rpc_io.json"
    runs = json.loads(io_file.read_text()) if io_file.is_file() else []
    if not _complete(args, args.out / "rpc"):
        servers = [_start_server(args.server_threads, port) for port in args.ports]
        try:
            before = _loopback_bytes()
            _bench(args, args.out / "rpc", ["--rpc", ",".join(endpoint for _, endpoint in servers)])
            after = _loopback_bytes()
        finally:
            for proc, _ in servers:
                proc.terminate()
                proc.wait(timeout=30)
        runs.append({"loopback_bytes": after - before})
        io_file.write_text(json.dumps(runs, indent=1) + "\n")
    print(_table(args.out))
    for n, run in enumerate(runs):
        print(f"RPC run {n}: {run['loopback_bytes'] / 2**20:.1f} MiB over loopback (model uploads, every prompt "
              "and decode step, both directions)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
