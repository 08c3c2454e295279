"""ggml-cpu's ARGMAX over rows split between threads (patches/0014) against NumPy.

Exact mode takes the log-sum-exp of its window from the window's most probable key, an ARGMAX of
``W + n`` probabilities per query and head in every layer of a prompt ubatch (patches/0008 and
0010). The CPU backend ran it on one thread while the others waited; patches/0014 gives each
thread a contiguous range of rows. These tests build that one op through ggml's C API (ctypes)
and compare it with NumPy for row counts below, at and above the thread count, and check that a
row's answer, ties included, does not depend on how many threads share the rows.
"""

from __future__ import annotations

import numpy as np
import pytest

from graph_ops import compute_op, new_tensor_2d


def argmax(ggml_cpu, x: np.ndarray, n_threads: int) -> np.ndarray:
    """ggml_argmax(x) computed by the CPU backend: x is float32 [rows, n], the result int32 [rows]."""
    x = x.astype(np.float32)

    def build(base, ctx: int) -> int:
        return base.ggml_argmax(ctx, new_tensor_2d(base, ctx, x))

    return compute_op(ggml_cpu, 2 * x.nbytes + (1 << 20), build, n_threads, np.int32, (x.shape[0],))


@pytest.mark.parametrize("n_threads", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("rows", [1, 2, 7, 64, 1153])
def test_argmax_of_every_row(ggml_cpu, rows, n_threads):
    """Each row's index of its largest value (distinct values: one answer), whatever the split:
    fewer rows than threads, a count the threads do not divide, and many rows."""
    rng = np.random.default_rng(rows * 10 + n_threads)
    x = rng.standard_normal((rows, 300)).astype(np.float32)
    # the largest value at a random column of each row, and at the last one of row 0
    x[np.arange(rows), rng.integers(0, 300, rows)] += 10.0
    x[0, -1] += 20.0
    got = argmax(ggml_cpu, x, n_threads)
    assert got.shape == (rows,)
    bad = np.flatnonzero(got != x.argmax(axis=1))
    assert bad.size == 0, f"{bad.size} of {rows} rows wrong with {n_threads} threads, first: row {bad[0]}"


def test_argmax_ties_do_not_depend_on_the_threads(ggml_cpu):
    """A row whose largest value occurs more than once gets the same index from 1 thread and from 3
    (ggml's loop keeps the last of them)."""
    x = np.zeros((11, 40), dtype=np.float32)
    x[:, 5] = x[:, 30] = 1.0
    one = argmax(ggml_cpu, x, n_threads=1)
    assert np.array_equal(one, np.full(11, 30))
    assert np.array_equal(one, argmax(ggml_cpu, x, n_threads=3))
