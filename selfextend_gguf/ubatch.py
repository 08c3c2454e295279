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
:data:`SCORE_BUFFER_BYTES`, down to :data:`MIN_UBATCH`. With flash attention on it also halves
it until the flash-attention prompt can take the ubatch: that prompt writes two scratch cells
per query and query head of a KV head into the window, ``2 * n_gqa * n`` cells, and the
smallest window is ``W + 1`` cells (:func:`flash_prompt_fits`). SmolLM2 (``n_gqa`` 3) and
Gemma 3 270M (4) keep 128 at ``W = 1024``; a model with 8 query heads per KV head takes 64.

Neither bound applies where the prompt's flash attention returns its log-sum-exp
(``patches/0016``, the CPU): there the prompt is two flash attentions per layer
(``patches/0017``), with no score matrix, no scratch cell and nothing unfused, so exact mode
takes the stock library's 512 (:data:`FLASH_LSE_UBATCH`). On 2 CPU cores (SmolLM2, the 2048
tokens after 12288 of a 16k context, flash attention on; docs/exact-storage.md) exact mode ran
at 0.96x of the stock prompt with 64 or 128, 0.91x with 256 and 1.07x with 512; over whole 4k
and 8k prompts 128 and 512 ran alike. :func:`flash_lse_expected` says when a context's caches
are on the CPU.
"""

from __future__ import annotations

#: exact mode's ubatch when the score matrix allows it (the measured CPU optimum, see above)
EXACT_UBATCH = 128
#: the largest F32 score matrix (one layer's, ``n_ctx x n_ubatch x n_head``) the default allows
SCORE_BUFFER_BYTES = 128 << 20
#: below this, a ubatch is too small for the weights' matrix products to run at speed
MIN_UBATCH = 32
#: exact mode's ubatch where its flash-attention prompt runs nothing unfused: the stock library's
FLASH_LSE_UBATCH = 512


def score_buffer_bytes(n_ctx: int, n_ubatch: int, n_head: int) -> int:
    """Bytes of one layer's F32 score matrix for a prompt ubatch in exact mode."""
    return 4 * n_ctx * n_ubatch * n_head


def flash_prompt_scratch(n_ubatch: int, n_gqa: int) -> int:
    """Window cells the flash-attention prompt of ``patches/0008`` writes its scratch into: two per
    query and query head of a KV head (the window's weight split so that an F16 mask holds it)."""
    return 2 * n_gqa * n_ubatch


def flash_prompt_fits(n_ubatch: int, n_gqa: int, window: int) -> bool:
    """Whether every prompt ubatch of ``n_ubatch`` tokens can take the flash-attention prompt.

    Its scratch must fit in the smallest window a ubatch read in place has, ``window + 1`` cells
    (the rule ``patches/0008`` reserves the graph with).
    """
    return flash_prompt_scratch(n_ubatch, n_gqa) <= window + 1


def flash_lse_expected(n_gpu_layers: int, rpc_servers: bool, local_gpu: bool, *, offload_kqv: bool = True) -> bool:
    """Whether exact mode's prompt with flash attention will run on the CPU's log-sum-exp path.

    llama.cpp decides it when self-extend is switched on, from the device of each layer's cache
    (``llama_kv_cache::set_self_extend``), after ``n_ubatch`` is fixed, so it is told here from
    what places the caches: no layer offloaded (``n_gpu_layers`` 0, or no local GPU to take
    them) or the caches kept on the CPU (``offload_kqv=False``), and no RPC server. A GPU, and
    an RPC server (which answers for whatever backend it runs), return no log-sum-exp and take
    ``patches/0008``'s path, which the bounds are for. Where the guess says no and the caches are
    on the CPU all the same (one layer offloaded: llama.cpp offloads the output layer first), the
    ubatch is the bounded one, slower but correct; it never says yes for caches on a GPU.

    Args:
        n_gpu_layers: Layers offloaded, as ``llama_cpp.Llama`` takes it (-1: all).
        rpc_servers: Whether RPC servers take layers.
        local_gpu: Whether ggml has a local GPU (:func:`selfextend_gguf.rpc.has_local_gpu`).
        offload_kqv: ``llama_cpp.Llama``'s: False keeps every cache on the CPU.
    """
    return not rpc_servers and (n_gpu_layers == 0 or not local_gpu or not offload_kqv)


def exact_ubatch(n_ctx: int, n_head: int, n_batch: int = 512, *, n_gqa: int = 0, window: int = 0,
                 flash_attn: bool = False, flash_lse: bool = False) -> int:
    """The ``n_ubatch`` exact mode uses when the caller does not set one.

    Args:
        n_ctx: The context size.
        n_head: The model's query heads (0 when unknown: the score bound is then not applied).
        n_batch: The logical batch; a ubatch is never larger (llama.cpp's rule).
        n_gqa: Query heads per KV head (0 when unknown: the flash-attention bound is not applied).
        window: The neighbour window ``W``.
        flash_attn: Whether flash attention is on.
        flash_lse: Whether the flash attention returns its log-sum-exp (:func:`flash_lse_expected`).

    Returns:
        With ``flash_attn`` and ``flash_lse``, :data:`FLASH_LSE_UBATCH`. Otherwise
        :data:`EXACT_UBATCH`, halved while the score matrix would exceed :data:`SCORE_BUFFER_BYTES`
        and, with flash attention on, while :func:`flash_prompt_fits` says no; never below
        :data:`MIN_UBATCH`. Never above ``n_batch``.
    """
    if flash_attn and flash_lse:
        return max(1, min(FLASH_LSE_UBATCH, n_batch))

    def too_large(n: int) -> bool:
        if n_head > 0 and score_buffer_bytes(n_ctx, n, n_head) > SCORE_BUFFER_BYTES:
            return True
        return flash_attn and n_gqa > 0 and window > 0 and not flash_prompt_fits(n, n_gqa, window)

    n_ubatch = EXACT_UBATCH
    while n_ubatch > MIN_UBATCH and too_large(n_ubatch):
        n_ubatch //= 2
    return max(1, min(n_ubatch, n_batch))
