"""ggml-cpu's Walsh-Hadamard transform (patches/0012) against NumPy's matrix product.

A quantized KV cache with a head size that is a power of two holds K (and V) in a Hadamard basis:
llama.cpp multiplies by the normalized Walsh-Hadamard matrix with ``ggml_mul_mat`` and the hint
``GGML_HINT_SRC0_IS_HADAMARD``, which the CPU backend computes as a fast transform (it does not
read the matrix). patches/0012 computes the transform's first passes as products with a small
Hadamard matrix in vector registers. These tests build that one op through ggml's C API (ctypes)
and compare it with ``x @ H / sqrt(n)`` in float64, for every size from below one vector to
several, F32 and F16 inputs, and rows split over threads.
"""

from __future__ import annotations

import numpy as np
import pytest

from graph_ops import compute_op, new_tensor_2d

GGML_HINT_SRC0_IS_HADAMARD = 1


def hadamard(n: int) -> np.ndarray:
    """The normalized n x n Walsh-Hadamard matrix (Sylvester's construction), float64."""
    h = np.ones((1, 1))
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h / np.sqrt(n)


def fwht(ggml_cpu, x: np.ndarray, n_threads: int) -> np.ndarray:
    """ggml_mul_mat(H, x) with the Hadamard hint, computed by the CPU backend: x is [rows, n]."""
    rows, n = x.shape

    def build(base, ctx: int) -> int:
        # the CPU's transform does not read H; a backend that multiplies does
        h = new_tensor_2d(base, ctx, hadamard(n).astype(np.float32))
        out = base.ggml_mul_mat(ctx, h, new_tensor_2d(base, ctx, x))
        base.ggml_mul_mat_set_hint(out, GGML_HINT_SRC0_IS_HADAMARD)
        return out

    mem = 4 * n * n + x.nbytes + 4 * x.size + (1 << 20)
    return compute_op(ggml_cpu, mem, build, n_threads, np.float32, (rows, n))


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["f32", "f16"])
@pytest.mark.parametrize("n", [2, 4, 8, 16, 32, 64, 128, 256, 512])
def test_fwht_equals_the_hadamard_product(ggml_cpu, n, dtype):
    """Sizes below, at and above every CPU's vector width (4, 8 or 16 floats), so that the scalar
    passes, the vector block passes and the vector butterflies all run, alone and together."""
    rng = np.random.default_rng(n)
    x = (rng.standard_normal((37, n)) * rng.uniform(0.01, 100.0, (37, 1))).astype(dtype)
    got = fwht(ggml_cpu, x, n_threads=2)
    want = x.astype(np.float64) @ hadamard(n)
    # float32 rounding of log2(n) passes: far below any wrong sign or lane (an error of order |x|)
    err = np.abs(got - want).max(axis=1) / np.abs(want).max(axis=1)
    assert err.max() < 1e-6, f"n={n}: relative error {err.max():.3g} in row {err.argmax()}"


def test_fwht_rows_are_independent_of_the_thread_split(ggml_cpu):
    """Every row is transformed alone: one thread and three give bit-identical rows."""
    x = np.random.default_rng(7).standard_normal((101, 64)).astype(np.float32)
    one = fwht(ggml_cpu, x, n_threads=1)
    assert np.array_equal(one, fwht(ggml_cpu, x, n_threads=3))
    assert np.array_equal(one[50:51], fwht(ggml_cpu, x[50:51], n_threads=1))


def test_fwht_is_its_own_inverse(ggml_cpu):
    """The normalized transform is orthogonal and symmetric: applied twice it gives x back."""
    x = np.random.default_rng(3).standard_normal((16, 128)).astype(np.float32)
    back = fwht(ggml_cpu, fwht(ggml_cpu, x, n_threads=2), n_threads=2)
    assert np.abs(back - x).max() < 1e-5 * np.abs(x).max()
