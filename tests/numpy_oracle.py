"""Independent NumPy (float64) forward pass of the tiny GGUF models, with arbitrary positions.

`forward(model, tokens, q_pos, k_pos)` evaluates a causal decoder where the attention logit
between query i and key j (j <= i) is

    < R(q_pos[i, j]) q_i , R(k_pos[i, j]) k_j > / sqrt(head_dim)

with one softmax per row over j <= i and values unchanged. R is the model's own RoPE (NORM =
adjacent pairs, NEOX = split halves, partial rotary n_rot <= head_dim, freq_base, linear
freq_scale, llama3-style per-pair frequency factors). Because K/V of token j are computed from
row j's hidden state and row i only decides how they are rotated, this is exactly what a KV cache
computes when a row's positions are those the cache holds when that row is evaluated.

Position schedules (each returns ``(q_pos, k_pos)``, int64 arrays [n, n]; entries above the
diagonal are never used):

- `positions_stock(n)`: q_pos[i, j] = i, k_pos[i, j] = j.
- `positions_exact(n, G, W)`: SelfExtend (SPEC section 1).
- `positions_shift(n, G, W)`: llama.cpp's grouped KV shifting (--grp-attn-n/-w), token by token.
- `simulate_shift_positions(n, G, W)`: the same, obtained by literally running the ga_n/ga_w loop
  of tools/completion/completion.cpp on a list of cell positions (a cross-check of the formula).

Supported architectures: llama (rope NORM), qwen2 (NEOX, q/k/v biases), phi3 (NEOX, fused
gate/up FFN, partial rotary). Only the tensors `tests/tiny_models.py` writes are handled, but any
F32/F16/quantized type that `gguf.quants.dequantize` knows is accepted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import gguf

__all__ = [
    "OracleModel",
    "load_model",
    "forward",
    "apply_rope",
    "rope_thetas",
    "positions_stock",
    "positions_exact",
    "positions_shift",
    "simulate_shift_positions",
    "rel_max_err",
]

ROPE_NORM = "norm"
ROPE_NEOX = "neox"
_ROPE_TYPE = {"llama": ROPE_NORM, "qwen2": ROPE_NEOX, "phi3": ROPE_NEOX}


@dataclass
class OracleModel:
    path: Path
    arch: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_rot: int
    rope_type: str  # "norm" or "neox"
    n_ctx_train: int
    freq_base: float
    freq_scale: float
    eps: float
    n_vocab: int
    n_ff: int
    bos_id: int | None
    eos_id: int | None
    rope_freq_factors: np.ndarray | None  # [n_rot/2] or None
    tensors: dict[str, np.ndarray] = field(repr=False, default_factory=dict)

    def t(self, name: str) -> np.ndarray | None:
        return self.tensors.get(name)


def _field(reader: gguf.GGUFReader, key: str, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def load_model(path: str | Path) -> OracleModel:
    """Read hparams and all tensors (as float64, numpy layout [ne1, ne0] = [out, in])."""
    path = Path(path)
    reader = gguf.GGUFReader(str(path))
    arch = _field(reader, "general.architecture")
    if arch not in _ROPE_TYPE:
        raise ValueError(f"numpy oracle: unsupported architecture {arch!r}")

    tensors: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        ne = [int(x) for x in t.shape]
        a = gguf.quants.dequantize(np.asarray(t.data), gguf.GGMLQuantizationType(t.tensor_type))
        tensors[t.name] = np.asarray(a, dtype=np.float64).reshape(tuple(reversed(ne)))

    n_embd = int(_field(reader, f"{arch}.embedding_length"))
    n_head = int(_field(reader, f"{arch}.attention.head_count"))
    n_head_kv = int(_field(reader, f"{arch}.attention.head_count_kv", n_head))
    head_dim = int(_field(reader, f"{arch}.attention.key_length", n_embd // n_head))
    n_rot = int(_field(reader, f"{arch}.rope.dimension_count", head_dim))
    scaling_type = _field(reader, f"{arch}.rope.scaling.type", "linear")
    factor = _field(reader, f"{arch}.rope.scaling.factor")
    if factor is None:
        factor = _field(reader, f"{arch}.rope.scale_linear", 0.0)
    if scaling_type not in ("linear", "none", "yarn"):
        raise ValueError(f"numpy oracle: rope scaling {scaling_type!r} not supported")
    freq_scale = 1.0 if not factor else 1.0 / float(factor)
    n_vocab = tensors["token_embd.weight"].shape[0]
    ff = tensors.get("rope_freqs.weight")
    n_ff = tensors["blk.0.ffn_down.weight"].shape[1]

    model = OracleModel(
        path=path,
        arch=arch,
        n_layer=int(_field(reader, f"{arch}.block_count")),
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim=head_dim,
        n_rot=n_rot,
        rope_type=_ROPE_TYPE[arch],
        n_ctx_train=int(_field(reader, f"{arch}.context_length")),
        freq_base=float(_field(reader, f"{arch}.rope.freq_base", 10000.0)),
        freq_scale=freq_scale,
        eps=float(_field(reader, f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
        n_vocab=n_vocab,
        n_ff=n_ff,
        bos_id=_field(reader, "tokenizer.ggml.bos_token_id"),
        eos_id=_field(reader, "tokenizer.ggml.eos_token_id"),
        rope_freq_factors=None if ff is None else ff.reshape(-1),
        tensors=tensors,
    )
    if scaling_type == "yarn" and factor:
        orig = _field(reader, f"{arch}.rope.scaling.original_context_length", model.n_ctx_train)
        fold_yarn(model, float(factor), int(orig))
    return model


def fold_yarn(m: OracleModel, factor: float, n_ctx_orig: int, beta_fast: float = 32.0,
              beta_slow: float = 1.0) -> OracleModel:
    """Fold llama.cpp's YaRN (ggml rope_yarn with ext_factor 1) into ``m``, in place: the per-pair
    angle that mixes interpolation and extrapolation becomes frequency factors, and the magnitude
    1 + 0.1 ln(factor) that each roped q and k get becomes a scale of the query projection."""
    import math

    if m.rope_freq_factors is not None:
        raise ValueError("numpy oracle: YaRN with rope frequency factors is not supported")
    fs = 1.0 / factor
    n = m.n_rot

    def corr_dim(n_rot: float) -> float:
        return n * math.log(n_ctx_orig / (n_rot * 2 * math.pi)) / (2 * math.log(m.freq_base))

    lo = max(0.0, math.floor(corr_dim(beta_fast)))
    hi = min(n - 1.0, math.ceil(corr_dim(beta_slow)))
    k = np.arange(n // 2, dtype=np.float64)
    ramp = 1.0 - np.clip((k - lo) / max(0.001, hi - lo), 0.0, 1.0)
    mix = fs * (1.0 - ramp) + ramp  # theta = theta_extrapolated * mix
    m.freq_scale = 1.0
    m.rope_freq_factors = 1.0 / mix
    mscale = 1.0 + 0.1 * math.log(factor)
    for il in range(m.n_layer):
        for name in (f"blk.{il}.attn_q.weight", f"blk.{il}.attn_q.bias"):
            if name in m.tensors:
                m.tensors[name] = m.tensors[name] * mscale**2
    return m


# ---------------------------------------------------------------------------------------------
# RoPE

def rope_thetas(model: OracleModel, freq_base: float | None = None,
                freq_scale: float | None = None) -> np.ndarray:
    """Angle per unit position of each rotated pair k = 0 .. n_rot/2 - 1."""
    base = model.freq_base if freq_base is None else freq_base
    scale = model.freq_scale if freq_scale is None else freq_scale
    k = np.arange(model.n_rot // 2, dtype=np.float64)
    theta = scale * base ** (-2.0 * k / model.n_rot)
    if model.rope_freq_factors is not None:
        theta = theta / model.rope_freq_factors[: model.n_rot // 2]
    return theta


def _pair_index(model: OracleModel) -> tuple[np.ndarray, np.ndarray]:
    """Indices (within a head) of the two components of each rotated pair."""
    h = model.n_rot // 2
    k = np.arange(h)
    if model.rope_type == ROPE_NORM:
        return 2 * k, 2 * k + 1
    return k, k + h


def apply_rope(model: OracleModel, x: np.ndarray, pos: np.ndarray, *,
               freq_base: float | None = None, freq_scale: float | None = None) -> np.ndarray:
    """Rotate x [..., head_dim] by absolute positions pos (broadcast against x[..., 0])."""
    theta = rope_thetas(model, freq_base, freq_scale)
    pos = np.asarray(pos, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    shape = np.broadcast_shapes(x.shape[:-1], pos.shape) + x.shape[-1:]
    ang = pos[..., None] * theta
    c, s = np.cos(ang), np.sin(ang)
    i0, i1 = _pair_index(model)
    out = np.array(np.broadcast_to(x, shape), dtype=np.float64, copy=True)
    x = out.copy()
    x0, x1 = x[..., i0], x[..., i1]
    out[..., i0] = x0 * c - x1 * s
    out[..., i1] = x0 * s + x1 * c
    return out


# ---------------------------------------------------------------------------------------------
# forward pass

def _rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def _silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def _linear(model: OracleModel, x: np.ndarray, name: str) -> np.ndarray:
    y = x @ model.tensors[name + ".weight"].T
    b = model.tensors.get(name + ".bias")
    return y if b is None else y + b


def _attention_scores(model: OracleModel, q: np.ndarray, k: np.ndarray, dpos: np.ndarray,
                      theta: np.ndarray) -> np.ndarray:
    """Scores [nq, nk] for one head: <R(qp) q_i, R(kp) k_j> with dpos = kp - qp [nq, nk].

    Uses <R(a) x, R(b) y> = sum over pairs of (x0 y0 + x1 y1) cos((b-a) t) + (x1 y0 - x0 y1) sin((b-a) t),
    which is exact (it is how a rotation acts on a pair); the unrotated dims add a plain dot.
    """
    i0, i1 = _pair_index(model)
    rot = np.zeros(model.head_dim, dtype=bool)
    rot[i0] = True
    rot[i1] = True
    plain = q[:, ~rot] @ k[:, ~rot].T
    a = q[:, None, i0] * k[None, :, i0] + q[:, None, i1] * k[None, :, i1]  # [nq, nk, P]
    b = q[:, None, i1] * k[None, :, i0] - q[:, None, i0] * k[None, :, i1]
    ang = dpos[..., None].astype(np.float64) * theta
    return plain + np.sum(a * np.cos(ang) + b * np.sin(ang), axis=-1)


def forward(model: OracleModel | str | Path, tokens, q_pos=None, k_pos=None, *,
            freq_base: float | None = None, freq_scale: float | None = None,
            block: int = 64) -> np.ndarray:
    """Logits [n_tokens, n_vocab] (float64) for `tokens` with per-(query, key) positions.

    q_pos, k_pos: int arrays [n, n] (default: positions_stock). Row i uses q_pos[i, j] and
    k_pos[i, j] for j <= i. freq_base/freq_scale override the model's (like llama.cpp's
    rope_freq_base / rope_freq_scale context parameters).
    """
    if not isinstance(model, OracleModel):
        model = load_model(model)
    tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
    n = len(tokens)
    if q_pos is None or k_pos is None:
        sq, sk = positions_stock(n)
        q_pos = sq if q_pos is None else q_pos
        k_pos = sk if k_pos is None else k_pos
    q_pos = np.asarray(q_pos, dtype=np.int64)
    k_pos = np.asarray(k_pos, dtype=np.int64)
    if q_pos.shape != (n, n) or k_pos.shape != (n, n):
        raise ValueError(f"q_pos and k_pos must have shape ({n}, {n})")
    if tokens.min() < 0 or tokens.max() >= model.n_vocab:
        raise ValueError("token id out of range")

    theta = rope_thetas(model, freq_base, freq_scale)
    dpos = k_pos - q_pos
    causal = np.tril(np.ones((n, n), dtype=bool))
    hd = model.head_dim
    n_gqa = model.n_head // model.n_head_kv
    scale = 1.0 / np.sqrt(hd)

    x = model.tensors["token_embd.weight"][tokens]
    for il in range(model.n_layer):
        p = f"blk.{il}."
        h = _rms_norm(x, model.tensors[p + "attn_norm.weight"], model.eps)
        q = _linear(model, h, p + "attn_q").reshape(n, model.n_head, hd)
        k = _linear(model, h, p + "attn_k").reshape(n, model.n_head_kv, hd)
        v = _linear(model, h, p + "attn_v").reshape(n, model.n_head_kv, hd)
        att = np.zeros((n, model.n_head, hd))
        for hh in range(model.n_head):
            kh = hh // n_gqa  # ggml_mul_mat broadcast: q head hh uses kv head hh / n_gqa
            for r0 in range(0, n, block):
                r1 = min(n, r0 + block)
                s = _attention_scores(model, q[r0:r1, hh], k[:r1, kh], dpos[r0:r1, :r1], theta)
                s = s * scale
                s = np.where(causal[r0:r1, :r1], s, -np.inf)
                s = s - s.max(axis=-1, keepdims=True)
                e = np.exp(s)
                att[r0:r1, hh] = (e / e.sum(axis=-1, keepdims=True)) @ v[:r1, kh]
        x = x + _linear(model, att.reshape(n, model.n_head * hd), p + "attn_output")

        h = _rms_norm(x, model.tensors[p + "ffn_norm.weight"], model.eps)
        if p + "ffn_gate.weight" in model.tensors:
            f = _silu(_linear(model, h, p + "ffn_gate")) * _linear(model, h, p + "ffn_up")
        else:  # phi3: fused [gate; up], silu(first half) * second half
            gu = _linear(model, h, p + "ffn_up")
            half = gu.shape[-1] // 2
            f = _silu(gu[:, :half]) * gu[:, half:]
        x = x + _linear(model, f, p + "ffn_down")

    h = _rms_norm(x, model.tensors["output_norm.weight"], model.eps)
    out_w = model.tensors.get("output.weight", model.tensors["token_embd.weight"])
    logits = h @ out_w.T
    if "output.bias" in model.tensors:
        logits = logits + model.tensors["output.bias"]
    return logits


# ---------------------------------------------------------------------------------------------
# position schedules

def positions_stock(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Ordinary causal positions: q_pos[i, j] = i, k_pos[i, j] = j."""
    i = np.arange(n, dtype=np.int64)
    return np.repeat(i[:, None], n, axis=1), np.repeat(i[None, :], n, axis=0)


def positions_exact(n: int, G: int, W: int) -> tuple[np.ndarray, np.ndarray]:
    """SelfExtend (SPEC section 1): (i, j) if i - j < W else (i // G + W - W // G, j // G)."""
    if G < 1 or W < 1:
        raise ValueError("G and W must be >= 1")
    i, j = positions_stock(n)
    near = (i - j) < W
    q_pos = np.where(near, i, i // G + W - W // G)
    k_pos = np.where(near, j, j // G)
    return q_pos, k_pos


def positions_shift(n: int, G: int, W: int) -> tuple[np.ndarray, np.ndarray]:
    """llama.cpp grouped KV shifting (--grp-attn-n G --grp-attn-w W), token by token, eager.

    c(t) = t // W blocks of W tokens are compressed when token t is evaluated; the position of
    token j then is j // G if j < c(t) * W, else j - c(t) * W * (G - 1) // G.
    Row t: q_pos[t, :] = position of t, k_pos[t, j] = position of j (both as seen at time t).
    """
    if G < 1 or W < 1:
        raise ValueError("G and W must be >= 1")
    if W % G:
        raise ValueError("W must be a multiple of G")
    t = np.arange(n, dtype=np.int64)[:, None]
    j = np.arange(n, dtype=np.int64)[None, :]
    c = t // W

    def pos(idx):
        return np.where(idx < c * W, idx // G, idx - c * W * (G - 1) // G)

    k_pos = pos(j) * np.ones((n, 1), dtype=np.int64)
    q_pos = pos(t) * np.ones((1, n), dtype=np.int64)
    return q_pos, k_pos


def simulate_shift_positions(n: int, G: int, W: int) -> tuple[np.ndarray, np.ndarray]:
    """Same schedule as `positions_shift`, by running completion.cpp's self-extend loop.

    Evaluates tokens one at a time; before each, while n_past >= ga_i + ga_w it does
    seq_add(ga_i, n_past, ib*bd); seq_div(ga_i + ib*bd, ga_i + ib*bd + ga_w, ga_n);
    seq_add(ga_i + ib*bd + ga_w, n_past + ib*bd, dd); n_past -= bd; ga_i += ga_w / ga_n,
    on a list of cell positions (p1 < 0 never occurs here).
    """
    if W % G:
        raise ValueError("W must be a multiple of G")
    cells: list[int] = []
    n_past = 0
    ga_i = 0
    q_pos = np.zeros((n, n), dtype=np.int64)
    k_pos = np.zeros((n, n), dtype=np.int64)

    def seq_add(p0, p1, d):
        for c, p in enumerate(cells):
            if p0 <= p < p1:
                cells[c] = p + d

    def seq_div(p0, p1, d):
        for c, p in enumerate(cells):
            if p0 <= p < p1:
                cells[c] = p // d

    for t in range(n):
        if G > 1:
            while n_past >= ga_i + W:
                ib = (G * ga_i) // W
                bd = (W // G) * (G - 1)
                dd = (W // G) - ib * bd - W
                seq_add(ga_i, n_past, ib * bd)
                seq_div(ga_i + ib * bd, ga_i + ib * bd + W, G)
                seq_add(ga_i + ib * bd + W, n_past + ib * bd, dd)
                n_past -= bd
                ga_i += W // G
        cells.append(n_past)
        n_past += 1
        q_pos[t, :] = cells[t]
        k_pos[t, : t + 1] = cells
    return q_pos, k_pos


def rel_max_err(a, b) -> float:
    """max |a - b| / max |b|."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))
