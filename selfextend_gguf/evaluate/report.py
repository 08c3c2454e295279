"""Writing results: markdown tables, versioned JSON files and PNG plots.

Every JSON file the evaluation commands write is one object::

    {"schema": "selfextend-gguf/<command>/<version>",  # e.g. "selfextend-gguf/passkey/1"
     "created": "2025-01-01T12:00:00+00:00",
     "command": "selfextend-gguf passkey --lengths 8192 ...",
     "model": {"path", "name", "arch", "n_ctx_train", "size_bytes"},
     "machine": {"platform", "processor", "cpu_count", "python", "llama_cpp_python", "llama_cpp_commit",
                 "selfextend_gguf", "threads"},
     "settings": {...the command's options...},
     "methods": [{"label", "kind", "setting", "n_ctx", "n_ctx_train", ...}, ...],
     "rows": [...one object per measurement, described by each command...],
     "summary": [...aggregates, the rows of the printed table...]}

The version changes whenever a field changes meaning or disappears.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

logger = logging.getLogger(__name__)

SCHEMA_PREFIX = "selfextend-gguf"
SCHEMA_VERSION = 1
#: the keys every report has (tests check them)
ENVELOPE_KEYS = ("schema", "created", "command", "model", "machine", "settings", "methods", "rows", "summary")


def schema_name(command: str) -> str:
    """``selfextend-gguf/<command>/<version>``."""
    return f"{SCHEMA_PREFIX}/{command}/{SCHEMA_VERSION}"


def machine_info(threads: Optional[int] = None) -> Dict[str, Any]:
    """Where the numbers came from: OS, CPU, Python and library versions."""
    from importlib import metadata

    from .._pinned import LLAMA_CPP_COMMIT

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    return {"platform": platform.platform(), "processor": _cpu_name(), "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "llama_cpp_python": version("llama-cpp-python"),
            "llama_cpp_commit": LLAMA_CPP_COMMIT, "selfextend_gguf": version("selfextend-gguf"),
            "threads": threads}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def model_info(path: str) -> Dict[str, Any]:
    """The model as reports describe it."""
    from ..gguf_info import read_model_info

    info = read_model_info(path)
    return {"path": str(path), "name": info.name, "arch": info.arch, "n_ctx_train": info.n_ctx_train,
            "size_bytes": os.path.getsize(path)}


def command_line(command: str, parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """The command that produced a report with every option spelled out, so that it reproduces the
    run even if defaults change later (options left at ``None`` are omitted)."""
    words = ["selfextend-gguf", command]
    for action in parser._actions:  # argparse has no public way to list a parser's options
        if not action.option_strings or action.dest in ("help",):
            continue
        value = getattr(args, action.dest, None)
        flag = max(action.option_strings, key=len)
        if isinstance(action, argparse._StoreTrueAction):
            words += [flag] if value else []
        elif value is None or value == []:
            continue
        elif isinstance(value, (list, tuple)):
            words += [flag, *map(str, value)]
        else:
            words += [flag, str(value)]
    return " ".join(shlex.quote(w) for w in words)


def envelope(command: str, *, command_text: str, model: str, threads: Optional[int],
             settings: Dict[str, Any], methods: List[Dict[str, Any]], rows: List[Dict[str, Any]],
             summary: List[Dict[str, Any]]) -> Dict[str, Any]:
    """A complete report object (see the module docstring)."""
    return {"schema": schema_name(command),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "command": command_text, "model": model_info(model), "machine": machine_info(threads),
            "settings": settings, "methods": methods, "rows": rows, "summary": summary}


def write_json(report: Dict[str, Any], path: Path) -> Path:
    """Write ``report`` to ``path`` (indented, UTF-8); return the path.

    Written to a temporary file first and renamed over ``path``, so that a run killed while
    writing leaves the previous report whole for ``--resume``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    part.write_text(json.dumps(report, indent=1, allow_nan=True) + "\n", encoding="utf-8")
    os.replace(part, path)
    return path


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; floats as given (format them before)."""
    lines = ["| " + " | ".join(map(str, headers)) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines)


def pyplot():
    """matplotlib's pyplot on the Agg backend, or ``None`` (with a warning) when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        logger.warning("matplotlib is not installed, so no PNG plots were written (the JSON was). "
                       "Install the plots extra: pip install 'selfextend-gguf[plots]' (or pip install matplotlib).")
        print("selfextend-gguf: matplotlib is not installed: no PNG plots written (JSON written). "
              "Install it with: pip install 'selfextend-gguf[plots]'", file=sys.stderr)
        return None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def safe_name(label: str) -> str:
    """A method label as a file-name part: ``exact@G4W1024`` -> ``exact-G4W1024``."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in label)
