"""Tiny random-weight GGUF models for tests.

`write_tiny_model()` writes a small transformer with random weights that the pinned llama.cpp
loads as an ordinary model (and that `tests/numpy_oracle.py` evaluates independently):

- ``arch="llama"``: RMSNorm, SwiGLU FFN, rope NORM (adjacent pairs), GQA/MQA via ``n_head_kv``,
  optional llama3-style ``rope_freqs.weight`` frequency factors.
- ``arch="qwen2"``: like llama but rope NEOX (split halves) and q/k/v biases.
- ``arch="phi3"``: rope NEOX, fused gate/up FFN, and the only one of the three that llama.cpp
  lets use partial rotary (``n_rot < head_dim``).

Weights are scaled so that attention scores have magnitudes of a few units (softmax far from
uniform, so positions matter) and logits are O(1..10).

Tokenizer: llama.cpp aborts when a byte cannot be mapped to a token, so every vocabulary holds all
256 bytes; the vocabulary therefore has at least 260 entries (``MIN_VOCAB``).

- ``tokenizer="spm"`` (default for llama and phi3): ``<unk>``=0, ``<s>``=1 (bos), ``</s>``=2
  (eos), byte tokens ``<0x00>``..``<0xFF>`` = ids 3..258, then a few normal tokens ("▁", letters).
- ``tokenizer="bpe"`` (default for qwen2): GPT-2 byte-level BPE; token id ``b`` is byte ``b``
  (ids 0..255), then tokens produced by a few merges, and ``<|endoftext|>`` (bos = eos) last.
"""

from __future__ import annotations

import itertools
import string
from pathlib import Path
from typing import Sequence

import numpy as np

import gguf
from gguf.vocab import bytes_to_unicode

__all__ = [
    "ARCHS",
    "MIN_VOCAB",
    "DEFAULT_N_VOCAB",
    "write_tiny_model",
    "special_token_ids",
    "write_tiny_gemma3",
    "write_tiny_openelm",
    "write_tiny_grok",
]

ARCHS = ("llama", "qwen2", "phi3")
MIN_VOCAB = 260
DEFAULT_N_VOCAB = 288

_DTYPES = {
    "f32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
    "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
}


def special_token_ids(tokenizer: str, n_vocab: int = DEFAULT_N_VOCAB) -> dict[str, int]:
    """bos/eos ids of the vocabulary that `write_tiny_model` writes for `tokenizer`."""
    if tokenizer == "spm":
        return {"bos": 1, "eos": 2, "unk": 0}
    if tokenizer == "bpe":
        return {"bos": n_vocab - 1, "eos": n_vocab - 1}
    raise ValueError(f"unknown tokenizer {tokenizer!r}; use 'spm' or 'bpe'")


def _spm_vocab(n_vocab: int) -> tuple[list[str], list[float], list[int]]:
    T = gguf.TokenType
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [T.UNKNOWN, T.CONTROL, T.CONTROL] + [T.BYTE] * 256
    extras: list[str] = ["▁"] + list(string.ascii_lowercase) + list(string.ascii_uppercase)
    extras += ["▁" + c for c in string.ascii_lowercase]
    extras += [a + b for a in string.ascii_lowercase for b in string.ascii_lowercase]
    need = n_vocab - len(tokens)
    # a model of a real vocabulary's size (the GPU bench's): longer words, "▁aaa", "▁aab", ... as needed
    for size in range(3, 5):
        if need <= len(extras):
            break
        extras += ["▁" + "".join(w) for w in itertools.product(string.ascii_lowercase, repeat=size)]
    if need > len(extras):
        raise ValueError(f"n_vocab={n_vocab} too large for the tiny spm vocabulary")
    tokens += extras[:need]
    types += [T.NORMAL] * need
    scores = [0.0] * 259 + [-float(i) for i in range(need)]
    return tokens, scores, [int(t) for t in types]


def _bpe_vocab(n_vocab: int) -> tuple[list[str], list[str], list[int]]:
    T = gguf.TokenType
    enc = bytes_to_unicode()
    tokens = [enc[b] for b in range(256)]
    space = enc[ord(" ")]
    pairs = [(space, c) for c in string.ascii_lowercase]
    pairs += [(a, b) for a in string.ascii_lowercase for b in string.ascii_lowercase]
    need = n_vocab - 256 - 1
    if need > len(pairs):
        raise ValueError(f"n_vocab={n_vocab} too large for the tiny bpe vocabulary")
    merges = [f"{a} {b}" for a, b in pairs[:need]]
    tokens += [a + b for a, b in pairs[:need]]
    types = [T.NORMAL] * len(tokens)
    tokens.append("<|endoftext|>")
    types.append(T.CONTROL)
    return tokens, merges, [int(t) for t in types]


def _write_tokenizer(w: gguf.GGUFWriter, tokenizer: str, n_vocab: int) -> None:
    """Write the "spm" or "bpe" test vocabulary (see the module docstring) to `w`."""
    if tokenizer == "spm":
        tokens, scores, types = _spm_vocab(n_vocab)
        w.add_tokenizer_model("llama")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_unk_token_id(0)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_add_bos_token(True)
        w.add_add_eos_token(False)
    elif tokenizer == "bpe":
        tokens, merges, types = _bpe_vocab(n_vocab)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("qwen2")
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
        w.add_bos_token_id(n_vocab - 1)
        w.add_eos_token_id(n_vocab - 1)
        w.add_add_bos_token(False)
    else:
        raise ValueError(f"tokenizer must be 'spm' or 'bpe', not {tokenizer!r}")
    assert len(tokens) == n_vocab


def _write_out(w: gguf.GGUFWriter, path: Path) -> Path:
    """Write the header, metadata and tensors that `w` holds to its file, and close it."""
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_tiny_model(
    path: str | Path,
    *,
    arch: str = "llama",
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 4,
    n_head_kv: int = 2,
    n_ff: int = 96,
    n_vocab: int = DEFAULT_N_VOCAB,
    context_length: int = 64,
    rope_theta: float = 10000.0,
    n_rot: int | None = None,
    rope_scaling_factor: float | None = None,
    rope_scaling_type: str = "linear",
    rope_freq_factors: Sequence[float] | None = None,
    rms_eps: float = 1e-5,
    dtype: str = "f32",
    tokenizer: str | None = None,
    tie_embeddings: bool = False,
    qk_scale: float = 1.7,
    logit_scale: float = 2.0,
    sliding_window: int | None = None,
    chat_template: str | None = None,
    seed: int = 0,
) -> Path:
    """Write a tiny random-weight GGUF model to `path` and return the path.

    n_rot: rotary dimensions (default head_dim); only ``arch="phi3"`` allows n_rot < head_dim.
    rope_scaling_factor: writes ``rope.scaling.type=linear`` and ``rope.scaling.factor`` (the
      loaded model then has freq_scale = 1/factor).
    rope_scaling_type: "linear", or "yarn" (also writes ``rope.scaling.original_context_length`` =
      context_length; llama.cpp then uses YaRN with ext_factor 1, beta_fast 32, beta_slow 1).
    rope_freq_factors: llama only, n_rot/2 values written as ``rope_freqs.weight`` (theta of pair
      k is divided by factor k, as for llama3).
    dtype: "f32", "f16" or "q8_0" for the matrices (norms and biases stay F32; q8_0 needs
      n_embd, n_ff and head sizes that are multiples of 32).
    qk_scale: std of the q/k elements (so attention scores have std about qk_scale**2).
    logit_scale: std of the logits.
    sliding_window: writes ``<arch>.attention.sliding_window`` (as Mistral GGUFs converted to arch
      llama carry it); the pinned llama.cpp ignores it for these archs (phi3 says so in its log).
    chat_template: a Jinja template written as ``tokenizer.chat_template`` (llama-cpp-python
      then formats chats with it, as it does a real model's).
    """
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, not {arch!r}")
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {tuple(_DTYPES)}, not {dtype!r}")
    if n_embd % n_head:
        raise ValueError("n_embd must be a multiple of n_head")
    if n_head % n_head_kv:
        raise ValueError("n_head must be a multiple of n_head_kv")
    if n_vocab < MIN_VOCAB:
        raise ValueError(
            f"n_vocab={n_vocab} < {MIN_VOCAB}: the vocabulary must hold all 256 bytes, "
            "or llama.cpp aborts while tokenizing"
        )
    head_dim = n_embd // n_head
    if n_rot is None:
        n_rot = head_dim
    if n_rot % 2 or not 0 < n_rot <= head_dim:
        raise ValueError(f"n_rot={n_rot} must be even and in (0, head_dim={head_dim}]")
    if n_rot != head_dim and arch != "phi3":
        raise ValueError(f"llama.cpp's {arch} requires n_rot == head_dim; use arch='phi3'")
    if rope_freq_factors is not None:
        if arch != "llama":
            raise ValueError("rope_freq_factors is only supported for arch='llama'")
        if len(rope_freq_factors) != n_rot // 2:
            raise ValueError(f"rope_freq_factors needs n_rot/2 = {n_rot // 2} values")
    if tokenizer is None:
        tokenizer = "bpe" if arch == "qwen2" else "spm"

    qtype, ftype = _DTYPES[dtype]
    rng = np.random.default_rng(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    w = gguf.GGUFWriter(str(path), arch)
    # no arch in general.name: llama.cpp special-cases vocabularies of models named "phi3"
    w.add_name("selfextend-gguf tiny random test model")
    w.add_description(f"random weights, arch {arch}, written by tests/tiny_models.py")
    w.add_context_length(context_length)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_dimension_count(n_rot)
    w.add_rope_freq_base(float(rope_theta))
    w.add_layer_norm_rms_eps(float(rms_eps))
    w.add_vocab_size(n_vocab)
    if sliding_window is not None:
        w.add_sliding_window(sliding_window)
    if rope_scaling_factor is not None:
        if rope_scaling_type == "yarn":
            w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
            w.add_rope_scaling_orig_ctx_len(context_length)
        elif rope_scaling_type == "linear":
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        else:
            raise ValueError(f"rope_scaling_type must be 'linear' or 'yarn', not {rope_scaling_type!r}")
        w.add_rope_scaling_factor(float(rope_scaling_factor))
    w.add_file_type(int(ftype))

    _write_tokenizer(w, tokenizer, n_vocab)
    if chat_template is not None:
        w.add_chat_template(chat_template)

    def mat(name: str, rows: int, cols: int, std: float) -> None:
        a = (rng.standard_normal((rows, cols)) * std).astype(np.float32)
        if qtype == gguf.GGMLQuantizationType.F32:
            w.add_tensor(name, a)
        elif qtype == gguf.GGMLQuantizationType.F16:
            w.add_tensor(name, a.astype(np.float16))
        else:
            w.add_tensor(name, gguf.quants.quantize(a, qtype), raw_dtype=qtype)

    def vec(name: str, n: int, mean: float, std: float) -> None:
        w.add_tensor(name, (mean + rng.standard_normal(n) * std).astype(np.float32))

    n_q = n_head * head_dim
    n_kv = n_head_kv * head_dim
    # token embeddings N(0, 1); the RMSNorms bring every layer input back to unit RMS
    mat("token_embd.weight", n_vocab, n_embd, 1.0)
    vec("output_norm.weight", n_embd, 1.0, 0.1)
    if not tie_embeddings:
        mat("output.weight", n_vocab, n_embd, logit_scale / np.sqrt(n_embd))
    if rope_freq_factors is not None:
        w.add_tensor("rope_freqs.weight", np.asarray(rope_freq_factors, dtype=np.float32))

    for il in range(n_layer):
        p = f"blk.{il}."
        vec(p + "attn_norm.weight", n_embd, 1.0, 0.1)
        mat(p + "attn_q.weight", n_q, n_embd, qk_scale / np.sqrt(n_embd))
        mat(p + "attn_k.weight", n_kv, n_embd, qk_scale / np.sqrt(n_embd))
        mat(p + "attn_v.weight", n_kv, n_embd, 1.0 / np.sqrt(n_embd))
        if arch == "qwen2":
            vec(p + "attn_q.bias", n_q, 0.0, 0.5)
            vec(p + "attn_k.bias", n_kv, 0.0, 0.5)
            vec(p + "attn_v.bias", n_kv, 0.0, 0.5)
        mat(p + "attn_output.weight", n_embd, n_q, 1.0 / np.sqrt(n_q))
        vec(p + "ffn_norm.weight", n_embd, 1.0, 0.1)
        if arch == "phi3":
            # fused [gate; up]: ggml_swiglu computes silu(first half) * second half
            mat(p + "ffn_up.weight", 2 * n_ff, n_embd, 1.0 / np.sqrt(n_embd))
        else:
            mat(p + "ffn_gate.weight", n_ff, n_embd, 1.0 / np.sqrt(n_embd))
            mat(p + "ffn_up.weight", n_ff, n_embd, 1.0 / np.sqrt(n_embd))
        mat(p + "ffn_down.weight", n_embd, n_ff, 1.0 / np.sqrt(n_ff))

    return _write_out(w, path)


def write_tiny_gemma3(
    path: str | Path,
    *,
    n_layer: int = 4,
    n_embd: int = 64,
    n_head: int = 4,
    n_head_kv: int = 2,
    head_dim: int = 16,
    n_ff: int = 96,
    n_vocab: int = DEFAULT_N_VOCAB,
    context_length: int = 64,
    sliding_window: int | None = 8,
    swa_pattern: int | Sequence[bool] = 2,
    rope_theta: float = 10000.0,
    rope_theta_swa: float | None = None,
    zero_attn_out: Sequence[int] = (),
    seed: int = 31,
    arch: str = "gemma3",
) -> Path:
    """Write a tiny random gemma3 (rope NEOX, q/k RMS norms, post-attention/FFN norms, GELU FFN).

    arch="gemma2" writes its predecessor instead: no q/k norms, and attention logit soft-capping
    (``gemma2.attn_logit_softcapping`` 50, as the released models).

    sliding_window: ``gemma3.attention.sliding_window`` (None: no SWA, every layer full attention).
    swa_pattern: ``gemma3.attention.sliding_window_pattern``; an int n makes layer il sliding-window
      unless ``il % n == n - 1`` (llama.cpp's set_swa_pattern; 0 = every layer), a list of bools
      says it per layer (all True: a pure sliding-window model, Mistral-style).
    rope_theta_swa: ``gemma3.rope.freq_base_swa``, the RoPE base of the sliding-window layers.
    zero_attn_out: layers whose attention output projection is all zeros (their attention then
      cannot change the result: used to see which layers' attention a setting changes).
    """
    rng = np.random.default_rng(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert arch in ("gemma3", "gemma2"), arch
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(f"selfextend-gguf tiny {arch} test model")
    w.add_context_length(context_length)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_freq_base(float(rope_theta))
    w.add_layer_norm_rms_eps(1e-6)
    if sliding_window is not None:
        w.add_sliding_window(sliding_window)
        if isinstance(swa_pattern, int):
            w.add_uint32(f"{arch}.attention.sliding_window_pattern", swa_pattern)
        else:
            w.add_array(f"{arch}.attention.sliding_window_pattern", [bool(x) for x in swa_pattern])
        if rope_theta_swa is not None:
            w.add_float32(f"{arch}.rope.freq_base_swa", float(rope_theta_swa))
    if arch == "gemma2":
        w.add_float32("gemma2.attn_logit_softcapping", 50.0)
        w.add_float32("gemma2.final_logit_softcapping", 30.0)
    w.add_file_type(int(gguf.LlamaFileType.ALL_F32))
    tokens, scores, types = _spm_vocab(n_vocab)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)

    def mat(name: str, rows: int, cols: int, std: float) -> None:
        w.add_tensor(name, (rng.standard_normal((rows, cols)) * std).astype(np.float32))

    def vec(name: str, n: int, mean: float = 1.0, std: float = 0.1) -> None:
        w.add_tensor(name, (mean + rng.standard_normal(n) * std).astype(np.float32))

    # embeddings are scaled by sqrt(n_embd) in the graph; q/k are RMS-normed per head, so the
    # attention scores have the scale of the q/k norm weights (x 1/sqrt(head_dim))
    mat("token_embd.weight", n_vocab, n_embd, 1.0 / np.sqrt(n_embd))
    vec("output_norm.weight", n_embd)
    for il in range(n_layer):
        p = f"blk.{il}."
        vec(p + "attn_norm.weight", n_embd)
        mat(p + "attn_q.weight", n_head * head_dim, n_embd, 1.0 / np.sqrt(n_embd))
        mat(p + "attn_k.weight", n_head_kv * head_dim, n_embd, 1.0 / np.sqrt(n_embd))
        mat(p + "attn_v.weight", n_head_kv * head_dim, n_embd, 1.0 / np.sqrt(n_embd))
        if arch == "gemma3":
            vec(p + "attn_q_norm.weight", head_dim, 2.0, 0.3)
            vec(p + "attn_k_norm.weight", head_dim, 2.0, 0.3)
        mat(p + "attn_output.weight", n_embd, n_head * head_dim, 0.0 if il in zero_attn_out else 1.0 / np.sqrt(n_head * head_dim))
        vec(p + "post_attention_norm.weight", n_embd)
        vec(p + "ffn_norm.weight", n_embd)
        mat(p + "ffn_gate.weight", n_ff, n_embd, 1.0 / np.sqrt(n_embd))
        mat(p + "ffn_up.weight", n_ff, n_embd, 1.0 / np.sqrt(n_embd))
        mat(p + "ffn_down.weight", n_embd, n_ff, 1.0 / np.sqrt(n_ff))
        vec(p + "post_ffw_norm.weight", n_embd)
    return _write_out(w, path)


def write_tiny_openelm(
    path: str | Path,
    *,
    n_embd: int = 64,
    head_dim: int = 16,
    n_head: Sequence[int] = (2, 4),
    n_head_kv: Sequence[int] = (1, 2),
    n_ff: Sequence[int] = (64, 96),
    context_length: int = 64,
    seed: int = 0,
) -> Path:
    """A tiny random OpenELM: its layers differ in their number of query and KV heads (and FFN
    width), which no other architecture here does; rope NEOX, q/k RMSNorm, a fused QKV weight.

    Its query heads per KV head may still be the same in every layer (the default: 2), so that
    code which checks only that ratio treats it as a model with one head layout. Not covered by
    `tests/numpy_oracle.py`: compare its runs with one another."""
    if not len(n_head) == len(n_head_kv) == len(n_ff):
        raise ValueError("n_head, n_head_kv and n_ff need one entry per layer")
    rng = np.random.default_rng(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    w = gguf.GGUFWriter(str(path), "openelm")
    w.add_name("selfextend-gguf tiny openelm test model")
    w.add_context_length(context_length)
    w.add_embedding_length(n_embd)
    w.add_block_count(len(n_head))
    w.add_feed_forward_length(list(n_ff))
    w.add_head_count(list(n_head))
    w.add_head_count_kv(list(n_head_kv))
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(DEFAULT_N_VOCAB)
    w.add_file_type(int(gguf.LlamaFileType.ALL_F32))
    _write_tokenizer(w, "spm", DEFAULT_N_VOCAB)

    def mat(name: str, rows: int, cols: int, std: float) -> None:
        w.add_tensor(name, (rng.standard_normal((rows, cols)) * std).astype(np.float32))

    def vec(name: str, n: int) -> None:
        w.add_tensor(name, (1.0 + rng.standard_normal(n) * 0.1).astype(np.float32))

    # the output projection is the token embedding (OpenELM ties them)
    mat("token_embd.weight", DEFAULT_N_VOCAB, n_embd, 1.0)
    vec("output_norm.weight", n_embd)
    for il, (h, h_kv, ff) in enumerate(zip(n_head, n_head_kv, n_ff)):
        p = f"blk.{il}."
        vec(p + "attn_norm.weight", n_embd)
        # [q; k; v]; the q/k norms bring the scores back to a few units, the scale of 2 keeps them there
        mat(p + "attn_qkv.weight", (h + 2 * h_kv) * head_dim, n_embd, 2.0 / np.sqrt(n_embd))
        vec(p + "attn_q_norm.weight", head_dim)
        vec(p + "attn_k_norm.weight", head_dim)
        mat(p + "attn_output.weight", n_embd, h * head_dim, 1.0 / np.sqrt(h * head_dim))
        vec(p + "ffn_norm.weight", n_embd)
        mat(p + "ffn_gate.weight", ff, n_embd, 1.0 / np.sqrt(n_embd))
        mat(p + "ffn_up.weight", ff, n_embd, 1.0 / np.sqrt(n_embd))
        mat(p + "ffn_down.weight", n_embd, ff, 1.0 / np.sqrt(ff))
    return _write_out(w, path)


def write_tiny_grok(
    path: str | Path,
    *,
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 4,
    n_head_kv: int = 2,
    n_ff: int = 96,
    n_expert: int = 2,
    n_vocab: int = DEFAULT_N_VOCAB,
    context_length: int = 64,
    seed: int = 37,
) -> Path:
    """Write a tiny random grok: rope NORM, attention logit soft-capping (30, llama.cpp's default for
    grok) and an attention output scale, and a mixture-of-experts GELU FFN (one expert used per token).

    Exact mode refuses grok's attention (``llama_set_self_extend`` answers -6), while shift mode runs
    it: it has no sliding-window layers and a cache that can shift.
    """
    rng = np.random.default_rng(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    head_dim = n_embd // n_head
    w = gguf.GGUFWriter(str(path), "grok")
    w.add_name("selfextend-gguf tiny grok test model")
    w.add_context_length(context_length)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_expert_count(n_expert)
    w.add_expert_used_count(1)
    w.add_file_type(int(gguf.LlamaFileType.ALL_F32))
    _write_tokenizer(w, "spm", n_vocab)

    def mat(name: str, shape: tuple, std: float) -> None:
        w.add_tensor(name, (rng.standard_normal(shape) * std).astype(np.float32))

    def vec(name: str, n: int) -> None:
        w.add_tensor(name, (1.0 + rng.standard_normal(n) * 0.1).astype(np.float32))

    n_kv = n_head_kv * head_dim
    mat("token_embd.weight", (n_vocab, n_embd), 1.0 / np.sqrt(n_embd))
    vec("output_norm.weight", n_embd)
    for il in range(n_layer):
        p = f"blk.{il}."
        vec(p + "attn_norm.weight", n_embd)
        mat(p + "attn_q.weight", (n_embd, n_embd), 2.0 / np.sqrt(n_embd))
        mat(p + "attn_k.weight", (n_kv, n_embd), 2.0 / np.sqrt(n_embd))
        mat(p + "attn_v.weight", (n_kv, n_embd), 1.0 / np.sqrt(n_embd))
        mat(p + "attn_output.weight", (n_embd, n_embd), 1.0 / np.sqrt(n_embd))
        vec(p + "attn_output_norm.weight", n_embd)
        vec(p + "ffn_norm.weight", n_embd)
        mat(p + "ffn_gate_inp.weight", (n_expert, n_embd), 1.0 / np.sqrt(n_embd))
        mat(p + "ffn_gate_exps.weight", (n_expert, n_ff, n_embd), 1.0 / np.sqrt(n_embd))
        mat(p + "ffn_up_exps.weight", (n_expert, n_ff, n_embd), 1.0 / np.sqrt(n_embd))
        mat(p + "ffn_down_exps.weight", (n_expert, n_embd, n_ff), 1.0 / np.sqrt(n_ff))
        vec(p + "layer_output_norm.weight", n_embd)
    return _write_out(w, path)


#: architectures that SelfExtend cannot apply to, for `write_tiny_unsupported`
UNSUPPORTED_ARCHS = {
    "bloom": "ALiBi attention, no RoPE",
    "mamba": "recurrent (state-space), no attention cache",
    "jamba": "hybrid: mamba layers and attention layers",
}


def write_tiny_unsupported(path: str | Path, arch: str, *, n_embd: int = 32, n_layer: int = 2,
                           context_length: int = 64, seed: int = 0) -> Path:
    """A tiny random GGUF of an architecture without RoPE or with recurrent memory (see UNSUPPORTED_ARCHS).

    llama.cpp loads it as a real model (all tensors present), so what rejects it is LongLlama's
    own check, not a load failure. Shapes follow the pinned llama.cpp's loaders
    (src/models/{bloom,mamba,jamba}.cpp); numpy shapes are ggml's reversed.
    """
    if arch not in UNSUPPORTED_ARCHS:
        raise ValueError(f"arch must be one of {tuple(UNSUPPORTED_ARCHS)}, not {arch!r}")
    rng = np.random.default_rng(seed)
    n_vocab, n_head, n_ff = DEFAULT_N_VOCAB, 4, 2 * n_embd
    d_inner, d_state, d_conv, dt_rank = 2 * n_embd, 4, 4, 2
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("selfextend-gguf tiny unsupported test model")
    w.add_context_length(context_length)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_vocab_size(n_vocab)
    w.add_file_type(int(gguf.LlamaFileType.ALL_F32))
    _write_tokenizer(w, "spm", n_vocab)

    def t(name: str, *shape: int, mean: float = 0.0) -> None:
        w.add_tensor(name, (mean + rng.standard_normal(shape) * 0.1).astype(np.float32))

    t("token_embd.weight", n_vocab, n_embd)
    t("output_norm.weight", n_embd, mean=1.0)
    t("output.weight", n_vocab, n_embd)

    def mamba_layer(p: str, *, jamba: bool) -> None:
        t(p + "ssm_in.weight", 2 * d_inner, n_embd)
        t(p + "ssm_conv1d.weight", d_inner, d_conv)
        t(p + "ssm_conv1d.bias", d_inner)
        t(p + "ssm_x.weight", dt_rank + 2 * d_state, d_inner)
        t(p + "ssm_dt.weight", d_inner, dt_rank)
        t(p + "ssm_dt.bias", d_inner)
        t(p + "ssm_a", d_inner, d_state, mean=-1.0)
        t(p + "ssm_d", d_inner, mean=1.0)
        t(p + "ssm_out.weight", n_embd, d_inner)
        if jamba:
            t(p + "ssm_dt_norm.weight", dt_rank, mean=1.0)
            t(p + "ssm_b_norm.weight", d_state, mean=1.0)
            t(p + "ssm_c_norm.weight", d_state, mean=1.0)

    if arch == "bloom":
        w.add_feed_forward_length(n_ff)
        w.add_head_count(n_head)
        w.add_head_count_kv(n_head)
        w.add_layer_norm_eps(1e-5)
        t("token_embd_norm.weight", n_embd, mean=1.0)
        t("token_embd_norm.bias", n_embd)
        t("output_norm.bias", n_embd)
        for il in range(n_layer):
            p = f"blk.{il}."
            for norm in ("attn_norm", "ffn_norm"):
                t(p + norm + ".weight", n_embd, mean=1.0)
                t(p + norm + ".bias", n_embd)
            t(p + "attn_qkv.weight", 3 * n_embd, n_embd)
            t(p + "attn_qkv.bias", 3 * n_embd)
            t(p + "attn_output.weight", n_embd, n_embd)
            t(p + "attn_output.bias", n_embd)
            t(p + "ffn_up.weight", n_ff, n_embd)
            t(p + "ffn_up.bias", n_ff)
            t(p + "ffn_down.weight", n_embd, n_ff)
            t(p + "ffn_down.bias", n_embd)
    else:
        w.add_layer_norm_rms_eps(1e-5)
        w.add_ssm_conv_kernel(d_conv)
        w.add_ssm_inner_size(d_inner)
        w.add_ssm_state_size(d_state)
        w.add_ssm_time_step_rank(dt_rank)
        if arch == "mamba":
            w.add_feed_forward_length(0)
            w.add_head_count(0)
            for il in range(n_layer):
                t(f"blk.{il}.attn_norm.weight", n_embd, mean=1.0)
                mamba_layer(f"blk.{il}.", jamba=False)
        else:  # jamba: layer 0 mamba, the others attention; dense FFN everywhere
            n_head_kv = [0] + [2] * (n_layer - 1)
            head_dim = n_embd // n_head
            w.add_feed_forward_length(n_ff)
            w.add_head_count(n_head)
            w.add_head_count_kv(n_head_kv)
            for il in range(n_layer):
                p = f"blk.{il}."
                t(p + "attn_norm.weight", n_embd, mean=1.0)
                if n_head_kv[il] == 0:
                    mamba_layer(p, jamba=True)
                else:
                    t(p + "attn_q.weight", n_embd, n_embd)
                    t(p + "attn_k.weight", n_head_kv[il] * head_dim, n_embd)
                    t(p + "attn_v.weight", n_head_kv[il] * head_dim, n_embd)
                    t(p + "attn_output.weight", n_embd, n_embd)
                t(p + "ffn_norm.weight", n_embd, mean=1.0)
                t(p + "ffn_gate.weight", n_ff, n_embd)
                t(p + "ffn_up.weight", n_ff, n_embd)
                t(p + "ffn_down.weight", n_embd, n_ff)

    return _write_out(w, path)
