"""Exact mode's default physical batch (``n_ubatch``): fast on the CPU and small in memory.

With flash attention off, exact mode evaluates a prompt ubatch of ``n`` queries unfused, so
every layer holds an F32 score matrix of ``n_ctx x n x n_head``: 288 MiB at 16k tokens for
SmolLM2 with llama.cpp's ``n_ubatch = 512``, which stock flash attention never allocates. With
flash attention on (``patches/0008``) an F16 mask of the same shape, half that size, takes its
place. Either way each query scores its window unfused, ``W + n`` columns, so a large ubatch
costs time as well. Measured on 2 CPU cores
(SmolLM2, 4096 tokens, W = 1024; docs/exact-storage.md), exact mode's prompt ran at
54-57 tok/s with ``n_ubatch`` 512, 61-67 with 256, 65-70 with 128 and 68-70 with 64.

:func:`exact_ubatch` takes 128 and halves it while the score matrix would exceed
:data:`SCORE_BUFFER_BYTES`, down to :data:`MIN_UBATCH`.
"""

from __future__ import annotations

#: exact mode's ubatch when the score matrix allows it (the measured CPU optimum, see above)
EXACT_UBATCH = 128
#: the largest F32 score matrix (one layer's, ``n_ctx x n_ubatch x n_head``) the default allows
SCORE_BUFFER_BYTES = 128 << 20
#: below this, a ubatch is too small for the weights' matrix products to run at speed
MIN_UBATCH = 32


def score_buffer_bytes(n_ctx: int, n_ubatch: int, n_head: int) -> int:
    """Bytes of one layer's F32 score matrix for a prompt ubatch in exact mode."""
    return 4 * n_ctx * n_ubatch * n_head


def exact_ubatch(n_ctx: int, n_head: int, n_batch: int = 512) -> int:
    """The ``n_ubatch`` exact mode uses when the caller does not set one.

    Args:
        n_ctx: The context size.
        n_head: The model's query heads (0 when unknown: the score bound is then not applied).
        n_batch: The logical batch; a ubatch is never larger (llama.cpp's rule).

    Returns:
        :data:`EXACT_UBATCH`, halved while the score matrix would exceed :data:`SCORE_BUFFER_BYTES`,
        never below :data:`MIN_UBATCH` nor above ``n_batch``.
    """
    n_ubatch = EXACT_UBATCH
    while n_head > 0 and n_ubatch > MIN_UBATCH and score_buffer_bytes(n_ctx, n_ubatch, n_head) > SCORE_BUFFER_BYTES:
        n_ubatch //= 2
    return max(1, min(n_ubatch, n_batch))
