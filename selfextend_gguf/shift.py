"""Shift mode: grouped-position KV shifting, the client-side approximation of SelfExtend.

This is what llama.cpp's ``--grp-attn-n/--grp-attn-w`` tools do: the cache is
filled in blocks of ``W`` tokens, and each full block's positions are divided by
``G`` (``llama_memory_seq_div``), so that keys far back sit at ``j // G`` while
the newest block keeps exact positions. We compress *eagerly*, as soon as a
block is full, and never let a decode batch cross a block boundary, so the
positions every token sees depend only on its index, not on ``n_batch``.

With ``n`` tokens cached, ``c = n // W`` blocks are compressed and token ``t``
sits at ``t // G`` if ``t < c * W`` else ``t - c * W * (G - 1) / G``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ShiftSchedule:
    """Positions of cached tokens under grouped-position KV shifting."""

    group_size: int
    window: int

    def __post_init__(self) -> None:
        if self.group_size < 1 or self.window < 1 or self.window % self.group_size:
            raise ValueError(f"invalid shift schedule G={self.group_size}, W={self.window}")

    def blocks(self, n_cached: int) -> int:
        """How many blocks of ``W`` are compressed when ``n_cached`` tokens are in the cache."""
        return n_cached // self.window

    def position(self, token: int, n_cached: int) -> int:
        """The cache position of token index ``token`` when ``n_cached`` tokens are cached.

        ``token == n_cached`` gives the position at which the next token is decoded.
        """
        start = self.blocks(n_cached) * self.window
        if token < start:
            return token // self.group_size
        return start // self.group_size + token - start

    def chunk_end(self, start: int, stop: int, n_batch: int) -> int:
        """End of the next decode batch from ``start``: at most ``n_batch``, never past a block end."""
        block_end = (start // self.window + 1) * self.window
        return min(stop, start + n_batch, block_end)

    def truncation(self, keep: int, n_cached: int) -> int:
        """How many tokens can stay when the cache holding ``n_cached`` must shrink to ``keep``.

        A compressed block cannot be un-divided, so if ``keep`` falls inside a
        block that is compressed now but would not be with ``keep`` tokens, the
        cache keeps only the blocks before it and that part is evaluated again.
        """
        keep = min(keep, n_cached)
        if self.blocks(keep) == self.blocks(n_cached):
            return keep
        return self.blocks(keep) * self.window
