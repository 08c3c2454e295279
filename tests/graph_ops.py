"""Walk the ggml graph that llama.cpp computes, through the scheduler's eval callback.

`collect_ops()` decodes tokens on a fresh context whose ``cb_eval`` records, for every graph node
the CPU backend is about to compute, ``(op, type, src0 type, src1 type)`` with ggml's own names
(``ggml_op_desc``: the op name, or the unary/GLU name for UNARY/GLU nodes; ``ggml_type_name``).
The callback answers ``False`` when asked, so it sees every node without forcing a synchronisation
per node (ggml_backend_sched_compute_splits asks node after node until one is wanted).

`ggml_tensor` is read through a minimal ctypes mirror of the struct in the pinned
``ggml/include/ggml.h`` (GGML_MAX_DIMS 4, GGML_MAX_OP_PARAMS 64, GGML_MAX_SRC 10, GGML_MAX_NAME 64);
only the fields before ``src`` and ``src`` itself are read.
"""

from __future__ import annotations

import ctypes
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Set, Tuple

import numpy as np

OpKey = Tuple[str, str, Optional[str], Optional[str]]


class Node(NamedTuple):
    """One computed node: the index of its batch in ``batches``, its op (as in `OpKey`), its name,
    its shape (``ne``), the name of its first source, and the address of its data when the node owns
    it (``None`` for a view of another tensor)."""

    batch: int
    op: str
    name: str
    ne: Tuple[int, ...]
    src0: Optional[str]
    data: Optional[int] = None

GGML_MAX_DIMS = 4
GGML_MAX_OP_PARAMS = 64
GGML_MAX_SRC = 10
GGML_MAX_NAME = 64


class GgmlTensor(ctypes.Structure):
    """The head of ``struct ggml_tensor`` (pinned ggml.h), enough to read op, type and sources."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * GGML_MAX_DIMS),
        ("nb", ctypes.c_size_t * GGML_MAX_DIMS),
        ("op", ctypes.c_int),
        ("op_params", ctypes.c_int32 * (GGML_MAX_OP_PARAMS // 4)),
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * GGML_MAX_SRC),
        ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("name", ctypes.c_char * GGML_MAX_NAME),
        ("extra", ctypes.c_void_p),
        ("padding", ctypes.c_char * 8),
    ]


def ggml_library(lib_dir: str, stem: str) -> ctypes.CDLL:
    """The ggml library ``stem`` ("ggml-base", "ggml-cpu", ...) in ``lib_dir``, for this platform."""
    for name in (f"lib{stem}.so", f"lib{stem}.dylib", f"{stem}.dll"):
        p = Path(lib_dir) / name
        if p.exists():
            return ctypes.CDLL(str(p))
    raise FileNotFoundError(f"no lib{stem} in {lib_dir}")


class GgmlInitParams(ctypes.Structure):
    """``struct ggml_init_params`` (pinned ggml.h)."""

    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]


def ggml_cpu_api(lib_dir: str) -> Tuple[ctypes.CDLL, ctypes.CDLL]:
    """libggml-base and libggml-cpu in ``lib_dir``, with the calls that build and compute a single op
    on the CPU typed: tests of one ggml op against NumPy (test_ggml_fwht.py, test_ggml_argmax.py)."""
    base, cpu = _ggml_base(lib_dir), ggml_library(lib_dir, "ggml-cpu")
    vp = ctypes.c_void_p
    base.ggml_init.restype, base.ggml_init.argtypes = vp, [GgmlInitParams]
    base.ggml_free.argtypes = [vp]
    base.ggml_new_tensor_2d.restype = vp
    base.ggml_new_tensor_2d.argtypes = [vp, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    base.ggml_mul_mat.restype, base.ggml_mul_mat.argtypes = vp, [vp, vp, vp]
    base.ggml_mul_mat_set_hint.argtypes = [vp, ctypes.c_int]
    base.ggml_argmax.restype, base.ggml_argmax.argtypes = vp, [vp, vp]
    base.ggml_new_tensor_3d.restype = vp
    base.ggml_new_tensor_3d.argtypes = [vp, ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64]
    f = ctypes.c_float
    for name in ("ggml_flash_attn_ext", "ggml_flash_attn_ext_lse"):
        getattr(base, name).restype = vp
        getattr(base, name).argtypes = [vp, vp, vp, vp, vp, f, f, f]
    base.ggml_flash_attn_ext_add_sinks.argtypes = [vp, vp]
    base.ggml_new_graph.restype, base.ggml_new_graph.argtypes = vp, [vp]
    base.ggml_build_forward_expand.argtypes = [vp, vp]
    base.ggml_get_data.restype, base.ggml_get_data.argtypes = vp, [vp]
    cpu.ggml_graph_compute_with_ctx.restype = ctypes.c_int
    cpu.ggml_graph_compute_with_ctx.argtypes = [vp, vp, ctypes.c_int]
    return base, cpu


_GGML_TYPES = {np.dtype(np.float32): 0, np.dtype(np.float16): 1}  # GGML_TYPE_F32, GGML_TYPE_F16


def new_tensor_2d(base: ctypes.CDLL, ctx: int, values: np.ndarray) -> int:
    """A ggml tensor in ``ctx`` holding ``values`` (float32 or float16, ``[rows, n]``)."""
    rows, n = values.shape
    t = base.ggml_new_tensor_2d(ctx, _GGML_TYPES[values.dtype], n, rows)
    ctypes.memmove(base.ggml_get_data(t), np.ascontiguousarray(values).tobytes(), values.nbytes)
    return t


def new_tensor_3d(base: ctypes.CDLL, ctx: int, values: np.ndarray) -> int:
    """A ggml tensor in ``ctx`` holding ``values`` (float32 or float16, ``[ne2, ne1, ne0]``)."""
    ne2, ne1, ne0 = values.shape
    t = base.ggml_new_tensor_3d(ctx, _GGML_TYPES[values.dtype], ne0, ne1, ne2)
    ctypes.memmove(base.ggml_get_data(t), np.ascontiguousarray(values).tobytes(), values.nbytes)
    return t


def compute_op(api: Tuple[ctypes.CDLL, ctypes.CDLL], mem_size: int, build: Callable[[ctypes.CDLL, int], int],
               n_threads: int, dtype: type, shape: Tuple[int, ...]) -> np.ndarray:
    """One op on the CPU: ``build(base, ctx)`` creates it in a fresh ggml context of ``mem_size``
    bytes and returns its result tensor, which is computed with ``n_threads`` threads and returned
    as an array of ``dtype`` and ``shape`` (``api`` from `ggml_cpu_api`)."""
    base, cpu = api
    ctx = base.ggml_init(GgmlInitParams(mem_size, None, False))
    assert ctx, "ggml_init failed"
    try:
        out = build(base, ctx)
        graph = base.ggml_new_graph(ctx)
        base.ggml_build_forward_expand(graph, out)
        assert cpu.ggml_graph_compute_with_ctx(ctx, graph, n_threads) == 0
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        return np.frombuffer(ctypes.string_at(base.ggml_get_data(out), nbytes), dtype=dtype).reshape(shape).copy()
    finally:
        base.ggml_free(ctx)


@contextmanager
def loaded_model(lc, path: Path) -> Iterator[int]:
    """A llama_model pointer for ``path`` (freed on exit), with the backend initialised (by a
    vocabulary-only ``Llama``), for `collect_ops`."""
    llm = lc.Llama(model_path=str(path), n_ctx=64, vocab_only=True, verbose=False)
    model = lc.llama_model_load_from_file(str(path).encode(), lc.llama_model_default_params())
    try:
        assert model, f"llama_model_load_from_file failed for {path}"
        yield model
    finally:
        if model:
            lc.llama_model_free(model)
        llm.close()


@lru_cache(maxsize=None)
def _ggml_base(lib_dir: str) -> ctypes.CDLL:
    lib = ggml_library(lib_dir, "ggml-base")
    lib.ggml_op_desc.restype = ctypes.c_char_p
    lib.ggml_op_desc.argtypes = [ctypes.c_void_p]
    lib.ggml_type_name.restype = ctypes.c_char_p
    lib.ggml_type_name.argtypes = [ctypes.c_int]
    lib.ggml_backend_buffer_name.restype = ctypes.c_char_p
    lib.ggml_backend_buffer_name.argtypes = [ctypes.c_void_p]
    return lib


def collect_ops(
    lc,
    model,
    batches: Sequence[Sequence[int]],
    *,
    self_extend: Tuple[int, int, int],
    n_ctx: int = 256,
    n_ubatch: int = 64,
    type_k: int = 0,
    type_v: int = 0,
    flash_attn: bool = False,
    placement: Optional[Dict[OpKey, Set[str]]] = None,
    nodes: Optional[List[Node]] = None,
    **ctx_params,
) -> Set[OpKey]:
    """Decode ``batches`` (token lists, one llama_decode each, sequence 0, consecutive positions)
    on a new context of ``model`` (a llama_model pointer) with ``llama_set_self_extend(*self_extend)``
    and return the set of node keys ``(op, type, src0 type, src1 type)`` computed on the way.

    Extra ``ctx_params`` are set on ``llama_context_params`` (e.g. ``rope_scaling_type``).
    ``placement``, when given, receives for each key the names of the buffers its nodes were
    computed in (``ggml_backend_buffer_name``: "CPU", "CUDA0", ...), i.e. the backends that ran it.
    ``nodes``, when given, receives a `Node` for every node, in the order they are computed."""
    base = _ggml_base(str(Path(lc.llama_cpp._base_path)))
    seen: Set[OpKey] = set()
    current = [0]  # the index of the batch being decoded

    def tname(ptr: Optional[int]) -> Optional[str]:
        return base.ggml_type_name(GgmlTensor.from_address(ptr).type).decode() if ptr else None

    @lc.ggml_backend_sched_eval_callback
    def callback(t, ask, user_data):  # noqa: ARG001
        if ask:
            x = GgmlTensor.from_address(t)
            key = (base.ggml_op_desc(t).decode(), tname(t), tname(x.src[0]), tname(x.src[1]))
            seen.add(key)
            if placement is not None and x.buffer:
                placement.setdefault(key, set()).add(base.ggml_backend_buffer_name(x.buffer).decode())
            if nodes is not None:
                src0 = GgmlTensor.from_address(x.src[0]).name.decode() if x.src[0] else None
                data = None if x.view_src else x.data
                nodes.append(Node(current[0], key[0], x.name.decode(), tuple(x.ne), src0, data))
        return False

    p = lc.llama_context_default_params()
    p.n_ctx = n_ctx
    p.n_batch = max(n_ubatch, max(len(b) for b in batches))
    p.n_ubatch = n_ubatch
    p.n_seq_max = 1
    p.type_k = type_k
    p.type_v = type_v
    p.flash_attn_type = 1 if flash_attn else 0
    p.n_threads = 1
    p.n_threads_batch = 1
    p.cb_eval = callback
    for k, v in ctx_params.items():
        setattr(p, k, v)
    ctx = lc.llama_init_from_model(model, p)
    if not ctx:
        raise RuntimeError("llama_init_from_model failed")
    lib = lc.llama_cpp._lib
    lib.llama_set_self_extend.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int32, ctypes.c_int32]
    lib.llama_set_self_extend.restype = ctypes.c_int32
    batch = lc.llama_batch_init(max(len(b) for b in batches), 0, 1)
    try:
        rc = lib.llama_set_self_extend(ctx, *self_extend)
        if rc != 0:
            raise RuntimeError(f"llama_set_self_extend{self_extend} returned {rc}")
        pos = 0
        for current[0], part in enumerate(batches):
            batch.n_tokens = len(part)
            for i, t in enumerate(part):
                batch.token[i] = int(t)
                batch.pos[i] = pos
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = 1
                pos += 1
            rc = lc.llama_decode(ctx, batch)
            if rc != 0:
                raise RuntimeError(f"llama_decode returned {rc}")
    finally:
        lc.llama_batch_free(batch)
        lc.llama_free(ctx)
    return seen


def format_key(key: OpKey) -> str:
    op, t, s0, s1 = key
    return f"{op}: {s0 or '-'}, {s1 or '-'} -> {t}"


def format_keys(keys: Iterable[OpKey]) -> str:
    return "\n".join("  " + format_key(k) for k in sorted(keys, key=lambda k: tuple(x or "" for x in k)))
