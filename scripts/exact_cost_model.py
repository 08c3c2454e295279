#!/usr/bin/env python3
"""How fast exact mode can be, from arithmetic alone: multiply-adds of stock vs exact attention.

The exact-mode graph (patches/0005) stores a key at its exact position while it is within W of the
newest position of its sequence, and re-rotates it once, in place, to j/G when it leaves that
window. Its extra work over the stock graph, per ubatch that has a query at position >= W:

- prompt ubatches (cells in position order, read in place) whose window starts after cell 0
  (patches/0010): the window of the ubatch (the W + n cells within W of one of its queries, and
  the one key before them that all of them see grouped) against the exact queries, the keys that
  leave the window with this ubatch (at most n) against the grouped queries, and the cells before
  the window, padded to 16 cells, plus a block of 16 columns that holds the window's log-sum-exp,
  against the grouped queries; V is read in place and multiplied once, over the used cells and the
  padding only (the stock graph multiplies the cache padded to 256 cells), so a ubatch can cost
  less than stock;
- the ubatch whose window starts at cell 0 or whose padded block would reach past the used cells,
  and those of a cache made for flash attention that the flash-attention prompt below does not
  take: the whole cache against the grouped queries (the stock product), and the window and the
  keys that leave it once more, as above;
- decoding: the W neighbours against the exact query and the one key that leaves the window
  against the grouped one, on top of the whole cache; the probabilities of the gathered keys are
  scattered into the row of the cache, so V is multiplied once;
- prompt ubatches with flash attention elsewhere (patches/0008), when the window holds two scratch cells per
  query and query head of a KV head: the window is scored and multiplied with its V unfused (its keys
  against the exact queries, the keys that leave the window against the grouped ones, and the
  window's V once more), then one flash attention reads the whole cache with the window's output
  in scratch cells in place: the stock pass, plus the window's own product with V;
- prompt ubatches with flash attention on the CPU (patches/0016, 0017), whose flash attention returns
  the log-sum-exp: the window against the exact queries, and the cache against the grouped queries,
  two flash attentions merged by their log-sum-exps. The CPU's flash attention skips a tile of 64
  keys that every query of its tile of 64 masks (fewer queries skip each masked key), so the first
  reads the window's cells within W of its queries, the second the cells more than W before them,
  and the stock one the cells up to them: for this column both graphs are counted in the cells so
  read, at exact mode's ubatch on the CPU with flash attention (the stock 512 by default);
- decoding with flash attention (patches/0007): the W neighbours and the key that leaves the window
  are saved, written rotated into their own cells, read by one flash attention over the stock n_kv
  cells, and written back: no multiply-add more than stock, but ``4 (W + 1)`` rows of K moved per
  layer (two gathers, two writes), the last column. The cache keeps the stock size.

This script counts those multiply-adds for the same workload as ``selfextend-gguf bench`` (a
prompt that fills n_ctx less ``decode + 8`` tokens in ubatches of ``n_ubatch``, then ``decode``
single tokens; exact mode's ubatch is LongLlama's default for each path, ``selfextend_gguf.ubatch``), with the
model's weight matrices added, and prints stock/exact: the throughput
ratio exact mode would reach if it ran every multiply-add at the stock graph's rate and nothing
else cost time. It leaves out the second RoPE of the keys that leave the window (one per layer
and token), the softmax, the copies and the mask, so measured ratios are lower.

    .venv/bin/python scripts/exact_cost_model.py --lengths 4096 16384 32768 --setting 4:1024 4:1024 8:1024
    .venv/bin/python scripts/exact_cost_model.py --model other.gguf --lengths 16384 --setting 4:512

Sizes follow the graph: n_kv is the used cells padded to 256, and a ubatch whose queries are all
at positions < W takes the stock path.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Sequence, Tuple


#: patches/0010 pads the block of the cells before the window to 16 cells on each side of the window's
#: log-sum-exp column (llama_self_extend_gather::split_pad), for the CPU's GEMM
SPLIT_PAD = 16


def _pad(n: int, to: int) -> int:
    return (n + to - 1) // to * to


@dataclass(frozen=True)
class Shape:
    """What the count needs from a model: per-token weight multiply-adds and the attention shape."""

    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim_k: int
    head_dim_v: int
    weight_macs: int  # per token, the layers' weight matrices (the output matrix is left out)

    @classmethod
    def from_gguf(cls, path: str) -> "Shape":
        from gguf import GGUFReader  # the package the tests use to write tiny models

        r = GGUFReader(path)
        arch = str(bytes(r.fields["general.architecture"].parts[-1]), "utf-8")

        def value(key: str) -> int:
            field = r.fields[f"{arch}.{key}"]
            return int(field.parts[field.data[0]][0])

        n_layer, n_head, n_embd = value("block_count"), value("attention.head_count"), value("embedding_length")
        n_head_kv = value("attention.head_count_kv") if f"{arch}.attention.head_count_kv" in r.fields else n_head
        head_dim_k = value("attention.key_length") if f"{arch}.attention.key_length" in r.fields else n_embd // n_head
        head_dim_v = value("attention.value_length") if f"{arch}.attention.value_length" in r.fields else head_dim_k
        weight_macs = 0
        for t in r.tensors:
            if t.name.startswith("blk.") and t.name.endswith(".weight") and len(t.shape) == 2:
                weight_macs += int(t.shape[0]) * int(t.shape[1])
        return cls(n_layer, n_head, n_head_kv, head_dim_k, head_dim_v, weight_macs)


def _ubatches(n_prompt: int, n_ubatch: int) -> Iterator[Tuple[int, int]]:
    for p in range(0, n_prompt, n_ubatch):
        yield p, min(n_ubatch, n_prompt - p)


def ubatch_window(p: int, n: int, w: int) -> int:
    """The cells of the window of the ubatch of n queries at p..p+n-1 (0 on the stock path)."""
    i_max = p + n - 1
    if w <= 0 or i_max < w:
        return 0
    first = max(0, p - w)  # the oldest key still stored exact (within W of p - 1)
    return i_max - first + 1


def prompt_macs_ubatch(s: Shape, p: int, n: int, w: int, *, flash_attn: bool = False) -> Tuple[int, int, int]:
    """(stock, exact, keys re-rotated) multiply-adds of the ubatch of n queries at p..p+n-1."""
    from selfextend_gguf.ubatch import flash_prompt_scratch

    per_key = s.n_layer * s.n_head  # one score (or one row of V) per layer and head
    n_kv = _pad(p + n, 256)
    stock = n * s.weight_macs + n * per_key * n_kv * (s.head_dim_k + s.head_dim_v)
    n_win = ubatch_window(p, n, w)  # read in place, scored against the exact queries
    if n_win == 0:  # every query sees every key exactly: the stock path
        return stock, stock, 0
    n_cr = max(0, p + n - 1 - w - max(0, p - w) + 1)  # the keys that leave the window: rotated, scored grouped
    rotated = s.n_layer * s.n_head_kv * n_cr
    window = n * per_key * s.head_dim_k * (n_win + n_cr)
    if flash_attn and flash_prompt_scratch(n, s.n_head // s.n_head_kv) <= n_win:
        # one flash attention over the cache (the stock pass), and the window's own product with V
        return stock, stock + window + n * per_key * s.head_dim_v * n_win, rotated
    first = p + n - n_win  # the window's first cell
    c_lse = _pad(first, SPLIT_PAD)  # the window's log-sum-exp column, then SPLIT_PAD columns to its block's end
    if first > 0 and not flash_attn and c_lse + SPLIT_PAD <= first + n_win:
        # the cells before the window padded to c_lse, and the block of the log-sum-exp (masked cells of the
        # window besides it), then V (transposed, as a cache without flash attention holds it) over c_lse cells
        before = n * per_key * ((c_lse + SPLIT_PAD) * s.head_dim_k + c_lse * s.head_dim_v)
        return stock, n * s.weight_macs + before + window + n * per_key * s.head_dim_v * n_win, rotated
    return stock, stock + window, rotated


def prompt_macs(s: Shape, n_prompt: int, n_ubatch: int, w: int, *, flash_attn: bool = False) -> Tuple[int, int, int]:
    """(stock, exact, keys re-rotated) multiply-adds of evaluating a prompt from position 0."""
    stock = exact = rotated = 0
    for p, n in _ubatches(n_prompt, n_ubatch):
        st, ex, rot = prompt_macs_ubatch(s, p, n, w, flash_attn=flash_attn)
        stock, exact, rotated = stock + st, exact + ex, rotated + rot
    return stock, exact, rotated


#: the CPU's flash attention takes 64 or more queries per head in tiles of 64 (ggml_fa_tile_config::Q), and reads
#: the keys in tiles of 64 (::KV), skipping a tile that every query of its tile masks; fewer queries are taken one
#: by one, skipping each masked key
FA_TILE = 64


def _fa_cells(n: int, seen: Callable[[int, int], Tuple[int, int]]) -> int:
    """Key cells the CPU's flash attention reads for n queries, summed over the queries: ``seen(q0, q1)`` is the
    range [lo, hi) of cells (of the K it is given) that the queries q0..q1-1 see."""
    if n < FA_TILE:
        return sum(max(0, hi - lo) for lo, hi in (seen(q, q + 1) for q in range(n)))
    total = 0
    for q0 in range(0, n, FA_TILE):
        q1 = min(n, q0 + FA_TILE)
        lo, hi = seen(q0, q1)
        if hi > lo:
            total += (q1 - q0) * FA_TILE * ((hi - 1) // FA_TILE - lo // FA_TILE + 1)
    return total


def prompt_macs_ubatch_lse(s: Shape, p: int, n: int, w: int) -> Tuple[int, int]:
    """(stock, exact) multiply-adds of the ubatch of n queries at p..p+n-1 with the CPU's flash attention,
    counted in the cells it reads (_fa_cells): for the stock graph every cell up to each query; for exact mode
    the window's cells within W of each query (against the exact queries, the window read as its own K) and
    the cells more than W before it (against the grouped queries, the cache)."""
    per_cell = s.n_layer * s.n_head * (s.head_dim_k + s.head_dim_v)
    stock = n * s.weight_macs + per_cell * _fa_cells(n, lambda q0, q1: (0, p + q1))
    n_win = ubatch_window(p, n, w)
    if n_win == 0:
        return stock, stock
    first = p + n - n_win  # the window's first cell
    window = _fa_cells(n, lambda q0, q1: (max(0, p + q0 - w + 1 - first), p + q1 - first))
    grouped = _fa_cells(n, lambda q0, q1: (0, max(0, p + q1 - w)))
    return stock, n * s.weight_macs + per_cell * (window + grouped)


def prompt_macs_lse(s: Shape, n_prompt: int, n_ubatch: int, w: int) -> Tuple[int, int]:
    """(stock, exact) multiply-adds of evaluating a prompt from position 0 with the CPU's flash attention, both
    in ubatches of ``n_ubatch`` (how many cells a tile skips depends on the ubatch, not on the method)."""
    stock = exact = 0
    for p, n in _ubatches(n_prompt, n_ubatch):
        st, ex = prompt_macs_ubatch_lse(s, p, n, w)
        stock, exact = stock + st, exact + ex
    return stock, exact


def prompt_macs_fa(s: Shape, n_prompt: int, n_ubatch: int, w: int) -> Tuple[int, int]:
    """(stock, exact) multiply-adds of evaluating a prompt from position 0 with flash attention: a ubatch
    whose window holds 2 * n_gqa * n scratch cells (two per query and query head of a KV head) runs one
    flash attention over the cache and multiplies the window's V once more; others are unfused."""
    stock, exact, _ = prompt_macs(s, n_prompt, n_ubatch, w, flash_attn=True)
    return stock, exact


def decode_macs(s: Shape, n_past: int, n_decode: int, w: int) -> Tuple[int, int, int]:
    """(stock, exact, keys re-rotated) multiply-adds of decoding ``n_decode`` tokens after ``n_past``."""
    stock = exact = rotated = 0
    per_key = s.n_layer * s.n_head
    for i in range(n_past, n_past + n_decode):
        n_kv = _pad(i + 1, 256)
        base = s.weight_macs
        attn = per_key * n_kv * (s.head_dim_k + s.head_dim_v)
        stock += base + attn
        if w <= 0 or i < w:
            exact += base + attn
            continue
        # the W neighbours and the key at i - W, which leaves the window now; V: scattered probabilities
        exact += base + attn + per_key * s.head_dim_k * (w + 1)
        rotated += s.n_layer * s.n_head_kv
    return stock, exact, rotated


def decode_macs_fa(s: Shape, n_past: int, n_decode: int, w: int) -> Tuple[int, int, int]:
    """(stock, exact, K rows moved) of decoding with flash attention: one pass over n_kv each, and
    the W + 1 gathered keys read twice (to save, to rotate) and written twice (rotated, restored)."""
    stock = exact = moved = 0
    per_key = s.n_layer * s.n_head
    for i in range(n_past, n_past + n_decode):
        n_kv = _pad(i + 1, 256)
        macs = s.weight_macs + per_key * n_kv * (s.head_dim_k + s.head_dim_v)
        stock += macs
        exact += macs
        if w > 0 and i >= w:
            moved += s.n_layer * 4 * (w + 1)
    return stock, exact, moved


def table(s: Shape, lengths: Sequence[int], settings: Sequence[Tuple[int, int]], *, n_ubatch: int,
          exact_n_ubatch: Sequence[int], decode: int, lse_n_ubatch: Optional[Sequence[int]] = None) -> str:
    """One row per length: stock's prompt in ubatches of ``n_ubatch``, exact mode's in its own
    (``lse_n_ubatch`` for the CPU's flash-attention prompt, default ``exact_n_ubatch``)."""
    rows: List[str] = ["| n_ctx | G | W | exact ubatch | prompt bound | prompt bound, FA | prompt bound, FA on the CPU "
                       "| decode bound | decode bound, FA | keys re-rotated per prompt token | per decoded token "
                       "| K rows moved per decoded token, FA |",
                       "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for n_ctx, (g, w), ub, lse_ub in zip(lengths, settings, exact_n_ubatch, lse_n_ubatch or exact_n_ubatch):
        n_prompt = n_ctx - decode - 8
        ps = prompt_macs(s, n_prompt, n_ubatch, w)[0]
        _, pe, pr = prompt_macs(s, n_prompt, ub, w)
        ds, de, dr = decode_macs(s, n_prompt, decode, w)
        pfe = prompt_macs_fa(s, n_prompt, ub, w)[1]
        ls, le = prompt_macs_lse(s, n_prompt, lse_ub, w)
        fs, fe, fm = decode_macs_fa(s, n_prompt, decode, w)
        ub_text = f"{ub}" if lse_ub == ub else f"{ub} ({lse_ub} FA on the CPU)"
        rows.append(f"| {n_ctx} | {g} | {w} | {ub_text} | {ps / pe:.2f}x | {ps / pfe:.2f}x | {ls / le:.2f}x "
                    f"| {ds / de:.2f}x | {fs / fe:.2f}x "
                    f"| {pr / n_prompt:.0f} | {dr / decode:.0f} | {fm / decode:.0f} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="GGUF model (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384, 32768])
    parser.add_argument("--setting", nargs="+", default=None, metavar="G:W",
                        help="G:W per length (default: 4:1024 4:1024 8:1024, the README's cost table)")
    parser.add_argument("--n-ubatch", type=int, default=512, help="stock's ubatch (default: %(default)s)")
    parser.add_argument("--exact-n-ubatch", type=int, default=None,
                        help="exact mode's (default: LongLlama's, from selfextend_gguf.ubatch)")
    parser.add_argument("--decode", type=int, default=32)
    args = parser.parse_args(argv)

    settings_text = args.setting or ["4:1024", "4:1024", "8:1024"][:len(args.lengths)]
    if len(settings_text) != len(args.lengths):
        parser.error(f"give one G:W per length ({len(args.lengths)} lengths, {len(settings_text)} settings)")
    try:
        settings = [tuple(int(x) for x in t.split(":")) for t in settings_text]
        if any(len(t) != 2 or t[0] < 1 or t[1] < 1 for t in settings):
            raise ValueError
    except ValueError:
        parser.error(f"--setting takes G:W with integers G >= 1, W >= 1, e.g. 4:1024 (got {settings_text})")
    for n_ctx in args.lengths:
        if n_ctx - args.decode - 8 < 1:
            parser.error(f"n_ctx={n_ctx} leaves no room for a prompt before {args.decode} decoded tokens")

    model = args.model
    if model is None:
        from selfextend_gguf.models import default_model_path
        model = str(default_model_path())
    s = Shape.from_gguf(model)
    print(f"model: {model} ({s.n_layer} layers, {s.n_head}/{s.n_head_kv} heads, head dim {s.head_dim_k}, "
          f"{s.weight_macs / 1e6:.1f}M weight multiply-adds per token)")
    if args.exact_n_ubatch is None:
        from selfextend_gguf.ubatch import exact_ubatch
        exact_n_ubatch = [exact_ubatch(n_ctx, s.n_head) for n_ctx in args.lengths]
        lse_n_ubatch = [exact_ubatch(n_ctx, s.n_head, flash_attn=True, flash_lse=True) for n_ctx in args.lengths]
    else:
        exact_n_ubatch = lse_n_ubatch = [args.exact_n_ubatch] * len(args.lengths)
    print(table(s, args.lengths, settings, n_ubatch=args.n_ubatch, exact_n_ubatch=exact_n_ubatch, decode=args.decode,
                lse_n_ubatch=lse_n_ubatch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
