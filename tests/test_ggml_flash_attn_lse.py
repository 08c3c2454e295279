"""ggml_flash_attn_ext_lse() (patches/0016) on the CPU against a float64 NumPy attention.

Exact mode's prompt with flash attention attends its window and the grouped cache in two flash
attentions, and merges them by their log-sum-exp: the variant returns, after each row's output,
``log(sum(exp(s_j)) + exp(sink))`` over the row's scaled, masked scores ``s_j``. These tests build
the op through ggml's C API (ctypes) with shapes that take each of the CPU's three paths (whole
query tiles, a chunk of rows, and a single query split over the keys), and check the output and the
log-sum-exp against NumPy, rows with no key (-inf, and an output of 0), the sinks, and that the
output equals ``ggml_flash_attn_ext()``'s bit for bit.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import pytest

from graph_ops import compute_op, new_tensor_2d, new_tensor_3d

SCALE = 0.125


def reference(q, k, v, mask, sinks):
    """Output [n, n_head, dv] and log-sum-exp [n, n_head] in float64, from the op's inputs
    (q [n_head, n, dk], k and v [n_head_kv, n_kv, d], mask [n, n_kv], sinks [n_head] or None)."""
    n_head, n_head_kv = q.shape[0], k.shape[0]
    g = n_head // n_head_kv
    k64 = np.repeat(k.astype(np.float64), g, axis=0)
    v64 = np.repeat(v.astype(np.float64), g, axis=0)
    s = SCALE * np.einsum("hnd,hkd->hnk", q.astype(np.float64), k64) + mask.astype(np.float64)[None]
    cols = [s] if sinks is None else [s, np.broadcast_to(sinks.astype(np.float64)[:, None, None], s.shape[:2] + (1,))]
    a = np.concatenate(cols, axis=2)
    m = a.max(axis=2, keepdims=True)
    with np.errstate(invalid="ignore"):
        e = np.where(np.isfinite(m), np.exp(a - m), 0.0)
    den = e.sum(axis=2)
    with np.errstate(divide="ignore", invalid="ignore"):
        lse = np.where(den > 0, m[..., 0] + np.log(den), -np.inf)
        o = np.einsum("hnk,hkd->hnd", e[..., : s.shape[2]], v64) / np.where(den > 0, den, 1.0)[..., None]
    return o.transpose(1, 0, 2), lse.T


def flash_attn(ggml_cpu, q, k, v, mask, sinks: Optional[np.ndarray], lse: bool, n_threads: int = 2) -> np.ndarray:
    """The op on the CPU: [n, n_head, dv + 1] with ``lse``, else [n, n_head, dv]."""
    n_head, n, _ = q.shape
    dv = v.shape[2]

    def build(base, ctx: int) -> int:
        args = (new_tensor_3d(base, ctx, q), new_tensor_3d(base, ctx, k), new_tensor_3d(base, ctx, v),
                new_tensor_2d(base, ctx, mask.astype(np.float16)), SCALE, 0.0, 0.0)
        out = (base.ggml_flash_attn_ext_lse if lse else base.ggml_flash_attn_ext)(ctx, *args)
        if sinks is not None:
            base.ggml_flash_attn_ext_add_sinks(out, new_tensor_2d(base, ctx, sinks[None, :]))
        return out

    mem = 8 * (q.nbytes + k.nbytes + v.nbytes + mask.nbytes) + (1 << 20)
    return compute_op(ggml_cpu, mem, build, n_threads, np.float32, (n, n_head, dv + (1 if lse else 0)))


def inputs(seed: int, n: int, n_kv: int, kv_type, n_head: int = 4, n_head_kv: int = 2, d: int = 64):
    rng = np.random.default_rng(seed)
    q = (rng.standard_normal((n_head, n, d)) * 2).astype(np.float32)
    k = (rng.standard_normal((n_head_kv, n_kv, d)) * 2).astype(kv_type)
    v = rng.standard_normal((n_head_kv, n_kv, d)).astype(kv_type)
    # causal over the last n keys, and a band of masked keys that whole KV tiles fall into
    mask = np.zeros((n, n_kv), dtype=np.float32)
    for i in range(n):
        mask[i, n_kv - n + i + 1:] = -np.inf
    mask[:, n_kv // 4: n_kv // 4 + 2 * 64] = -np.inf
    return q, k, v, mask


def check(got, q, k, v, mask, sinks):
    o_ref, lse_ref = reference(q, k, v, mask, sinks)
    dv = v.shape[2]
    o, lse = got[..., :dv], got[..., dv]
    finite = np.isfinite(lse_ref)
    assert np.array_equal(np.isfinite(lse), finite), "rows with no key must have a log-sum-exp of -inf"
    assert np.all(lse[~finite] == -np.inf)
    assert np.abs(lse[finite] - lse_ref[finite]).max() < 2e-3 * max(1.0, np.abs(lse_ref[finite]).max())
    # the F16 keys and values are read as F16, the scores in F32
    assert np.abs(o - o_ref).max() < 2e-3 * np.abs(v).max()
    assert np.all(o[~finite] == 0.0)


# n >= 64 (the CPU's query tile) takes the tiled path, fewer rows the chunked one, and a single
# query over at least 512 keys the path that splits the keys over the threads
@pytest.mark.parametrize("n, n_kv", [(96, 640), (5, 300), (1, 700)], ids=["tiled", "chunked", "split-keys"])
@pytest.mark.parametrize("kv_type", [np.float16, np.float32], ids=["f16", "f32"])
@pytest.mark.parametrize("with_sinks", [False, True], ids=["no-sinks", "sinks"])
def test_log_sum_exp_equals_numpy(ggml_cpu, n, n_kv, kv_type, with_sinks):
    q, k, v, mask = inputs(n * 7 + n_kv, n, n_kv, kv_type)
    sinks = np.linspace(-2.0, 3.0, q.shape[0]).astype(np.float32) if with_sinks else None
    got = flash_attn(ggml_cpu, q, k, v, mask, sinks, lse=True)
    check(got, q, k, v, mask, sinks)
    # the output part is that of the op without the log-sum-exp, bit for bit
    plain = flash_attn(ggml_cpu, q, k, v, mask, sinks, lse=False)
    assert np.array_equal(got[..., : v.shape[2]], plain)


@pytest.mark.parametrize("n, n_kv", [(96, 640), (5, 300)], ids=["tiled", "chunked"])
def test_rows_with_no_key(ggml_cpu, n, n_kv):
    """Fully masked rows (a query that sees none of the keys given to this attention) have a
    log-sum-exp of -inf and an output of 0, so that a merge gives them no weight; with sinks they
    have the sink's log-sum-exp."""
    q, k, v, mask = inputs(3, n, n_kv, np.float16)
    mask[::3] = -np.inf
    check(flash_attn(ggml_cpu, q, k, v, mask, None, lse=True), q, k, v, mask, None)
    sinks = np.full(q.shape[0], 1.5, dtype=np.float32)
    got = flash_attn(ggml_cpu, q, k, v, mask, sinks, lse=True)
    check(got, q, k, v, mask, sinks)
    assert np.allclose(got[::3, :, -1], 1.5)


def test_merging_two_halves_equals_the_whole(ggml_cpu):
    """What the log-sum-exp is for: attentions over two disjoint sets of keys, weighted by
    exp(lse) each, equal the attention over all the keys."""
    q, k, v, mask = inputs(11, 80, 512, np.float16)
    whole = flash_attn(ggml_cpu, q, k, v, mask, None, lse=True)
    parts = []
    for lo, hi in ((0, 200), (200, 512)):
        parts.append(flash_attn(ggml_cpu, q, k[:, lo:hi], v[:, lo:hi], np.ascontiguousarray(mask[:, lo:hi]), None, lse=True))
    dv = v.shape[2]
    lse = np.logaddexp(parts[0][..., dv], parts[1][..., dv])
    with np.errstate(invalid="ignore"):
        o = sum(np.nan_to_num(np.exp(p[..., dv] - lse))[..., None] * p[..., :dv] for p in parts)
    assert np.abs(lse - whole[..., dv]).max() < 1e-4 * np.abs(whole[..., dv]).max()
    assert np.abs(o - whole[..., :dv]).max() < 1e-4
