"""A tqdm progress bar for long prompt ingestion, usable as ``LongLlama(progress_callback=...)``."""

from __future__ import annotations

import sys
from typing import IO, Optional


class PromptProgressBar:
    """A ``progress_callback`` that draws a tqdm bar while a long prompt is evaluated.

    A bar appears only when, after the first batch, at least ``min_tokens`` tokens are
    still to go (short prompts and reused prefixes stay quiet). It closes when the
    prompt is done; the next long prompt gets a new one. Never cancels.
    """

    def __init__(self, min_tokens: int = 1024, *, desc: str = "prompt", file: Optional[IO[str]] = None):
        self.min_tokens = min_tokens
        self.desc = desc
        self.file = file
        self._bar = None
        self._last = (0, 0)

    def __call__(self, n_done: int, n_total: int) -> None:
        from tqdm import tqdm

        if self._bar is not None and (n_total != self._last[1] or n_done <= self._last[0]):
            self.close()  # a new evaluation began
        self._last = (n_done, n_total)
        if self._bar is None:
            if n_total - n_done < self.min_tokens:
                return
            self._bar = tqdm(total=n_total, initial=n_done, desc=self.desc, unit="tok", leave=False,
                             file=self.file or sys.stderr, dynamic_ncols=True)
        else:
            self._bar.update(n_done - self._bar.n)
        if n_done >= n_total:
            self.close()

    def close(self) -> None:
        """Remove the bar (if one is shown)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
